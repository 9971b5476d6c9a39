"""The right-bottom pane: the log of the selected step's attempt, following its end.

Reads only from the end of the file (a tail from a recent offset, then `read_from` the last
offset) in a thread worker, so a multi-gigabyte log costs the same as a small one. Shows the
25-character UTC stamp of each line as local HH:MM:SS. Search, error jump and wrap work on the
lines loaded (the last MAX_LINES), which the pane's title says.
"""
from __future__ import annotations

import calendar
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rich.cells import cell_len
from rich.highlighter import Highlighter
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, work
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widgets import Input, Log, Static
from textual.worker import get_current_worker

from engine.logread import cut_note, read_from, read_unended
from engine.query import AttemptView

MAX_LINES = 10_000
STRIPS_KEPT = 512
"""Rendered lines kept by their text: a few screenfuls (under a flood, older ones never show again)."""
TAIL_BYTES = 2 << 20
"""How far back from the end the first read starts."""
CATCH_UP_BYTES = 8 << 20
"""A log that grew more than this since the last read is tailed again instead of read through."""
STAMP = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.\d{3}Z ")
ERROR = re.compile(r"error|exception|traceback|fatal|failed|panic", re.IGNORECASE)


def local_stamp(line: str, _cache: dict[str, str] = {}) -> str:
    """Replace the UTC stamp prefix with local HH:MM:SS (cached per second: logs are bursty)."""
    match = STAMP.match(line)
    if match is None:
        return line
    key = line[:19]
    shown = _cache.get(key)
    if shown is None:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        epoch = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        shown = time.strftime("%H:%M:%S", time.localtime(epoch))
        if len(_cache) > 4096:
            _cache.clear()
        _cache[key] = shown
    return f"{shown} {line[25:]}"


class LogHighlighter(Highlighter):
    """Dim stamps, red error words, reverse-video search matches (visible without colour too)."""

    def __init__(self) -> None:
        self.term: str | None = None

    def highlight(self, text: Text) -> None:
        plain = text.plain
        if len(plain) > 8 and plain[2] == ":" and plain[5] == ":":
            text.stylize("bright_black", 0, 8)
        for match in ERROR.finditer(plain):
            text.stylize("bold red", match.start(), match.end())
        if self.term:
            lowered, needle = plain.lower(), self.term.lower()
            start = lowered.find(needle)
            while start >= 0:
                text.stylize("reverse", start, start + len(needle))
                start = lowered.find(needle, start + len(needle))


