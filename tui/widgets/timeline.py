"""A run as a Gantt chart: one row per step on a shared time axis.

Each row shows the step's attempts as segments (a failed attempt ends in ✗), the time
it waited before its first attempt or between retries, and its duration. Every state
has its own fill character as well as its colour, so the chart reads without colour.
The layout is a pure function of the run, its attempts, `now` and the width: the axis
scales to the width, long names lose their middle, and many steps scroll under a fixed
axis. Fetching the run and its attempts is the caller's job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from engine.humanize import duration
from engine.query import AttemptView, RunView, StepView
from engine.states import COLORS, GLYPHS
from tui.widgets.dag_graph import Legend, run_title, shorten, step_drawn_state
from tui.live_run import LIVE_STATES, LiveRunScreen
from tui.widgets.footer import KeyFooter

FILLS = {"succeeded": "█", "failed": "▓", "running": "▒", "cancelled": "╳", "waiting": "░"}
"""Fill character of an attempt segment by attempt state; "waiting" fills the gaps."""
FAILED_END = "✗"
"""The last cell of a failed attempt, so a retry reads as "▓▓✗░░████"."""
FILL_COLORS = {"succeeded": "green", "failed": "red", "running": "yellow", "cancelled": "bright_black",
               "waiting": "cyan"}
TIMELINE_LEGEND = (("█", "succeeded"), ("▓✗", "failed attempt"), ("▒", "running"), ("░", "waiting"),
                   ("╳", "cancelled"))
NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MIN_TICK_CELLS = 9
"""Columns between axis ticks, enough for a label like "+10m30s"."""
DURATION_WIDTH = 6
MAX_NAME = 20


def duration_text(seconds: float) -> str:
    """As everywhere in stepline: 850ms, 12.3s, 4m05s, 2h03m (at most 5 characters)."""
    return duration(seconds)


def offset_text(seconds: int) -> str:
    """An axis label relative to the run's start: "+0s", "+30s", "+1m", "+1m30s", "+2h"."""
    if seconds < 60:
        return f"+{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"+{minutes}m" + (f"{secs:02d}s" if secs else "")
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}h" + (f"{minutes:02d}m" if minutes else "")


@dataclass(frozen=True, slots=True)
class TimelineText:
    axis: list[Text]
    """The header lines: tick labels, then tick marks."""
    rows: list[Text]
    """One line per step, in DAG order."""


@dataclass(frozen=True, slots=True)
class _Scale:
    start: datetime
    span_s: float
    cells: int

    def position(self, at: datetime) -> float:
        return (at - self.start).total_seconds() / self.span_s * self.cells

    def cell_range(self, start: datetime, end: datetime) -> range:
        """The cells a segment covers; at least one, so a 0.1s attempt still shows."""
        first = min(self.cells - 1, max(0, int(self.position(start))))
        last = min(self.cells - 1, max(first, math.ceil(self.position(end)) - 1))
        return range(first, last + 1)


def _end_of(step: StepView, tries: list[AttemptView], now: datetime) -> datetime | None:
    """When the step's bar ends: its end, or now while it is still going."""
    if step.state in ("running", "waiting"):
        return now
    if step.ended_at is not None:
        return step.ended_at
    ends = [a.ended_at for a in tries if a.ended_at is not None]
    return max(ends) if ends else None


def _first_start(step: StepView, tries: list[AttemptView]) -> datetime | None:
    # StepView.started_at moves to the latest attempt; the bar starts at the first one.
    starts = [a.started_at for a in tries if a.started_at is not None]
    return min(starts) if starts else step.started_at


def _ready_at(run: RunView, step: StepView) -> datetime | None:
    """When the step could have started: its upstream steps all ended (or the run started)."""
    if not step.upstream:
        return run.run.started_at
    by_name = {s.name: s for s in run.steps}
    ends = [by_name[u].ended_at for u in step.upstream if u in by_name]
    if not ends or any(e is None for e in ends):
        return None
    return max(e for e in ends if e is not None)


