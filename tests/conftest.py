"""Shared fixtures: a fresh home with a real SQLite file, a jobs folder and a job-file writer."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import query, store
from engine.home import Home, prepare_home
from engine.loader import LoadResult, load_jobs
from engine.query import RunView
from engine.runner import Engine

ROOT = Path(__file__).resolve().parent.parent
HEADER = "from engine import job, step, shell\n"


class Harness:
    """A home and a jobs folder in tmp_path, and the engine to run jobs in them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs_dir = root / "jobs"
        self.jobs_dir.mkdir()
        self.home: Home = prepare_home(root / "home")
        store.open_database(self.home)

    def write_job(self, name: str, body: str, header: bool = True) -> Path:
        path = self.jobs_dir / name
        path.write_text((HEADER if header else "") + textwrap.dedent(body))
        return path

    def load(self) -> LoadResult:
        return load_jobs(self.jobs_dir)

    def engine(self, **options: object) -> Engine:
        return Engine(self.home, **options)  # type: ignore[arg-type]

    def run_now(self, job: str, params: dict[str, str] | None = None, **options: object) -> RunView:
        result = self.load()
        assert not result.problems, [str(p) for p in result.problems]
        engine = self.engine(**options)
        try:
            run_id = engine.submit(result.jobs[job], params or {})
            engine.run_until_done([run_id])
        finally:
            engine.close()
        return query.get_run(run_id)

    def retry(self, run_id: int, step: str | None = None, **options: object) -> RunView:
        engine = self.engine(**options)
        try:
            engine.retry(run_id, step)
            engine.run_until_done([run_id])
        finally:
            engine.close()
        return query.get_run(run_id)

    def cli_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a `stepline` process on this home and jobs folder."""
        return {**os.environ, "STEPLINE_HOME": str(self.home.root), "STEPLINE_JOBS": str(self.jobs_dir),
                "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}

    def cli(self, *args: str, check: bool = False, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real `stepline` command line against this home and jobs folder, to its end."""
        result = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                                env=self.cli_env(env), cwd=self.root, timeout=timeout)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def cli_process(self, *args: str) -> subprocess.Popen[str]:
        """Start the real `stepline` command line in the background (the caller waits for it)."""
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=self.cli_env(), cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


@pytest.fixture
def home(harness: Harness) -> Harness:
    """The STYLE.md spelling: `home.run_now("j")`."""
    return harness


@pytest.fixture
def write_job(harness: Harness) -> Callable[..., Path]:
    return harness.write_job


def wait_until(predicate: Callable[[], object], timeout_s: float = 30.0, interval_s: float = 0.02) -> object:
    """Wait for a condition (never for a fixed time); fail with the timeout if it never holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {predicate}")
        time.sleep(interval_s)
