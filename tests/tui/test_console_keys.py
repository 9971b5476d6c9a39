"""Every key does what it says on a real engine: a notification at once, then the state change."""
from __future__ import annotations

import re
import signal

import pytest
from textual.widgets import Label, Static

from engine import query, store
from engine.executor import kill_tree
from tests.conftest import wait_until
from tests.tui.conftest import (details_text, is_job, is_run, is_step, make_app, notifications, publish_catalog,
                                run_first_run_of, select, settle, settle_until, tree_text)
from tui.screens.confirm import ConfirmScreen
from tui.screens.trigger import TriggerScreen
from tui.widgets.run_tree import StepNode

pytestmark = pytest.mark.usefixtures("utc_zone")


async def test_r_retries_the_failed_step_and_the_retry_succeeds(harness, engine, tmp_path):
    marker = tmp_path / "fixed"
    harness.write_job("flaky.py", f"""
        import os
        @step
        def fetch():
            if not os.path.exists({str(marker)!r}):
                raise RuntimeError("upstream API returned 503")
            print("fetched")
        flaky = job("flaky", [fetch])
    """)
    run = harness.run_now("flaky")
    marker.write_text("yes")
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "engine running (embedded)" in app.main_screen.header.render().plain
        assert "RuntimeError: upstream API returned 503" in details_text(app)
        await pilot.press("r")
        await settle(pilot, rounds=1)
        assert f"retry requested for step 'fetch' of run {run.id}" in notifications(app)
        await settle_until(pilot, lambda: "✓ fetch" in tree_text(app))
        assert "×2" in tree_text(app)
        await settle_until(pilot, lambda: f"retrying fetch in run {run.id}" in notifications(app))
        assert query.get_run(run.id).state == "succeeded"
        await settle_until(pilot, lambda: "#2/2 succeeded" in details_text(app))


async def test_r_on_a_succeeded_step_asks_then_runs_it_and_the_steps_after_it_again(harness, engine):
    harness.write_job("j.py", """
        @step
        def extract(context):
            return context.attempt

        @step
        def load(extract):
            print("loading", extract)

        report = shell("report", "echo report", after=["load"])
        j = job("j", [extract, load, report])
    """)
    run = harness.run_now("j")
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_run(run.id))
        await pilot.press("enter")
        await settle(pilot)
        select(app, is_step("load"))
        await settle(pilot)
        await pilot.press("r")
        await settle_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = " ".join(str(app.screen.query_one("#confirm-question", Static).render()).split())
        assert question == (f"Step 'load' of run #{run.id} succeeded. Run it again, and the 1 step after it (report), "
                            "with the job file's current code? Their new outputs replace the old ones; steps "
                            "before it keep theirs.")
        await pilot.press("n")
        await settle(pilot)
        assert f"step 'load' of run {run.id} keeps its result" in notifications(app)
        assert [a.number for a in query.attempts(run.id, "load")] == [1]
        await pilot.press("r")
        await settle_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await settle_until(pilot, lambda: f"retrying load, report in run {run.id}" in notifications(app))
        await settle_until(pilot, lambda: query.get_run(run.id).state == "succeeded"
                           and len(query.attempts(run.id, "report")) == 2)
        assert [len(query.attempts(run.id, name)) for name in ("extract", "load", "report")] == [1, 2, 2]


async def test_r_on_a_failed_run_retries_its_failed_steps(harness, engine):
    harness.write_job("j.py", """
        a = shell("a", "exit 3")
        j = job("j", [a])
    """)
    run = harness.run_now("j")
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_run(run.id))
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot, rounds=1)
        assert f"retry requested for the failed and cancelled steps of run {run.id}" in notifications(app)
        await settle_until(pilot, lambda: query.attempts(run.id, "a")[-1].number == 2
                           and query.get_run(run.id).state == "failed")
        await settle_until(pilot, lambda: "×2" in tree_text(app))


async def test_keys_that_do_not_apply_say_why_and_leave_the_footer(harness):
    harness.write_job("j.py", """
        a = shell("a", "echo ok")
        j = job("j", [a])
    """)
    run = harness.run_now("j")
    publish_catalog(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_run(run.id))
        await settle(pilot)
        assert app.main_screen.check_action("retry", ()) is False
        await pilot.press("r")
        assert (f"run #{run.id} succeeded; it has no failed steps to retry (on one of its steps, r runs that step "
                "and those after it again; R starts a new run)") in notifications(app)
        await pilot.press("enter")
        await settle(pilot)
        select(app, is_step("a"))
        await settle(pilot)
        await pilot.press("c")
        assert "already succeeded; nothing to cancel" in notifications(app)
        await pilot.press("p")
        assert "has no schedule to pause" in notifications(app)


