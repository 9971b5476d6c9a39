"""The `stepline` command line: the one place that imports both the engine and the console."""
from __future__ import annotations

from cli.main import main

__all__ = ["main"]
