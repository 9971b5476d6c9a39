"""The log pane: follows a growing log, searches, jumps, wraps and switches attempts; and quit, T, D."""
from __future__ import annotations

import asyncio
import time

import pytest
from textual import events

from tests.tui.conftest import (is_job, is_run, is_step, log_lines, make_app, notifications, run_first_run_of, select,
                                settle, settle_until)
from tests.tui.console_data import NOW_S, T0, fill
from tui.screens.attempts import AttemptScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.widgets.log_tail import LogTail
from tui.widgets.run_tree import StepNode

pytestmark = pytest.mark.usefixtures("utc_zone")


def log_pane(app) -> LogTail:  # type: ignore[no-untyped-def]
    return app.main_screen.query_one(LogTail)


async def test_the_log_follows_a_running_step_as_it_grows_and_F_stops_following(harness, engine):
    harness.write_job("talk.py", """
        a = shell("talk", "for i in $(seq 1 400); do echo line $i; sleep 0.02; done")
        talk = job("talk", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "talk")
        await settle_until(pilot, lambda: any("line 3" in line for line in log_lines(app)))
        assert log_lines(app)[0].endswith(" line 1") and log_lines(app)[0][2] == ":"  # local HH:MM:SS stamp
        seen = len(log_lines(app))
        await settle_until(pilot, lambda: len(log_lines(app)) > seen + 5)
        tail = log_pane(app).log_widget
        assert tail.scroll_offset.y == tail.max_scroll_y
        await pilot.press("l")
        assert tail.has_focus
        await pilot.press("F")
        assert log_pane(app).follow is False
        assert "follow off" in notifications(app)
        await pilot.press("F")
        assert log_pane(app).follow is True
        await settle_until(pilot, lambda: any(line.endswith(" line 400") for line in log_lines(app)))


async def test_log_keys_search_jump_wrap_and_pick_an_attempt(harness):
    fill(harness)
    app = make_app(harness, clock=lambda: T0 + NOW_S)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        pane = log_pane(app)
        assert "attempt 2/2" in pane.border_title
        await pilot.press("l")
        await pilot.press("g")
        assert pane.log_widget.scroll_offset.y == 0 and pane.follow is False
        await pilot.press("e")
        await pilot.press("slash")
        await pilot.press(*"row 16")
        await pilot.press("enter")
        assert "/row 16 1/1" in str(pane.query_one("#log-status").render())
        await pilot.press("n")
        await pilot.press("N")
        await pilot.press("G")
        assert pane.follow is True
        await pilot.press("w")
        assert pane.wrap is True
        await pilot.press("a")
        assert isinstance(app.screen, AttemptScreen)
        await pilot.press("up")
        await pilot.press("enter")
        await settle(pilot)
        assert "attempt 1/2" in pane.border_title
        assert any("cleaning 1840 rows" in line for line in log_lines(app))
        await pilot.press("escape")
        assert app.main_screen.run_tree.has_focus


async def test_wrapped_lines_keep_every_character_in_view_at_80_columns(harness, engine):
    words = " ".join(f"word{i:02d}" for i in range(40))  # 279 characters, each one findable
    harness.write_job("long.py", f"""
        a = shell("long", "echo '{words}'")
        long = job("long", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "long")
        await settle_until(pilot, lambda: any("word39" in line for line in log_lines(app)))
        await pilot.press("l", "w")
        await settle(pilot)
        rows = log_lines(app)
        view = log_pane(app).log_widget.scrollable_content_region.width
        assert len(rows) > 1 and all(len(row) <= view for row in rows), (view, rows)
        # The first row starts with the HH:MM:SS stamp; the rest are indented continuations.
        assert rows[0][9:] + "".join(row[2:] for row in rows[1:]) == words
        # Search finds every word, those the wrap cut in two included, and goes to the line's first row.
        cut = [w for w in words.split() if not any(w in row for row in rows)]
        assert cut, "the layout no longer cuts a word: the check below would prove nothing"
        for word in cut + ["word00", "word39"]:
            await pilot.press("slash", *word, "enter")
            assert f"/{word} 1/1" in str(log_pane(app).query_one("#log-status").render()), word


async def test_a_cut_line_ends_in_an_ellipsis_and_z_gives_the_log_the_whole_screen(harness, engine):
    words = " ".join(f"word{i:02d}" for i in range(40))
    harness.write_job("long.py", f"""
        a = shell("long", "echo '{words}'")
        long = job("long", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "long")
        await settle_until(pilot, lambda: any("word39" in line for line in log_lines(app)))
        pane, tail = log_pane(app), log_pane(app).log_widget
        shown = tail.scrollable_content_region.width
        row = tail.render_line(0).text
        assert row[:shown].endswith("…") and row[:shown - 1] == log_lines(app)[0][:shown - 1]
        await pilot.press("l", "slash", *"word39", "enter")  # past the right edge: the pane goes sideways to it
        column = log_lines(app)[0].index("word39")
        assert tail.scroll_offset.x <= column and column + 6 <= tail.scroll_offset.x + shown
        await pilot.press("g", "escape", "l")
        start = tail.scroll_offset.x
        await pilot.press("right")
        assert tail.scroll_offset.x == start + 8
        await pilot.press("z")
        await settle(pilot)
        assert app.main_screen.maximized is pane and pane.size.width == 80 - 2  # all but its border
        await pilot.press("w")
        await settle(pilot)
        assert max(len(line) for line in log_lines(app)) > shown  # wrapped at the zoomed width
        await pilot.press("escape")
        await settle(pilot)
        assert app.main_screen.maximized is None and pane.has_focus_within  # back in the pane, not the tree
        assert all(len(line) <= tail.scrollable_content_region.width for line in log_lines(app))  # wrapped again


async def test_a_log_longer_than_the_pane_reads_says_so_even_when_one_huge_line_fills_it(harness, engine):
    harness.write_job("huge.py", """
        a = shell("huge", "head -c 3000000 /dev/zero | tr '\\\\0' x; echo; echo ERROR after the long line")
        huge = job("huge", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "huge")
        await settle_until(pilot, lambda: any("ERROR after" in line for line in log_lines(app)))
        first = log_lines(app)[0]
        assert first.startswith("… earlier output not shown: the log holds 3,000,0") and first.endswith(
            "bytes; `stepline logs` prints all of it")


@pytest.mark.parametrize("way", ["q", "ctrl+q", "palette"])
async def test_every_way_to_quit_up_with_active_runs_says_what_happens_and_asks(harness, engine, way):
    # ctrl+q (Textual's own) and the palette's "Quit" used to skip the question q asks.
    harness.write_job("slow.py", """
        a = shell("nap", "sleep 30")
        slow = job("slow", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")

    async def quit_the_way() -> None:
        if way == "palette":
            await app.run_action("quit")  # what the command palette's "Quit" runs
        else:
            await pilot.press(way)
        await pilot.pause()

    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("slow"))
        await pilot.press("R")
        await settle_until(pilot, lambda: app.main_screen.counts.get("running"))
        await quit_the_way()
        assert isinstance(app.screen, ConfirmScreen)
        assert "1 run is active" in app.screen.question and "cancelled" in app.screen.question
        await pilot.press("n")
        assert app.is_running
        await quit_the_way()
        await pilot.press("y")
        await pilot.pause()
        assert not app.is_running


async def test_another_log_opens_following_its_end_with_no_search(harness):
    fill(harness)
    app = make_app(harness, clock=lambda: T0 + NOW_S)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        pane = log_pane(app)
        await pilot.press("l", "g", "slash", *"row 16", "enter")
        assert pane.follow is False and "/row 16 1/1" in str(pane.query_one("#log-status").render())
        await pilot.press("escape")
        select(app, is_step("extract"))
        await settle_until(pilot, lambda: pane.source is not None and pane.source.step == "extract")
        status = str(pane.query_one("#log-status").render())
        assert pane.follow is True and "row 16" not in status and "follow off" not in status


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_q_or_ctrl_c_when_attached_quits_at_once(harness, key):
    app = make_app(harness)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(key)
        await pilot.pause()
        assert not app.is_running


async def test_question_mark_shows_every_key_and_escape_closes_it(harness):
    app = make_app(harness)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is app.main_screen


async def test_T_and_D_open_the_timeline_and_graph_of_the_selected_run(harness):
    from tui.widgets.dag_graph import GraphScreen
    from tui.widgets.timeline import TimelineScreen

    fill(harness)
    app = make_app(harness, clock=lambda: T0 + NOW_S)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("T")
        await settle(pilot)
        assert isinstance(app.screen, TimelineScreen)
        await pilot.press("escape")
        await pilot.press("D")
        await settle(pilot)
        assert isinstance(app.screen, GraphScreen)
        await pilot.press("escape")
        assert app.screen is app.main_screen


async def test_the_command_palette_lists_every_action(harness):
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        titles = [c.title for c in app.get_system_commands(app.main_screen)]
        for title in ("Retry failed steps, or run a step and those after it again", "Cancel run", "Trigger with params", "Timeline of run", "Help"):
            assert title in titles
        assert titles.count("Quit") == 1  # ours, which asks when runs are active; not Textual's "at once"
        for title in ("Log: The log on the whole screen on/off", "Log: Wrap long lines on/off",
                      "Log: Search the loaded lines"):
            assert title in titles
        zoom = next(c for c in app.get_system_commands(app.main_screen) if c.title.startswith("Log: The log on"))
        await zoom.callback()
        await pilot.pause()
        assert app.main_screen.maximized is app.main_screen.log_pane


async def test_the_header_names_the_daemon_the_console_is_attached_to(harness):
    import os

    from engine.service import EngineService
    service = EngineService(harness.home, harness.jobs_dir, mode="daemon")
    service.start()
    try:
        app = make_app(harness)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            assert f"attached to daemon pid {os.getpid()}" in app.main_screen.header.render().plain
    finally:
        service.stop()


@pytest.mark.parametrize("key", ["T", "D"])
async def test_escape_straight_after_T_or_D_closes_the_view_and_the_console_goes_on(harness, key):
    # A reflex `T escape` removed the view while its footer was still being built: the console crashed
    # (and stopped the engine it embedded).
    fill(harness)
    app = make_app(harness, clock=lambda: T0 + NOW_S)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for _ in range(3):
            # escape right behind the key, as a terminal delivers both in one read: the view is on
            # screen, its footer not built yet.
            app.post_message(events.Key(key, key))
            opened_by = time.monotonic() + 60  # the view is read in a thread: on a busy machine, many turns
            while app.screen is app.main_screen and time.monotonic() < opened_by:
                await asyncio.sleep(0)
            app.post_message(events.Key("escape", None))
            await settle(pilot)
            assert app.screen is app.main_screen
        await pilot.press(key)
        await settle(pilot)
        assert app.screen is not app.main_screen  # still works
    assert app.return_code in (None, 0)


async def test_a_runs_log_stays_on_the_step_being_read_while_the_run_moves_on(harness, engine, tmp_path):
    # With a run selected the log shows its step that matters most; it switched to the next step while the
    # user was reading (scrolled, searching) the previous one.
    go = tmp_path / "go"
    harness.write_job("two.py", f"""
        a = shell("a", "echo first-step; while [ ! -e {go} ]; do sleep 0.05; done; echo a-done")
        b = shell("b", "echo second-step; sleep 30", after=["a"])
        two = job("two", [a, b])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "two")
        select(app, is_run(1))
        pane = log_pane(app)
        await settle_until(pilot, lambda: "log · a ·" in str(pane.border_title))
        await pilot.press("l", "g")  # reading it, from the top
        go.touch()
        screen = app.main_screen

        def console_saw_b_running() -> bool:
            view = screen.selected_view
            return view is not None and view.step("b").state == "running"

        await settle_until(pilot, console_saw_b_running)
        await settle(pilot)
        assert "log · a ·" in str(pane.border_title)  # still the step being read
        await pilot.press("G", "escape")  # following again, back in the tree: the run's log moves on
        screen.poll_now()
        await settle_until(pilot, lambda: "log · b ·" in str(pane.border_title))


async def test_a_followed_log_that_outgrows_the_pane_says_so_at_its_top():
    from textual.app import App

    from tui.widgets.log_tail import TailLog

    class One(App[None]):
        def compose(self):  # type: ignore[no-untyped-def]
            yield TailLog()

    app = One()
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(TailLog)
        keep = log.max_lines
        log.write_lines([f"line {i}" for i in range(keep)])
        assert log.lines[0] == "line 0"
        log.write_lines(["one more", "and another"])
        await pilot.pause()
        assert len(log.lines) == keep
        assert log.lines[0] == (f"… earlier lines not shown: the pane keeps the last {keep - 1:,}; `stepline logs` "
                                "prints all of them")
        assert log.lines[1] == "line 3" and log.lines[-1] == "and another"


async def test_a_log_a_full_disk_cut_short_says_so_at_its_end(harness):
    import subprocess

    logs = harness.home.logs
    logs.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(logs)], capture_output=True).returncode:
        pytest.skip("mounting a 1 MB tmpfs needs root")
    try:
        harness.write_job("fill.py", """
            fill = shell("fill", "for i in $(seq 1 30000); do echo 'filler line of about seventy characters' $i; done")
            j = job("j", [fill])
        """)
        run = harness.run_now("j")
        app = make_app(harness)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            select(app, is_run(run.id))
            await settle_until(pilot, lambda: log_lines(app) and log_lines(app)[-1].startswith("[stepline: the log"))
            assert log_lines(app)[-1].endswith("No space left on device; the rest of the step's output was lost]")
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


