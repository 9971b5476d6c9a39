"""The left pane: jobs → runs (newest first, paged) → steps in DAG order.

Nodes are added lazily (a job's runs when it is expanded, a run's steps when it is
expanded) and updated in place with `set_label` as events arrive; the tree is never
rebuilt. The tree asks its parent for data with messages and is handed results through
methods; it does no I/O itself.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from engine.humanize import display_path, natural_key
from engine.query import JobSummary, RunSummary, RunView, StepView
from tui import format as fmt
from tui.data import FILTER_STATES


@dataclass(slots=True)
class JobNode:
    name: str
    job: JobSummary | None
    last_run: RunSummary | None
    runs_requested: bool = False
    oldest_id: int | None = None


@dataclass(slots=True)
class RunNode:
    summary: RunSummary
    view: RunView | None = None
    steps_requested: bool = False


@dataclass(slots=True)
class StepNode:
    run_id: int
    job: str
    step: StepView


@dataclass(slots=True)
class MoreNode:
    job: str
    before_id: int


@dataclass(slots=True)
class ProblemNode:
    file: str
    line: int
    message: str


@dataclass(slots=True)
class InfoNode:
    text: str


JOB_LINE_INDENT = 3
"""Columns a job line needs besides its label: the expander and the scrollbar."""
STEP_LINE_INDENT = 7
"""Cells before a step's label (its run's guide and its own) and the scrollbar's."""

NodeData = JobNode | RunNode | StepNode | MoreNode | ProblemNode | InfoNode | None


