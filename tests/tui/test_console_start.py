"""What the operator sees on opening the console: the newest failure, its reason, traceback and log."""
from __future__ import annotations

import os
import time

import pytest

from tests.tui.conftest import (details_text, is_job, log_lines, make_app, notifications, publish_catalog,
                                run_first_run_of, select, settle, settle_until, tree_text)
from tui.widgets.run_tree import ProblemNode

pytestmark = pytest.mark.usefixtures("utc_zone")


async def test_a_failed_run_opens_on_its_failed_step_with_reason_traceback_and_log(harness):
    harness.write_job("sales.py", """
        @step
        def extract():
            print("fetching rows")
            return [1, 2, 3]

        @step
        def transform(extract):
            print("cleaning", len(extract), "rows")
            raise ValueError("bad row 17: price is negative")

        load = shell("load", "echo loading", after=["transform"])
        nightly = job("nightly_sales", [extract, transform, load])
    """)
    run = harness.run_now("nightly_sales")
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        tree = tree_text(app)
        assert f"✗ #{run.id}" in tree
        assert "✓ extract" in tree and "✗ transform" in tree and "⊘ load  upstream failed" in tree
        assert app.main_screen.run_tree.cursor_node.data.step.name == "transform"
        details = details_text(app)
        assert "ValueError: bad row 17: price is negative" in details
        assert "Traceback" in details
        assert "upstream" in details and "extract" in details
        assert "#1/1 failed" in details
        assert any("cleaning 3 rows" in line for line in log_lines(app))


async def test_an_empty_home_says_what_to_do(harness):
    app = make_app(harness)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "No jobs yet" in tree_text(app)
        assert "Nothing has run yet" in details_text(app)
        assert "engine not running" in app.main_screen.header.render().plain


