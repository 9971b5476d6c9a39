"""The right-top pane: everything about the selected job, run, step or job-file problem.

State with its reason, trigger, params, times, attempts with exit codes, CPU and memory,
the traceback and the step's neighbours. Scrollable (focus it with tab) for long tracebacks.
Its parent hands it plain values; it renders them and reads nothing itself.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from engine.humanize import display_path
from engine.query import AttemptView, EngineStatus, JobSummary, RunSummary, RunView, StepView
from tui import format as fmt


def _fields(rows: list[tuple[str, Text | str]]) -> FieldGrid:
    return FieldGrid(rows)


_NULL = Style.null()
_BOLD = Style(bold=True)


class FieldGrid:
    """Name and value rows, drawn exactly as `Table.grid(padding=(0, 1))` with a bold name column that
    never wraps and a value column that folds draws them, at a fraction of the cost.

    The pane is redrawn on every move in the tree, and Textual renders it twice (its height, then
    its lines): the table measured every cell and wrapped each in padding first, 10 ms a render for
    a step. Here widths come from the plain text; cells render with the same Rich calls the table
    makes, so the output is the same segment for segment (tests/tui/test_details.py holds it to
    that). A case the shortcut does not cover (names as wide as the pane) is drawn by the table.
    """

    def __init__(self, rows: list[tuple[str, Text | str]]) -> None:
        self.rows = rows

    def table(self) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for name, value in self.rows:
            table.add_row(name, value)
        return table

    def cells(self) -> tuple[str, ...]:
        """The plain text of every cell, column by column (as a table lists them)."""
        return (tuple(name for name, _ in self.rows)
                + tuple(value.plain if isinstance(value, Text) else value for _, value in self.rows))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        max_width = options.max_width
        rows = [(_as_text(console, options, name), _as_text(console, options, value)) for name, value in self.rows]
        if not rows or max_width < 3 or any("\t" in n.plain or "\t" in v.plain for n, v in rows):
            yield from self.table().__rich_console__(console, options)
            return
        # Column widths as the table finds them: the widest line (+1 for the name's padding, at least 1).
        name_width = max(_widest(name) + 1 for name, _ in rows)
        value_width = max(_widest(value) for _, value in rows) or 1
        if name_width >= max_width:
            yield from self.table().__rich_console__(console, options)
            return
        value_width = min(value_width, max_width - name_width)  # the table shrinks the wrapping column
        render_options = options.update(width=name_width + value_width, highlight=False, height=None)
        name_options = render_options.update(width=name_width, justify="left", no_wrap=True, overflow="ellipsis",
                                             height=None, highlight=False)
        value_options = render_options.update(width=value_width, justify="left", no_wrap=False, overflow="fold",
                                              height=None, highlight=False)
        new_line = Segment.line()
        for name, value in rows:
            left = _cell_lines(console, name, name_options, 1, _BOLD)
            right = _cell_lines(console, value, value_options, 0, _NULL)
            height = max(len(left), len(right))
            left += [[Segment(" " * name_width, _BOLD)]] * (height - len(left))
            right += [[Segment(" " * value_width, _NULL)]] * (height - len(right))
            for left_line, right_line in zip(left, right):
                yield from left_line
                yield from right_line
                yield new_line


def _as_text(console: Console, options: ConsoleOptions, value: Text | str) -> Text:
    # A str cell goes through the console as the table's would (markup and emoji codes included).
    return console.render_str(value, markup=options.markup, highlight=False) if isinstance(value, str) else value


def _widest(text: Text) -> int:
    lines = text.plain.splitlines()
    return max(map(cell_len, lines)) if lines else 0


def _cell_lines(console: Console, text: Text, options: ConsoleOptions, pad_right: int,
                style: Style) -> list[list[Segment]]:
    """A cell's lines as the table draws them: its padding, then the column's style under each segment."""
    width = options.max_width
    lines = console.render_lines(text, options.update_width(width - pad_right), style=_NULL, pad=True)
    padding = [Segment(" " * pad_right, _NULL)] if pad_right else []
    if not style:
        return [line + padding for line in lines]
    return [list(Segment.apply_style(line + padding, style)) for line in lines]


class DetailsPane(VerticalScroll):
    DEFAULT_CSS = """
    DetailsPane { border: round $primary-darken-2; border-title-align: left; padding: 0 1; }
    DetailsPane:focus { border: round $accent; }
    DetailsPane > Static { width: 100%; }
    """
    can_focus = True
    BINDINGS = [Binding("escape", "leave", "Back to tree", show=False)]

    class Left(Message):
        """The user left the details (escape), as from the log."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "details"
        self._body = Static("", id="details-body")
        self.shown: RenderableType = Group()
        self._live: Callable[[datetime], None] | None = None
        self._lines: tuple[tuple[str, ...], ...] | None = None
        """The plain lines of each part shown, when known (see `_lines`)."""
        """Re-renders what is shown at a new time, while it runs (see `tick`)."""

    def compose(self):  # type: ignore[no-untyped-def]
        yield self._body

    def action_leave(self) -> None:
        self.post_message(self.Left())

    def tick(self, now: datetime) -> None:
        """Advance the duration of a running run or step from the clock (no I/O, no scroll jump)."""
        if self._live is not None:
            self._live(now)

    def _show(self, title: str, *parts: RenderableType, scroll_home: bool = True) -> None:
        if scroll_home:
            self._live = None
        if title != self.border_title:  # setting a title repaints the pane, even the same title
            self.border_title = title
        lines = _lines(parts)
        if not scroll_home and lines is not None and lines == self._lines:
            return  # a tick that changed nothing on screen
        # A layout pass measures every widget again (a frame's worth under a log flood): a tick only
        # changes times, so when every line keeps its length (12.3s -> 12.4s) the height stays too.
        same_shape = (not scroll_home and lines is not None and self._lines is not None
                      and _shape(lines) == _shape(self._lines))
        self._lines = lines
        self.shown = Group(*parts)
        self._body.update(self.shown, layout=not same_shape)
        if scroll_home:
            self.scroll_home(animate=False)

    # --- what can be shown ------------------------------------------------------------------------------------

    def show_empty(self, status: EngineStatus | None, mode: str, jobs_dir_hint: str = "./jobs") -> None:
        lines = Text()
        lines.append("Nothing has run yet.\n\n", style="bold")
        if status is not None and status.state != "running" and mode == "attached":
            lines.append("No engine is running on this home. Start one with `stepline daemon` (or `stepline up`),\n"
                         "then this console shows its jobs and runs.\n")
        else:
            lines.append(f"Put job files in the jobs folder (--jobs DIR, default {jobs_dir_hint}); the engine loads\n"
                         "them at start. Then select a job and press R to run it now, or t to run it with params.\n")
        lines.append("\n? lists every key.", style="italic")
        self._show("welcome", lines)

    def show_message(self, title: str, text: str) -> None:
        self._show(title, Text(text))

    def show_problem(self, file: str, line: int, message: str) -> None:
        shown = display_path(file)
        self._show("job file problem", _fields([("file", f"{shown}:{line}" if line else shown)]), Text(""),
                   Text(message, style="red"), Text(""),
                   Text("The other job files still load. Fix this one; `stepline check` re-checks every file, "
                        "and a running engine reloads the file as soon as it is saved.", style="italic"))

    def show_job(self, name: str, job: JobSummary | None, last_run: RunSummary | None, now: datetime,
                 catalog_known: bool = True, file_problem: tuple[str, int, str] | None = None) -> None:
        """`catalog_known`: an engine has published the home's jobs (`stepline run` alone does not).
        `file_problem`: (file, line, message) when the job's file is broken now."""
        if job is None and not catalog_known:
            self._show(f"job {name}", Text(f"No engine has loaded this home's job files yet, so job '{name}' is known "
                                           "by its runs only. Start one (`stepline daemon`, or quit and run "
                                           "`stepline up`) to see its steps and schedule and to trigger it."))
            return
        if job is None:
            self._show(f"job {name}", Text(f"Job '{name}' has runs but is not in the loaded catalogue "
                                           "(its file was removed or failed to load)."))
            return
        schedule = job.schedule or (f"every {job.every}" if job.every else "none (runs only when triggered)")
        rows: list[tuple[str, Text | str]] = [("file", display_path(job.file))]
        if file_problem is not None:
            file, line, message = file_problem
            where = f"{display_path(file)}:{line}" if line else display_path(file)
            rows.append(("⚠ broken", Text(f"{where} {message}. Runs and schedules use the file's last good "
                                          "version until it is fixed.", style="yellow")))
        rows.append(("schedule", schedule + (f"  ({job.timezone})" if job.timezone else "")))
        if job.schedule or job.every:
            rows.append(("paused", Text("yes (p resumes)", style="bold magenta") if job.paused else "no"))
            rows.append(("next fire", fmt.stamp_in_zone_text(job.next_fire_at, job.timezone) if not job.paused
                         else "— (paused)"))
            rows.append(("last fire", fmt.stamp_text(job.last_fire_at)))
        if job.plan.params:
            rows.append(("params", ", ".join(f"{k}={v}" for k, v in job.plan.params.items())))
        if last_run is not None:
            last = fmt.glyph(last_run.state)
            last.append(f" #{last_run.id} {last_run.state} {fmt.stamp_text(last_run.created_at)}")
            rows.append(("last run", last))
        steps = Text()
        for index, step in enumerate(job.plan.steps):
            if index:
                steps.append("\n")
            steps.append(step.name, style="bold")
            if step.upstream:
                steps.append(f" ← {', '.join(step.upstream)}", style="bright_black")
        rows.append(("steps", steps))
        parts: list[RenderableType] = [_fields(rows)]
        if job.description:
            parts.insert(0, Text(job.description + "\n", style="italic"))
        self._show(f"job {name}", *parts)

    def show_run(self, run: RunSummary, view: RunView | None, now: datetime, engine_gone: str | None = None,
                 ticking: bool = False) -> None:
        """`engine_gone`: what to say when the run is running but its engine is gone (engine.recovery)."""
        gone = run.state == "running" and bool(engine_gone)
        state = fmt.glyph(run.state, engine_gone=gone)
        state.append(f" {run.state}", style=fmt.COLORS.get(run.state, ""))
        if gone:
            state.append(f" — {engine_gone}", style="yellow")
        elif run.reason:
            state.append(f" — {run.reason}")
        live = run.state == "running" and not gone  # nothing moves: no ticking duration
        rows: list[tuple[str, Text | str]] = [
            ("state", state), ("trigger", run.trigger),
            ("params", ", ".join(f"{k}={v}" for k, v in run.params.items()) or "none")]
        if run.scheduled_for is not None:
            rows.append(("scheduled", fmt.stamp_text(run.scheduled_for)))
        rows += [("created", fmt.stamp_text(run.created_at)), ("started", fmt.stamp_text(run.started_at)),
                 ("ended", fmt.stamp_text(run.ended_at)),
                 ("duration", fmt.duration_text(run.duration_s(now if live else None), live=live) or "—")]
        parts: list[RenderableType] = [_fields(rows)]
        if view is not None:
            steps = Text()
            for index, step in enumerate(view.steps):
                if index:
                    steps.append("\n")
                steps.append_text(fmt.glyph(step.state, step.waiting_for, gone))
                steps.append(f" {step.name}", style="bold")
                steps.append(f"  {_cut(fmt.step_reason(step))}",
                             style="red" if step.state == "failed" else "bright_black")
            parts += [Text(""), _fields([("steps", steps)])]
            failed = [s for s in view.steps if s.state == "failed" and s.reason and s.reason.detail]
            if failed:
                parts += [Text(""), Text(f"{failed[0].name}: {failed[0].reason.summary}", style="bold red"),  # type: ignore[union-attr]
                          Text(failed[0].reason.detail)]  # type: ignore[union-attr]
        self._show(f"run #{run.id} of {run.job}", *parts, scroll_home=not ticking)
        if live:
            self._live = partial(self.show_run, run, view, engine_gone=engine_gone, ticking=True)

    def show_step(self, run: RunSummary, step: StepView, attempts: list[AttemptView] | None,
                  view: RunView | None, now: datetime, engine_gone: str | None = None, ticking: bool = False) -> None:
        gone = step.state == "running" and run.state == "running" and bool(engine_gone)
        state = fmt.glyph(step.state, step.waiting_for, gone)
        state.append(f" {step.state}", style=fmt.COLORS.get(fmt.drawn_state(step.state, step.waiting_for), ""))
        reason = fmt.step_reason(step)
        if gone:
            state.append(f" — {engine_gone}", style="yellow")
        elif reason != step.state:
            state.append(f" — {_cut(reason)}")  # whole below, with the detail
        live = step.state == "running" and not gone
        rows: list[tuple[str, Text | str]] = [
            ("state", state), ("run", f"#{run.id} of {run.job} ({run.state}, {run.trigger})"),
            ("kind", step.kind),
            ("started", fmt.stamp_text(step.started_at)), ("ended", fmt.stamp_text(step.ended_at)),
            ("duration", fmt.duration_text(step.duration_s(now if live else None), live=live) or "—")]
        if run.params:
            rows.insert(2, ("params", ", ".join(f"{k}={v}" for k, v in run.params.items())))
        if attempts:
            lines = Text()
            for index, attempt in enumerate(attempts):
                if index:
                    lines.append("\n")
                lines.append_text(fmt.attempt_line(attempt, len(attempts), now, abandoned=gone))
            rows.append(("attempts", lines))
        elif attempts is not None:
            rows.append(("attempts", "none yet"))
        if view is not None:
            rows.append(("upstream", _neighbours(view, step.upstream)))
            rows.append(("downstream", _neighbours(view, step.downstream)))
        if step.output_preview:
            rows.append(("output", step.output_preview))
        parts: list[RenderableType] = [_fields(rows)]
        if step.reason is not None and step.reason.detail:
            from tui.widgets.log_tail import local_stamp
            detail = "\n".join(local_stamp(line) for line in step.reason.detail.splitlines())
            parts += [Text(""), Text(step.reason.summary, style="bold red"), Text(detail)]
        self._show(f"step {step.name} · run #{run.id}", *parts, scroll_home=not ticking)
        if live:
            self._live = partial(self.show_step, run, step, attempts, view, engine_gone=engine_gone, ticking=True)