async def test_running_a_job_with_no_engine_on_the_home_says_to_start_one(harness):
    # `stepline run` leaves runs but no engine: the job list comes from an engine, so R cannot know
    # the job; the reason is the missing engine, not a broken file.
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo ok")])\n')
    harness.run_now("j")
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("j"))
        await settle(pilot)
        await pilot.press("R")
        assert ("no engine is running on this home to load job 'j': start one (`stepline daemon`, or quit and "
                "run `stepline up`)") in notifications(app)


def line_of(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), "")


async def test_a_running_run_whose_engine_was_killed_says_so(harness):
    # A `stepline run` killed with -9 leaves its run "running" until an engine starts and closes it; the
    # console (attached, no engine) tells the user why nothing moves, as `stepline show` does: in the
    # tree (◌, "engine gone", no duration counting up) and in the details.
    harness.write_job("j.py", 'j = job("j", [shell("slow", "echo started; sleep 300")])\n')
    killed = harness.cli_process("run", "j")
    wait_until(lambda: query.list_runs() and query.attempts(1, "slow") and query.attempts(1, "slow")[0].pid)
    step_pid = query.attempts(1, "slow")[0].pid
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    gone = f"its engine (pid {killed.pid}) is gone; the next engine to start closes the run"
    try:
        app = make_app(harness)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle_until(pilot, lambda: "#1" in tree_text(app))  # a job with a running run opens expanded
            await settle_until(pilot, lambda: "engine gone" in line_of(tree_text(app), "#1"))
            run_line = line_of(tree_text(app), "#1")
            assert run_line.startswith("◌ #1") and not re.search(r"\d+(ms|s|m\d\ds)\b", run_line), run_line
            assert tree_text(app).splitlines()[0].startswith("◌ j")  # the job line draws its last run
            select(app, is_job("j"))
            await settle_until(pilot, lambda: "No engine has loaded this home's job files yet" in details_text(app))
            select(app, is_run(1))
            await settle_until(pilot, lambda: gone in details_text(app))
            assert "◌ running" in details_text(app)
            assert re.search(r"duration\s+—", details_text(app)), details_text(app)
            await pilot.press("enter")
            await settle_until(pilot, lambda: "◌ slow  engine gone" in tree_text(app))
            select(app, is_step("slow"))
            await settle_until(pilot, lambda: details_text(app).startswith("step slow") and gone in details_text(app))
            assert "◌ #1/1 running  —" in details_text(app)
            await pilot.press("r")
            assert "run #1 lost its engine; c closes it now (cancelled), then r retries it" in notifications(app)
            # No engine would act on a cancel command: c cancels such a run here and now, as `stepline cancel` does.
            await pilot.press("c")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await settle_until(pilot, lambda: "⊘ #1" in tree_text(app) and "engine gone" not in tree_text(app))
            assert ("run 1 cancelled (the engine that ran it had stopped; leftover step processes ended)"
                    in notifications(app))
            assert query.run_summary(1).state == "cancelled"
            assert query.attempts(1, "slow")[0].reason.summary == "cancelled by user (console; its engine had stopped)"
            assert not store.pending_commands()  # nothing left for a later engine to act on unasked
    finally:
        kill_tree(step_pid, 0.5)  # the killed engine's step: the next engine would end it


async def test_c_asks_first_then_cancels_the_running_run(harness, engine):
    harness.write_job("slow.py", """
        a = shell("nap", "echo napping; sleep 30")
        slow = job("slow", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("slow"))
        await pilot.press("R")
        await settle(pilot, rounds=1)
        assert "run of 'slow' requested" in notifications(app)
        await settle_until(pilot, lambda: "● nap" in tree_text(app) or "● #1" in tree_text(app))
        select(app, is_run(1))
        await settle(pilot)
        assert "engine gone" not in tree_text(app) + details_text(app)  # its engine is this live process
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert "run 1 keeps running" in notifications(app)
        await pilot.press("c")
        await pilot.press("y")
        await settle(pilot, rounds=1)
        assert "cancel requested for run 1" in notifications(app)
        await settle_until(pilot, lambda: query.run_summary(1).state == "cancelled")
        await settle_until(pilot, lambda: "⊘ #1" in tree_text(app))


async def test_a_key_acts_on_the_highlighted_line_before_the_move_is_announced(harness, engine):
    # Keys typed quickly, or arriving together over SSH, reach the screen before the tree's message that
    # its cursor moved: they must act on the line the user sees highlighted, not the one before it.
    harness.write_job("two.py", """
        first = job("first", [shell("a", "true")])
        second = job("second", [shell("b", "true")])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("first"))
        await settle(pilot)
        select(app, is_job("second"))
        await app.main_screen.run_action("rerun_job")  # R, handled before the tree's message is
        await settle_until(pilot, lambda: query.list_runs())
        assert [run.job for run in query.list_runs()] == ["second"]