async def test_the_timeline_of_a_running_run_keeps_time(harness, engine):

    from engine import query
    from tui.widgets.timeline import TimelineScreen

    harness.write_job("slow.py", 'slow = job("slow", [shell("wait", "sleep 300")])\n')
    engine.start()
    ahead = [0.0]
    app = make_app(harness, mode="embedded", clock=lambda: time.time() + ahead[0])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "slow")
        await settle_until(pilot, lambda: query.get_run(1).step("wait").state == "running")
        await pilot.press("T")
        await settle_until(pilot, lambda: isinstance(app.screen, TimelineScreen))
        ahead[0] = 3600.0  # an hour on, the run still running: the chart's clock moves with it

        def title() -> str:
            return str(app.screen.query_one("#timeline-title").render())

        await settle_until(pilot, lambda: "1h00m so far" in title())


@pytest.mark.parametrize("key", ["T", "D"])
async def test_the_timeline_and_graph_of_a_running_run_show_what_happens_next(harness, engine, tmp_path, key):
    from engine import query
    from tui.live_run import LiveRunScreen

    go = tmp_path / "go"
    harness.write_job("chain.py", f"""
        first = shell("first", "while [ ! -e {go} ]; do sleep 0.05; done")
        second = shell("second", "sleep 300", after=["first"])
        chain = job("chain", [first, second])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "chain")
        await settle_until(pilot, lambda: query.get_run(1).step("first").state == "running")
        await pilot.press(key)
        await settle_until(pilot, lambda: isinstance(app.screen, LiveRunScreen))
        screen = app.screen

        def second_drawn_running() -> bool:
            if key == "D":  # the graph draws a step as its glyph before its name: "● second"
                return "● second" in str(screen.query_one("#graph-body").render())
            rows = str(screen.query_one("_TimelineRows").render()).splitlines()
            return "▒" in next(line for line in rows if "second" in line)

        assert not second_drawn_running()
        go.touch()  # first ends, second starts: the open view shows it without being opened again
        await settle_until(pilot, second_drawn_running)
        assert app.screen is screen


async def test_runs_of_a_job_above_leave_the_log_being_read_as_it_is(harness, engine):
    # A job firing every few seconds above the failed step being read: each new run shifts the lines
    # under the cursor, and the log kept losing its search and its place (and following again).
    harness.write_job("a.py", 'tick = job("alpha", [shell("tick", "echo tick")], every="1s")\n')
    harness.write_job("b.py", """
        @step
        def boom():
            for i in range(300):
                print("line", i)
            raise ValueError("the file is bad")

        beta = job("beta", [boom])
    """)
    harness.run_now("beta")
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.main_screen
        await settle_until(pilot, lambda: "alpha" in screen.run_tree.jobs)
        select(app, is_job("alpha"))
        await pilot.press("enter")  # alpha's runs are shown, above beta's
        await settle(pilot)
        select(app, is_step("boom"))
        await settle_until(pilot, lambda: any(line.endswith("line 299") for line in log_lines(app)))
        pane = log_pane(app)
        await pilot.press("l", "g", "slash", *"line 12", "enter")
        await settle_until(pilot, lambda: pane._term == "line 12")
        top = pane.log_widget.scroll_offset.y
        runs_before = sum(1 for run_id in screen.run_tree.runs if run_id != 1)
        await settle_until(pilot, lambda: sum(1 for run_id in screen.run_tree.runs if run_id != 1) >= runs_before + 3)
        await settle(pilot)
        assert (pane._term, pane.follow, pane.log_widget.scroll_offset.y) == ("line 12", False, top)
        assert isinstance(screen.selected, StepNode) and screen.selected.step.name == "boom"


@pytest.mark.parametrize("key", ["up", "pageup", "home"])
async def test_scrolling_up_in_a_growing_log_stops_following_and_end_follows_again(harness, engine, key):
    harness.write_job("talk.py", """
        a = shell("talk", "for i in $(seq 1 3000); do echo line $i; sleep 0.01; done")
        talk = job("talk", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "talk")
        await settle_until(pilot, lambda: len(log_lines(app)) > 100)
        pane = log_pane(app)
        await pilot.press("l", key)
        # The keys scroll with an animation: the view holds still once it is over.
        await settle_until(pilot, lambda: not pane.follow
                           and not app.animator.is_being_animated(pane.log_widget, "scroll_y"))
        await settle(pilot)
        held = pane.log_widget.scroll_offset.y
        seen = len(log_lines(app))
        await settle_until(pilot, lambda: len(log_lines(app)) > seen + 20)  # the log grows under the reader
        await settle(pilot)
        assert pane.log_widget.scroll_offset.y == held
        assert "follow off (F)" in str(pane.query_one("#log-status").render())
        await pilot.press("end")
        await settle_until(pilot, lambda: pane.follow)
        grown = len(log_lines(app))
        await settle_until(pilot, lambda: len(log_lines(app)) > grown + 20)
        await settle(pilot)
        assert pane.log_widget.scroll_offset.y == pane.log_widget.max_scroll_y


async def test_a_log_key_typed_in_the_same_breath_as_l_acts_on_the_log(harness):
    # `l a` in one read of the terminal: the log took the focus a frame later and the `a` was lost.
    harness.write_job("j.py", 'j = job("j", [shell("flaky", "echo try; exit 1", retries=1)])\n')
    harness.run_now("j")
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await settle_until(pilot, lambda: isinstance(app.main_screen.selected, StepNode))
        app.post_message(events.Key("l", "l"))
        app.post_message(events.Key("a", "a"))
        await settle_until(pilot, lambda: isinstance(app.screen, AttemptScreen))
