"""End to end in a real terminal: `stepline up` on the sample jobs in tmux, a failed step retried with `r`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (.ci/run installs it)")


class Terminal:
    """A detached tmux session of a fixed size on its own socket, read as plain text."""

    def __init__(self, width: int, height: int) -> None:
        self.socket = f"stepline-test-{uuid.uuid4().hex[:8]}"
        self.size = (width, height)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True).stdout

    def start(self, command: list[str], cwd: Path, env: dict[str, str], exit_file: Path) -> None:
        """Run `command`; a shell waits for it and writes its exit status to `exit_file`.

        The status is not read from tmux: tmux 3.3a now and then never reaps a pane's process that
        has exited (it stays a zombie and #{pane_dead_status} stays empty), which made this test flaky.
        """
        exports = " ".join(f"{k}={_quote(v)}" for k, v in env.items())
        line = (f"cd {_quote(str(cwd))} && env {exports} " + " ".join(_quote(c) for c in command)
                + f"; echo $? > {_quote(str(exit_file))}.tmp && mv {_quote(str(exit_file))}.tmp {_quote(str(exit_file))}")
        self.tmux("new-session", "-d", "-s", "t", "-x", str(self.size[0]), "-y", str(self.size[1]), line)
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")
        self.tmux("set-option", "-t", "t", "status", "off")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, text: str, timeout_s: float = 60, line: int | None = None) -> str:
        """Wait until `text` is on the screen (on line `line` only, when given); returns the screen."""
        def shown() -> str:
            screen = self.screen()
            where = screen if line is None else (screen.splitlines() or [""])[line]
            return screen if text in where else ""
        try:
            return wait_until(shown, timeout_s)  # type: ignore[return-value]
        except AssertionError:
            raise AssertionError(f"{text!r} never appeared; the screen was:\n{self.screen()}") from None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture
def terminal():
    created = []

    def make(width: int, height: int) -> Terminal:
        term = Terminal(width, height)
        created.append(term)
        return term

    yield make
    for term in created:
        term.close()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_up_shows_the_failed_step_and_r_retries_it_to_success(tmp_path, terminal, size):
    jobs = tmp_path / "jobs"
    shutil.copytree(ROOT / "sample_jobs", jobs)
    env = {"STEPLINE_HOME": str(tmp_path / "home"), "STEPLINE_JOBS": str(jobs), "PYTHONPATH": str(ROOT),
           "TERM": "xterm-256color", "PATH": os.environ["PATH"]}
    failed = subprocess.run([sys.executable, "-m", "cli", "run", "validate_invoices"], env={**os.environ, **env},
                            capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr

    term = terminal(*size)
    exit_file = tmp_path / "up.exit"
    term.start([sys.executable, "-m", "cli", "up"], tmp_path, env, exit_file)
    screen = term.wait_for("step validate")     # the console opens on the failed step, with its reason
    screen = term.wait_for("negative")          # (how the reason wraps depends on the width)
    assert "✗ validate" in screen and "⊘ book" in screen
    term.keys("r")
    screen = term.wait_for("✓ notify")          # the last step: the whole run completed
    assert "✓ validate" in screen and "✓ book" in screen
    # The last step succeeds a moment before its run does: wait until the header counts no run as
    # running (else q rightly asks first) and none as failed.
    term.wait_for("● 0", line=0)
    assert "✗ 0" in term.wait_for("◷ 0", line=0).splitlines()[0]
    term.keys("q")
    try:
        wait_until(exit_file.exists, 30)
    except AssertionError:
        raise AssertionError(f"q did not quit; the screen was:\n{term.screen()}") from None
    assert exit_file.read_text().strip() == "0"
