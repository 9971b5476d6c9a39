"""Where the benchmarks make their homes and job folders, and why they are kept afterwards.

A user's home is `./.stepline` in their project (or ~/.stepline, or --home), so a
benchmark's homes go into the project too: `bench/scratch/` by default.
STEPLINE_BENCH_SCRATCH (or each command's --scratch) puts them elsewhere.

The homes are kept when a benchmark ends; only files of 1 MB or more (W5's log, the
console benchmark's database) are removed. Deleting thousands of small files would
slow down the next measurement: for a few minutes after a file is deleted, ext4 skips
its inode when it looks for a free one, so in a folder where many files were just
deleted, creating a file costs 0.3-1.5 ms instead of 0.03-0.06 ms (measured on a
2-CPU VM: 1.4 ms per file after 50,000 files were made and deleted beside it). Every
attempt creates files, so the next run's table would measure the previous run's
clean-up. A user's home does not delete files as it runs. `rm -rf bench/scratch`
when done, and measure again some minutes later.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

DEFAULT_SCRATCH = Path(__file__).resolve().parent / "scratch"
SCRATCH_VARIABLE = "STEPLINE_BENCH_SCRATCH"
LARGE_FILE_BYTES = 1 << 20
"""Files this large are removed when a benchmark ends: a few inodes freed cost nothing later."""


def scratch_root(chosen: str | os.PathLike[str] | None = None) -> Path:
    """The folder under which each benchmark makes its own folder (created if missing)."""
    root = Path(chosen or os.environ.get(SCRATCH_VARIABLE) or DEFAULT_SCRATCH)
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_scratch_folder(prefix: str) -> Path:
    """A new folder under the scratch root; call trim() on it when done."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[str]:
    """A new folder under the scratch root, trimmed when the `with` block ends."""
    folder = make_scratch_folder(prefix)
    try:
        yield str(folder)
    finally:
        trim(folder)


def trim(folder: Path) -> None:
    """Remove the large files of a finished benchmark's folder and keep the rest (see the module's doc)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            try:
                if os.lstat(path).st_size >= LARGE_FILE_BYTES:
                    os.unlink(path)
            except OSError:
                pass


def add_scratch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scratch", metavar="DIR",
                        help=f"where to make the benchmark's homes (default: ${SCRATCH_VARIABLE} or {DEFAULT_SCRATCH}); "
                             "they are kept, without their files of 1 MB or more")


def use_scratch(args: argparse.Namespace) -> Path:
    """Apply --scratch for this process and the ones it starts; the scratch root in use."""
    if getattr(args, "scratch", None):
        os.environ[SCRATCH_VARIABLE] = str(Path(args.scratch).resolve())
    return scratch_root()
