"""What a Python step can learn about the attempt it runs in (ask for `context`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True, slots=True)
class StepContext:
    run_id: int
    """The run this attempt belongs to."""
    job: str
    """Job name."""
    step: str
    """Step name."""
    attempt: int
    """1 for the first attempt, 2 for the first retry, ..."""
    params: Mapping[str, str] = field(default_factory=dict)
    """Run parameters (job defaults overridden by `stepline run -p`)."""
    home: str = ""
    """The stepline home (state directory) of the engine running this attempt."""
    scheduled_for: str | None = None
    """ISO time the run was scheduled for, when a schedule started it."""