class TailLog(Log):
    """A Log made cheap for a flood: lean appends, and each distinct line highlighted once.

    Textual's Log measures every appended line in a worker thread and forgets a rendered line
    as soon as it is drawn; at 10,000 lines/s both cost more than the lines are worth. Here an
    append measures in place (plain ASCII lines by length) and refreshes only what is on screen,
    and rendered lines are kept by their text until the search term or the styles change.
    """

    BINDINGS = [
        # A column at a time, reaching the end of a 200-character line took 200 presses.
        Binding("right", "sideways(8)", "Right", show=False),
        Binding("left", "sideways(-8)", "Left", show=False),
    ]

    def action_sideways(self, columns: int) -> None:
        self.scroll_relative(x=columns, animate=False)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(highlight=True, max_lines=MAX_LINES * 4, **kwargs)  # type: ignore[arg-type]
        self.highlighter = LogHighlighter()
        self._strips: dict[str, Strip] = {}
        """Rendered lines by their text (no offsets: those are applied per draw)."""

    def restyle(self) -> None:
        # A new search term changes how lines render: draw the visible ones again.
        self._strips.clear()
        self._render_line_cache.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def clear(self) -> TailLog:
        self._strips.clear()
        super().clear()
        return self

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> TailLog:
        """Append lines that hold no line break (what `read_from` returns)."""
        new = list(lines)
        if not new:
            return self
        at_end = self.is_vertical_scroll_end
        self._lines.extend(new)
        if self.max_lines is not None and len(self._lines) > self.max_lines:
            del self._lines[:len(self._lines) - self.max_lines + 1]
            # The top says that more came before, as it does when a long log is opened.
            self._lines.insert(0, f"… earlier lines not shown: the pane keeps the last {self.max_lines - 1:,}; "
                                  "`stepline logs` prints all of them")
            # Line numbers moved: nothing cached by number is valid any more.
            self._render_line_cache.clear()
        self._width = max(self._width, _widest(new))
        self.virtual_size = Size(self._width, len(self._lines))
        follow = self.auto_scroll if scroll_end is None else scroll_end
        if follow and at_end and not self.is_vertical_scrollbar_grabbed:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()
        return self

    def _render_line_strip(self, y: int, rich_style: Style) -> Strip:
        if self.text_selection is not None:
            return super()._render_line_strip(y, rich_style)
        line = self._lines[y]
        strip = self._strips.get(line)
        if strip is None:
            if len(self._strips) >= STRIPS_KEPT:
                self._strips.clear()
            strip = self._strips[line] = super()._render_line_strip(y, rich_style)
        return strip


    class Resized(Message):
        """The lines have a new width: a wrapped log wraps again."""

    class ScrolledBack(Message):
        """The user scrolled up (keys or wheel): they read something above, the end must not pull them back."""

    class ScrolledToEnd(Message):
        """The user asked for the end (the End key): it follows again, as G does."""

    def action_scroll_up(self) -> None:
        super().action_scroll_up()
        self.post_message(self.ScrolledBack())

    def action_page_up(self) -> None:
        super().action_page_up()
        self.post_message(self.ScrolledBack())

    def action_scroll_home(self) -> None:
        super().action_scroll_home()
        self.post_message(self.ScrolledBack())

    def action_scroll_end(self) -> None:
        super().action_scroll_end()
        self.post_message(self.ScrolledToEnd())

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        if not (event.ctrl or event.shift):  # those scroll sideways
            self.post_message(self.ScrolledBack())

    def on_resize(self) -> None:
        self.post_message(self.Resized())

    def _render_line(self, y: int, scroll_x: int, width: int) -> Strip:
        """A line cut at the pane's right edge ends in a dim …, which says there is more to read (→, or w
        to wrap); the pane has no horizontal scrollbar, whose row repainted cell by cell at every new line
        (most of what the console wrote to a slow SSH link while following a log)."""
        strip = super()._render_line(y, scroll_x, width)
        shown = width - self.scrollbar_size_vertical  # the scrollbar is drawn over the line's last cells
        if y < len(self._lines) and shown > 1:
            full = self._render_line_strip(y, self.rich_style)
            if full.cell_length > scroll_x + shown:
                marker = Strip([Segment("…", self.rich_style + CUT_STYLE)], 1)
                strip = Strip.join([strip.crop(0, shown - 1), marker, strip.crop(shown, width)])
        return strip


CUT_STYLE = Style(dim=True)


def _log_cut(run_id: int, step: str, number: int) -> str | None:
    """Why the attempt's log lacks the end of its output, if a full disk cut it (read on a worker's thread)."""
    from engine import store
    from tui.data import closing_connection

    return closing_connection(lambda: store.log_cuts(run_id)).get((step, number))


def _widest(lines: list[str]) -> int:
    """Cells the widest line takes, as Log measures it (control codes replaced, tabs expanded)."""
    widest = 0
    for line in lines:
        if line.isascii() and line.isprintable():
            width = len(line)  # the common case: one cell per character
        else:
            width = cell_len(Log._process_line(line))
        if width > widest:
            widest = width
    return widest


@dataclass(frozen=True, slots=True)
class LogSource:
    run_id: int
    step: str
    attempts: tuple[AttemptView, ...]
    number: int
    """The attempt shown."""

    @property
    def attempt(self) -> AttemptView | None:
        return next((a for a in self.attempts if a.number == self.number), None)


