"""A screen that shows one run keeps showing it as it goes on.

The timeline (`T`) and the dependency graph (`D`) of a running or queued run read the
run again once a second, in a thread (never on the event loop), until it ends: a retry's
new attempt, a step that started or failed, appear without closing and reopening the view.
"""
from __future__ import annotations

from datetime import datetime

from textual import work
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer

from engine.query import AttemptView, RunView
from tui import data

LIVE_STATES = ("running", "queued")
RELOAD_INTERVAL_S = 1.0


class LiveRunScreen(Screen[None]):
    """A screen about `self.run`; subclasses show a newly read run in `show_run`."""

    class RunRead(Message):
        def __init__(self, run: RunView, attempts: dict[str, list[AttemptView]]) -> None:
            super().__init__()
            self.run = run
            self.attempts = attempts

    def __init__(self, run: RunView) -> None:
        super().__init__()
        self.run = run
        self._reload_timer: Timer | None = None

    def on_mount(self) -> None:
        if self.run.state in LIVE_STATES:
            self._reload_timer = self.set_interval(RELOAD_INTERVAL_S, self.tick)

    def tick(self) -> None:
        """Once a second while the run is live: read it again (subclasses also move their clock)."""
        self._read_run(self.run.id)

    def now(self) -> datetime:
        from tui import format as fmt

        return fmt.utc_now(self.app.clock())  # type: ignore[attr-defined]

    @work(thread=True, exclusive=True, group="live-run")
    def _read_run(self, run_id: int) -> None:
        run, attempts = data.closing_connection(lambda: data.load_timeline(run_id))
        self.post_message(self.RunRead(run, attempts))

    def on_live_run_screen_run_read(self, message: RunRead) -> None:
        self.run = message.run
        if self.run.state not in LIVE_STATES and self._reload_timer is not None:
            self._reload_timer.stop()  # ended: this reading is the last one needed
            self._reload_timer = None
        self.show_run(message.run, message.attempts)

    def show_run(self, run: RunView, attempts: dict[str, list[AttemptView]]) -> None:
        raise NotImplementedError
