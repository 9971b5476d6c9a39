"""Import one job file as a module of its own: what the loader and the preloaded worker share.

Kept apart from the loader, with few imports: the worker imports this, and every module it
holds is memory each forked attempt maps, copies where it writes, and unmaps when it exits
(about 0.1 ms per attempt for the loader's pathlib, hashlib, dataclasses and the rest).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType

try:
    from _blake2 import blake2s  # hashlib's own blake2s, without hashlib loading OpenSSL
except ImportError:  # an interpreter built without it
    from hashlib import blake2s


IMPORT_TIMEOUT_S = 30.0
"""How long one job file's import may take, in the engine's loader and in a worker alike, as Airflow's
DAG files get theirs; the variable STEPLINE_IMPORT_TIMEOUT (seconds) overrides it."""


def import_timeout_s() -> float:
    try:
        return float(os.environ.get("STEPLINE_IMPORT_TIMEOUT", IMPORT_TIMEOUT_S))
    except ValueError:
        return IMPORT_TIMEOUT_S


class ImportTimedOut(BaseException):
    """Raised inside a job file's import that ran out of time. A BaseException, so that the file's own
    `except Exception:` around the call that hangs does not swallow it."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"importing the file did not finish within {timeout_s:g}s (a loop, or a call that "
                         "waits, at import time?); do slow work such as connections and downloads inside a "
                         "step, not at import")


class ExitAtImport(BaseException):
    """Raised by os._exit called while the loader's reader imports a job file: the call would end the
    reader without a word about where."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the file calls os._exit({code}) at import, which would end the process that imports it; "
                         "move the call into a step, or under `if __name__ == \"__main__\":`")


def engine_path() -> str:
    """PYTHONPATH for a process of stepline's own (`python -m engine.…`): this checkout first, wherever the
    process starts."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    existing = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + existing if existing else "")


def module_name(path: str | os.PathLike[str]) -> str:
    """The job file's module name: its stem and a digest of its real path (pickled outputs name it)."""
    real = os.path.realpath(path)
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    digest = blake2s(real.encode(), digest_size=4).hexdigest()
    return f"stepline_job_{stem}_{digest}"


def is_from(file: str, path: str | os.PathLike[str]) -> bool:
    """Whether a job or step recorded as made in `file` was made by the job file `path` itself (not by a
    module it imported)."""
    return os.path.realpath(file) == os.path.realpath(path)


def import_job_file(path: str | os.PathLike[str], source: bytes | None = None) -> ModuleType:
    """Import one job file as its own module, in its own folder, which is importable.

    The folder is the working directory during the import, as it is for the file's steps, so a path
    the file opens at import means the same wherever stepline was started. It goes at the end of
    sys.path (as Airflow's DAG folder): a job file named random.py or csv.py must not hide Python's
    own module from the other job files.

    The source is compiled afresh on every import, never read from __pycache__: a file
    rewritten within the same second (and size) would otherwise run its stale bytecode.
    `source` replaces the file's current text (the engine's copy of its last good version).
    """
    folder = os.path.dirname(os.path.realpath(path))
    if folder not in sys.path:
        sys.path.append(folder)
    with _working_directory(folder):
        return _import_as_module(path, source)


@contextlib.contextmanager
def _working_directory(folder: str) -> Iterator[None]:
    try:
        before: str | None = os.getcwd()
    except OSError:  # the directory stepline started in was removed
        before = None
    os.chdir(folder)
    try:
        yield
    finally:
        if before is not None:
            try:
                os.chdir(before)
            except OSError:
                pass


def _import_as_module(path: str | os.PathLike[str], source: bytes | None) -> ModuleType:
    name = module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if source is None:
            with open(path, "rb") as file:
                source = file.read()
        code = compile(source, os.fspath(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