class LogTail(Vertical):
    ALLOW_MAXIMIZE = True  # z: the pane (its title, search bar and status with it), not only its lines
    DEFAULT_CSS = """
    LogTail { border: round $primary-darken-2; border-title-align: left; }
    LogTail:focus-within { border: round $accent; }
    LogTail > TailLog { height: 1fr; scrollbar-size-horizontal: 0; }
    LogTail > #log-search { dock: bottom; display: none; }
    LogTail > #log-search.-open { display: block; }
    LogTail > #log-status { height: 1; color: $text-muted; }
    """
    # Short footer labels, the most used first, so 80 columns show them all; the tooltips and the help say more.
    BINDINGS = [
        Binding("slash", "search", "Search", tooltip="Search the loaded lines"),
        Binding("n", "next_match", "Next", tooltip="Next match"),
        Binding("N", "next_match(False)", "Prev", tooltip="Previous match"),
        Binding("F", "toggle_follow", "Follow", tooltip="Follow the end on/off"),
        Binding("w", "toggle_wrap", "Wrap", tooltip="Wrap long lines on/off"),
        Binding("e", "first_error", "Error", tooltip="Jump to the first error line"),
        Binding("a", "pick_attempt", "Attempt", tooltip="Pick another attempt"),
        Binding("g", "top", "Top"),
        Binding("G", "bottom", "End", tooltip="Bottom; follows again"),
        Binding("z", "toggle_zoom", "Zoom", tooltip="The log on the whole screen on/off"),
        Binding("escape", "leave", "Back to tree", show=False),
    ]

    class AttemptWanted(Message):
        """The user asked to see another attempt."""

    class Left(Message):
        """The user left the log (escape)."""

    class _Read(Message):
        def __init__(self, token: int, lines: list[str], offset: int, reset: bool, missing: bool,
                     finished: bool) -> None:
            super().__init__()
            self.token, self.lines, self.offset, self.reset = token, lines, offset, reset
            self.missing, self.finished = missing, finished

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "log"
        self.source: LogSource | None = None
        self.follow = True
        self.wrap = False
        self._wrapped_at = 0
        """The width the loaded lines were last wrapped at."""
        self._raw: deque[str] = deque(maxlen=MAX_LINES)
        self._offset = 0
        self._token = 0
        self._reading = False
        self._done = False
        self._term: str | None = None
        self._matches: list[int] = []
        self._match = -1
        self._note = ""
        self._status = ""

    def compose(self):  # type: ignore[no-untyped-def]
        yield Static("", id="log-status")
        yield TailLog(id="log")
        yield Input(placeholder="search the loaded lines, enter to find, escape to close", id="log-search")

    @property
    def log_widget(self) -> TailLog:
        return self.query_one(TailLog)

    # --- what to show -------------------------------------------------------------------------------------------

    def show(self, source: LogSource | None, message: str = "") -> None:
        """Show an attempt's log (or a message); keeps the offset when it is the same attempt."""
        old = self.source
        same = (old is not None and source is not None and (old.run_id, old.step, old.number)
                == (source.run_id, source.step, source.number))
        self.source = source
        if same:
            self._done = False
            self._update_title()
            return
        self._token += 1
        self._reading = False  # a read for the old attempt may still land; its token makes it ignored
        self._raw.clear()
        self._offset = 0
        self._done = False
        # Another log opens as a new one does in `tail -f`: following its end, with no search of the last one.
        self.follow = True
        if self._term:
            self._term = None
            self.log_widget.highlighter.term = None  # type: ignore[attr-defined]  # our LogHighlighter
        self._matches, self._match = [], -1
        log = self.log_widget
        log.clear()
        if source is None:
            self._note = message
            self._update_title()
            return
        self._note = "loading…"
        self._update_title()
        self.poll()

    @property
    def held(self) -> bool:
        """The user holds a place in this log: follow is off (scrolled), or a search is on."""
        return not self.follow or self._term is not None

    @property
    def reading(self) -> bool:
        """Whether the user is reading this log: it has focus, or they hold a place in it."""
        return self.has_focus_within or self.held

    def show_attempt(self, number: int) -> None:
        if self.source is not None:
            self.show(LogSource(self.source.run_id, self.source.step, self.source.attempts, number))

    def poll(self) -> None:
        """Read what was appended (called on every console tick)."""
        if self.wrap and self._raw and self._wrapped_at != self._wrap_width():
            self._rewrite()  # a new width no Resize told of (back from zoom)
        source = self.source
        if source is None or self._reading or self._done:
            return
        attempt = source.attempt
        if attempt is None:
            self._note = "no attempt yet"
            self._update_title()
            return
        self._reading = True
        self._read(self._token, attempt.log_path, self._offset, not self._raw and self._offset == 0,
                   attempt.state != "running", (source.run_id, source.step, attempt.number))

    @work(thread=True, group="log-read")
    def _read(self, token: int, path: str, offset: int, first: bool, finished: bool,
              attempt: tuple[int, str, int]) -> None:
        try:
            size = os.path.getsize(path)
        except OSError:
            self.post_message(self._Read(token, [], offset, False, True, finished))
            return
        reset = first or size < offset or size - offset > CATCH_UP_BYTES
        if reset:
            start = max(0, size - TAIL_BYTES)
            lines, end = read_from(path, start, max_bytes=max(1, size - start)) if size else ([], 0)
            if start > 0 and lines:
                lines = lines[1:]  # the first piece is probably a partial line
            lines = lines[-MAX_LINES:]
            if start > 0:
                # Say that the log goes further back than the pane reads (one huge line can fill all of it).
                lines.insert(0, f"… earlier output not shown: the log holds {size:,} bytes; `stepline logs` "
                                "prints all of it")
        else:
            lines, end = read_from(path, offset)
        if finished and end < size:  # a last line the step never ended (cut by a kill or a full disk)
            tail, end = read_unended(path, end)
            lines += tail
        lines = [local_stamp(line) for line in lines]
        if finished and end >= size:
            cut = _log_cut(*attempt)
            if cut:  # a full disk ended the file early: its end says so, as `stepline logs` does
                lines.append(cut_note(cut))
        if not get_current_worker().is_cancelled:
            self.post_message(self._Read(token, lines, end, reset, False, finished and end >= size))

    def on_log_tail__read(self, message: _Read) -> None:
        self._reading = False
        if message.token != self._token:
            return
        attempt = self.source.attempt if self.source else None
        if message.missing:
            # An attempt's log file is created with its first output: no file means nothing printed.
            self._note = "no output yet" if attempt and attempt.state == "running" else "no output"
            self._done = message.finished
            self._update_title()
            return
        self._done = message.finished
        if message.reset:
            self._raw.clear()
            self.log_widget.clear()
        self._offset = message.offset
        self._note = ""
        if message.lines:
            self._raw.extend(message.lines)
            self.log_widget.write_lines(self._display(message.lines), scroll_end=False)
            self._keep_following()
            if self._term:
                self._find_matches()
        if not self._raw:
            self._note = "empty log"
        self._update_title()

    # --- display -------------------------------------------------------------------------------------------------

    def _wrap_width(self) -> int:
        # The vertical scrollbar takes its columns from the width whether or not it is shown yet:
        # a character under it would be hidden, not wrapped.
        log = self.log_widget
        return max(20, log.size.width - log.styles.scrollbar_size_vertical)

    def _display(self, lines: list[str]) -> list[str]:
        if not self.wrap:
            return lines
        width = self._wrapped_at = self._wrap_width()
        shown: list[str] = []
        for line in lines:
            if len(line) <= width:
                shown.append(line)
            else:
                shown += [("  " if i else "") + line[i:i + width - 2] for i in range(0, len(line), width - 2)]
        return shown

    def _rows_where(self, matches: Callable[[str], object]) -> list[int]:
        """The screen rows of the loaded lines that `matches`: with wrap on, the first row of each such line,
        so a word the wrap cut in two is still found."""
        if not self.wrap:
            return [i for i, line in enumerate(self.log_widget.lines) if matches(line)]
        width = self._wrap_width()
        counts = [1 if len(line) <= width else -(-len(line) // (width - 2)) for line in self._raw]
        row = len(self.log_widget.lines) - sum(counts)  # rows of lines no longer loaded come first
        rows = []
        for line, count in zip(self._raw, counts):
            if row >= 0 and matches(line):
                rows.append(row)
            row += count
        return rows

    def _rewrite(self) -> None:
        log = self.log_widget
        log.clear()
        log.write_lines(self._display(list(self._raw)), scroll_end=False)
        self._keep_following()
        self._find_matches()

    def _keep_following(self) -> None:
        # Log scrolls on write only when it already sits at the end, which a resize or a
        # modal can undo; following means the end, whatever happened in between.
        if self.follow:
            self.log_widget.scroll_end(animate=False, immediate=True, x_axis=False)

    def on_tail_log_scrolled_back(self) -> None:
        if self.follow:
            self.follow = False
            self._update_title()

    def on_tail_log_scrolled_to_end(self) -> None:
        self.action_bottom()

    def on_tail_log_resized(self) -> None:
        # The lines' own widget, not this pane: when the pane hears of a new size, its lines may not
        # have theirs yet (zoom, and back), and would wrap at the old width.
        if self.wrap and self._raw:
            self._rewrite()
        self.call_after_refresh(self._keep_following)

    def _update_title(self) -> None:
        source = self.source
        if source is None:
            title = "log"
        else:
            attempt = source.attempt
            state = attempt.state if attempt else "—"
            title = f"log · {source.step} · attempt {source.number}/{len(source.attempts)} · {state}"
        if title != self.border_title:  # setting a title repaints the pane, even the same title
            self.border_title = title
        # Following matters only while the log can grow: not for a finished attempt, nor without a log.
        growing = source is not None and not self._done
        flags = ["follow" if self.follow else "follow off (F)"] if growing else []
        if self.wrap:
            flags.append("wrap")
        if self._term:
            found = f"{self._match + 1}/{len(self._matches)}" if self._matches else "no match"
            term = self._term if len(self._term) <= 24 else self._term[:23] + "…"
            flags.append(f"/{term} {found}")
        if len(self._raw) == MAX_LINES:
            flags.append(f"last {MAX_LINES} lines")
        status = " · ".join(flags)
        if self._note:
            status = f"{self._note} · {status}"
        if status != self._status:
            # One line of fixed height: no layout needed (a layout pass costs a frame under a flood).
            self._status = status
            self.query_one("#log-status", Static).update(status, layout=False)

    # --- actions -------------------------------------------------------------------------------------------------

    def action_search(self) -> None:
        search = self.query_one("#log-search", Input)
        search.add_class("-open")
        search.value = self._term or ""
        search.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "log-search":
            return
        event.stop()
        event.input.remove_class("-open")
        self.log_widget.focus()
        self.search(event.value.strip())

    def on_input_blurred(self, event: Input.Blurred) -> None:
        if event.input.id == "log-search":
            event.input.remove_class("-open")

    def on_key(self, event) -> None:  # type: ignore[no-untyped-def]
        search = self.query_one("#log-search", Input)
        if event.key == "escape" and search.has_focus:
            event.stop()
            search.remove_class("-open")
            self.log_widget.focus()

    def search(self, term: str) -> None:
        self._term = term or None
        self.log_widget.highlighter.term = self._term  # type: ignore[attr-defined]  # our LogHighlighter
        self.log_widget.restyle()
        self._find_matches()
        if self._matches:
            self._match = -1
            self.action_next_match()
        else:
            self._update_title()
            if term:
                loaded = len(self._raw)
                self.app.notify(f"'{term}' is not in the {'line' if loaded == 1 else f'last {loaded:,} lines'} "
                                "loaded", severity="warning")

    def _find_matches(self) -> None:
        if not self._term:
            self._matches = []
            return
        needle = self._term.lower()
        self._matches = self._rows_where(lambda line: needle in line.lower())
        self._match = min(self._match, len(self._matches) - 1)

    def _go(self, line: int) -> None:
        self.follow = False
        log = self.log_widget
        # Sideways too, when the match lies past the pane's right edge (a line not wrapped).
        column = log.lines[line].lower().find(self._term.lower()) if self._term and line < len(log.lines) else -1
        view = log.scrollable_content_region.width
        x = 0 if column < 0 or column + len(self._term or "") < view - 1 else max(0, column - view // 3)
        log.scroll_to(x=x, y=max(0, line - log.size.height // 2), animate=False)

    def action_next_match(self, forward: bool = True) -> None:
        if not self._term:
            self.app.notify("no search yet: press / to search the log")
            return
        self._find_matches()
        if not self._matches:
            self._update_title()
            return
        self._match = (self._match + (1 if forward else -1)) % len(self._matches)
        self._go(self._matches[self._match])
        self._update_title()

    def action_top(self) -> None:
        self.follow = False
        self.log_widget.scroll_home(animate=False)
        self._update_title()

    def action_bottom(self) -> None:
        self.follow = True
        self.log_widget.scroll_end(animate=False)
        self._update_title()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        if self.follow:
            self.log_widget.scroll_end(animate=False)
        self.app.notify("following the end of the log" if self.follow else "follow off: the view stays put")
        self._update_title()

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        self._rewrite()
        self._update_title()

    def action_first_error(self) -> None:
        for index in self._rows_where(ERROR.search)[:1]:
            self._go(index)
            self._update_title()
            return
        loaded = len(self._raw)
        self.app.notify(f"no error line in the {'line' if loaded == 1 else f'last {loaded:,} lines'} loaded")

    def action_pick_attempt(self) -> None:
        if self.source is None or not self.source.attempts:
            self.app.notify("no attempts to pick from: select a step that has run", severity="warning")
            return
        self.post_message(self.AttemptWanted())

    def action_toggle_zoom(self) -> None:
        """The log on the whole screen, or back in its pane: at 80x24 the pane is 38 columns wide."""
        screen = self.screen
        if screen.maximized is self:
            screen.minimize()
        else:
            screen.maximize(self, container=False)
        self.log_widget.focus()

    def action_leave(self) -> None:
        if self.screen.maximized is self:
            self.screen.minimize()  # escape first leaves the full-screen log, as it leaves the other views
            return
        self.post_message(self.Left())
