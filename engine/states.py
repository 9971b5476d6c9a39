"""States of runs, step runs and attempts, and the failure reason they carry.

Values are the strings of DESIGN.md so they print and serialise as themselves.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StepState(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STEP_STATES

    @property
    def is_retryable(self) -> bool:
        """True for the states `stepline retry` re-runs."""
        return self in (StepState.FAILED, StepState.UPSTREAM_FAILED, StepState.CANCELLED)


TERMINAL_STEP_STATES = frozenset({
    StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED,
    StepState.UPSTREAM_FAILED, StepState.CANCELLED,
})


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class AttemptState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    RETRY = "retry"
    SENSOR = "sensor"
    BACKFILL = "backfill"


GLYPHS = {
    "succeeded": "✓", "failed": "✗", "running": "●", "queued": "◷", "waiting": "◷", "retrying": "↻",
    "cancelled": "⊘", "upstream_failed": "⊘", "pending": "–", "skipped": "–", "engine_gone": "◌",
}
"""A glyph per drawn state (see drawn_state), so every listing and screen reads without colour.

"engine_gone" is drawn, never stored: a run (or step) still "running" whose engine was killed
(engine.recovery.engine_gone); it stays so until the next engine starts and closes it."""
COLORS = {
    "succeeded": "green", "failed": "bold red", "running": "yellow", "queued": "cyan", "waiting": "cyan",
    "retrying": "magenta", "cancelled": "bright_black", "upstream_failed": "red", "pending": "bright_black",
    "skipped": "bright_black", "engine_gone": "yellow",
}
"""A colour per drawn state, from the 16 every terminal has; the command line and the console share them."""


def drawn_state(state: str, waiting_for: str | None = None, engine_gone: bool = False) -> str:
    """The state as drawn: a step waiting out its retry delay is "retrying" (↻), not just waiting; a run or
    step still running when `engine_gone` (its engine was killed) is "engine_gone" (◌)."""
    if state == "waiting" and (waiting_for or "").startswith("retry"):
        return "retrying"
    if state == "running" and engine_gone:
        return "engine_gone"
    return state


@dataclass(frozen=True, slots=True)
class FailureReason:
    summary: str
    """One line for lists: "exit code 3", "timed out after 30s"."""
    detail: str = ""
    """Traceback or last log lines, shown in the details pane."""


@dataclass(frozen=True, slots=True)
class Change:
    """A state change, as the engine announces it to its listener (the CLI prints them)."""
    run_id: int
    step: str | None
    state: str
    message: str | None
    at: float
    attempt: int | None = None


def waiting_note(waiting_for: str, reason: str | None) -> str:
    """What a waiting step waits for; a step waiting for its retry also says why its attempt failed."""
    return f"{waiting_for} (last attempt: {reason})" if reason else waiting_for
