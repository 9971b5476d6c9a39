"""Read attempt logs from the end: the last lines, or what was added since an offset.

Never reads a whole log: a tail seeks back in blocks until it has enough lines,
so a multi-gigabyte log costs the same as a small one.
"""
from __future__ import annotations

import os
from typing import BinaryIO

BLOCK = 1 << 16
MAX_LINE_CHARS = 10_000
"""Longer lines are cut when shown (the file keeps them whole)."""


def tail_start(path: str | os.PathLike[str], count: int) -> int:
    """The offset at which the file's last `count` lines begin (0 when it has no more than that)."""
    try:
        handle = open(path, "rb")
    except OSError:
        return 0
    with handle:
        end = handle.seek(0, os.SEEK_END)
        position, newlines = end, 0
        while position > 0 and count > 0:
            step = min(BLOCK, position)
            position -= step
            handle.seek(position)
            block = handle.read(step)
            if position + step == end and block.endswith(b"\n"):
                block = block[:-1]  # the last line's own end does not start a line
            index = len(block)
            while True:
                index = block.rfind(b"\n", 0, index)
                if index < 0:
                    break
                newlines += 1
                if newlines == count:
                    return position + index + 1
    return end if count <= 0 else 0


def tail_lines(path: str | os.PathLike[str], count: int, max_bytes: int = 4 << 20) -> list[str]:
    """The last `count` lines of the file, decoded leniently, each cut to MAX_LINE_CHARS."""
    try:
        handle = open(path, "rb")
    except OSError:
        return []
    with handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        position = end
        data = b""
        while position > 0 and data.count(b"\n") <= count and end - position < max_bytes:
            step = min(BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if position > 0 and len(lines) > count:
        lines.pop(0)  # the first piece is probably a partial line (kept when it is all there is: a huge line)
    return [decode_line(line) for line in lines[-count:]]


def read_from(path: str | os.PathLike[str], offset: int, max_bytes: int = 1 << 20) -> tuple[list[str], int]:
    """Complete lines added after `offset`, and the offset to read from next time."""
    try:
        handle = open(path, "rb")
    except OSError:
        return [], offset
    with handle:
        handle.seek(offset)
        data = handle.read(max_bytes)
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) < max_bytes:
                return [], offset
            # One enormous line: shown once, cut, rather than as a cut piece per read of max_bytes.
            end = _line_end(handle)
            if end is None:  # still being written: show what there is
                return [decode_line(data)], offset + len(data)
            return [decode_line(data, total_bytes=end - offset)], end + 1
    lines = data[:cut + 1].split(b"\n")[:-1]
    return [decode_line(line) for line in lines], offset + cut + 1


def cut_note(reason: str) -> str:
    """The line that ends a log a full disk cut short (`stepline logs` and the console print it the same)."""
    return f"[stepline: {reason}]"


def read_unended(path: str | os.PathLike[str], offset: int) -> tuple[list[str], int]:
    """The last line of a finished log that has no newline (the step was killed, or a full disk cut it), and
    the file's end; read_from keeps waiting for the end of such a line."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(MAX_LINE_CHARS * 4)
            end = handle.seek(0, os.SEEK_END)
    except OSError:
        return [], offset
    return ([decode_line(data, total_bytes=end - offset)] if data else []), end


def _line_end(handle: BinaryIO) -> int | None:
    """The offset of the next newline from the handle's position on, or None if the file ends first."""
    while True:
        position = handle.tell()
        block = handle.read(BLOCK * 16)
        if not block:
            return None
        found = block.find(b"\n")
        if found >= 0:
            return position + found


def decode_line(line: bytes, total_bytes: int | None = None) -> str:
    """A line for the screen: decoded leniently, control characters shown as \ufffd, cut to MAX_LINE_CHARS.
    `total_bytes`: the whole line's length, when `line` is only its start."""
    text = line.decode("utf-8", "replace")
    if "\r" in text:
        text = _redrawn(text)
    text = "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text) if not text.isprintable() else text
    if total_bytes is not None and total_bytes > len(line):
        return text[:MAX_LINE_CHARS] + f" … [a line of {total_bytes:,} bytes, cut]"
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + f" … [{len(text) - MAX_LINE_CHARS} more characters]"
    return text


STAMP_WIDTH = 25
"""The arrival time the log pump puts before each line (logpump.STAMP_WIDTH)."""


def _redrawn(text: str) -> str:
    """A line redrawn with carriage returns (a progress bar: `\\rdone 10%\\rdone 20%`) as a terminal leaves it:
    its stamp and its last version, instead of every version run together."""
    versions = [part for part in text[STAMP_WIDTH:].split("\r") if part]
    return text[:STAMP_WIDTH] + (versions[-1] if versions else "")
