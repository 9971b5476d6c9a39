"""The SteplineError family: every error a user can fix has its own class.

Each message names the place (file:line, job, step, run, path) and the next move.
The CLI catches SteplineError once and prints its message as one line; anything
else is a bug and is logged with its traceback.
"""
from __future__ import annotations


class SteplineError(Exception):
    """Base of every error stepline reports to a user as one line."""


class UsageError(SteplineError):
    """The command line was wrong (exit code 2)."""


class JobFileError(SteplineError):
    """A job file could not be loaded or a job in it is invalid."""


class JobDefinitionError(SteplineError):
    """A call of job(), step() or shell() got arguments that cannot work."""


class UnknownJobError(SteplineError):
    """A job name that no loaded job file defines."""


class UnknownRunError(SteplineError):
    """A run id that is not in the database."""


class UnknownStepError(SteplineError):
    """A step name that is not part of the run or job."""


class StateDirError(SteplineError):
    """The state directory or its database is missing, unwritable or corrupt."""


class NotApplicableError(SteplineError):
    """An action that does not apply to the current state (retry a succeeded step)."""


def unscheduled(job: str, action: str = "pause") -> str:
    """Why pausing (or resuming) a job without a schedule or interval does not apply."""
    return f"job '{job}' has no schedule to {action}; it runs only when triggered"
