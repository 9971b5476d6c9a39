"""The `a` picker in the log: choose which attempt's log to read."""
from __future__ import annotations

from datetime import datetime

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from engine.query import AttemptView
from tui import format as fmt


class AttemptScreen(ModalScreen[int | None]):
    DEFAULT_CSS = """
    AttemptScreen { align: center middle; }
    AttemptScreen > OptionList { width: 90; max-width: 100%; height: auto; max-height: 80%;
                                 border: thick $accent; background: $surface; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, step: str, attempts: list[AttemptView], current: int, now: datetime) -> None:
        super().__init__()
        self.step = step
        self.attempts = attempts
        self.current = current
        self.now = now

    def compose(self) -> ComposeResult:
        options = [Option(fmt.attempt_line(a, len(self.attempts), self.now), id=str(a.number)) for a in self.attempts]
        picker = OptionList(*options)
        picker.border_title = f"attempts of {self.step} · enter shows its log"
        yield picker

    def on_mount(self) -> None:
        picker = self.query_one(OptionList)
        numbers = [a.number for a in self.attempts]
        picker.highlighted = numbers.index(self.current) if self.current in numbers else 0
        picker.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_cancel(self) -> None:
        self.dismiss(None)
