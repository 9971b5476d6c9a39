"""Copy attempt output from pipes into log files, one timestamped line at a time.

One thread serves every attempt's pipe through a selector, so a step never blocks
on a full pipe and the engine never needs a thread per attempt. Bytes are written
as they arrive: invalid UTF-8, binary and a 10 MB line pass through unchanged, and
a line cut off by a kill still reaches the file. Each line starts with its arrival
time in UTC: `2026-11-27T03:12:40.123Z ` (24 characters and a space).

The same thread reads each attempt's result pipe: one length-framed message
that a Python attempt sends after closing its output (see worker.send_result),
and the sockets of the preloaded workers (`watch`): one thread wakes for an
attempt's exit, its result and the end of its log, instead of one per source.
"""
from __future__ import annotations

import io
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.worker import decode

CHUNK = 1 << 16
STAMP_WIDTH = 25
_SELECTORS_THAT_SEE_NEW_FDS = tuple(getattr(selectors, name) for name in ("EpollSelector", "KqueueSelector")
                                    if hasattr(selectors, name))


def stamp(at: float) -> bytes:
    seconds = int(at)
    millis = int((at - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%03dZ " % millis


@dataclass(slots=True)
class _Tail:
    key: int
    """Attempt id, handed back to on_closed."""
    path: str
    file: io.FileIO | None = None
    """Created by the pump's thread with the attempt's first output: an attempt that prints nothing
    leaves no file (nor folder) behind. Creating files was most of this thread's work in a daemon
    starting 50 short scheduled runs a second, and would leave millions of empty files a day."""
    at_line_start: bool = True
    write_error: str | None = None
    """Set when the log file stopped taking writes (e.g. disk full)."""
    bytes_written: int = 0


@dataclass(slots=True)
class _Watch:
    on_readable: Callable[[], bool]
    """Reads what is ready; False at end of stream."""
    on_end: Callable[[], None]
    """Called once the fd is no longer watched (end of stream, or the pump stopping)."""


@dataclass(slots=True)
class _Result:
    key: int
    """Attempt id, handed back to on_result."""
    data: bytearray
    waiters: list[Callable[[], None]]
    """Called once the result is settled (delivered, or known never to come)."""


class LogPump:
    """Moves bytes from attempt pipes to attempt log files on one background thread."""

    def __init__(self, on_closed: Callable[[int, str | None], None], clock: Callable[[], float] = time.time,
                 on_result: Callable[[int, dict], None] | None = None) -> None:
        self._on_closed = on_closed
        self._on_result = on_result
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        # epoll and kqueue watch an fd registered while this pump's thread waits; poll and select (other
        # systems) see it only from their next call, so registering wakes the thread there.
        self._wake_to_register = not isinstance(self._selector, _SELECTORS_THAT_SEE_NEW_FDS)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closing: list[int] = []
        self._results: dict[int, int] = {}  # key -> result pipe read end, until settled
        self._settling: list[tuple[int, Callable[[], None]]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="stepline-io", daemon=True)
        self._thread.start()

    def add(self, read_fd: int, log_path: str, key: int, result_fd: int | None = None) -> None:
        """Start copying `read_fd` into `log_path` (created, with its folder, at the first output); on_closed(key)
        is called at end of output. With `result_fd`, also read the attempt's result message from it
        and pass it to on_result(key, result).

        The pipes are registered from the calling thread, without waking the pump's thread: epoll
        (kqueue on BSD and macOS) takes a new fd while another thread waits on it, and that thread wakes
        only when the pipe has something to read. Waking it just to register costs both threads a
        switch and a turn of the interpreter lock per attempt.
        """
        os.set_blocking(read_fd, False)
        self._selector.register(read_fd, selectors.EVENT_READ, _Tail(key, log_path))
        if result_fd is not None:
            os.set_blocking(result_fd, False)
            with self._lock:
                self._results[key] = result_fd
            self._selector.register(result_fd, selectors.EVENT_READ, _Result(key, bytearray(), []))
        if self._wake_to_register:
            os.write(self._wake_w, b"x")

    def watch(self, fd: int, on_readable: Callable[[], bool], on_end: Callable[[], None]) -> None:
        """Call on_readable() on this pump's thread whenever `fd` has data, until it returns False; then
        stop watching and call on_end(), which may close the fd (the pump never does)."""
        self._selector.register(fd, selectors.EVENT_READ, _Watch(on_readable, on_end))
        if self._wake_to_register:
            os.write(self._wake_w, b"x")

    def settle_result(self, key: int, then: Callable[[], None]) -> None:
        """Call `then` once the attempt's result has been passed on, or is known never to come.

        Used when the attempt's process has exited: whatever it sent is in the pipe by now, so the
        pipe is drained and closed (a process it forked may still hold it open), and `then` runs on
        this pump's thread after on_result. Without a pending result pipe, `then` runs at once.
        """
        with self._lock:
            if key not in self._results:
                settled = True
            else:
                settled = False
                self._settling.append((key, then))
        if settled:
            then()
        elif threading.get_ident() == self._thread.ident:
            self._take_requests()  # an exit reported by a worker's socket: settled in this same round
        else:
            os.write(self._wake_w, b"x")

    def force_close(self, read_fd: int) -> None:
        """Stop reading a pipe that a leftover process keeps open (what it sent so far is kept)."""
        with self._lock:
            self._closing.append(read_fd)
        os.write(self._wake_w, b"x")

    def stop(self) -> None:
        self._stopped = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stopped:
            for selected, _ in self._selector.select():
                fd = selected.fd
                if fd == self._wake_r:
                    self._take_requests()
                    continue
                if self._selector.get_map().get(fd) is not selected:
                    # force_close() above closed it in this same round (its number may even be reused).
                    continue
                tail: _Tail | _Result | _Watch = selected.data
                if isinstance(tail, _Watch):
                    if not tail.on_readable():
                        self._selector.unregister(fd)
                        tail.on_end()
                    continue
                if isinstance(tail, _Result):
                    self._read_result(fd, tail)
                    continue
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self._write(tail, data)
                else:
                    self._close(fd, tail)
        for key in list(self._selector.get_map()):
            selected = self._selector.get_map()[key]
            if type(selected.data) is _Watch:
                self._selector.unregister(selected.fd)
                selected.data.on_end()
            elif type(selected.data) is _Result:
                self._end_result(selected.fd, selected.data)
            elif selected.data is not None:
                self._close(selected.fd, selected.data)

    def _take_requests(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            closing, self._closing = self._closing, []
            settling, self._settling = self._settling, []
        for key, then in settling:
            with self._lock:
                result_fd = self._results.get(key)
            if result_fd is None:
                then()  # settled meanwhile; on_result (if any) has run
                continue
            result: _Result = self._selector.get_key(result_fd).data
            result.waiters.append(then)
            self._read_result(result_fd, result, drain=True)
        for fd in closing:
            try:
                selected = self._selector.get_key(fd)
            except (KeyError, ValueError):
                continue
            self._drain(fd, selected.data)
            self._close(fd, selected.data)

    def _open(self, tail: _Tail) -> None:
        try:
            try:
                tail.file = io.FileIO(tail.path, "ab")
            except FileNotFoundError:
                os.makedirs(os.path.dirname(tail.path), exist_ok=True)  # a run's first attempt
                tail.file = io.FileIO(tail.path, "ab")
        except OSError as error:
            # The attempt runs anyway; its output is drained so it never blocks, and the reason is logged.
            tail.write_error = f"{error.strerror or error}"
            logging.getLogger("stepline.engine").error("log %s: cannot create (%s); the output of this "
                                                       "attempt is dropped", tail.path, tail.write_error)

    def _read_result(self, fd: int, result: _Result, drain: bool = False) -> None:
        """Read what the result pipe holds; pass the message on once complete. `drain`: the writer has exited."""
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                if drain:
                    break  # nothing more will come from the attempt itself
                return
            except OSError:
                data = b""
            if not data:
                break
            result.data += data
            size = int.from_bytes(result.data[:4], "big") if len(result.data) >= 4 else -1
            if 0 <= size <= len(result.data) - 4:
                message = None
                try:
                    message = decode(bytes(result.data[4:4 + size]))
                except (ValueError, EOFError, TypeError):
                    pass  # not a result of ours: the attempt is judged by its exit status
                if isinstance(message, dict) and self._on_result is not None:
                    self._on_result(result.key, message)
                break
        self._end_result(fd, result)

    def _end_result(self, fd: int, result: _Result) -> None:
        self._selector.unregister(fd)
        os.close(fd)
        with self._lock:
            self._results.pop(result.key, None)
        for then in result.waiters:
            then()

    def _drain(self, fd: int, tail: _Tail) -> None:
        while True:
            try:
                data = os.read(fd, CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._write(tail, data)

    def _write(self, tail: _Tail, data: bytes) -> None:
        prefix = stamp(self._clock())
        # Every newline starts a new line, so it gets the stamp; a chunk ending in a newline leaves
        # the next line unstarted (its stamp comes with its first byte, in a later chunk).
        body = data.replace(b"\n", b"\n" + prefix)
        if data.endswith(b"\n"):
            body = body[:-len(prefix)]
        if tail.at_line_start:
            body = prefix + body
        tail.at_line_start = data.endswith(b"\n")
        if tail.file is None and tail.write_error is None:
            self._open(tail)
        if tail.write_error is not None or tail.file is None:
            return  # keep draining the pipe so the step never blocks; the file cannot take more
        try:
            _write_all(tail.file, body)
        except OSError as error:
            # A full disk must not stop this thread: every other attempt's log goes through it too.
            tail.write_error = f"{error.strerror or error}"
            logging.getLogger("stepline.engine").error("log %s: cannot write (%s); further output of "
                                                       "this attempt is dropped", tail.path, tail.write_error)
            return
        tail.bytes_written += len(body)

    def _close(self, fd: int, tail: _Tail) -> None:
        self._selector.unregister(fd)
        os.close(fd)
        try:
            if tail.file is not None:
                if not tail.at_line_start and tail.write_error is None:
                    _write_all(tail.file, b"\n")
                tail.file.close()
        except OSError:
            pass  # already reported by _write; the attempt must still end
        self._on_closed(tail.key, None if tail.write_error is None else
                        f"the log was cut after {tail.bytes_written:,} bytes: {tail.write_error}; the rest of "
                        "the step's output was lost")


def _write_all(handle: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view)
        view = view[written or 0:]
