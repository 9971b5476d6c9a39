"""The stepline console app: configuration, the main screen, app-wide keys and the command palette.

`stepline up` runs it with mode="embedded" (the engine runs in a thread of this process);
`stepline tui` with mode="attached" (a daemon owns the home). The database is opened by the
caller. The poll interval and the clock are arguments so tests can slow the one and freeze
the other.
"""
from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial

from textual.app import App, SystemCommand
from textual.notifications import Notify
from textual.binding import Binding
from textual.screen import Screen

from engine.home import Home
from tui.keys import MAIN_KEYS
from tui.screens.main import MainScreen

FIRST_PAINT_WAIT_S = 1.0
"""The longest the console waits for its first read before it paints anyway."""
FULL_COLLECTION_EVERY = 100
"""Middle-generation collections per full one while the console runs (Python's default is 10)."""


MAX_TOASTS = 3
"""Notices shown at once: more would cover the details and the log at 80x24 (the oldest goes first)."""


class SteplineApp(App[None]):
    TITLE = "stepline"
    # Keys the main screen hides because they do not apply to the selection land here and say why.
    BINDINGS = [Binding(key, f"explain('{action}')", text, show=False) for key, action, text in MAIN_KEYS]
    # Ctrl-C quits, as in htop or k9s (Textual's own answer is a hint to press ctrl+q); asks first as q does.
    BINDINGS += [Binding("ctrl+c", "quit", "Quit", show=False)]

    def __init__(self, home: Home, mode: str = "attached", poll_interval_s: float = 0.25,
                 clock: Callable[[], float] = time.time, stop_grace_s: float | None = None) -> None:
        super().__init__()
        self.home = home
        self.mode = mode
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.stop_grace_s = stop_grace_s
        """How long `stepline up` lets running steps finish on quit (quoted by the quit question)."""
        self.main_screen = MainScreen(mode)
        self._frozen = False
        self._thresholds: tuple[int, int, int] = gc.get_threshold()
        self._collecting_paused = False
        self._holding_paint = False
        self.notices: deque[tuple[str, str]] = deque(maxlen=200)
        """(title, message) of every notice shown, newest last, those already gone from the screen included."""

    def _on_notify(self, event: Notify) -> None:
        self.notices.append((event.notification.title, event.notification.message))
        super()._on_notify(event)
        shown = list(self._notifications)
        for old in shown[:-MAX_TOASTS]:
            self._unnotify(old, refresh=False)
        if len(shown) > MAX_TOASTS:
            self._refresh_notifications()

    def on_load(self) -> None:
        # Before the terminal is set up and the screen built: the read overlaps with both.
        self.main_screen.load_start()
        # Paint the first screen once, when its data is there: frames of an empty tree before it cost
        # the read its share of the interpreter, and the whole start-up ~150 ms. At most FIRST_PAINT_WAIT_S.
        self._begin_batch()
        self._holding_paint = True
        self.set_timer(FIRST_PAINT_WAIT_S, self.first_screen_ready)
        # Start-up makes its long-lived objects in a burst, and collections during it walk them again
        # and again (one full collection alone took 50-90 ms on the way to the first screen). None
        # until they are built and frozen (see `start_up_done`).
        if gc.isenabled():
            gc.disable()
            self._collecting_paused = True

    def on_mount(self) -> None:
        self.push_screen(self.main_screen)

    async def action_quit(self) -> None:
        """ctrl+q, ctrl+c and the palette's Quit: the same as q, which asks first when quitting would stop active
        runs."""
        self.main_screen.action_quit_console()

    def first_screen_ready(self) -> None:
        """The first screen has its data (or waited long enough): paint from now on."""
        if self._holding_paint:
            self._holding_paint = False
            self._end_batch()
            self.screen.refresh()

    def start_up_done(self) -> None:
        """The first screen is built: keep the garbage collector off the objects made so far.

        Start-up leaves ~100,000 long-lived objects (widgets, styles, caches, the engine's in
        `stepline up`); every full collection walked them all, a 100-200 ms pause every few
        seconds under a log flood. Frozen, they are skipped; `on_unmount` gives them back.
        """
        if not self._frozen:
            self._frozen = True
            gc.freeze()
            # Under a log flood a full collection still came every ~10 s (20-50 ms each, one key in a
            # hundred waited for it): one full for 100 rather than 10 middle-generation collections.
            # What it leaves for later is bounded (the log keeps MAX_LINES, the caches have sizes):
            # bench.console's RSS stays flat over its 3-minute flood.
            self._thresholds = gc.get_threshold()
            young, middle, old = self._thresholds
            gc.set_threshold(young, middle, max(old, FULL_COLLECTION_EVERY))
        self._resume_collecting()

    def _resume_collecting(self) -> None:
        if self._collecting_paused:
            self._collecting_paused = False
            gc.enable()

    def on_unmount(self) -> None:
        self._resume_collecting()
        if self._frozen:
            self._frozen = False
            gc.unfreeze()
            gc.set_threshold(*self._thresholds)

    def action_explain(self, action: str) -> None:
        if self.screen is self.main_screen:
            self.main_screen.explain(action)

    async def _palette_action(self, action: str) -> None:
        reason = self.main_screen.why_not(action)
        if reason:
            self.notify(reason, title="not applicable", severity="warning")
            return
        await self.main_screen.run_action(action)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title == "Quit" and screen is self.main_screen:
                continue  # ours (key q) says what quitting does to active runs; Textual's says it quits at once
            yield command
        if screen is not self.main_screen:
            return
        for key, action, text in MAIN_KEYS:
            shown = {"slash": "/", "question_mark": "?"}.get(key, key)
            yield SystemCommand(text, f"key {shown}", partial(self._palette_action, action))
        from tui.widgets.log_tail import LogTail

        for binding in LogTail.BINDINGS:  # the log's own keys, which act on the log pane wherever the focus is
            if isinstance(binding, Binding) and binding.show and binding.tooltip:
                shown = {"slash": "/"}.get(binding.key, binding.key)
                yield SystemCommand(f"Log: {binding.tooltip}", f"key {shown} in the log",
                                    partial(self._log_action, binding.action))

    async def _log_action(self, action: str) -> None:
        pane = self.main_screen.log_pane
        pane.log_widget.focus()
        await pane.run_action(action)