class RunTree(Tree[NodeData]):
    DEFAULT_CSS = """
    RunTree { scrollbar-size-vertical: 1; }
    """
    BINDINGS = [
        Binding("enter", "select_cursor", "Expand/collapse", show=False),  # on the help screen; the footer keeps room for actions
        Binding("space", "toggle_node", "Expand/collapse", show=False),
        # As in file managers and k9s: left and right walk the tree instead of scrolling it sideways.
        Binding("left", "collapse_or_parent", "Collapse, or go to the parent", show=False),
        Binding("right", "expand_or_child", "Expand, or go to the first child", show=False),
    ]

    class RunsWanted(Message):
        """A job was expanded (or "more" chosen) and needs a page of runs."""

        def __init__(self, job: str, before_id: int | None) -> None:
            super().__init__()
            self.job = job
            self.before_id = before_id

    class StepsWanted(Message):
        """A run was expanded and needs its steps."""

        def __init__(self, run_id: int) -> None:
            super().__init__()
            self.run_id = run_id

    class SelectionChanged(Message):
        """The cursor moved to another node."""

        def __init__(self, data: NodeData) -> None:
            super().__init__()
            self.data = data

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("stepline", id=id)
        self.show_root = False
        self.guide_depth = 2
        self.now = datetime.now().astimezone()
        self.jobs: dict[str, TreeNode[NodeData]] = {}
        self.runs: dict[int, TreeNode[NodeData]] = {}
        self.steps: dict[tuple[int, str], TreeNode[NodeData]] = {}
        self.abandoned: frozenset[int] = frozenset()
        """Running runs whose engine is gone (see set_abandoned)."""
        self._problems: TreeNode[NodeData] | None = None
        self._info: TreeNode[NodeData] | None = None
        self.run_filter = "all"
        self.catalog_known = False
        """False until an engine has published its job catalogue (jobs then show as "not loaded")."""
        self.problems_by_file: dict[str, tuple[int, str]] = {}
        """The first problem of each broken job file, by the file as the engine names it."""

    # --- jobs and problems ---------------------------------------------------------------------------------

    def set_catalog(self, jobs: list[JobSummary], last_runs: dict[str, RunSummary],
                    problems: list[tuple[str, int, str]]) -> list[str]:
        """Add or relabel job nodes and the problems node; returns the names of jobs added."""
        by_name = {j.name: j for j in jobs}
        self.catalog_known = bool(jobs)
        self.problems_by_file = {file: (line, message) for file, line, message in reversed(problems)}
        names = sorted(set(by_name) | set(last_runs), key=natural_key)
        added = []
        for name in names:
            node = self.jobs.get(name)
            if node is None:
                later = [n for n in sorted(self.jobs, key=natural_key) if natural_key(n) > natural_key(name)]
                before = self.jobs[later[0]] if later else None
                data = JobNode(name, by_name.get(name), last_runs.get(name))
                node = self.root.add(self._job_label(data), data, before=before)
                self.jobs[name] = node
                added.append(name)
            else:
                existing = node.data
                assert isinstance(existing, JobNode)
                data = existing
                data.job = by_name.get(name)
                data.last_run = last_runs.get(name, data.last_run)
                self._relabel(node, self._job_label(data))
        self._set_problems(problems)
        self._set_info(None if names else
                       "No jobs yet. Put job files in the jobs folder (--jobs DIR, default ./jobs); "
                       "the engine loads them when it starts. `stepline check` validates them.")
        return added

    def _set_problems(self, problems: list[tuple[str, int, str]]) -> None:
        if self._problems is not None:
            self._problems.remove()
            self._problems = None
        if not problems:
            return
        label = Text(f"⚠ {len(problems)} job file problem{'s' if len(problems) != 1 else ''}", style="bold red")
        first = next(iter(self.root.children), None)
        node = self.root.add(label, InfoNode("problems"), before=first, expand=True)
        for file, line, message in problems:
            text = Text(f"✗ {display_path(file)}{f':{line}' if line else ''} ", style="red")
            text.append(message.splitlines()[0] if message else "", style="")
            node.add_leaf(text, ProblemNode(file, line, message))
        self._problems = node

    def _set_info(self, text: str | None) -> None:
        if self._info is not None:
            self._info.remove()
            self._info = None
        if text:
            self._info = self.root.add_leaf(Text(text, style="italic"), InfoNode(text))

    def file_problem(self, job: JobSummary | None) -> tuple[str, int, str] | None:
        """The problem of the job's file, when the file is broken now (the engine runs its last good version)."""
        if job is None:
            return None
        for file, (line, message) in self.problems_by_file.items():
            # The engine names files as it was started (relative to its folder); the catalogue, absolutely.
            if job.file == file or job.file.endswith(os.sep + file):
                return file, line, message
        return None

    def _job_label(self, data: JobNode) -> Text:
        """The full job line, or the compact one when the full one does not fit the tree's width."""
        gone = data.last_run is not None and data.last_run.id in self.abandoned
        broken = self.file_problem(data.job) is not None
        full = fmt.job_label(data.name, data.job, data.last_run, self.now, self.catalog_known, abandoned=gone,
                             file_broken=broken)
        if not self.size.width or full.cell_len + JOB_LINE_INDENT <= self.size.width:
            return full
        return fmt.job_label(data.name, data.job, data.last_run, self.now, self.catalog_known, compact=True,
                             abandoned=gone, file_broken=broken)

    def relabel_jobs(self) -> None:
        """Relabel job lines whose text changed (width or the relative next fire); no I/O."""
        for node in self.jobs.values():
            data = node.data
            assert isinstance(data, JobNode)
            self._relabel(node, self._job_label(data))

    def _relabel(self, node: TreeNode[NodeData], label: Text) -> None:
        """Give a line a new label only when it differs: each new label repaints the line and every line
        under it, and the ticks that keep durations live would otherwise repaint the whole tree four times
        a second, which a slow SSH link pays for."""
        shown = node.label
        if not isinstance(shown, Text) or (shown.plain, shown.spans, shown.style) != (label.plain, label.spans,
                                                                                         label.style):
            node.set_label(label)

    def on_resize(self) -> None:
        self.relabel_jobs()
        for (run_id, _), node in self.steps.items():  # a step's name gives way to its duration at the new width
            if isinstance(node.data, StepNode):
                self._relabel(node, self._step_label(run_id, node.data.step))
        if self.cursor_line >= 0:  # a smaller terminal must not leave the highlighted line out of sight
            self.call_after_refresh(self._line_into_view, self.cursor_line)

    # --- runs ------------------------------------------------------------------------------------------------

    def add_runs(self, job: str, runs: list[RunSummary], has_more: bool) -> None:
        """Append a page of runs (newest first) under a job, with a "more" line when there are more."""
        node = self.jobs.get(job)
        if node is None:
            return
        data = node.data
        assert isinstance(data, JobNode)
        for child in list(node.children):
            if isinstance(child.data, MoreNode):
                child.remove()
        for run in runs:
            if run.id not in self.runs:
                self.runs[run.id] = node.add(self._run_label(run), RunNode(run))
        if runs:
            data.oldest_id = min(r.id for r in runs) if data.oldest_id is None else min(
                data.oldest_id, *(r.id for r in runs))
        if has_more and data.oldest_id is not None:
            self._add_more_line(node, data)
        # A job without runs says "no runs" on its own line; only a filter that hides runs needs a child.
        if not node.children and self.run_filter != "all":
            empty = f"no {self.run_filter} runs (f: filter)"
            node.add_leaf(Text(empty, style="italic bright_black"), InfoNode(empty))
        node.allow_expand = bool(node.children)  # no ▼ over nothing

    def add_first_page(self, job: str, runs: list[RunSummary], has_more: bool) -> None:
        """Open a job on its first page of runs, read along with the catalogue (no RunsWanted)."""
        node = self.jobs.get(job)
        if node is None:
            return
        data = node.data
        assert isinstance(data, JobNode)
        data.runs_requested = True
        self.add_runs(job, runs, has_more)
        node.expand()

    def upsert_run(self, run: RunSummary) -> None:
        """A run changed or appeared: relabel it, or add it on top of its job if the job's runs are shown."""
        job_node = self.jobs.get(run.job)
        if job_node is not None:
            data = job_node.data
            assert isinstance(data, JobNode)
            if data.last_run is None or run.id >= data.last_run.id:
                data.last_run = run
                self._relabel(job_node, self._job_label(data))
        node = self.runs.get(run.id)
        if node is not None:
            run_data = node.data
            assert isinstance(run_data, RunNode)
            run_data.summary = run
            self._relabel(node, self._run_label(run))
            if self.run_filter != "all" and run.state not in _filter_states(self.run_filter):
                self._drop_unless_in_use(node, run.id)
            return
        if job_node is None or not job_node.data.runs_requested:  # type: ignore[union-attr]
            return
        if self.run_filter != "all" and run.state not in _filter_states(self.run_filter):
            return
        for child in list(job_node.children):
            if isinstance(child.data, InfoNode):
                child.remove()
        first = next((c for c in job_node.children if isinstance(c.data, RunNode)
                      and c.data.summary.id < run.id), None)
        job_node.allow_expand = True
        self.runs[run.id] = job_node.add(self._run_label(run), RunNode(run), before=first)
        self._keep_newest_runs(job_node)

    def _drop_unless_in_use(self, node: TreeNode[NodeData], run_id: int) -> None:
        """A run the filter no longer shows (a failed run retried into success under "failed") leaves the
        tree, as it would on the next filter change; not while the user is on it or inside it."""
        cursor = self.cursor_line_node()
        if cursor is not None and (cursor is node or cursor.parent is node):
            return
        self._remove_run(node, run_id)

    def _remove_run(self, node: TreeNode[NodeData], run_id: int) -> None:
        self.runs.pop(run_id, None)
        for key in [key for key in self.steps if key[0] == run_id]:
            del self.steps[key]
        node.remove()

    def _add_more_line(self, job_node: TreeNode[NodeData], data: JobNode) -> None:
        """The "more runs" line at the end of a job's runs (the only one): enter loads the runs before its
        oldest shown run."""
        assert data.oldest_id is not None
        for child in list(job_node.children):
            if isinstance(child.data, MoreNode):
                child.remove()
        job_node.add_leaf(Text("… more runs (enter)", style="italic bright_black"),
                          MoreNode(data.name, data.oldest_id))

    def _keep_newest_runs(self, job_node: TreeNode[NodeData]) -> None:
        """A console left open on a job that runs every minute would hold every run since it opened (memory
        and CPU grow by the day): past KEPT_RUNS, the oldest lines go, behind a "more runs" line that
        brings them back. Not while the cursor is on one of them or inside one: the user is reading it. (A run
        left open further down is no reason: one open run kept the job's runs growing all day.)"""
        runs = [c for c in job_node.children if isinstance(c.data, RunNode)]
        if len(runs) <= KEPT_RUNS:
            return
        old = runs[KEPT_RUNS:]
        cursor = self.cursor_line_node()
        in_use = {cursor, cursor.parent} if cursor is not None else set()
        if any(node in in_use for node in old):
            return
        for node in old:
            run_data = node.data
            assert isinstance(run_data, RunNode)
            self._remove_run(node, run_data.summary.id)
        job_data = job_node.data
        assert isinstance(job_data, JobNode)
        job_data.oldest_id = min(c.data.summary.id for c in runs[:KEPT_RUNS])  # type: ignore[union-attr]
        self._add_more_line(job_node, job_data)

    def watch_cursor_line(self, previous_line: int, line: int) -> None:
        super().watch_cursor_line(previous_line, line)
        if line >= 0 and line != previous_line:
            # Lines added or removed above the cursor (new runs, a job expanded, the filter) move it without
            # a key press, and Tree scrolls only for keys: keep the highlighted line in view.
            self.call_after_refresh(self._line_into_view, line)

    def _line_into_view(self, line: int) -> None:
        if line == self.cursor_line and not (self.scroll_offset.y <= line < self.scroll_offset.y
                                             + self.scrollable_content_region.height):
            self.scroll_to_line(line, animate=False)

    def cursor_line_node(self) -> TreeNode[NodeData] | None:
        """The node the cursor's line shows now. Tree.cursor_node can still name a node removed under the
        cursor (the problem lines are rebuilt when job files change) until the cursor moves: then the
        node now on that line is announced as the selection."""
        _ = self.last_line  # lay the lines out first: that moves the cursor's line along with its node
        if self.cursor_line < 0:
            return None
        node = self.get_node_at_line(self.cursor_line)
        if node is not None and node is not self.cursor_node:
            # Not through another line on the way (the cursor at -1 is clamped to the first line, which
            # would announce the first job, and reset the log being read to its end).
            self.move_cursor(node)  # the same line: the cursor takes the node without a word
            self.post_message(self.SelectionChanged(node.data))
        return node

    def clear_runs(self) -> None:
        """Forget every loaded run (the filter changed); expanded jobs ask for their first page again.
        The cursor goes to the job line of what it was on: the lines under it are gone."""
        cursor = self.cursor_node
        while cursor is not None and cursor.parent is not None and not isinstance(cursor.data, JobNode):
            cursor = cursor.parent
        if cursor is not None and isinstance(cursor.data, JobNode):
            self.move_cursor(cursor)
        for node in self.jobs.values():
            data = node.data
            assert isinstance(data, JobNode)
            node.remove_children()
            node.allow_expand = True
            data.oldest_id = None
            data.runs_requested = False
        self.runs.clear()
        self.steps.clear()
        for name, node in self.jobs.items():
            if node.is_expanded:
                self._want_runs(node)

    # --- steps -----------------------------------------------------------------------------------------------

    def set_steps(self, view: RunView) -> None:
        """Show (or update) a run's steps in DAG order."""
        node = self.runs.get(view.id)
        if node is None:
            return
        data = node.data
        assert isinstance(data, RunNode)
        data.view = view
        data.summary = view.run
        data.steps_requested = True  # expanding it later shows these; polls keep them fresh
        self._relabel(node, self._run_label(view.run))
        for step in view.steps:
            key = (view.id, step.name)
            step_node = self.steps.get(key)
            if step_node is None:
                self.steps[key] = node.add_leaf(self._step_label(view.id, step), StepNode(view.id, view.run.job, step))
            else:
                step_data = step_node.data
                assert isinstance(step_data, StepNode)
                if step_data.step != step:
                    step_data.step = step
                    self._relabel(step_node, self._step_label(view.id, step))

    @property
    def loaded_runs(self) -> list[int]:
        """Runs whose steps are shown (their changes need a full view)."""
        return [run_id for run_id, node in self.runs.items() if isinstance(node.data, RunNode) and node.data.view]

    def tick(self, now: datetime) -> None:
        """Advance live durations of running runs and steps (no I/O)."""
        self.now = now
        self.relabel_jobs()  # a compact line's "in 4h" counts down
        for run_id, node in self.runs.items():
            data = node.data
            if isinstance(data, RunNode) and data.summary.state == "running" and run_id not in self.abandoned:
                self._relabel(node, self._run_label(data.summary))
        for (run_id, _), node in self.steps.items():
            data = node.data
            if isinstance(data, StepNode) and data.step.state == "running" and run_id not in self.abandoned:
                self._relabel(node, self._step_label(run_id, data.step))

    def set_abandoned(self, run_ids: frozenset[int]) -> frozenset[int]:
        """Running runs whose engine is gone: drawn so, with no live duration. Returns the runs that changed."""
        changed = run_ids ^ self.abandoned
        self.abandoned = run_ids
        if changed:
            self.relabel_jobs()  # a job line draws its last run's state
        for run_id in changed:
            node = self.runs.get(run_id)
            if node is not None and isinstance(node.data, RunNode):
                self._relabel(node, self._run_label(node.data.summary))
        for (run_id, _), node in self.steps.items():
            if run_id in changed and isinstance(node.data, StepNode):
                self._relabel(node, self._step_label(run_id, node.data.step))
        return changed

    def _run_label(self, run: RunSummary) -> Text:
        return fmt.run_label(run, self.now, abandoned=run.id in self.abandoned)

    def _step_label(self, run_id: int, step: StepView) -> Text:
        width = self.size.width - STEP_LINE_INDENT if self.size.width else None
        return fmt.step_label(step, self.now, abandoned=run_id in self.abandoned, width=width)

    # --- navigation ------------------------------------------------------------------------------------------

    def find(self, text: str, forward: bool = True) -> tuple[int, int] | None:
        """Move to the next (or previous) loaded node whose line contains `text` (case-insensitive), in
        collapsed jobs and runs too (expanding the way to it); (its number, the count of matches), or None.
        """
        needle = text.lower()
        order = list(self._loaded_nodes(self.root))
        matches = [node for node in order if needle in _plain(node.label).lower()]
        if not matches:
            return None
        here = order.index(self.cursor_node) if self.cursor_node in order else -1
        position = {id(node): index for index, node in enumerate(order)}
        if forward:
            target = next((n for n in matches if position[id(n)] > here), matches[0])
        else:
            target = next((n for n in reversed(matches) if position[id(n)] < here), matches[-1])
        parent = target.parent
        while parent is not None and parent is not self.root:
            parent.expand()
            parent = parent.parent
        self.call_after_refresh(self.move_cursor, target)
        return matches.index(target) + 1, len(matches)

    def _loaded_nodes(self, node: TreeNode[NodeData]) -> Iterator[TreeNode[NodeData]]:
        """Every node under `node` in the order the tree shows them, collapsed ones included."""
        for child in node.children:
            yield child
            yield from self._loaded_nodes(child)

    def select_run_step(self, run_id: int, step: str | None) -> None:
        node = self.steps.get((run_id, step)) if step else None
        node = node or self.runs.get(run_id)
        if node is None:
            return
        parent = node.parent
        while parent is not None and parent is not self.root:
            parent.expand()
            parent = parent.parent
        self.call_after_refresh(self.move_cursor, node)

    # --- events ----------------------------------------------------------------------------------------------

    def _want_runs(self, node: TreeNode[NodeData]) -> None:
        data = node.data
        if isinstance(data, JobNode) and not data.runs_requested:
            data.runs_requested = True
            node.allow_expand = True
            node.add_leaf(Text("loading…", style="italic bright_black"), InfoNode("loading"))
            self.post_message(self.RunsWanted(data.name, None))

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[NodeData]) -> None:
        node = event.node
        data = node.data
        if isinstance(data, JobNode):
            self._want_runs(node)
        elif isinstance(data, RunNode) and not data.steps_requested:
            data.steps_requested = True
            self.post_message(self.StepsWanted(data.summary.id))

    def on_tree_node_selected(self, event: Tree.NodeSelected[NodeData]) -> None:
        data = event.node.data
        if isinstance(data, MoreNode):
            event.node.set_label(Text("loading…", style="italic bright_black"))
            self.post_message(self.RunsWanted(data.job, data.before_id))

    def action_collapse_or_parent(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded and node.children:
            node.collapse()
        elif node.parent is not None and node.parent is not self.root:
            self.move_cursor(node.parent)

    def action_expand_or_child(self) -> None:
        node = self.cursor_node
        if node is None or not node.allow_expand:
            return
        if not node.is_expanded:
            node.expand()
        elif node.children:
            self.move_cursor(node.children[0])

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[NodeData]) -> None:
        self.post_message(self.SelectionChanged(event.node.data))

    def add_runs_loaded(self, job: str) -> None:
        """Remove the "loading…" line of a job (called before add_runs)."""
        node = self.jobs.get(job)
        if node is None:
            return
        for child in list(node.children):
            if isinstance(child.data, InfoNode):
                child.remove()


KEPT_RUNS = 100
"""Runs a job keeps in the tree as new ones arrive (each page the user asks for adds 50 more)."""


def _filter_states(run_filter: str) -> tuple[str, ...]:
    return FILTER_STATES.get(run_filter, ())


def _plain(label: object) -> str:
    return label.plain if isinstance(label, Text) else str(label)

