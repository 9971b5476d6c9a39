"""The job-file API: `job`, `step`, `shell` and the StepContext a step may ask for."""
from __future__ import annotations

from engine.context import StepContext
from engine.definition import job, shell, step

__all__ = ["job", "step", "shell", "StepContext"]
