"""The dependency graph screen (`D`): layering, state glyphs, scrolling, fallback and snapshots."""
from __future__ import annotations

import pytest

from tests.tui.fixed_runs import ScreenApp, failed_run, plan, run_view, running_run, screen_text, step
from tui.widgets.dag_graph import DagGraph, GraphScreen, layers, render_graph


def graph_app(make_run=failed_run) -> ScreenApp:  # type: ignore[no-untyped-def]
    run, _, _ = make_run()
    return ScreenApp(lambda: GraphScreen(run))


def all_succeeded(job_plan):  # type: ignore[no-untyped-def]
    return run_view(1, job_plan, "succeeded", [step(job_plan, s.name, "succeeded", []) for s in job_plan.steps], 10)


def test_a_diamond_has_three_layers() -> None:
    diamond = plan("j", {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")})
    assert layers(diamond) == [["a"], ["b", "c"], ["d"]]


def test_a_fan_out_puts_every_branch_in_one_layer() -> None:
    fan = plan("j", {"src": (), **{f"part_{i:03d}": ("src",) for i in range(200)}, "merge": ("part_000",)})
    grouped = layers(fan)
    assert grouped[0] == ["src"]
    assert grouped[1] == [f"part_{i:03d}" for i in range(200)]
    assert grouped[2] == ["merge"]


def test_a_step_sits_one_layer_after_its_deepest_upstream() -> None:
    shortcut = plan("j", {"a": (), "b": ("a",), "c": ("b",), "d": ("a", "c")})
    assert layers(shortcut) == [["a"], ["b"], ["c"], ["d"]]


async def test_graph_shows_every_step_with_the_glyph_of_its_state() -> None:
    app = graph_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
    assert "run 12 · nightly_sales · failed" in text
    for label in ("✓ extract", "✓ transform", "✓ load_a", "✗ load_b", "⊘ report"):
        assert label in text
    assert "▶" in text


async def test_graph_marks_running_retrying_waiting_and_pending_steps() -> None:
    app = graph_app(running_run)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
    assert "run 13 · hourly_feeds · running" in text
    for label in ("✓ fetch", "● parse", "↻ audit", "◷ publish", "– cleanup"):
        assert label in text


@pytest.mark.parametrize("key", ["escape", "q"])
async def test_graph_closes_on_escape_and_q(key: str) -> None:
    app = graph_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, GraphScreen)
        await pilot.press(key)
        assert not isinstance(app.screen, GraphScreen)


async def test_graph_reads_without_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = graph_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.no_color
        text = screen_text(app)
    for label in ("✓ extract", "✗ load_b", "⊘ report"):
        assert label in text


async def test_a_fan_out_of_200_scrolls_instead_of_overflowing() -> None:
    fan = plan("j", {"src": (), **{f"part_{i:03d}": ("src",) for i in range(200)}, "merge": ("part_199",)})
    run = all_succeeded(fan)
    app = ScreenApp(lambda: GraphScreen(run))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        graph = app.screen.query_one(DagGraph)
        assert graph.max_scroll_y > 0
        await pilot.press("end")
        await pilot.pause()
        assert graph.scroll_y > 0
        assert all(len(line) <= 80 for line in screen_text(app).splitlines())
    drawn = render_graph(run).plain
    assert all(f"✓ part_{i:03d}" in drawn for i in range(200))


def test_a_tangle_of_edges_is_listed_with_upstream_steps_instead() -> None:
    sources = {f"s{i}": () for i in range(14)}
    targets = {f"t{i}": tuple(f"s{j}" for j in range(14) if (i + j) % 3 == 0) for i in range(5)}
    drawn = render_graph(all_succeeded(plan("j", {**sources, **targets}))).plain
    assert "layer 2 · 5 steps" in drawn
    assert "✓ t0   ← s0, s3, s6, s9, s12" in drawn


def test_long_step_names_keep_both_ends() -> None:
    job_plan = plan("j", {"extract_customer_orders_from_warehouse_a": (), "b": ("extract_customer_orders_from_warehouse_a",)})
    drawn = render_graph(all_succeeded(job_plan)).plain
    assert drawn.startswith("✓ extract_cus…arehouse_a ───▶ ✓ b")


def test_graph_snapshot_80x24(snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(graph_app(), terminal_size=(80, 24))


def test_graph_snapshot_120x40(snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(graph_app(), terminal_size=(120, 40))


async def test_a_long_chain_scrolls_sideways_instead_of_wrapping() -> None:
    names = [f"stage_{i:02d}" for i in range(20)]
    chain = plan("j", {name: ((names[i - 1],) if i else ()) for i, name in enumerate(names)})
    app = ScreenApp(lambda: GraphScreen(all_succeeded(chain)))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        graph = app.screen.query_one(DagGraph)
        assert graph.max_scroll_x > 0
        assert "stage_19" not in screen_text(app)
        graph.scroll_to(x=graph.max_scroll_x, animate=False)
        await pilot.pause()
        assert "✓ stage_19" in screen_text(app)
