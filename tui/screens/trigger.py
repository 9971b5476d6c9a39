"""The `t` prompt: run a job now with params (its defaults pre-filled, more as key=value)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


def parse_params(text: str) -> dict[str, str]:
    """"a=1 b=two note='two words'" as a dict, quoted as a shell would; raises ValueError naming the bad piece."""
    import shlex

    params: dict[str, str] = {}
    try:
        pieces = shlex.split(text)
    except ValueError as error:  # an unclosed quote
        raise ValueError(f"{error} in {text!r}") from None
    for piece in pieces:
        key, sep, value = piece.partition("=")
        if not sep or not key:
            raise ValueError(f"'{piece}' is not key=value")
        params[key] = value
    return params


class TriggerScreen(ModalScreen[dict[str, str] | None]):
    DEFAULT_CSS = """
    TriggerScreen { align: center middle; }
    TriggerScreen > Vertical { width: 76; max-width: 100%; height: auto; max-height: 100%;
                               border: thick $accent; padding: 0 1; background: $surface; }
    TriggerScreen Label { margin-top: 1; }
    TriggerScreen #trigger-error { color: $error; height: auto; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, job: str, defaults: dict[str, str]) -> None:
        super().__init__()
        self.job = job
        self.defaults = defaults

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"trigger {self.job}"
            box.border_subtitle = "enter runs · tab next field · escape cancels"
            # Widget ids by position: a param's name may hold what an id may not ("run.date", spaces).
            for index, (key, value) in enumerate(self.defaults.items()):
                yield Label(f"{key}  (default {value!r}, also when left empty)")
                yield Input(value, id=f"param-{index}", classes="param")
            if not self.defaults:  # a job that declares its params takes those only (JobDef.unknown_param)
                yield Label("params: key=value key2='two words'")
                yield Input(placeholder="date=2026-11-27", id="param-extra")
            yield Static("", id="trigger-error")

    def on_mount(self) -> None:
        inputs = self.query(Input)
        if inputs:
            inputs.first().focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        # A field emptied by mistake runs with the default, as a -p left out does; not with "".
        params = {key: self.query_one(f"#param-{index}", Input).value or default
                  for index, (key, default) in enumerate(self.defaults.items())}
        try:
            if not self.defaults:
                params.update(parse_params(self.query_one("#param-extra", Input).value))
        except ValueError as error:
            self.query_one("#trigger-error", Static).update(f"{error}; write params as key=value separated by spaces")
            return
        self.dismiss(params)

    def action_cancel(self) -> None:
        self.dismiss(None)
