"""The right-top pane: everything about the selected job, run, step or job-file problem.

State with its reason, trigger, params, times, attempts with exit codes, CPU and memory,
the traceback and the step's neighbours. Scrollable (focus it with tab) for long tracebacks.
Its parent hands it plain values; it renders them and reads nothing itself.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from engine.query import AttemptView, EngineStatus, JobSummary, RunSummary, RunView, StepView
from tui import format as fmt


def _fields(rows: list[tuple[str, RenderableType | str]]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    return table


class DetailsPane(VerticalScroll):
    DEFAULT_CSS = """
    DetailsPane { border: round $primary-darken-2; border-title-align: left; padding: 0 1; }
    DetailsPane:focus { border: round $accent; }
    DetailsPane > Static { width: 100%; }
    """
    can_focus = True

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
        self._show("job file problem", _fields([("file", f"{file}:{line}")]), Text(""),
                   Text(message, style="red"), Text(""),
                   Text("The other job files still load. Fix this one; `stepline check` re-checks every file, "
                        "and the engine reloads jobs when it restarts.", style="italic"))

    def show_job(self, name: str, job: JobSummary | None, last_run: RunSummary | None, now: datetime) -> None:
        if job is None:
            self._show(f"job {name}", Text(f"Job '{name}' has runs but is not in the loaded catalogue "
                                           "(its file was removed or failed to load)."))
            return
        schedule = job.schedule or (f"every {job.every}" if job.every else "none (runs only when triggered)")
        rows: list[tuple[str, RenderableType | str]] = [
            ("file", job.file), ("schedule", schedule + (f"  ({job.timezone})" if job.timezone else ""))]
        if job.schedule or job.every:
            rows.append(("paused", Text("yes (p resumes)", style="bold magenta") if job.paused else "no"))
            rows.append(("next fire", fmt.stamp_text(job.next_fire_at) if not job.paused else "— (paused)"))
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

    def show_run(self, run: RunSummary, view: RunView | None, now: datetime, ticking: bool = False) -> None:
        state = fmt.glyph(run.state)
        state.append(f" {run.state}", style=fmt.COLORS.get(run.state, ""))
        if run.reason:
            state.append(f" — {run.reason}")
        live = run.state == "running"
        rows: list[tuple[str, RenderableType | str]] = [
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
                steps.append_text(fmt.glyph(step.state, step.waiting_for))
                steps.append(f" {step.name}", style="bold")
                steps.append(f"  {fmt.step_reason(step)}", style="red" if step.state == "failed" else "bright_black")
            parts += [Text(""), _fields([("steps", steps)])]
            failed = [s for s in view.steps if s.state == "failed" and s.reason and s.reason.detail]
            if failed:
                parts += [Text(""), Text(f"{failed[0].name}: {failed[0].reason.summary}", style="bold red"),  # type: ignore[union-attr]
                          Text(failed[0].reason.detail)]  # type: ignore[union-attr]
        self._show(f"run #{run.id} of {run.job}", *parts, scroll_home=not ticking)
        if live:
            self._live = partial(self.show_run, run, view, ticking=True)

    def show_step(self, run: RunSummary, step: StepView, attempts: list[AttemptView] | None,
                  view: RunView | None, now: datetime, ticking: bool = False) -> None:
        state = fmt.glyph(step.state, step.waiting_for)
        state.append(f" {step.state}", style=fmt.COLORS.get(fmt.visual_state(step.state, step.waiting_for), ""))
        reason = fmt.step_reason(step)
        if reason != step.state:
            state.append(f" — {reason}")
        live = step.state == "running"
        rows: list[tuple[str, RenderableType | str]] = [
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
                lines.append_text(fmt.attempt_line(attempt, len(attempts), now))
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
            self._live = partial(self.show_step, run, step, attempts, view, ticking=True)


def _lines(parts: tuple[RenderableType, ...]) -> tuple[tuple[str, ...], ...] | None:
    """The plain text of each part (each cell, for field tables), or None for other renderables."""
    shown: list[tuple[str, ...]] = []
    for part in parts:
        if isinstance(part, Text):
            shown.append((part.plain,))
        elif isinstance(part, Table):
            shown.append(tuple(cell.plain if isinstance(cell, Text) else str(cell)
                               for column in part.columns for cell in column.cells))
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
