"""The details pane's field rows draw exactly as the Rich grid table they replace."""
from __future__ import annotations

import pytest
from rich.console import Console
from rich.text import Text

from tui.widgets.details import FieldGrid

STATE = Text("✗", style="bold red")
STATE.append(" failed", style="bold red")
STATE.append(" — ValueError: bad row 17: price is negative")
ATTEMPTS = Text("✗ #1/2 failed  exit 1  2.0s  cpu 0.5s  peak 47.7 MB  12-31 21:19")
ATTEMPTS.append("  ValueError: bad row 17: price is negative", style="red")
ATTEMPTS.append("\n↻ #2/2 running  12.3s  12-31 21:19", style="")
ROWS: list[list[tuple[str, Text | str]]] = [
    [("state", STATE), ("run", "#12 of nightly (failed, schedule)"), ("attempts", ATTEMPTS),
     ("upstream", Text("none", style="bright_black")), ("downstream", Text(""))],
    [("file", "/srv/jobs/a/very/long/path/without/any/spaces/that/has/to/fold/nightly_sales_and_more.py:14")],
    [("params", "day=2026-11-27, [bold]markup[/bold] and :smile: as a str cell gets them"), ("paused", "no")],
    [("steps", Text("extract\ntransform ← extract\nload ← transform, extract", style="bold"))],
    [("名前", Text("日本語のテキストは二つのセルを使う " * 4)), ("", "empty name"), ("empty value", "")],
    [("a field name wider than a narrow pane", "value")],
    [],
]


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("color_system", [None, "standard", "truecolor"])
def test_field_rows_draw_as_the_grid_table_does_at_every_width(rows, color_system):  # type: ignore[no-untyped-def]
    console = Console(width=200, color_system=color_system, force_terminal=color_system is not None)
    grid = FieldGrid(rows)
    for width in range(1, 130):
        options = console.options.update_width(width)
        assert list(console.render(grid, options)) == list(console.render(grid.table(), options)), width
