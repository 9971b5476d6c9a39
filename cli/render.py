"""Human output for the command line: durations, times, aligned tables, colour, JSON.

Colour only on a terminal and never when NO_COLOR is set; JSON output turns the
engine's plain dataclasses into documents scripts can rely on.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from datetime import datetime, timezone
from collections.abc import Sequence
from typing import Any, TextIO

import click

from engine.humanize import byte_size as bytes_size
from engine.humanize import duration
from engine.states import COLORS



def mute(stream: TextIO) -> None:
    """The reader of `stream` went away (`| head`, a pager that quit) or its terminal hung up: from now on
    what is written there goes to /dev/null, so the work in hand goes on, and the text still buffered does
    not fail again when Python flushes it at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass  # not a real file descriptor: nothing buffered can fail on it
    finally:
        os.close(devnull)


def echo_or_mute(text: str, err: bool = False) -> bool:
    """click.echo, for output that must not stop a run: when nobody reads it any more, the text is dropped,
    the stream muted, and False returned."""
    try:
        click.echo(text, err=err)
        return True
    except OSError:  # EPIPE: the reader went away; EIO: the terminal hung up
        mute(sys.stderr if err else sys.stdout)
        return False


def use_color(stream: TextIO | None = None) -> bool:
    if os.environ.get("NO_COLOR"):  # set and not empty, as no-color.org defines it
        return False
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def paint(text: str, state: str | None, color: bool) -> str:
    if not color or state not in COLORS:
        return text
    style = COLORS[state]
    return click.style(text, fg=style.removeprefix("bold "), bold=style.startswith("bold "))


def local_time(at: datetime | None, with_date: bool = True) -> str:
    if at is None:
        return "-"
    local = at.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def relative(at: datetime | None, now: datetime) -> str:
    """"in 4m", "3h ago"."""
    if at is None:
        return "-"
    delta = (at - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {_coarse(abs(delta))}" if delta > 0 else f"{_coarse(abs(delta))} ago"


def _coarse(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def cell_width(text: str) -> int:
    """Columns `text` takes on a terminal: East Asian wide characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    import unicodedata  # only for text that needs it

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cut(text: str, width: int) -> str:
    """`text` in at most `width` terminal cells, ending in … when it had to be cut."""
    if cell_width(text) <= width:
        return text
    while text and cell_width(text) > width - 1:
        text = text[:-1]
    return text.rstrip() + "…"


def pad(text: str, width: int) -> str:
    return text + " " * (width - cell_width(text))


def table(headers: list[str], rows: list[list[str]], states: Sequence[str | None] | None = None,
          state_column: int | None = None, color: bool = False) -> str:
    """Left-aligned columns (by terminal cells, so names in CJK line up); the state column painted when `color`."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], cell_width(cell))
    lines = ["  ".join(pad(h.upper(), widths[i]) for i, h in enumerate(headers)).rstrip()]
    for index, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            text = pad(cell, widths[i]) if i < len(row) - 1 else cell
            if color and state_column == i and states is not None:
                text = paint(text, states[index], color)
            cells.append(text)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def json_text(document: Any) -> str:
    return json.dumps(to_jsonable(document), indent=2, ensure_ascii=False)


def print_json(document: Any) -> None:
    click.echo(json_text(document))