async def test_a_cancel_confirmed_after_the_run_ended_says_so_and_sends_nothing(harness, engine):
    harness.write_job("gated.py", """
        a = shell("a", "while [ ! -e go ]; do sleep 0.05; done")
        gated = job("gated", [a])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "gated")
        await settle_until(pilot, lambda: "● #1" in tree_text(app))
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        (harness.jobs_dir / "go").touch()  # the run ends while the question is open
        await settle_until(pilot, lambda: "✓ #1" in tree_text(app))
        await pilot.press("y")
        await settle(pilot, rounds=1)
        assert "run 1 already succeeded; nothing to cancel" in notifications(app)
        assert "cancel requested" not in notifications(app)


async def test_left_and_right_walk_the_tree(harness, engine):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "j")
        await settle_until(pilot, lambda: "✓ #1" in tree_text(app))
        tree = app.main_screen.run_tree
        await pilot.press("left")
        assert tree.cursor_node is not None and is_job("j")(tree.cursor_node.data)
        await pilot.press("left")  # on an open job: closes it
        assert not tree.cursor_node.is_expanded
        await pilot.press("right")  # opens it
        assert tree.cursor_node.is_expanded
        await pilot.press("right")  # goes to its first run
        assert is_run(1)(tree.cursor_node.data)
        assert tree.scroll_offset.x == 0


async def test_a_key_pressed_twice_sends_one_command_until_the_engine_answers(harness):
    # No engine runs on this home: the first command waits for one, and a second p would undo the first.
    harness.write_job("hourly.py", """
        hourly = job("hourly", [shell("a", "true")], every="1h")
    """)
    publish_catalog(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("hourly"))
        await pilot.press("p")
        await settle_until(pilot, lambda: app.main_screen.pending_commands)
        await pilot.press("p")
        await settle(pilot, rounds=1)
        assert "sent already, waiting for the engine's answer: pause requested" in notifications(app)
        assert len(store.pending_commands(kinds=("pause", "resume"))) == 1


async def test_the_keys_follow_the_cursor_through_a_filter_change(harness, engine):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "j")
        await settle_until(pilot, lambda: "✓ #1" in tree_text(app))
        await pilot.press("f")  # failed runs only: #1 (succeeded) leaves the tree, the cursor goes to its job
        await settle(pilot)
        cursor = app.main_screen.run_tree.cursor_node
        assert cursor is not None and is_job("j")(cursor.data)
        await settle_until(pilot, lambda: "job j" in details_text(app))  # not run #1, no longer shown
        for _ in data_filters()[1:]:  # and back to all: the cursor finds run #1 again
            await pilot.press("f")
            await settle(pilot)
        await settle_until(pilot, lambda: is_run(1)(app.main_screen.run_tree.cursor_node.data))
        cursor = app.main_screen.run_tree.cursor_node
        assert cursor is not None and is_run(1)(cursor.data)
        await settle_until(pilot, lambda: "run #1 of j" in details_text(app))  # what the cursor is on
        await pilot.press("R")
        await settle(pilot, rounds=1)
        assert "not applicable" not in [title for title, _ in app.notices]
        assert "run of 'j' requested" in notifications(app)


def data_filters() -> tuple[str, ...]:
    from tui import data
    return data.FILTERS


async def test_t_prompts_for_params_and_triggers_with_them(harness, engine):
    # Param names may hold what a widget id may not (a dot, a space): the prompt must open all the same.
    harness.write_job("greet.py", """
        @step
        def greet(params):
            print("hello", params["who"], params["run.date"])
        greeting = job("greeting", [greet], params={"who": "world", "run.date": "today"})
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("greeting"))
        await pilot.press("t")
        assert isinstance(app.screen, TriggerScreen)
        labels = [str(label.render()) for label in app.screen.query(Label)]
        assert labels[:2] == ["who  (default 'world', also when left empty)",
                              "run.date  (default 'today', also when left empty)"]
        # A job that declares its params takes those only (as `stepline run -p`): no field for others.
        assert not app.screen.query("#param-extra")
        app.screen.query_one("#param-0").value = ""  # emptied: the default, not ""
        app.screen.query_one("#param-1").value = "2026-11-27"
        await pilot.press("enter")
        await settle(pilot, rounds=1)
        assert "run of 'greeting' requested (who=world, run.date=2026-11-27)" in notifications(app)
        await settle_until(pilot, lambda: query.list_runs(job="greeting")
                           and query.list_runs(job="greeting")[0].state == "succeeded")
        assert query.list_runs(job="greeting")[0].params == {"who": "world", "run.date": "2026-11-27"}
        await settle_until(pilot, lambda: "✓ #1" in tree_text(app))


