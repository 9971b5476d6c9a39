"""The one-line header: engine state, run counts and the clock."""
from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from engine.query import EngineStatus
from tui import format as fmt


class StatusHeader(Static):
    DEFAULT_CSS = """
    StatusHeader { dock: top; height: 1; background: $panel; padding: 0 1; }
    """

    def __init__(self, mode: str, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.mode = mode
        self.status: EngineStatus | None = None
        self.counts: dict[str, int] = {}
        self.filter = "all"
        self.now: datetime | None = None
        self._shown: Text | None = None

    def set_state(self, status: EngineStatus | None = None, counts: dict[str, int] | None = None,
                  now: datetime | None = None, run_filter: str | None = None) -> None:
        if status is not None:
            self.status = status
        if counts is not None:
            self.counts = counts
        if now is not None:
            self.now = now
        if run_filter is not None:
            self.filter = run_filter
        # Asked four times a second (the clock, each poll): repaint only when a character changed, since a
        # slow SSH link pays for every repainted line.
        if self._text(compact=self.size.width < 110) != self._shown:
            self.refresh()

    def render(self) -> Text:
        self._shown = self._text(compact=self.size.width < 110)
        return self._shown

    def _text(self, compact: bool = False) -> Text:
        text = Text("" if compact else "stepline ", style="bold")
        if self.status is None:
            text.append("loading…", style="italic")
        else:
            text.append_text(fmt.engine_text(self.status, self.mode, compact))
        text.append(" │ " if compact else "  │  ")
        labels = (("running", "running"), ("failed", "failed in 24h"), ("queued", "queued"))
        for index, (state, label) in enumerate(labels):
            count = self.counts.get(state, 0)
            if index:
                text.append(" · ")
            style = {"running": "yellow", "failed": "bold red", "queued": "cyan"}[state] if count else "bright_black"
            text.append_text(fmt.glyph(state))
            text.append(f" {count}" if compact else f" {count} {label}", style=style)
        if self.filter != "all":
            text.append(f" │ filter: {self.filter}", style="bold magenta")
        if self.now is not None:
            text.append(f" │ {fmt.clock_text(self.now)}")
        return text
