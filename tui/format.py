"""How states, times and durations read on the console: glyphs, colours and short labels.

Every state has a glyph that reads without colour (NO_COLOR, monochrome terminals) and a
colour from the 16 ANSI colours, so a 16-colour terminal over SSH looks the same as a
true-colour one. Pure functions of plain values; knows nothing of widgets or the database.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from rich.text import Text

from engine.humanize import duration
from engine.query import AttemptView, EngineStatus, JobSummary, RunSummary, StepView
from engine.states import COLORS, GLYPHS, drawn_state

SHORT_NOTES = {"upstream_failed": "upstream failed", "cancelled": "cancelled", "skipped": "skipped"}


def glyph(state: str, waiting_for: str | None = None, engine_gone: bool = False) -> Text:
    shown = drawn_state(state, waiting_for, engine_gone)
    return Text(GLYPHS.get(shown, "?"), style=COLORS.get(shown, ""))


def local(at: datetime | None) -> datetime | None:
    return None if at is None else at.astimezone()


def clock_text(at: datetime | None) -> str:
    """HH:MM:SS in the machine's zone."""
    shown = local(at)
    return shown.strftime("%H:%M:%S") if shown else "—"


def when_text(at: datetime | None, now: datetime) -> str:
    """Short time of day, with the date when it is not today: "03:12:40" or "11-26 03:12"."""
    shown = local(at)
    if shown is None:
        return "—"
    if shown.date() == now.astimezone().date():
        return shown.strftime("%H:%M:%S")
    return shown.strftime("%m-%d %H:%M")


def stamp_text(at: datetime | None) -> str:
    """Full local date and time for the details pane."""
    shown = local(at)
    return shown.strftime("%Y-%m-%d %H:%M:%S") if shown else "—"


def stamp_in_zone_text(at: datetime | None, zone_name: str | None) -> str:
    """stamp_text, followed by the time in a schedule's own zone when it reads differently there:
    "2026-11-28 05:00:00 (06:00 CET in Europe/Paris)", so the time matches the cron line."""
    text = stamp_text(at)
    if at is None or not zone_name:
        return text
    try:
        from zoneinfo import ZoneInfo

        there = at.astimezone(ZoneInfo(zone_name))
    except (ValueError, KeyError, OSError):
        return text
    here = at.astimezone()
    if there.utcoffset() == here.utcoffset():
        return text
    day = "" if there.date() == here.date() else there.strftime("%m-%d ")
    return f"{text} ({day}{there.strftime('%H:%M %Z')} in {zone_name})"


def duration_text(seconds: float | None, live: bool = False) -> str:
    """As people read them, exactly like the CLI: 850ms, 12.3s, 4m05s, 2h03m, 3d04h ("" when unknown).

    `live` is kept for callers that tick; a running duration reads the same way.
    """
    return "" if seconds is None else duration(seconds)


def relative_text(at: datetime | None, now: datetime) -> str:
    """A coarse distance for narrow lines: "in 45s", "in 12m", "in 4h", "in 2d" (or "… ago")."""
    if at is None:
        return "—"
    delta = (at - now).total_seconds()
    span = abs(delta)
    if span < 60:
        text = f"{int(span)}s"
    elif span < 3600:
        text = f"{int(span // 60)}m"
    elif span < 86400:
        text = f"{int(span // 3600)}h"
    else:
        text = f"{int(span // 86400)}d"
    return f"in {text}" if delta >= 0 else f"{text} ago"


def bytes_text(count: int | None) -> str:
    if count is None:
        return "—"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def utc_now(clock_s: float) -> datetime:
    return datetime.fromtimestamp(clock_s, timezone.utc)


# --- tree labels -------------------------------------------------------------------------------------


def job_label(name: str, job: JobSummary | None, last_run: RunSummary | None, now: datetime,
              catalog_known: bool = True, compact: bool = False, abandoned: bool = False,
              file_broken: bool = False) -> Text:
    """A job's tree line; `compact` (narrow tree) keeps name, glyph and the next fire as "in 4h".

    `abandoned`: the last run's engine is gone (see run_label). `file_broken`: its job file has a problem
    now, and the engine runs the job's last good version."""
    text = Text()
    if last_run is not None:
        text.append_text(glyph(last_run.state, engine_gone=abandoned))
    else:
        text.append(" ")
    text.append(" ")
    text.append(name, style="bold")
    if job is None:
        if catalog_known:
            text.append("  not loaded", style="italic bright_black")
        return text
    if file_broken:
        text.append("  ⚠" if compact else "  ⚠ file broken", style="bold yellow")
    schedule = job.schedule or (f"every {job.every}" if job.every else None)
    if schedule:
        if not compact:
            text.append(f"  {schedule}", style="bright_black")
        if job.paused:
            text.append("  paused", style="bold magenta")
        elif job.next_fire_at is not None and (now - job.next_fire_at).total_seconds() > OVERDUE_AFTER_S:
            # No engine fired it (stopped, or killed): a time in the past read as the next fire misleads.
            text.append("  overdue" if compact else f"  overdue since {when_text(job.next_fire_at, now)}",
                        style="yellow")
        elif job.next_fire_at is not None:
            shown = relative_text(job.next_fire_at, now) if compact else f"next {when_text(job.next_fire_at, now)}"
            text.append(f"  {shown}", style="bright_black")
    if last_run is None:
        text.append("  no runs", style="italic bright_black")
    return text


