"""Where the benchmarks make their homes and job folders.

A user's home is `./.stepline` in their project (or ~/.stepline, or --home), so a
benchmark's homes go into the project too: `bench/scratch/` by default. Not /tmp:
on some machines creating a file in a new folder directly under /tmp costs ten
times what it costs elsewhere on the same disk (0.6-0.8 ms instead of 0.03-0.08 ms
measured on a 2-CPU VM), and every attempt creates files, so the table would
measure the folder instead of stepline. STEPLINE_BENCH_SCRATCH (or each command's
--scratch) puts them elsewhere, e.g. /tmp, to see that cost.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

DEFAULT_SCRATCH = Path(__file__).resolve().parent / "scratch"
SCRATCH_VARIABLE = "STEPLINE_BENCH_SCRATCH"


def scratch_root(chosen: str | os.PathLike[str] | None = None) -> Path:
    """The folder under which each benchmark makes its own temporary folder (created if missing)."""
    root = Path(chosen or os.environ.get(SCRATCH_VARIABLE) or DEFAULT_SCRATCH)
    root.mkdir(parents=True, exist_ok=True)
    return root


def scratch_folder(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder under the scratch root, removed when the `with` block ends."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=scratch_root())


def make_scratch_folder(prefix: str) -> Path:
    """A folder under the scratch root that the caller removes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


def add_scratch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scratch", metavar="DIR",
                        help=f"where to make the benchmark's homes (default: ${SCRATCH_VARIABLE} or {DEFAULT_SCRATCH})")


def use_scratch(args: argparse.Namespace) -> Path:
    """Apply --scratch for this process and the ones it starts; the scratch root in use."""
    if getattr(args, "scratch", None):
        os.environ[SCRATCH_VARIABLE] = str(Path(args.scratch).resolve())
    return scratch_root()
