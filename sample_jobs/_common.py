"""Helpers shared by the sample jobs: a helper module (its name starts with _, so it is not loaded as jobs).

Job files import it by name because the loader puts the jobs folder on sys.path.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine import StepContext


def scratch_dir(context: StepContext, name: str) -> Path:
    """A folder for the files of one run, under the stepline home (or the temp dir outside an engine)."""
    base = Path(context.home or tempfile.gettempdir())
    folder = base / "sample_data" / f"{name}-run{context.run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def warehouse_path(context: StepContext) -> str:
    """The sample warehouse: a SQLite file in the stepline home, so the ETL needs no setup."""
    base = context.home or tempfile.gettempdir()
    return os.path.join(base, "sample_warehouse.db")
