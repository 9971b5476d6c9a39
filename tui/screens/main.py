"""The main screen: tree on the left, details and log on the right, header and footer.

Owns the polling loop (events since the last seen id, handed to the tree as deltas), the
workers that read the database, and the keys that act on the selection. Every key writes a
command (the only write the console makes) and says so at once; the state change arrives
later through events. Keys that do not apply to the selection are hidden from the footer,
and pressing them anyway says why (see `why_not`).
"""
from __future__ import annotations

import re
from datetime import datetime
from functools import partial

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input
from textual.worker import get_current_worker

from engine.query import AttemptView, EngineStatus, JobSummary, RunSummary, RunView
from tui import data
from tui import format as fmt
from tui.keys import FOOTER_LABELS, MAIN_KEYS
from tui.screens import commands
from tui.widgets.details import DetailsPane
from tui.widgets.footer import KeyFooter
from tui.widgets.log_tail import LogSource, LogTail
from tui.widgets.run_tree import InfoNode, JobNode, MoreNode, NodeData, ProblemNode, RunNode, RunTree, StepNode
from tui.widgets.status_header import StatusHeader

class MainScreen(commands.CommandActions, Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    DEFAULT_CSS = """
    MainScreen #body { height: 1fr; }
    MainScreen RunTree { width: 44%; border: round $primary-darken-2; }
    MainScreen RunTree:focus { border: round $accent; }
    MainScreen.-narrow RunTree { width: 48%; max-width: 38; }  /* 38 columns at 80; less below, so the right keeps room */
    MainScreen #right { width: 1fr; }
    MainScreen DetailsPane { height: 45%; }
    MainScreen LogTail { height: 1fr; }
    MainScreen.-narrow #right.-log-focus DetailsPane { display: none; }
    MainScreen.-narrow #right.-details-focus LogTail { display: none; }
    MainScreen.-narrow #right.-details-focus DetailsPane { height: 1fr; }
    MainScreen #tree-search { dock: bottom; display: none; }
    MainScreen #tree-search.-open { display: block; }
    """
    # Footer order and short labels from FOOTER_LABELS (the keys that matter for a selection come
    # first, so 80 columns show them); the long text is the tooltip, the palette and help entry.
    BINDINGS = sorted((Binding(key, action, FOOTER_LABELS.get(action, text), show=action in FOOTER_LABELS,
                               tooltip=text) for key, action, text in MAIN_KEYS),
                      key=lambda b: list(FOOTER_LABELS).index(b.action) if b.action in FOOTER_LABELS else 99)  # type: ignore[union-attr]
    BINDINGS += [Binding("tab", "cycle_focus(1)", "Next pane", show=False),
                 Binding("shift+tab", "cycle_focus(-1)", "Previous pane", show=False)]

    class Started(Message):
        def __init__(self, start: data.Start) -> None:
            super().__init__()
            self.start = start

    class Polled(Message):
        def __init__(self, delta: data.Delta, error: str | None = None) -> None:
            super().__init__()
            self.delta, self.error = delta, error

    class RunsLoaded(Message):
        def __init__(self, job: str, run_filter: str, runs: list[RunSummary], has_more: bool) -> None:
            super().__init__()
            self.job, self.run_filter, self.runs, self.has_more = job, run_filter, runs, has_more

    class RunFound(Message):
        def __init__(self, run_id: int, run: RunSummary | None) -> None:
            super().__init__()
            self.run_id, self.run = run_id, run

    class StepFound(Message):
        def __init__(self, term: str, found: tuple[int, str] | None) -> None:
            super().__init__()
            self.term = term
            self.found = found

    class StepsLoaded(Message):
        def __init__(self, view: RunView) -> None:
            super().__init__()
            self.view = view

    class SelectionLoaded(Message):
        def __init__(self, token: int, view: RunView, step: str | None, attempts: list[AttemptView],
                     engine_gone: str | None) -> None:
            super().__init__()
            self.token, self.view, self.step, self.attempts = token, view, step, attempts
            self.engine_gone = engine_gone

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.app_mode = mode
        self.run_tree = RunTree(id="tree")
        self.details = DetailsPane(id="details")
        self.log_pane = LogTail(id="log-pane")
        self.right = Vertical(id="right")
        """Details over log; its classes say which of them has focus (see `on_descendant_focus`)."""
        self.header = StatusHeader(self.app_mode, id="header")
        self.last_event_id: int | None = None
        self.status: EngineStatus | None = None
        self.counts: dict[str, int] = {}
        self.jobs: dict[str, JobSummary] = {}
        self.selected: NodeData = None
        self.selected_view: RunView | None = None
        self.selected_engine_gone: str | None = None
        """What to say of the selected run when it is running but its engine is gone (engine.recovery)."""
        self.selected_attempts: list[AttemptView] = []
        self.pinned_attempt: int | None = None
        self.search_term: str | None = None
        self._selection_token = 0
        self._polling = False
        self._start_requested = False
        self.quitting = False
        """Set by `quit`: no more ticks, polls or footer refreshes while the app shuts down."""
        self._focus_run: int | None = None
        self._focus_step: tuple[int, str] | None = None
        self._refind: tuple[str, int, str | None] | None = None
        self._log_focus_pending = False
        """`l` was pressed and the log has not taken the focus yet (see on_key)."""
        """(job, run id, step) selected when the filter changed: selected again once a filter shows it, unless
        the user moved off its job meanwhile."""
        """A step a search found in a run whose steps were not loaded yet: selected once they are."""
        self._preloaded: tuple[RunView, str | None, list[AttemptView]] | None = None
        """The run, step and attempts the console opens on, read at start (used by the first selection)."""
        self.pending_commands: dict[int, tuple[str, str]] = {}
        self.unanswered: set[str] = set()
        self._applicable: tuple[bool, ...] = ()
        """Which of MAIN_KEYS applied when the footer was last refreshed (see `refresh_keys`)."""

    def now(self) -> datetime:
        return fmt.utc_now(self.app.clock())  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield self.header
        with Horizontal(id="body"):
            yield self.run_tree
            with self.right:
                yield self.details
                yield self.log_pane
        yield Input(placeholder="search loaded jobs, runs and steps · enter finds · escape closes", id="tree-search")
        yield KeyFooter(show_command_palette=False)  # 80 columns then show every key; ? and the help list ctrl+p

    _ticked_second = 0
    _ticks = 0

    def on_mount(self) -> None:
        self.run_tree.focus()
        self.run_tree.now = self.now()
        self.header.set_state(now=self.now())
        self.load_start()
        self.ticker = self.set_interval(self.app.poll_interval_s, self.tick)  # type: ignore[attr-defined]

    def quit(self) -> None:
        """Leave the console: stop ticking and polling first, so nothing new starts while the app exits."""
        self.quitting = True
        self.ticker.stop()
        self.app.exit()

    # --- polling -------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance clocks and live durations, follow the log, and ask for new events."""
        if self.quitting:
            return
        now = self.now()
        self.header.set_state(now=now)
        # Live durations move once a second, not at every tick: each moved duration repaints its lines, and
        # a slow SSH link pays for every repainted line.
        second = int(now.timestamp())
        if second != self._ticked_second:
            self._ticked_second = second
            self.run_tree.tick(now)
            self.details.tick(now)
        # A growing log repaints its whole pane at each read (a terminal has no cheaper way to scroll a pane
        # beside another): read it every other tick, twice a second, which halves what following costs.
        self._ticks += 1
        if self._ticks % 2 == 0:
            self.log_pane.poll()
        self.poll_now()

    def poll_now(self) -> None:
        if self.last_event_id is None or self._polling or self.quitting:
            return
        self._polling = True
        self._poll(self.last_event_id, self.app.clock(), self.run_tree.loaded_runs,  # type: ignore[attr-defined]
                   list(self.pending_commands), dict(self.counts) if self.status is not None else None)

    def load_start(self) -> None:
        """Read what the first screen shows (once); the app asks before the screen is even mounted."""
        if not self._start_requested:
            self._start_requested = True
            self._load_start(self.app.clock())  # type: ignore[attr-defined]

    @work(thread=True, exclusive=True, group="start")
    def _load_start(self, now: float) -> None:
        start = data.closing_connection(lambda: data.load_start(now))
        self.post_message(self.Started(start))

    @work(thread=True, group="poll")
    def _poll(self, last_id: int, now: float, loaded: list[int], pending: list[int],
              counts: dict[str, int] | None) -> None:
        try:
            delta = data.closing_connection(lambda: data.poll(last_id, now, loaded, pending, counts=counts))
        except Exception as error:  # a transient read error must not kill the console; say it and go on
            # post_message, never call_from_thread: a worker blocked on a loop that is shutting down
            # keeps the process from exiting.
            self.post_message(self.Polled(data.Delta(last_id, EngineStatus("not responding"), self.counts),
                                          error=f"reading the database failed: {error}"))
            return
        self.post_message(self.Polled(delta))

    def on_main_screen_started(self, message: Started) -> None:
        start = message.start
        catalog, delta = start.catalog, start.delta
        self.last_event_id = delta.last_event_id
        self._apply_status(delta)
        self.jobs = {j.name: j for j in catalog.jobs}
        self.run_tree.set_catalog(catalog.jobs, catalog.last_runs, catalog.problems)
        # The first pages came with the catalogue: expanding a job finds its runs there, not in a worker.
        for name, (runs, more) in start.pages.items():
            self.run_tree.add_first_page(name, runs, more)
        focus = start.focus
        if focus is not None and focus.id in self.run_tree.runs:
            self.run_tree.set_steps(focus)
            self._preloaded = (focus, start.focus_step, start.focus_attempts)
            self.run_tree.select_run_step(focus.id, start.focus_step)
            node = self.run_tree.steps.get((focus.id, start.focus_step)) if start.focus_step else None
            if node is not None:
                # Shown now, so the first full screen is this frame's: the tree's cursor gets there a
                # frame or two later (after the tree lays out its new lines), and finds it shown.
                self.selected = node.data
                self._selection_token += 1
                self._apply_selection(*self._preloaded)
        elif focus is not None:
            self._focus_run = focus.id
        elif not catalog.jobs and not catalog.last_runs:
            self.details.show_empty(delta.status, self.app_mode)
        if catalog.problems:
            self.app.notify(f"{len(catalog.problems)} job file problem(s): the other jobs work; see the top of "
                            "the tree", severity="warning", timeout=8)
        first = next(iter(self.run_tree.root.children), None)
        if first is not None and focus is None:
            self.run_tree.move_cursor(first)
        self.app.first_screen_ready()  # type: ignore[attr-defined]
        self.call_after_refresh(self.app.start_up_done)  # type: ignore[attr-defined]

    def on_main_screen_polled(self, message: Polled) -> None:
        self._polling = False
        if self.quitting:
            return
        if message.error:
            self.app.notify(message.error, severity="error")
        delta = message.delta
        if self._preloaded is not None and self._preloaded[0].id in delta.runs:
            self._preloaded = None  # the run changed since start: the selection reads it afresh
        self.last_event_id = delta.last_event_id
        self._apply_status(delta)
        if delta.catalog is not None:
            self.jobs = {j.name: j for j in delta.catalog.jobs}
            self.run_tree.set_catalog(delta.catalog.jobs, delta.catalog.last_runs, delta.catalog.problems)
            self.call_after_refresh(self._follow_cursor)  # problem lines come and go under the cursor
        for run in delta.runs.values():
            self.run_tree.upsert_run(run)
        for view in delta.views.values():
            self.run_tree.set_steps(view)
        gone_changed = self.run_tree.set_abandoned(delta.abandoned) if delta.abandoned is not None else frozenset()
        for acked in delta.acked:
            self.command_acked(acked)
        selected_run = self._selected_run_id()
        if selected_run is not None and (selected_run in delta.runs or selected_run in gone_changed):
            self._reload_selection()
        elif delta.catalog is not None and isinstance(self.selected, JobNode):
            self._show_selection()
        if delta.runs or delta.views or delta.catalog is not None or delta.acked:
            self.refresh_keys()

    def refresh_keys(self) -> None:
        """Refresh the footer when the set of keys that apply to the selection changed.

        The footer removes and mounts every key on refresh_bindings, a layout pass that costs more
        than a frame under a log flood; moving between nodes where the same keys apply costs nothing.
        """
        applicable = tuple(self.why_not(action) is None for _, action, _ in MAIN_KEYS)
        if applicable != self._applicable:
            self._applicable = applicable
            self.refresh_bindings()

    def _apply_status(self, delta: data.Delta) -> None:
        self.status, self.counts = delta.status, delta.counts
        self.header.set_state(status=delta.status, counts=delta.counts, now=self.now())

    # --- lazy loading ------------------------------------------------------------------------------------

    @on(RunTree.RunsWanted)
    def _runs_wanted(self, message: RunTree.RunsWanted) -> None:
        self._load_runs(message.job, self.run_tree.run_filter, message.before_id)

    @work(thread=True, group="runs")
    def _load_runs(self, job: str, run_filter: str, before_id: int | None) -> None:
        runs, more = data.closing_connection(lambda: data.load_runs(job, run_filter, before_id))
        self.post_message(self.RunsLoaded(job, run_filter, runs, more))

    def on_main_screen_runs_loaded(self, message: RunsLoaded) -> None:
        if message.run_filter != self.run_tree.run_filter:
            return
        self.run_tree.add_runs_loaded(message.job)
        self.run_tree.add_runs(message.job, message.runs, message.has_more)
        if self._focus_run is not None and self._focus_run in self.run_tree.runs:
            self.run_tree.runs[self._focus_run].expand()
        if self._refind is not None and self._refind[0] == message.job and self._refind[1] in self.run_tree.runs:
            _, run_id, step = self._refind  # the new filter shows it: back on it
            self._refind = None
            if step is not None:
                self._focus_step = (run_id, step)
                self.run_tree.runs[run_id].expand()
            else:
                self.run_tree.select_run_step(run_id, None)
        self.call_after_refresh(self._follow_cursor)  # the new lines may have slid under the cursor

    @on(RunTree.StepsWanted)
    def _steps_wanted(self, message: RunTree.StepsWanted) -> None:
        self._load_steps(message.run_id)

    @work(thread=True, group="steps")
    def _load_steps(self, run_id: int) -> None:
        from engine import query
        view = data.closing_connection(lambda: query.get_run(run_id))
        self.post_message(self.StepsLoaded(view))

    def on_main_screen_steps_loaded(self, message: StepsLoaded) -> None:
        view = message.view
        self.run_tree.set_steps(view)
        if self._focus_step is not None and self._focus_step[0] == view.id:
            self.run_tree.select_run_step(*self._focus_step)
            self._focus_step = None
            return
        if self._focus_run == view.id:
            self._focus_run = None
            failed = next((s.name for s in view.steps if s.state == "failed"), None)
            self.run_tree.select_run_step(view.id, failed)

    # --- selection -----------------------------------------------------------------------------------------

    @on(RunTree.SelectionChanged)
    def _selection_changed(self, message: RunTree.SelectionChanged) -> None:
        if message.data is None and self.selected is not None:
            # The empty tree's first highlight, arriving after the first screen chose (and showed) its
            # step: keep that step selected, so a key pressed now acts on what the details show.
            return
        previous = self.selected
        self.selected = message.data
        if self._refind is not None and _node_key(message.data) != ("job", self._refind[0]):
            self._refind = None  # the user went elsewhere: a later filter change must not pull them back
        if _node_key(previous) != _node_key(message.data):
            self.pinned_attempt = None
            self.selected_attempts = []
            self.selected_view = None
            self.selected_engine_gone = None
        preloaded = self._preloaded
        if (preloaded is not None and isinstance(message.data, StepNode)
                and (message.data.run_id, message.data.step.name) == (preloaded[0].id, preloaded[1])):
            self._preloaded = None
            if _node_key(previous) != _node_key(message.data):  # else shown at start already
                self._selection_token += 1  # a read still under way for an earlier selection is void
                self._apply_selection(*preloaded)  # read at start a moment ago: no second read
        else:
            self._show_selection()
            self._reload_selection()
        self.refresh_keys()

    def _show_selection(self) -> None:
        """Show what is known now; the worker fills in fresh attempts and steps."""
        node, now = self.selected, self.now()
        if isinstance(node, JobNode):
            job = self.jobs.get(node.name, node.job)
            self.details.show_job(node.name, job, node.last_run, now, self.run_tree.catalog_known,
                                  self.run_tree.file_problem(job))
            self.log_pane.show(None, "select a step (or a run) to read its log")
        elif isinstance(node, RunNode):
            self.details.show_run(node.summary, self.selected_view or node.view, now, self.selected_engine_gone)
        elif isinstance(node, StepNode):
            run = self.run_tree.runs.get(node.run_id)
            summary = run.data.summary if run is not None and isinstance(run.data, RunNode) else None
            if summary is not None:
                self.details.show_step(summary, node.step, self.selected_attempts or None,
                                       self.selected_view, now, self.selected_engine_gone)
        elif isinstance(node, ProblemNode):
            self.details.show_problem(node.file, node.line, node.message)
            self.log_pane.show(None, "job file problems have no log")
        elif isinstance(node, MoreNode):
            self.details.show_message("more runs", "Press enter to load the next page of older runs.")
        elif isinstance(node, InfoNode):
            if node.text == "problems":
                self.details.show_message("job file problems", "These job files failed to load; the other jobs "
                                          "load and run. Select one to read the whole message.")
            elif not self.jobs:
                self.details.show_empty(self.status, self.app_mode)

    def _selected_run_id(self) -> int | None:
        node = self.selected
        if isinstance(node, RunNode):
            return node.summary.id
        if isinstance(node, StepNode):
            return node.run_id
        return None

    def _reload_selection(self, log_left: bool = False) -> None:
        """Read the selection afresh. `log_left`: the user just left the log (its focus is still moving)."""
        node = self.selected
        run_id = self._selected_run_id()
        self._selection_token += 1  # a read still under way for an earlier selection is void, even for a job's
        if run_id is None:
            return
        step = node.step.name if isinstance(node, StepNode) else None
        source = self.log_pane.source
        reading = self.log_pane.held if log_left else self.log_pane.reading
        if step is None and source is not None and source.run_id == run_id and reading:
            # A run's log shows the step that matters most, which moves as the run goes on; not while the
            # user reads it (scrolled, searched or in the log): the text would change under their eyes.
            step = source.step
        self._load_selection(self._selection_token, run_id, step)

    @work(thread=True, exclusive=True, group="selection")
    def _load_selection(self, token: int, run_id: int, step: str | None) -> None:
        from engine import query

        def read() -> tuple[RunView, str | None, list[AttemptView], str | None]:
            view = query.get_run(run_id)
            gone = None
            if view.state == "running":  # left so by a killed engine? it stays so until an engine starts
                from engine.recovery import engine_gone_note
                gone = engine_gone_note(run_id)
            name = step
            if name is None:  # a run: show the log of the step that matters most
                started = [s for s in view.steps if s.started_at is not None]
                name = next((s.name for s in view.steps if s.state == "failed"), None) or next(
                    (s.name for s in view.steps if s.state == "running"), None) or (
                    max(started, key=lambda s: s.started_at.timestamp() if s.started_at else 0.0).name
                    if started else None)
            return view, name, (query.attempts(run_id, name) if name else []), gone

        view, name, attempts, gone = data.closing_connection(read)
        if not get_current_worker().is_cancelled:
            self.post_message(self.SelectionLoaded(token, view, name, attempts, gone))

    def on_main_screen_selection_loaded(self, message: SelectionLoaded) -> None:
        if message.token != self._selection_token or message.view.id != self._selected_run_id():
            return
        self._apply_selection(message.view, message.step, message.attempts, message.engine_gone)

    def _apply_selection(self, view: RunView, step_name: str | None, attempts: list[AttemptView],
                         engine_gone: str | None = None) -> None:
        """Show fresh details, and the log of `step_name` (the selected step, or the run's step that matters)."""
        now = self.now()
        self.selected_view = view
        self.selected_engine_gone = engine_gone
        self.selected_attempts = attempts
        self.run_tree.set_steps(view)
        self.run_tree.upsert_run(view.run)
        node = self.selected
        if isinstance(node, StepNode):
            step = next((s for s in view.steps if s.name == node.step.name), node.step)
            self.details.show_step(view.run, step, attempts, view, now, engine_gone)
        elif isinstance(node, RunNode):
            self.details.show_run(view.run, view, now, engine_gone)
        if step_name is None:
            self.log_pane.show(None, "no step has run yet")
        elif not attempts:
            self.log_pane.show(None, f"step '{step_name}' has not started yet")
        else:
            numbers = [a.number for a in attempts]
            number = self.pinned_attempt if self.pinned_attempt in numbers else numbers[-1]
            self.log_pane.show(LogSource(view.id, step_name, tuple(attempts), number))
        self.refresh_keys()  # the fresh view can change what applies (retry of a run)

    # --- focus, search, log ----------------------------------------------------------------------------------

    def on_descendant_focus(self) -> None:
        # On the right column, not the screen: a class change restyles the node's whole subtree at
        # once, and the screen's holds the tree and every footer key (a long frame under a flood).
        self.right.set_class(self.log_pane.has_focus_within, "-log-focus")
        self.right.set_class(self.details.has_focus, "-details-focus")

    def action_focus_log(self) -> None:
        # A narrow console shows one pane of the right column while it has focus: show the log first,
        # or it cannot take the focus.
        self.right.set_class(False, "-details-focus")
        self.call_after_refresh(self.log_pane.log_widget.focus)

    def _end_log_focus_pending(self) -> None:
        self._log_focus_pending = False

    def action_cycle_focus(self, step: int = 1) -> None:
        """tab / shift+tab: tree → details → log, whichever of them a narrow console shows now."""
        panes = [self.run_tree, self.details, self.log_pane]
        here = next((i for i, pane in enumerate(panes) if pane.has_focus_within), 0)
        target = panes[(here + step) % len(panes)]
        if target is self.log_pane:
            self.action_focus_log()
        else:
            target.focus()

    @on(LogTail.Left)
    @on(DetailsPane.Left)
    def _pane_left(self) -> None:
        self.run_tree.focus()
        if isinstance(self.selected, RunNode) and not self.log_pane.held:
            self._reload_selection(log_left=True)  # a run's log goes back to the step that matters most now

    @on(LogTail.AttemptWanted)
    def _attempt_wanted(self) -> None:
        from tui.screens.attempts import AttemptScreen

        source = self.log_pane.source
        if source is None:
            return

        def chosen(number: int | None) -> None:
            if number is not None:
                self.pinned_attempt = number
                self.log_pane.show_attempt(number)

        self.app.push_screen(AttemptScreen(source.step, list(source.attempts), source.number, self.now()), chosen)

    def action_search_tree(self) -> None:
        search = self.query_one("#tree-search", Input)
        search.add_class("-open")
        search.value = self.search_term or ""
        search.focus()

    @on(Input.Submitted, "#tree-search")
    def _tree_search(self, event: Input.Submitted) -> None:
        event.input.remove_class("-open")
        self.run_tree.focus()
        self.search_term = event.value.strip() or None
        number = RUN_NUMBER.fullmatch(self.search_term or "")
        if number is not None:
            self._go_to_run(int(number.group(1)))
        elif self.search_term and not self._find(self.search_term):
            # Not loaded: look among the steps of the runs the tree holds but whose steps it never loaded.
            self._search_steps(self.search_term, sorted(self.run_tree.runs, reverse=True))
        self.refresh_keys()

    def _find(self, term: str, forward: bool = True) -> bool:
        found = self.run_tree.find(term, forward)
        if found is not None:
            number, count = found
            self.app.notify(f"/{term}: match {number} of {count} loaded" + (" (n / N: next / previous)"
                                                                             if count > 1 else ""))
        return found is not None

    def _go_to_run(self, run_id: int) -> None:
        """`/#N`: the run numbered N, loaded into the tree down to it if it is older than what the tree holds."""
        if run_id in self.run_tree.runs:
            self.run_tree.select_run_step(run_id, None)
            return
        self._find_run(run_id)

    @work(thread=True, group="search", exclusive=True)
    def _find_run(self, run_id: int) -> None:
        from engine import query
        from engine.errors import SteplineError

        def read() -> RunSummary | None:
            try:
                return query.run_summary(run_id)
            except SteplineError:
                return None

        self.post_message(self.RunFound(run_id, data.closing_connection(read)))

    def on_main_screen_run_found(self, message: RunFound) -> None:
        run, tree = message.run, self.run_tree
        if run is None:
            self.app.notify(f"there is no run {message.run_id} in this home", severity="warning")
            return
        if tree.run_filter != "all" and run.state not in data.FILTER_STATES[tree.run_filter]:
            self.app.notify(f"run {run.id} {run.state}: the tree shows {tree.run_filter} runs only (f: all runs)",
                            severity="warning")
            return
        job = tree.jobs.get(run.job)
        if job is None or not isinstance(job.data, JobNode):
            self.app.notify(f"run {run.id} is of job '{run.job}', which the tree does not show", severity="warning")
            return
        before = job.data.oldest_id if job.data.runs_requested else None
        job.data.runs_requested = True  # expanding it now must not load the first page again
        self._refind = (run.job, run.id, None)  # on_main_screen_runs_loaded selects it
        self._load_runs_down_to(run.job, tree.run_filter, before, run.id)

    @work(thread=True, group="runs")
    def _load_runs_down_to(self, job: str, run_filter: str, before_id: int | None, run_id: int) -> None:
        found = data.closing_connection(lambda: data.load_runs_down_to(job, run_filter, before_id, run_id))
        if found is None:
            self.app.call_from_thread(self.app.notify, f"run {run_id} is more than {data.GO_TO_RUN_MAX} runs back in "
                                      f"'{job}': read it with `stepline show {run_id}`", severity="warning")
            return
        runs, more = found
        self.post_message(self.RunsLoaded(job, run_filter, runs, more))

    @work(thread=True, group="search", exclusive=True)
    def _search_steps(self, term: str, run_ids: list[int]) -> None:
        from engine import query
        found = data.closing_connection(lambda: query.find_step(run_ids, term))
        self.post_message(self.StepFound(term, found))

    def on_main_screen_step_found(self, message: StepFound) -> None:
        if message.term != self.search_term:
            return  # a newer search replaced this one
        if message.found is None:
            self.app.notify(f"'{message.term}' matches no job, run or step loaded (collapsed jobs load their "
                            "runs when expanded)", severity="warning")
            return
        run_id, step = message.found
        node = self.run_tree.runs.get(run_id)
        if node is None:
            return
        self._focus_step = (run_id, step)
        self.run_tree.select_run_step(run_id, None)  # expands the way to the run
        node.expand()  # loads its steps; on_main_screen_steps_loaded selects the match

    @on(Input.Blurred, "#tree-search")
    def _tree_search_blurred(self, event: Input.Blurred) -> None:
        event.input.remove_class("-open")

    def on_key(self, event) -> None:  # type: ignore[no-untyped-def]
        search = self.query_one("#tree-search", Input)
        if event.key == "escape" and search.has_focus:
            event.stop()
            search.remove_class("-open")
            self.run_tree.focus()
        elif event.key == "l" and not isinstance(self.app.focused, Input) and not self.log_pane.has_focus_within:
            # Keys reach the widgets before their binding runs: mark it now, for the keys already read with
            # it; by the next refresh the log has the focus (or `l` did not apply), and keys go their way.
            self._log_focus_pending = True
            self.call_after_refresh(self._end_log_focus_pending)
        elif self._log_focus_pending and event.key in LOG_ACTIONS:
            # `l a` typed in one breath: the log takes the focus after the next refresh, and the `a` would
            # reach the tree, which has no such key, and be lost. The log does it once it has the focus.
            event.stop()
            event.prevent_default()
            self.call_after_refresh(partial(self.log_pane.run_action, LOG_ACTIONS[event.key]))

    def action_search_next(self, forward: bool = True) -> None:
        if self.search_term and not self._find(self.search_term, forward):
            self.app.notify(f"'{self.search_term}' matches nothing loaded now", severity="warning")

    def action_search_previous(self) -> None:
        self.action_search_next(forward=False)

    def action_cycle_filter(self) -> None:
        filters = data.FILTERS
        self.run_tree.run_filter = filters[(filters.index(self.run_tree.run_filter) + 1) % len(filters)]
        self.header.set_state(run_filter=self.run_tree.run_filter)
        selected = self.selected
        if isinstance(selected, RunNode):
            self._refind = (selected.summary.job, selected.summary.id, None)
        elif isinstance(selected, StepNode):
            self._refind = (selected.job, selected.run_id, selected.step.name)
        self.run_tree.clear_runs()
        self.app.notify(f"showing {self.run_tree.run_filter} runs" if self.run_tree.run_filter != "all" else "showing all runs")
        self.call_after_refresh(self._follow_cursor)

    def _follow_cursor(self) -> None:
        """After the tree changed under the cursor without announcing a move (a filter), show what it is on."""
        cursor = self.run_tree.cursor_line_node()
        data = cursor.data if cursor is not None else None
        if data is not None and _node_key(data) != _node_key(self.selected):
            self._selection_changed(RunTree.SelectionChanged(data))
        self.refresh_keys()

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen
        self.app.push_screen(HelpScreen())


LOG_ACTIONS = {binding.key: binding.action for binding in LogTail.BINDINGS if isinstance(binding, Binding)}
"""The log's keys and what they do, for keys typed before the log has the focus."""

RUN_NUMBER = re.compile(r"#(\d+)")
"""A tree search for "#1234" goes to that run (the tree labels runs so)."""


def _node_key(node: NodeData) -> tuple[object, ...]:
    """What a tree line stands for, whichever object holds it."""
    if isinstance(node, JobNode):
        return ("job", node.name)
    if isinstance(node, RunNode):
        return ("run", node.summary.id)
    if isinstance(node, StepNode):
        return ("step", node.run_id, node.step.name)
    if isinstance(node, ProblemNode):
        return ("problem", node.file, node.line, node.message)
    return (type(node).__name__, id(node))