async def test_broken_job_files_are_listed_with_file_and_line_and_the_rest_works(harness):
    harness.write_job("ok.py", """
        a = shell("a", "true")
        fine = job("fine", [a])
    """)
    harness.write_job("broken.py", "x = = 1\n")
    publish_catalog(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        tree = tree_text(app)
        assert "1 job file problem" in tree
        assert "broken.py:" in tree
        assert "fine" in tree and "no runs" in tree
        app.main_screen.run_tree.move_cursor(app.main_screen.run_tree.root.children[0].children[0])
        await settle(pilot)
        assert "broken.py" in details_text(app) and "syntax" in details_text(app)


async def test_the_details_follow_the_problem_line_under_the_cursor_as_job_files_change(harness):
    harness.write_job("ok.py", 'fine = job("fine", [shell("a", "true")])\n')
    harness.write_job("b_broken.py", "x = = 1\n")
    publish_catalog(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        tree = app.main_screen.run_tree
        tree.root.children[0].expand()
        await settle(pilot)
        tree.move_cursor(tree.root.children[0].children[0])
        await settle_until(pilot, lambda: "b_broken.py" in details_text(app))
        harness.write_job("a_broken.py", "import surely_not_installed_pkg\n")  # listed first: slides under the cursor
        publish_catalog(harness)
        app.main_screen.poll_now()
        await settle_until(pilot, lambda: "2 job file problems" in tree_text(app))

        def details_show_the_cursor_line() -> bool:
            line = tree.cursor_node.data  # type: ignore[union-attr]
            if isinstance(line, ProblemNode):
                shown = os.path.basename(line.file)
                other = {"a_broken.py", "b_broken.py"} - {shown}
                return shown in details_text(app) and not any(name in details_text(app) for name in other)
            return "b_broken.py" not in details_text(app)

        await settle_until(pilot, details_show_the_cursor_line)
        assert tree.cursor_node is tree.get_node_at_line(tree.cursor_line)  # what keys act on: the same line


async def test_job_lines_show_schedule_and_the_header_counts_runs(harness):
    harness.write_job("hello.py", """
        a = shell("say_hello", "echo hello")
        hello = job("hello", [a], every="15m")
        b = shell("boom", "exit 3")
        boom = job("boom", [b], schedule="0 6 * * *")
    """)
    harness.run_now("boom")
    publish_catalog(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        tree = tree_text(app)
        assert "hello  every 15m" in tree
        assert "boom  0 6 * * *" in tree
        header = app.main_screen.header.render().plain
        assert "1 failed" in header and "0 running" in header
        assert "engine not running" in header


async def test_a_job_whose_file_broke_says_so_and_that_its_last_good_version_runs(harness, engine):
    path = harness.write_job("flaky.py", 'flaky = job("flaky", [shell("a", "true")])\n')
    harness.write_job("other.py", 'other = job("other", [shell("a", "true")])\n')
    engine.start()
    app = make_app(harness, mode="embedded")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle_until(pilot, lambda: "flaky" in tree_text(app) and "other" in tree_text(app))
        assert "file broken" not in tree_text(app)
        path.write_text(path.read_text() + "def broken(:\n")
        await settle_until(pilot, lambda: "1 job file problem" in tree_text(app))
        lines = tree_text(app).splitlines()
        assert any("flaky" in line and "⚠ file broken" in line for line in lines)
        assert not any("other" in line and "⚠" in line for line in lines)
        select(app, is_job("flaky"))

        def details() -> str:
            return " ".join(details_text(app).split())  # as read, across the pane's wrapped lines

        await settle_until(pilot, lambda: "Runs and schedules use the file's last good version" in details())
        assert "flaky.py:3 syntax error" in details()


async def test_ticks_that_change_nothing_on_screen_repaint_nothing(harness, engine):
    # Every repainted line crosses the SSH link: with the clock stopped, four ticks a second must leave the
    # header and every tree line alone, a running run's included (whose label once repainted it and all
    # its steps at every tick).
    harness.write_job("slow.py", """
        a = shell("wait", "sleep 300")
        b = shell("after", "true", after=["wait"])
        slow = job("slow", [a, b])
    """)
    engine.start()
    stopped_at = time.time()  # an engine heartbeat newer than the console's clock still reads as alive
    app = make_app(harness, mode="embedded", clock=lambda: stopped_at)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await run_first_run_of(pilot, app, "slow")
        await pilot.press("enter")
        screen = app.main_screen
        # Settled: the step runs and the header has counted the run as running (no event comes after that).
        await settle_until(pilot, lambda: "● wait" in tree_text(app)
                           and "● 1 running" in screen.header.render().plain)
        await settle(pilot)
        header_text = screen.header._shown
        labels = {id(node): node._updates for node in screen.run_tree._tree_nodes.values()}
        for _ in range(8):
            screen.tick()
            await pilot.pause()
        assert screen.header._shown is header_text
        assert {id(node): node._updates for node in screen.run_tree._tree_nodes.values()} == labels


async def test_a_console_left_open_keeps_the_newest_runs_and_a_more_line(harness):
    # A job firing every minute adds 1,440 runs a day: an open console keeps the newest 100 of them, and the
    # older ones are one "more runs" away instead of filling its memory.
    from engine import store
    from engine.plan import JobPlan, StepPlan
    from tui.widgets.run_tree import KEPT_RUNS, MoreNode, RunNode

    plan = JobPlan(job="minutely", file="/srv/jobs/minutely.py", every="1m", steps=(StepPlan("tick", "shell", ()),))
    store.publish_catalog([(plan, "")], [], time.time())

    def add_runs(count: int) -> None:
        for _ in range(count):
            run_id, _ = store.create_run("minutely", "schedule", {}, plan.to_json(), ["tick"], time.time())
            store.set_run_state(run_id, "succeeded", time.time(), started=True, ended=True)

    add_runs(3)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        tree = app.main_screen.run_tree
        job = tree.jobs["minutely"]
        assert [c.data.summary.id for c in job.children] == [3, 2, 1]  # type: ignore[union-attr]
        tree.runs[2].expand()  # a run left open, the cursor elsewhere: no reason to keep every run
        tree.move_cursor(job)
        await settle(pilot)
        add_runs(KEPT_RUNS + 20)
        await settle_until(pilot, lambda: KEPT_RUNS + 23 in tree.runs)
        runs = [c.data.summary.id for c in job.children if isinstance(c.data, RunNode)]  # type: ignore[union-attr]
        assert runs == list(range(KEPT_RUNS + 23, 23, -1))
        assert sorted(tree.runs) == sorted(runs)
        more = job.children[-1]
        assert isinstance(more.data, MoreNode) and more.data.before_id == 24
        tree.move_cursor(more)
        await pilot.press("enter")
        await settle_until(pilot, lambda: 1 in tree.runs)
        assert [c.data.summary.id for c in job.children][-3:] == [3, 2, 1]  # type: ignore[union-attr]


async def test_the_header_counts_the_failures_of_the_last_day_not_of_all_time(harness):
    from engine import store

    harness.write_job("boom.py", 'boom = job("boom", [shell("a", "exit 3")])\n')
    old, recent = harness.run_now("boom"), harness.run_now("boom")
    store.Run.update(ended_at=time.time() - 2 * 86400).where(store.Run.id == old.id).execute()
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        header = app.main_screen.header.render().plain
        assert recent.state == "failed" and "✗ 1 failed in 24h" in header, header


async def test_a_long_failure_reason_is_cut_in_the_state_row_and_whole_below(harness):
    # A 500-character exception message filled the details pane: run, kind, started and attempts went out of view.
    harness.write_job("j.py", """
        @step
        def long_message():
            raise ValueError("Z" * 500)

        j = job("j", [long_message])
    """)
    harness.run_now("j")
    publish_catalog(harness)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle_until(pilot, lambda: "long_message" in details_text(app))
        lines = details_text(app).splitlines()
        [state] = [line for line in lines if line.startswith("state")]
        assert state.rstrip().endswith("Z…") and len(state.rstrip()) <= len("state      ✗ failed — ") + 120
        assert any(line.startswith("run ") for line in lines)
        assert "ValueError: " + "Z" * 500 in "".join(lines)  # the whole reason, over its traceback


async def test_slash_hash_n_goes_to_run_n_loading_the_runs_down_to_it(harness):
    # "run 7 failed" in a mail: the tree holds the newest page of runs; /#7 opens run 7 all the same.
    from engine import store
    from engine.plan import JobPlan, StepPlan
    from tui.data import PAGE_SIZE
    from tui.widgets.run_tree import MoreNode, RunNode

    plan = JobPlan(job="hourly", file="/srv/jobs/hourly.py", every="1h", steps=(StepPlan("tick", "shell", ()),))
    store.publish_catalog([(plan, "")], [], time.time())
    for _ in range(PAGE_SIZE + 40):
        run_id, _ = store.create_run("hourly", "schedule", {}, plan.to_json(), ["tick"], time.time())
        store.set_run_state(run_id, "failed" if run_id == 7 else "succeeded", time.time(), started=True, ended=True)
    app = make_app(harness)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        tree = app.main_screen.run_tree
        select(app, is_job("hourly"))
        await pilot.press("enter")
        await settle_until(pilot, lambda: PAGE_SIZE + 40 in tree.runs)
        assert 7 not in tree.runs
        await pilot.press("slash", *"#7", "enter")
        await settle_until(pilot, lambda: isinstance(app.main_screen.selected, RunNode)
                           and app.main_screen.selected.summary.id == 7)
        assert "run #7 of hourly" in details_text(app)
        job = tree.jobs["hourly"]
        runs = [c.data.summary.id for c in job.children if isinstance(c.data, RunNode)]  # type: ignore[union-attr]
        assert runs == list(range(PAGE_SIZE + 40, 6, -1))  # no gap between the page and run 7
        assert isinstance(job.children[-1].data, MoreNode) and job.children[-1].data.before_id == 7
        await pilot.press("slash", *"#9999", "enter")
        await settle_until(pilot, lambda: "there is no run 9999 in this home" in notifications(app))
