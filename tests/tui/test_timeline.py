"""The timeline screen (`T`): a Gantt chart of a run's steps and attempts, from fixed data."""
from __future__ import annotations

import pytest
from textual.containers import VerticalScroll

from tests.tui.fixed_runs import (ScreenApp, at, attempt, failed_run, plan, run_view, running_run, screen_text,
                                  step)
from tui.widgets.timeline import Timeline, TimelineScreen, layout_timeline


def timeline_app(make_run=failed_run) -> ScreenApp:  # type: ignore[no-untyped-def]
    run, tries, now = make_run()
    return ScreenApp(lambda: TimelineScreen(run, tries, now))


def row_of(name: str, make_run=failed_run, width: int = 78) -> str:  # type: ignore[no-untyped-def]
    run, tries, now = make_run()
    chart = layout_timeline(run, tries, now, width)
    return next(row.plain for row in chart.rows if f" {name} " in row.plain)


async def test_timeline_shows_every_step_with_the_glyph_of_its_state() -> None:
    app = timeline_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
    assert "run 12 · nightly_sales · failed" in text
    for label in ("✓ extract", "✓ transform", "✓ load_a", "✗ load_b", "⊘ report"):
        assert label in text
    assert "+0s" in text and "+10s" in text


async def test_timeline_marks_running_retrying_waiting_and_pending_steps() -> None:
    app = timeline_app(running_run)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
    for label in ("✓ fetch", "● parse", "↻ audit", "◷ publish", "– cleanup"):
        assert label in text


def test_a_retried_step_shows_the_failed_attempt_the_wait_and_the_retry() -> None:
    row = row_of("transform")
    assert "▓✗░" in row  # failed attempt, then the retry delay
    assert "░█" in row  # then the successful attempt
    assert row.endswith(" 25.0s")  # from its first attempt to its end


def test_a_step_that_waited_for_a_slot_shows_the_wait_before_its_attempt() -> None:
    assert "░▓" in row_of("load_b")


def test_a_running_step_runs_to_now_and_a_retrying_step_waits_to_now() -> None:
    assert row_of("parse", running_run).rstrip().endswith("▒  20.0s")
    assert row_of("audit", running_run).rstrip().endswith("░  20.0s")


def test_steps_that_never_ran_say_why_instead_of_drawing_a_bar() -> None:
    assert "⊘ upstream failed" in row_of("report")
    assert "◷ waiting for upstream" in row_of("publish", running_run)
    assert "– pending" in row_of("cleanup", running_run)


@pytest.mark.parametrize("width", [60, 78, 118])
def test_every_line_fits_the_width(width: int) -> None:
    for make_run in (failed_run, running_run):
        run, tries, now = make_run()
        chart = layout_timeline(run, tries, now, width)
        assert all(line.cell_len <= width for line in chart.axis + chart.rows)


def test_long_step_names_keep_both_ends() -> None:
    name = "extract_customer_orders_from_warehouse_a"
    job_plan = plan("j", {name: ()})
    run = run_view(1, job_plan, "succeeded", [step(job_plan, name, "succeeded", [attempt(1, "succeeded", 0, 5)])], 5)
    chart = layout_timeline(run, {name: [attempt(1, "succeeded", 0, 5)]}, run.run.ended_at, 78)  # type: ignore[arg-type]
    assert chart.rows[0].plain.startswith("✓ extract_c…rehouse_a ")


async def test_many_steps_scroll_under_a_fixed_axis() -> None:
    names = [f"step_{i:02d}" for i in range(60)]
    job_plan = plan("wide", {name: () for name in names})
    tries = {name: [attempt(1, "succeeded", i, i + 10)] for i, name in enumerate(names)}
    run = run_view(3, job_plan, "succeeded", [step(job_plan, n, "succeeded", tries[n]) for n in names], 69)
    app = ScreenApp(lambda: TimelineScreen(run, tries, run.run.ended_at))  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        rows = app.screen.query_one(Timeline).query_one(VerticalScroll)
        assert rows.max_scroll_y > 0
        await pilot.press("end")
        await pilot.pause()
        text = screen_text(app)
    assert "step_59" in text and "step_00" not in text
    assert "+0s" in text  # the axis stayed


@pytest.mark.parametrize("key", ["escape", "q"])
async def test_timeline_closes_on_escape_and_q(key: str) -> None:
    app = timeline_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, TimelineScreen)
        await pilot.press(key)
        assert not isinstance(app.screen, TimelineScreen)


async def test_timeline_reads_without_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = timeline_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.no_color
        text = screen_text(app)
    assert "▓✗░" in text and "█" in text and "✗ load_b" in text


def test_timeline_snapshot_80x24(snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(timeline_app(), terminal_size=(80, 24))


def test_timeline_snapshot_120x40(snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(timeline_app(), terminal_size=(120, 40))


def test_a_retry_asked_for_by_hand_after_the_run_ended_is_not_drawn_as_waiting() -> None:
    # validate failed, the run ended; minutes later `r` retried it: nothing waited in between.
    def retried_by_hand():  # type: ignore[no-untyped-def]
        job_plan = plan("validate_invoices", {"fetch": (), "validate": ("fetch",)})
        tries = {"fetch": [attempt(1, "succeeded", 0, 1, 0)],
                 "validate": [attempt(1, "failed", 1, 2, 1, "ValueError"), attempt(2, "succeeded", 165, 166, 0)]}
        steps = [step(job_plan, "fetch", "succeeded", tries["fetch"]),
                 step(job_plan, "validate", "succeeded", tries["validate"])]
        return run_view(1, job_plan, "succeeded", steps, end=166), tries, at(170)

    row = row_of("validate", retried_by_hand)
    assert "✗" in row and "█" in row
    assert "░" not in row
