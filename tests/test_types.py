"""CI type-checks both packages (and the command line): a wrong type is caught before a user meets it."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_engine_tui_and_cli_type_check():
    result = subprocess.run([sys.executable, "-m", "mypy", "engine", "tui", "cli"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
