"""The jobs as the engine running a home loaded them, read from the database instead of importing files.

With a daemon running, `stepline jobs` and `stepline run` take the engine's own catalogue: it is what
the engine schedules and runs (for a file broken since, the last good version of its jobs), and
reading it costs no import, so a job file that hangs at import delays no command. Files changed
since the engine last loaded them, or another jobs folder than the engine's, are imported as
without an engine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cli import remote
from cli.main import Settings
from engine import query
from engine.home import Home
from engine.loader import Problem, job_files


@dataclass(frozen=True, slots=True)
class EngineCatalog:
    pid: int
    """The engine's process."""
    jobs: dict[str, query.JobSummary]
    problems: tuple[Problem, ...]
    """As the engine found them when it last loaded the files."""

    def broken_file_of(self, job: query.JobSummary) -> Problem | None:
        """The problem of the job's file now, if it has one (the engine keeps running its last good version).
        Every job file lies directly in the jobs folder, so the file's name tells it."""
        name = os.path.basename(job.file)
        return next((p for p in self.problems if os.path.basename(p.file) == name), None)


def engine_catalog(settings: Settings, home: Home) -> EngineCatalog | None:
    """The catalogue of the engine running `home`, when it loaded this command's jobs folder as it is now."""
    pid = remote.engine_holder(home)
    if pid is None:
        return None
    jobs = query.jobs()
    folder = settings.jobs_dir.resolve()
    if _loaded_folder(jobs) != folder:
        return None
    published = query.catalog_published_at()
    try:
        changed = max([folder.stat().st_mtime] + [path.stat().st_mtime for path in job_files(folder)])
    except OSError:
        return None
    if published is None or changed >= published:
        return None  # saved since: the engine's reload may not have happened yet
    problems = tuple(Problem(file, line, message) for file, line, message in query.load_problems())
    return EngineCatalog(pid, {job.name: job for job in jobs}, problems)


def other_engine_folder(settings: Settings, home: Home) -> tuple[int, Path] | None:
    """(pid, folder) when an engine runs `home` on another jobs folder than this command's `--jobs`."""
    pid = remote.engine_holder(home)
    if pid is None:
        return None
    folder = _loaded_folder(query.jobs())
    return None if folder is None or folder == settings.jobs_dir.resolve() else (pid, folder)


def _loaded_folder(jobs: list[query.JobSummary]) -> Path | None:
    """The one folder the engine loaded `jobs` from; None when it loaded none yet (or, oddly, many)."""
    folders = {Path(job.file).resolve().parent for job in jobs}
    return folders.pop() if len(folders) == 1 else None
