"""Read attempt logs from the end: the last lines, or what was added since an offset.

Never reads a whole log: a tail seeks back in blocks until it has enough lines,
so a multi-gigabyte log costs the same as a small one.
"""
from __future__ import annotations

import os

BLOCK = 1 << 16
MAX_LINE_CHARS = 10_000
"""Longer lines are cut when shown (the file keeps them whole)."""


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
        return [decode_line(data)], offset + len(data)  # one enormous line: show what we have
    lines = data[:cut + 1].split(b"\n")[:-1]
    return [decode_line(line) for line in lines], offset + cut + 1


def decode_line(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text) if not text.isprintable() else text
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + f" … [{len(text) - MAX_LINE_CHARS} more characters]"
    return text