REASON_IN_ROW = 120
"""Characters of a failure reason in a field row: a 500-character exception message pushed every other
field out of the pane. The whole reason follows the fields, over its traceback."""


def _cut(text: str) -> str:
    return text if len(text) <= REASON_IN_ROW else text[:REASON_IN_ROW - 1] + "…"


def _lines(parts: tuple[RenderableType, ...]) -> tuple[tuple[str, ...], ...] | None:
    """The plain text of each part (each cell, for field tables), or None for other renderables."""
    shown: list[tuple[str, ...]] = []
    for part in parts:
        if isinstance(part, Text):
            shown.append((part.plain,))
        elif isinstance(part, FieldGrid):
            shown.append(part.cells())
        else:
            return None
    return tuple(shown)


def _shape(lines: tuple[tuple[str, ...], ...]) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """The length of every line of every cell (a tick that keeps them keeps the height)."""
    return tuple(tuple(tuple(map(len, text.split("\n"))) for text in part) for part in lines)


def _neighbours(view: RunView, names: tuple[str, ...]) -> Text:
    if not names:
        return Text("none", style="bright_black")
    text = Text()
    for index, name in enumerate(names):
        if index:
            text.append("  ")
        try:
            step = view.step(name)
        except KeyError:
            text.append(name)
            continue
        text.append_text(fmt.glyph(step.state, step.waiting_for))
        text.append(f" {name}")
    return text
