"""The stepline home: the state directory holding the database, logs and outputs.

Creates it on first use and turns every way it can be unusable (missing parent,
read-only, a file in the way, a corrupt database) into one StateDirError naming
the path and the fix.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import StateDirError

DEFAULT_HOME = ".stepline"
DATABASE_NAME = "stepline.db"
LOGS_FOLDER = "logs"
OUTPUTS_FOLDER = "outputs"


@dataclass(frozen=True, slots=True)
class Home:
    root: Path
    """The state directory."""

    @property
    def database(self) -> Path:
        return self.root / DATABASE_NAME

    @property
    def logs(self) -> Path:
        return self.root / LOGS_FOLDER

    @property
    def outputs(self) -> Path:
        return self.root / OUTPUTS_FOLDER

    @property
    def engine_log(self) -> Path:
        return self.root / "engine.log"

    def run_log_dir(self, run_id: int) -> Path:
        return self.logs / str(run_id)

    def run_output_dir(self, run_id: int) -> Path:
        return self.outputs / str(run_id)

    def attempt_log(self, run_id: int, step: str, attempt: int) -> Path:
        return Path(self.attempt_log_str(run_id, step, attempt))

    def output_file(self, run_id: int, step: str) -> Path:
        return Path(self.output_file_str(run_id, step))

    def result_file(self, run_id: int, step: str, attempt: int) -> Path:
        return self.run_output_dir(run_id) / f"{step}.{attempt}.result.json"

    def shell_output_file(self, run_id: int, step: str, attempt: int) -> Path:
        return Path(self.shell_output_file_str(run_id, step, attempt))

    # The engine builds these paths for every attempt, as strings: os.path.join joins the parts as
    # pathlib does (an absolute part starts over) at a fraction of the cost of a Path per part.

    def attempt_log_str(self, run_id: int, step: str, attempt: int) -> str:
        return os.path.join(self.root, LOGS_FOLDER, str(run_id), f"{step}.{attempt}.log")

    def output_file_str(self, run_id: int, step: str) -> str:
        return os.path.join(self.root, OUTPUTS_FOLDER, str(run_id), f"{step}.pkl")

    def shell_output_file_str(self, run_id: int, step: str, attempt: int) -> str:
        return os.path.join(self.root, OUTPUTS_FOLDER, str(run_id), f"{step}.{attempt}.out")


def _arising_from(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then each error it arose from (its cause, or the one being handled when it was raised)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it arose from, says the disk is full: SQLite's "database or disk is
    full" (SQLITE_FULL) or a write's ENOSPC."""
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or "database or disk is full" in str(e)
               for e in _arising_from(error))


def is_damaged_database(error: BaseException | None) -> bool:
    """Whether `error`, or an error it arose from, is SQLite finding the database file damaged (a page
    overwritten, a file cut short): "database disk image is malformed" (SQLITE_CORRUPT)."""
    return any("database disk image is malformed" in str(e) for e in _arising_from(error))


def unusable_database(path: str | os.PathLike[str], reason: str) -> StateDirError:
    """The error for a database file stepline cannot use, found when it is opened or when a page is read.

    Moving the file aside loses the history, so that advice is only for a file SQLite found damaged or
    not a database at all. A disk that is full, or failing to read or write (SQLite's "disk I/O error",
    also what it says when it cannot make its shared-memory file on a full disk), is about the disk.
    """
    folder = os.path.dirname(os.fspath(path)) or "."
    if "disk is full" in reason or _nearly_full(folder):
        return StateDirError(f"the disk holding {folder} is full ({reason}), so stepline cannot open its database "
                             f"{path}; free some space and run the command again (the database itself is kept)")
    if "disk I/O error" in reason:
        return StateDirError(f"SQLite could not read or write {path} ({reason}); check the disk and the permissions "
                             f"of the files beside it (stepline.db-wal, stepline.db-shm). Do not delete the database: "
                             "the file is probably fine")
    return StateDirError(f"{path} is not a usable stepline database ({reason}); move it aside and stepline will "
                         "start a new one")


def _nearly_full(folder: str) -> bool:
    """Less than a megabyte free where the database lives (SQLite then fails with a bare "disk I/O error")."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1024 * 1024


def resolve_home(path: str | os.PathLike[str] | None) -> Path:
    return Path(path or os.environ.get("STEPLINE_HOME") or DEFAULT_HOME).expanduser().absolute()


def prepare_home(path: str | os.PathLike[str] | None, create: bool = True) -> Home:
    """The home at `path` (or STEPLINE_HOME, or ./.stepline), created when `create`."""
    root = resolve_home(path)
    if root.exists() and not root.is_dir():
        raise StateDirError(f"state directory {root} is a file, not a directory; "
                            "pass --home DIR (or set STEPLINE_HOME) to a directory")
    if not root.exists():
        if not create:
            raise StateDirError(f"state directory {root} does not exist; run a job first "
                                "or pass --home DIR (or set STEPLINE_HOME) to an existing home")
        try:
            root.mkdir(parents=True)
        except OSError as error:
            raise StateDirError(f"cannot create state directory {root}: {error.strerror}; "
                                "pass --home DIR (or set STEPLINE_HOME) to a writable place") from None
    if create and not os.access(root, os.W_OK | os.X_OK):
        raise StateDirError(f"state directory {root} is read-only; stepline needs to write its database "
                            "and logs there: fix its permissions or pass --home DIR to a writable place")
    home = Home(root)
    if create:
        for folder in (home.logs, home.outputs):
            try:
                folder.mkdir(exist_ok=True)
            except OSError as error:
                raise StateDirError(f"cannot create {folder}: {error.strerror}; "
                                    "fix the permissions of the state directory") from None
    return home