OVERDUE_AFTER_S = 10.0
"""A running engine records a fire within a second or two; a next fire this far past was not fired."""

ENGINE_GONE_NOTE = "engine gone"
"""A tree line's note on a running run (or step) whose engine was killed; the details say more."""


def run_label(run: RunSummary, now: datetime, abandoned: bool = False) -> Text:
    """`abandoned`: the run's engine is gone (engine.recovery), so nothing moves: no live duration."""
    gone = abandoned and run.state == "running"
    live = run.state == "running" and not gone
    text = glyph(run.state, engine_gone=abandoned)
    text.append(f" #{run.id}", style="bold")
    text.append(f"  {when_text(run.created_at, now)}")
    duration = duration_text(run.duration_s(now if live else None), live=live)
    if duration:
        text.append(f"  {duration}", style="yellow" if live else "")
    if gone:
        text.append(f"  {ENGINE_GONE_NOTE}", style="yellow")
    if run.state in ("cancelled", "queued"):
        text.append(f"  {run.state}", style="bright_black")
    if run.trigger not in ("schedule",):
        text.append(f"  {run.trigger}", style="bright_black")
    return text


def step_label(step: StepView, now: datetime, abandoned: bool = False, width: int | None = None) -> Text:
    """`abandoned`: the step's run has lost its engine (see run_label). `width`: the cells the line has; a
    longer one cuts the step's name, with …, rather than its duration and state at the end."""
    if width is not None:
        full = step_label(step, now, abandoned)
        over = full.cell_len - width
        if over > 0 and len(step.name) > 4:
            keep = max(4, len(step.name) - over - 1)
            return step_label(dataclasses.replace(step, name=step.name[:keep] + "…"), now, abandoned)
        return full
    gone = abandoned and step.state == "running"
    live = step.state == "running" and not gone
    text = glyph(step.state, step.waiting_for, abandoned)
    text.append(f" {step.name}")
    duration = duration_text(step.duration_s(now if live else None), live=live)
    if duration:
        text.append(f"  {duration}", style="yellow" if live else "")
    if step.attempts > 1:
        text.append(f"  ×{step.attempts}", style="magenta")
    if gone:
        text.append(f"  {ENGINE_GONE_NOTE}", style="yellow")
        return text
    note = SHORT_NOTES.get(step.state)
    if step.state == "waiting" and step.waiting_for:
        note = step.waiting_for if drawn_state(step.state, step.waiting_for) == "retrying" else "waiting"
    if note:
        text.append(f"  {note}", style="bright_black")
    return text


# --- reasons and attempts ------------------------------------------------------------------------------


def step_reason(step: StepView) -> str:
    """The one line saying why a step is in its state."""
    if step.state == "waiting":
        waiting = step.waiting_for or "upstream"
        if waiting.startswith("retry"):
            return waiting
        return f"waiting for {waiting}"
    if step.reason is not None:
        return step.reason.summary
    return {"pending": "not started yet", "running": "running", "succeeded": "succeeded",
            "skipped": "skipped"}.get(step.state, step.state)


def attempt_line(attempt: AttemptView, total: int, now: datetime, abandoned: bool = False) -> Text:
    """`abandoned`: the attempt's engine is gone (see run_label)."""
    gone = abandoned and attempt.state == "running"
    live = attempt.state == "running" and not gone
    text = glyph(attempt.state, engine_gone=abandoned)
    text.append(f" #{attempt.number}/{total} {attempt.state}")
    if attempt.exit_code is not None:
        text.append(f"  exit {attempt.exit_code}")
    if attempt.signal:
        text.append(f"  signal {attempt.signal}")
    text.append(f"  {duration_text(attempt.duration_s(now if live else None), live=live) or '—'}")
    if attempt.cpu_s is not None:
        text.append(f"  cpu {attempt.cpu_s:.1f}s")
    if attempt.peak_rss_bytes is not None:
        text.append(f"  peak {bytes_text(attempt.peak_rss_bytes)}")
    text.append(f"  {when_text(attempt.started_at, now)}", style="bright_black")
    if attempt.reason is not None and attempt.state != "succeeded":
        text.append(f"  {attempt.reason.summary}", style="red")
    return text


def engine_text(status: EngineStatus, mode: str, compact: bool = False) -> Text:
    """The header's engine state (`compact` for 80 columns)."""
    if status.state == "running":
        if mode == "embedded":
            return Text("● engine running (embedded)", style="green")
        kind = "daemon" if status.mode != "embedded" else "`stepline up`"
        return Text(f"● attached to {kind} pid {status.pid}", style="green")
    if status.state == "not responding":
        return Text(f"✗ engine not responding since {clock_text(status.heartbeat_at)}", style="bold red")
    if status.state == "gone":  # killed: its runs stay as they were until an engine starts and closes them
        return Text(f"✗ engine gone{'' if compact else f' (pid {status.pid})'} since "
                    f"{clock_text(status.heartbeat_at)}", style="bold red")
    if status.state == "stopped":
        return Text("⊘ engine not running" + ("" if compact else " (stopped)"), style="bold yellow")
    return Text("⊘ engine not running" + ("" if compact else " (never started here)"), style="bold yellow")
