"""The job-file reader: a process of its own that imports job files for the loader.

A job file is a user's Python. At import it may call os._exit, crash the interpreter in a C
extension, use up memory, change the working directory or never finish. Imported in the engine,
any of these would take the daemon, the console or `stepline check` down with it, and every other
file's jobs with them. So the loader hands the files to a reader process, as Airflow's DAG processor
does. The reader imports them one by one and sends back each file's jobs and problems, without the
Python steps' functions: the engine needs only a job's shape, and the preloaded worker imports the
file again to run its steps.

When the reader dies inside a file, that file gets a problem saying how, at the line faulthandler
shows, and a new reader goes on with the next file. A file whose import outlasts the import timeout
is shown where it is stuck (SIGUSR1 makes faulthandler dump the stack), then its reader is killed.

Run as `python -m engine.reader CALLER_PID RESULT_FD DUMP_FD FILE...`.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from engine.definition import JobDef
from engine.jobfile import ExitAtImport, ImportTimedOut, engine_path
from engine.loader import Problem, display_path, load_file
from engine.worker import write_framed

FileResult = tuple[list[JobDef], list[Problem]]
"""A file's valid jobs (without their Python functions) and its problems."""

SLOW_NOTICE_S = 3.0
"""A file still importing after this long is named on stderr (a command would otherwise wait in silence)."""
DUMP_WAIT_S = 2.0
"""How long a stuck reader gets to write its stack after SIGUSR1 before it is killed."""

_stuck: dict[str, tuple[tuple[int, int], Problem]] = {}
"""Files whose import timed out, by path: (mtime_ns, size) and the problem. Until the file changes it is
not imported again: each reload of the other files would otherwise wait the whole timeout for it."""


def read_job_files(paths: list[Path], timeout_s: float, output: str | None = None, memory: Path | None = None,
                   fresh: bool = False) -> list[FileResult]:
    """Import each of `paths` in a reader process; their results in the same order.

    `output`: a file for what the job files print at import (default: this process's stderr; stdout
    carries a command's own output, which `--json` and pipes must get unmixed). `memory`: a file (in the
    home) that keeps the files whose import timed out across commands, so each `stepline run` from cron
    does not wait the whole timeout for the same file again. `fresh`: import those too (`stepline check`).
    """
    if memory is not None:
        _recall(memory)
    results: dict[int, FileResult] = {}
    todo = []
    for index, path in enumerate(paths):
        known = _stuck.get(os.fspath(path))
        if known is not None and known[0] == _version(path) and not fresh:
            results[index] = ([], [known[1]])
        else:
            _stuck.pop(os.fspath(path), None)  # imported again: it says anew whether it is stuck
            todo.append(index)
    while todo:
        batch = [paths[i] for i in todo]
        read = _Reader(batch, timeout_s, output).read(notice=output is None)
        for offset, result in enumerate(read):
            results[todo[offset]] = result
        todo = todo[len(read):]
    if memory is not None:
        _remember(memory, paths)
    return [results[index] for index in range(len(paths))]


