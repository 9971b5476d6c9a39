"""Copy attempt output from pipes into log files, one timestamped line at a time.

One thread serves every attempt's pipe through a selector, so a step never blocks
on a full pipe and the engine never needs a thread per attempt. Bytes are written
as they arrive: invalid UTF-8, binary and a 10 MB line pass through unchanged, and
a line cut off by a kill still reaches the file. Each line starts with its arrival
time in UTC: `2026-11-27T03:12:40.123Z ` (24 characters and a space).
"""
from __future__ import annotations

import io
import os
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 1 << 16
STAMP_WIDTH = 25


def stamp(at: float) -> bytes:
    seconds = int(at)
    millis = int((at - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%03dZ " % millis


@dataclass(slots=True)
class _Tail:
    key: int
    """Attempt id, handed back to on_closed."""
    file: io.FileIO
    at_line_start: bool = True
    bytes_written: int = 0


class LogPump:
    """Moves bytes from attempt pipes to attempt log files on one background thread."""

    def __init__(self, on_closed: Callable[[int], None], clock: Callable[[], float] = time.time) -> None:
        self._on_closed = on_closed
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[tuple[int, _Tail]] = []
        self._closing: list[int] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="stepline-logs", daemon=True)
        self._thread.start()

    def add(self, read_fd: int, log_path: str, key: int) -> None:
        """Start copying `read_fd` into `log_path`; on_closed(key) is called at end of output."""
        handle = io.FileIO(log_path, "ab")
        with self._lock:
            self._pending.append((read_fd, _Tail(key, handle)))
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
                tail: _Tail = selected.data
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
            if selected.data is not None:
                self._close(selected.fd, selected.data)

    def _take_requests(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            pending, self._pending = self._pending, []
            closing, self._closing = self._closing, []
        for fd, tail in pending:
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ, tail)
        for fd in closing:
            try:
                selected = self._selector.get_key(fd)
            except (KeyError, ValueError):
                continue
            self._drain(fd, selected.data)
            self._close(fd, selected.data)

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
        _write_all(tail.file, body)
        tail.bytes_written += len(body)

    def _close(self, fd: int, tail: _Tail) -> None:
        self._selector.unregister(fd)
        os.close(fd)
        if not tail.at_line_start:
            _write_all(tail.file, b"\n")
        tail.file.close()
        self._on_closed(tail.key)


def _write_all(handle: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view)
        view = view[written or 0:]