def layout_timeline(run: RunView, attempts: dict[str, list[AttemptView]], now: datetime,
                    width: int) -> TimelineText:
    """The chart as text lines `width` cells wide (rows may be shorter)."""
    names = [s.name for s in run.steps]
    name_width = max(6, min(MAX_NAME, width // 4, max((len(n) for n in names), default=0)))
    bar_left = 2 + name_width + 1
    cells = max(10, width - bar_left - 1 - DURATION_WIDTH)

    starts = [t for s in run.steps for t in [_first_start(s, attempts.get(s.name, []))] if t is not None]
    start = run.run.started_at or (min(starts) if starts else None) or run.run.created_at
    ends = [t for s in run.steps for t in [_end_of(s, attempts.get(s.name, []), now)] if t is not None]
    if run.state in ("running", "queued"):
        end = max([now, *ends])
    else:
        end = max([run.run.ended_at or start, *ends])
    span_s = max(1.0, (end - start).total_seconds())
    scale = _Scale(start, span_s, cells)

    tick_s = next((s for s in NICE_STEPS_S if s / span_s * cells >= MIN_TICK_CELLS), NICE_STEPS_S[-1])
    ticks = [(int(k * tick_s / span_s * cells), k * tick_s) for k in range(int(span_s // tick_s) + 1)]
    ticks = [(min(col, cells - 1), offset) for col, offset in ticks]
    labels = Text("  " + "step".ljust(name_width) + " ", style="bold", no_wrap=True)
    label_line = [" "] * cells
    for col, offset in ticks:
        label = offset_text(offset)
        if col + len(label) <= cells and all(c == " " for c in label_line[max(0, col - 1): col + len(label)]):
            label_line[col: col + len(label)] = list(label)
    labels.append("".join(label_line), style="")
    labels.append(" " + "took".rjust(DURATION_WIDTH), style="bold")
    marks = Text(" " * bar_left, no_wrap=True)
    mark_line = ["─"] * cells
    for col, _ in ticks:
        mark_line[col] = "┬"
    marks.append("".join(mark_line), style="bright_black")
    tick_cols = {col for col, _ in ticks}

    rows = [_row(run, step, attempts.get(step.name, []), now, scale, name_width, tick_cols) for step in run.steps]
    return TimelineText(axis=[labels, marks], rows=rows)


def _row(run: RunView, step: StepView, tries: list[AttemptView], now: datetime, scale: _Scale,
         name_width: int, tick_cols: set[int]) -> Text:
    state = step_drawn_state(step)
    style = COLORS.get(state, "")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(GLYPHS.get(state, "?"), style=style)
    text.append(" ")
    text.append(shorten(step.name, name_width).ljust(name_width), style=style)
    text.append(" ")

    bar: list[tuple[str, str]] = [("·" if col in tick_cols else " ", "bright_black") for col in range(scale.cells)]

    def paint(start: datetime, end: datetime, fill: str) -> None:
        for col in scale.cell_range(start, end):
            bar[col] = (FILLS[fill], FILL_COLORS[fill])

    ready = _ready_at(run, step)
    first = _first_start(step, tries)
    end = _end_of(step, tries, now)
    timed = [a for a in tries if a.started_at is not None]
    if ready is not None and first is not None and scale.cell_range(ready, first).start < int(scale.position(first)):
        paint(ready, first, "waiting")  # waited for a free slot or pool after its upstream ended
    for failures, (before, after) in enumerate(zip(timed, timed[1:]), start=1):
        if before.ended_at is not None and after.started_at is not None and after.started_at > before.ended_at:
            if _waited_for_retry(run, step, failures, (after.started_at - before.ended_at).total_seconds()):
                paint(before.ended_at, after.started_at, "waiting")  # the retry delay
            # else a retry asked for by hand, after the run had ended: nothing ran or waited meanwhile
    if timed and step.state == "waiting" and timed[-1].ended_at is not None:
        paint(timed[-1].ended_at, now, "waiting")  # waiting for the next retry now
    if not timed and step.state == "waiting" and ready is not None:
        paint(ready, now, "waiting")  # upstream done, waiting for a slot or pool
    failed_ends = []
    for attempt in timed:
        assert attempt.started_at is not None
        fill = attempt.state if attempt.state in FILLS else "failed"
        paint(attempt.started_at, attempt.ended_at or now, fill)
        if attempt.state == "failed":
            failed_ends.append(scale.cell_range(attempt.started_at, attempt.ended_at or now)[-1])
    for col in failed_ends:  # after all fills, so a quick retry cannot hide a failure
        bar[col] = (FAILED_END, "bold red")

    if not timed and not (step.state == "waiting" and ready is not None):
        note = {"waiting": f"{GLYPHS['waiting']} waiting for {step.waiting_for or 'upstream'}",
                "upstream_failed": f"{GLYPHS['upstream_failed']} upstream failed"}.get(
            step.state, f"{GLYPHS.get(state, '?')} {step.state.replace('_', ' ')}")
        at = step.ended_at or ready or _upstream_end(run, step)
        col = int(scale.position(at)) if at is not None else 0
        col = max(0, min(col, scale.cells - len(note)))
        for i, char in enumerate(note[: scale.cells]):
            bar[col + i] = (char, "italic bright_black")
        if col + len(note) < scale.cells:
            bar[col + len(note)] = (" ", "")  # keep a tick dot from running into the note

    for char, char_style in bar:
        text.append(char, style=char_style)
    took = "" if first is None or end is None else duration_text(max(0.0, (end - first).total_seconds()))
    text.append(" " + took.rjust(DURATION_WIDTH), style="yellow" if step.state == "running" else "")
    return text


RETRY_SLACK_S = 5.0
"""Time a retry may start after its delay ran out (the engine's turn, a free slot)."""


def _waited_for_retry(run: RunView, step: StepView, failures: int, gap_s: float) -> bool:
    """Whether a gap between two attempts was an automatic retry's delay: no longer than the step's delay
    after that many failures could be (backoff, jitter and cap included). A longer gap is a retry asked
    for by hand after the run ended, which the chart must not draw as waiting."""
    try:
        plan = run.plan.step(step.name)
    except KeyError:
        return True
    delay = plan.retry_delay_s * plan.backoff ** min(failures - 1, 60)
    longest = min(plan.max_retry_delay_s, delay * (1 + plan.jitter))
    return gap_s <= longest + RETRY_SLACK_S


def _upstream_end(run: RunView, step: StepView) -> datetime | None:
    """When the last upstream step that did end ended (where an upstream failure landed)."""
    by_name = {s.name: s for s in run.steps}
    ends = [by_name[u].ended_at for u in step.upstream if u in by_name and by_name[u].ended_at is not None]
    return max(e for e in ends if e is not None) if ends else None


class _TimelineAxis(Widget):
    DEFAULT_CSS = "_TimelineAxis { height: 2; padding-right: 1; }"

    def render(self) -> Text:
        timeline = self.query_ancestor(Timeline)
        return Text("\n").join(timeline.chart(self.content_size.width).axis)


class _TimelineRows(Widget):
    DEFAULT_CSS = "_TimelineRows { height: auto; }"

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        return len(self.query_ancestor(Timeline).run.steps)

    def render(self) -> Text:
        timeline = self.query_ancestor(Timeline)
        return Text("\n").join(timeline.chart(self.content_size.width).rows)


class Timeline(Vertical):
    """A run's steps on a time axis; the axis stays put while many steps scroll under it."""

    DEFAULT_CSS = """
    Timeline { height: 1fr; }
    Timeline > VerticalScroll { height: 1fr; scrollbar-gutter: stable; scrollbar-size-vertical: 1; }
    """

    def __init__(self, run: RunView, attempts: dict[str, list[AttemptView]], now: datetime, *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.run = run
        self.attempts = attempts
        self.now = now
        self._cache: tuple[int, TimelineText] | None = None

    def show(self, run: RunView, attempts: dict[str, list[AttemptView]], now: datetime) -> None:
        """Draw the run again: read anew, or its bars grown with the clock."""
        self.run, self.attempts, self.now = run, attempts, now
        self._cache = None
        for part in self.query(_TimelineAxis).results():
            part.refresh()
        for rows in self.query(_TimelineRows).results():
            rows.refresh(layout=True)  # a retry's reset can change nothing in height, but a new plan could

    def chart(self, width: int) -> TimelineText:
        """The chart at `width`, computed once per width."""
        if self._cache is None or self._cache[0] != width:
            self._cache = (width, layout_timeline(self.run, self.attempts, self.now, width))
        return self._cache[1]

    def compose(self) -> ComposeResult:
        yield _TimelineAxis()
        with VerticalScroll():
            yield _TimelineRows()


class TimelineScreen(LiveRunScreen):
    """`T`: the selected run as a Gantt chart of its steps and their attempts; a live run's chart keeps up."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close"),
    ]
    DEFAULT_CSS = """
    TimelineScreen > .timeline-line { height: 1; padding: 0 1; }
    TimelineScreen > Timeline { padding: 0 1; }
    """

    def __init__(self, run: RunView, attempts: dict[str, list[AttemptView]], now: datetime) -> None:
        super().__init__(run)
        self.attempts = attempts
        self.clock_now = now

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="timeline-title", classes="timeline-line")
        yield Timeline(self.run, self.attempts, self.clock_now)
        yield Legend(TIMELINE_LEGEND, id="timeline-legend")
        yield KeyFooter()

    def _title(self) -> Text:
        title = Text(run_title(self.run), style="bold")
        summary = self.run.run
        if summary.started_at is not None:
            # UTC, not local time: the axis is relative anyway, and this keeps snapshots machine-independent.
            title.append(f"  {summary.started_at:%Y-%m-%d %H:%M:%S} UTC", style="not bold bright_black")
            live = summary.state in LIVE_STATES
            took = summary.duration_s(self.clock_now if live else None)
            if took is not None:
                title.append(f" · {duration_text(took)}{' so far' if live else ''}", style="not bold bright_black")
        return title

    def on_mount(self) -> None:  # LiveRunScreen's runs too: Textual calls the handler of every class
        self.query_one(Timeline).query_one(VerticalScroll).focus()

    def tick(self) -> None:
        """The bars grow with the clock at once; what ran since comes with the run read again."""
        super().tick()
        self.clock_now = self.now()
        self.query_one(Timeline).show(self.run, self.attempts, self.clock_now)
        self.query_one("#timeline-title", Static).update(self._title())

    def show_run(self, run: RunView, attempts: dict[str, list[AttemptView]]) -> None:
        self.attempts = attempts
        self.query_one(Timeline).show(run, attempts, self.clock_now)
        self.query_one("#timeline-title", Static).update(self._title())

    def action_close(self) -> None:
        self.dismiss(None)