async def test_t_on_a_job_without_declared_params_takes_any_key_value(harness, engine):
    harness.write_job("free.py", """
        @step
        def show(params):
            print(params)
        free = job("free", [show])
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("free"))
        await pilot.press("t")
        assert isinstance(app.screen, TriggerScreen)
        app.screen.query_one("#param-extra").value = "shift=night note='two words'"
        await pilot.press("enter")
        await settle_until(pilot, lambda: query.list_runs(job="free"))
        assert query.list_runs(job="free")[0].params == {"shift": "night", "note": "two words"}


def footer_labels(app) -> list[str]:  # type: ignore[no-untyped-def]
    from textual.widgets._footer import FooterKey

    return [key.description for key in app.screen.query(FooterKey)]


async def test_p_pauses_and_resumes_the_schedule(harness, engine):
    harness.write_job("hourly.py", """
        a = shell("a", "true")
        hourly = job("hourly", [a], every="1h")
    """)
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("hourly"))
        await settle_until(pilot, lambda: "Pause" in footer_labels(app))
        assert "Resume" not in footer_labels(app)
        await pilot.press("p")
        await settle(pilot, rounds=1)
        assert "pause requested for the schedule of 'hourly'" in notifications(app)
        await settle_until(pilot, lambda: "hourly  every 1h  paused" in tree_text(app))
        await settle_until(pilot, lambda: "Resume" in footer_labels(app))  # the footer says what p does now
        assert "Pause" not in footer_labels(app)
        await pilot.press("p")
        await settle_until(pilot, lambda: "paused" not in tree_text(app))
        assert "resume requested" in notifications(app)


async def test_f_cycles_the_filter_all_failed_running(harness):
    harness.write_job("j.py", """
        a = shell("a", "exit 4")
        j = job("j", [a])
    """)
    harness.write_job("ok.py", """
        b = shell("b", "true")
        ok = job("ok", [b])
    """)
    failed = harness.run_now("j")
    good = harness.run_now("ok")
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert f"#{good.id}" in tree_text(app) and f"#{failed.id}" in tree_text(app)
        await pilot.press("f")
        await settle(pilot)
        assert "filter: failed" in app.main_screen.header.render().plain
        assert f"#{failed.id}" in tree_text(app) and f"#{good.id}" not in tree_text(app)
        await pilot.press("f")
        await settle(pilot)
        assert "no running runs" in tree_text(app)
        await pilot.press("f")
        await settle(pilot)
        assert f"#{good.id}" in tree_text(app)


async def test_a_run_that_leaves_the_filter_leaves_the_tree(harness, tmp_path):
    marker = tmp_path / "fixed"
    harness.write_job("j.py", f"""
        a = shell("a", "test -e {marker}")
        j = job("j", [a])
    """)
    first, second = harness.run_now("j"), harness.run_now("j")
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f")
        await settle(pilot)
        select(app, is_run(second.id))
        await settle(pilot)
        assert f"#{first.id}" in tree_text(app) and f"#{second.id}" in tree_text(app)
        marker.touch()
        harness.retry(first.id)  # fixed, and retried from the command line: no longer a failed run
        harness.retry(second.id)
        await settle_until(pilot, lambda: f"#{first.id}" not in tree_text(app))
        assert f"✓ #{second.id}" in tree_text(app)  # the one under the cursor stays until the user moves on


def two_runs_of_extract_then_transform(harness) -> None:  # type: ignore[no-untyped-def]
    harness.write_job("j.py", """
        a = shell("extract", "true")
        b = shell("transform", "true", after=["extract"])
        j = job("j", [a, b])
    """)
    harness.run_now("j")
    harness.run_now("j")


@pytest.mark.parametrize("collapse_again", [False, True])
async def test_slash_searches_the_tree_and_n_finds_the_next_match(harness, collapse_again):
    # Collapsed again, a run's steps were out of n's reach: it stopped at the lines on screen.
    two_runs_of_extract_then_transform(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for run_id in (1, 2):
            select(app, is_run(run_id))
            await pilot.press("enter")  # loads its steps
            await settle(pilot)
            if collapse_again:
                await pilot.press("enter")
                await settle(pilot)
        assert ("transform" in tree_text(app)) is not collapse_again
        select(app, is_job("j"))
        await pilot.press("slash", *"transform", "enter")
        await settle(pilot)
        seen = []
        for _ in range(3):
            node = app.main_screen.run_tree.cursor_node
            assert isinstance(node.data, StepNode) and node.data.step.name == "transform"
            seen.append(node.data.run_id)
            await pilot.press("n")
            await settle(pilot)
        assert sorted(seen[:2]) == [1, 2] and seen[2] == seen[0]  # both, then round again
        assert "/transform: match 1 of 2 loaded" in notifications(app)
        assert "/transform: match 2 of 2 loaded" in notifications(app)


async def test_slash_finds_a_step_in_a_run_not_expanded_yet(harness):
    two_runs_of_extract_then_transform(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_job("j"))
        await pilot.press("enter")  # the job's runs are in the tree, their steps are not
        await settle_until(pilot, lambda: 2 in app.main_screen.run_tree.runs)
        assert "transform" not in tree_text(app)
        await pilot.press("slash", *"TRANS", "enter")

        def on_transform() -> bool:
            node = app.main_screen.run_tree.cursor_node
            return node is not None and isinstance(node.data, StepNode) and node.data.step.name == "transform"

        await settle_until(pilot, on_transform)
        assert app.main_screen.run_tree.cursor_node.data.run_id == 2  # the newest run first
        await pilot.press("slash", *"nosuchstep", "enter")
        await settle_until(pilot, lambda: "'nosuchstep' matches no job, run or step" in notifications(app))


async def test_enter_expands_and_collapses_runs_lazily(harness):
    harness.write_job("j.py", """
        a = shell("a", "true")
        j = job("j", [a])
    """)
    run = harness.run_now("j")
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(app, is_run(run.id))
        assert "✓ a" not in tree_text(app)
        await pilot.press("enter")
        await settle(pilot)
        assert "✓ a" in tree_text(app)
        await pilot.press("enter")
        assert "✓ a" not in tree_text(app)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_tab_walks_tree_details_log_and_shift_tab_walks_back(harness, size):
    # At 80 columns the right column shows only the pane that has focus: tab must still reach the log.
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo ok")])\n')
    harness.run_now("j")
    app = make_app(harness)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        screen = app.main_screen
        for pane in (screen.details, screen.log_pane, screen.run_tree, screen.details):
            await pilot.press("tab")
            await settle(pilot, rounds=1)
            assert pane.has_focus_within, pane
            assert pane.display and pane.region.height > 0  # shown, not focused behind the scenes
        for pane in (screen.run_tree, screen.log_pane):
            await pilot.press("shift+tab")
            await settle(pilot, rounds=1)
            assert pane.has_focus_within, pane


async def test_escape_in_the_details_or_the_log_goes_back_to_the_tree(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo ok")])\n')
    harness.run_now("j")
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        tree = app.main_screen.run_tree
        assert tree.has_focus
        await pilot.press("tab")
        assert app.main_screen.details.has_focus
        await pilot.press("escape")
        assert tree.has_focus
        await pilot.press("l")
        await settle(pilot, rounds=1)
        assert not tree.has_focus
        await pilot.press("escape")
        assert tree.has_focus


async def test_at_most_three_notices_cover_the_screen_at_once(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    harness.run_now("j")
    app = make_app(harness)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        select(app, is_run(1))
        for _ in range(6):
            await pilot.press("c")  # "already succeeded; nothing to cancel", each time
        await settle(pilot)
        assert len(list(app._notifications)) == 3  # the oldest made way
        assert notifications(app).count("nothing to cancel") == 6  # all of them were shown


async def test_the_highlighted_line_stays_in_view_when_runs_arrive_above_it(harness):
    harness.write_job("a.py", 'a = job("a", [shell("s", "true")])\n')
    harness.write_job("z.py", 'z = job("z", [shell("s", "true")])\n')
    harness.run_now("a")
    harness.run_now("z")
    app = make_app(harness)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        tree = app.main_screen.run_tree
        for name in ("a", "z"):
            tree.jobs[name].expand()
        await settle_until(pilot, lambda: 1 in tree.runs and 2 in tree.runs)
        select(app, is_run(2))  # z's run, at the bottom
        await settle(pilot)
        for _ in range(25):  # each lands above the highlighted line, in the expanded job a
            harness.run_now("a")
        app.main_screen.poll_now()
        await settle_until(pilot, lambda: 27 in tree.runs)
        await settle(pilot)
        assert is_run(2)(tree.cursor_node.data)
        top = tree.scroll_offset.y
        assert top <= tree.cursor_line < top + tree.scrollable_content_region.height  # on screen
