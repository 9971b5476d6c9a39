"""A yes/no question (cancel a run, quit with active runs): y confirms, n or escape keeps things as they are."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    # A round border draws whole cells in the box's colour; the half-block thick border let the pane
    # beneath (the log's status line) show through the dialog's edge.
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; background: $background 70%; }
    ConfirmScreen > Vertical { width: 70; max-width: 100%; height: auto; border: round $warning;
                               padding: 1 2; background: $surface; }
    ConfirmScreen #confirm-keys { margin-top: 1; text-style: bold; }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, question: str, yes: str = "yes", no: str = "keep going") -> None:
        """`yes` and `no` say what each answer does ("run again", "leave it as it is")."""
        super().__init__()
        self.title_text = title
        self.question = question
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self.title_text
            yield Static(self.question, id="confirm-question")
            yield Static(f"y {self.yes}    n / escape {self.no}", id="confirm-keys")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