def _recall(memory: Path) -> None:
    """Take up the stuck files another command remembered, those not changed since."""
    try:
        entries = json.loads(memory.read_text(encoding="utf-8"))
        for path, entry in entries.items():
            version = (int(entry["version"][0]), int(entry["version"][1]))
            if version == _version(Path(path)):
                _stuck[path] = (version, Problem(str(entry["file"]), int(entry["line"]), str(entry["message"])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return  # none yet, or unreadable: every file is imported, as without a memory


def _remember(memory: Path, paths: list[Path]) -> None:
    """Write the stuck files among `paths` for the next command (nothing when the home is read-only)."""
    looked_at = {os.fspath(path) for path in paths}
    entries = {path: {"version": list(version), "file": problem.file, "line": problem.line,
                      "message": problem.message}
               for path, (version, problem) in _stuck.items() if path in looked_at}
    try:
        if not entries:
            memory.unlink(missing_ok=True)
            return
        partial = memory.with_name(memory.name + ".tmp")
        partial.write_text(json.dumps(entries), encoding="utf-8")
        os.replace(partial, memory)
    except OSError:
        pass


class _Reader:
    """One reader process over `paths`: the results of as many files as it got through, the last of them
    a problem when the reader died or was stopped in that file."""

    def __init__(self, paths: list[Path], timeout_s: float, output: str | None) -> None:
        self.paths = paths
        self.timeout_s = timeout_s
        result_r, result_w = os.pipe()
        dump_r, dump_w = os.pipe()
        sink = open(output, "ab") if output else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "engine.reader", str(os.getpid()), str(result_w), str(dump_w),
                 *map(os.fspath, paths)],
                pass_fds=[result_w, dump_w], stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                env={**os.environ, "PYTHONPATH": engine_path()},
                # Its own process group: what the files start at import (a subprocess, a pool) is ended
                # with it, instead of holding the caller's pipes open; a terminal's Ctrl-C reaches the
                # caller, which ends the reader.
                start_new_session=True)
        finally:
            os.close(result_w)
            os.close(dump_w)
            if sink is not None:
                sink.close()
        self.result_r, self.dump_r = result_r, dump_r
        self.buffer = b""

    def read(self, notice: bool = False) -> list[FileResult]:
        """`notice`: name a file that takes long to import on stderr, once."""
        results: list[FileResult] = []
        try:
            while len(results) < len(self.paths):
                path = self.paths[len(results)]
                deadline = time.monotonic() + self.timeout_s
                message = self._next_message(min(deadline, time.monotonic() + SLOW_NOTICE_S) if notice else deadline)
                if message is None and notice and time.monotonic() < deadline:
                    print(f"stepline: importing {display_path(path)} is taking long; waiting up to "
                          f"{self.timeout_s:g}s for it (STEPLINE_IMPORT_TIMEOUT)", file=sys.stderr, flush=True)
                    notice = False
                    message = self._next_message(deadline)
                if message is None:  # the file's import timed out: the reader is gone now
                    results.append(([], [self._timed_out(path)]))
                    break
                if message == b"":
                    results.append(([], [self._died_in(path)]))
                    break
                results.append(pickle.loads(message))
        finally:
            os.close(self.result_r)
            if self.process.poll() is None and len(results) < len(self.paths):
                self.process.kill()
            self.process.wait()
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # what the imports left running
            except (ProcessLookupError, PermissionError):
                pass
            os.close(self.dump_r)
        return results

    def _next_message(self, deadline: float) -> bytes | None:
        """The next framed message; b"" when the reader closed its end (it died); None past `deadline`."""
        while True:
            if len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) >= 4 + size:
                    message, self.buffer = self.buffer[4:4 + size], self.buffer[4 + size:]
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self.result_r], [], [], left)
            if readable:
                chunk = os.read(self.result_r, 1 << 16)
                if not chunk:
                    return b""
                self.buffer += chunk

    def _timed_out(self, path: Path) -> Problem:
        try:
            self.process.send_signal(signal.SIGUSR1)  # faulthandler writes every thread's stack
        except ProcessLookupError:
            pass
        dump = self._dump(time.monotonic() + DUMP_WAIT_S)
        self.process.kill()
        problem = Problem(display_path(path), _line_in_dump(dump, path),
                          f"{ImportTimedOut(self.timeout_s)}; the file is not imported again until it changes "
                          "(`stepline check` tries it now; STEPLINE_IMPORT_TIMEOUT sets the limit)")
        _stuck[os.fspath(path)] = (_version(path), problem)
        return problem

    def _died_in(self, path: Path) -> Problem:
        code = self.process.wait()
        dump = self._dump(time.monotonic())
        if code < 0:
            name = _signal_name(-code)
            if -code == signal.SIGKILL:
                how = f"got the process importing it killed ({name}: out of memory?)"
            elif -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT):
                how = f"crashed the process importing it ({name}, in a C extension?)"
            else:
                how = f"ended the process importing it with {name} (sent by the file, or from outside)"
        else:
            how = f"ended the process importing it (exit status {code})"
        return Problem(display_path(path), _line_in_dump(dump, path),
                       f"importing the file {how}; other job files still load: fix the file or the package it "
                       "imports there, and check it with `python FILE`")

    def _dump(self, deadline: float) -> str:
        """What faulthandler wrote: all of it once the reader has ended, or what came before `deadline`."""
        chunks = []
        while True:
            readable, _, _ = select.select([self.dump_r], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            chunk = os.read(self.dump_r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            if b"most recent call first" in b"".join(chunks) and deadline > time.monotonic():
                deadline = time.monotonic() + 0.1  # the rest of the dump follows at once
        return b"".join(chunks).decode("utf-8", "replace")


_FRAME = re.compile(r'^\s*File "(.*)", line (\d+)', re.MULTILINE)


def _line_in_dump(dump: str, path: Path) -> int:
    """The innermost line of `path` in a faulthandler dump (frames are listed most recent first); 0 if none."""
    target = os.path.realpath(path)
    for match in _FRAME.finditer(dump):
        if os.path.realpath(match.group(1)) == target:
            return int(match.group(2))
    return 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _version(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


# --- the reader process -------------------------------------------------------------------------------------


_reader_pid = 0
_exit_process = os._exit


def _refuse_exit(status: int) -> NoReturn:
    """os._exit while a file is imported: in the reader itself, the file's problem. A process the file forked
    (a multiprocessing pool's worker) exits as it asked."""
    if os.getpid() != _reader_pid:
        _exit_process(status)
    raise ExitAtImport(status)


def _send(fd: int, result: Any) -> None:
    write_framed(fd, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


def _end_with_parent(parent: int) -> None:
    """A reader whose caller died (a daemon killed while a file's import waits) ends instead of waiting on.
    `parent`: the caller's pid, as it passed it: one that died before this runs is already not the parent."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="stepline-reader-parent", daemon=True).start()


def _import(path: Path) -> FileResult:
    """load_file, with what a file may do to the reader at import made its problem."""
    os._exit = _refuse_exit  # a file's os._exit at import becomes its problem, not the reader's end
    try:
        return load_file(path)
    except KeyboardInterrupt as error:  # the reader has a session of its own: no terminal sends it this
        from engine.loader import _line_in

        return [], [Problem(display_path(path), _line_in(path, error), "importing the file raised "
                            "KeyboardInterrupt; fix the file (other job files still load)")]
    finally:
        os._exit = _exit_process


def main() -> None:
    import faulthandler

    global _reader_pid
    _reader_pid = os.getpid()
    parent, result_fd, dump_fd, paths = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    faulthandler.enable(file=dump_fd, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=dump_fd, all_threads=True)
    os.dup2(2, 1)  # what a file prints at import goes where the caller said (stdout may carry --json)
    _end_with_parent(parent)
    folder = os.getcwd()
    environment = dict(os.environ)
    for path in paths:
        jobs, problems = _import(Path(path))
        if os.getpid() != _reader_pid:
            _exit_process(0)  # a copy of the reader the file forked at import: only the reader answers
        # Each file starts from the reader's own state, as it would alone: what one file changed at import
        # (working directory, environment) must not break the files after it.
        try:
            os.chdir(folder)
        except OSError:
            pass
        if os.environ != environment:
            os.environ.clear()
            os.environ.update(environment)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            result: FileResult = ([job_def.without_functions() for job_def in jobs], problems)
            _send(result_fd, result)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            _send(result_fd, ([], [Problem(display_path(path), 0, f"the file's jobs cannot be read: {error}")]))
    # Not the interpreter's exit: threads a job file started and its modules' exit handlers would hold it.
    _exit_process(0)


if __name__ == "__main__":
    main()
