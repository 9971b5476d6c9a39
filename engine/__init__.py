"""The job-file API: `job`, `step`, `shell` and the StepContext a step may ask for.

Loaded on first use, so the command line and the console, which import engine modules but
never define jobs, do not pay for the definition machinery at start-up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.context import StepContext
    from engine.definition import job, shell, step

__all__ = ["job", "step", "shell", "StepContext"]


def __getattr__(name: str) -> Any:
    if name == "StepContext":
        from engine.context import StepContext
        return StepContext
    if name in ("job", "step", "shell"):
        from engine import definition
        return getattr(definition, name)
    raise AttributeError(f"module 'engine' has no attribute '{name}'")
