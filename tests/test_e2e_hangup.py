"""Losing the SSH link (SIGHUP) while `stepline up` runs stops the engine the way `q` does."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine import query, store
from engine.home import prepare_home
from engine.service import EngineLock
from tests.conftest import ROOT, wait_until
from tests.test_e2e_console import Terminal

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (.ci/run installs it)")


def slow_job(tmp_path: Path) -> dict[str, str]:
    """A jobs folder with job 'slow' (one 300 s step 'wait'); the environment of a stepline using it."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "slow.py").write_text("from engine import job, shell\n"
                                  "slow = job('slow', [shell('wait', 'echo waiting; sleep 300')])\n")
    return {"STEPLINE_HOME": str(tmp_path / "home"), "STEPLINE_JOBS": str(jobs), "PYTHONPATH": str(ROOT),
            "TERM": "xterm-256color", "PATH": os.environ["PATH"]}


def up_with_a_running_step(tmp_path: Path, term: Terminal, exit_file: Path) -> tuple[int, int]:
    """`stepline up --grace 0.5` in `term`, a run of a 300 s step handed to it; (engine pid, step pid)."""
    env = slow_job(tmp_path)
    term.start([sys.executable, "-m", "cli", "up", "--grace", "0.5"], tmp_path, env, exit_file)
    term.wait_for("slow")
    home = prepare_home(tmp_path / "home")
    store.open_database(home)
    engine_pid = wait_until(lambda: EngineLock(home).holder())
    started = subprocess.run([sys.executable, "-m", "cli", "run", "slow"], env={**os.environ, **env},
                             capture_output=True, text=True, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    wait_until(lambda: query.list_runs() and query.get_run(1).step("wait").state == "running")
    return engine_pid, query.attempts(1, "wait")[0].pid


def assert_engine_stopped_cleanly(step_pid: int) -> None:
    run = query.get_run(1)
    assert run.state == "cancelled"
    assert run.step("wait").reason.summary == "engine stopping"
    assert not psutil.pid_exists(step_pid)
    assert query.engine_status(time.time()).state == "stopped"


def test_sighup_stops_the_embedded_engine_and_cancels_running_steps_after_the_grace(tmp_path):
    term = Terminal(80, 24)
    exit_file = tmp_path / "exit_status"
    try:
        engine_pid, step_pid = up_with_a_running_step(tmp_path, term, exit_file)
        os.kill(engine_pid, signal.SIGHUP)
        wait_until(exit_file.exists, 60)
        assert exit_file.read_text().strip() == "0"
        assert_engine_stopped_cleanly(step_pid)
    finally:
        term.close()


def test_when_the_terminal_vanishes_the_engine_still_stops_and_the_process_exits(tmp_path):
    term = Terminal(80, 24)
    try:
        engine_pid, step_pid = up_with_a_running_step(tmp_path, term, tmp_path / "exit_status")
    finally:
        term.close()  # the terminal and its pty are gone, as when an SSH connection drops
    wait_until(lambda: not psutil.pid_exists(engine_pid)
               or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE, 60)
    assert_engine_stopped_cleanly(step_pid)


def test_stepline_run_whose_terminal_vanishes_cancels_its_run_and_exits(tmp_path):
    # SIGHUP asks `stepline run` to cancel (as Ctrl-C does); its lines then go to a terminal that is gone
    # (EIO), which must not stop the engine halfway and leave the run "running" with its engine dead.
    env = slow_job(tmp_path)
    term = Terminal(80, 24)
    try:
        term.start([sys.executable, "-m", "cli", "run", "slow"], tmp_path, env, tmp_path / "exit_status")
        term.wait_for("running")
        home = prepare_home(tmp_path / "home")
        store.open_database(home)
        wait_until(lambda: query.list_runs() and query.attempts(1, "wait") and query.attempts(1, "wait")[0].pid)
        engine_pid, step_pid = query.run_owner(1)[0], query.attempts(1, "wait")[0].pid
    finally:
        term.close()
    assert engine_pid is not None
    wait_until(lambda: not psutil.pid_exists(engine_pid)
               or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE, 60)
    run = query.get_run(1)
    assert run.state == "cancelled"
    assert run.step("wait").reason.summary == "interrupted from the terminal"
    assert not psutil.pid_exists(step_pid)
