"""Console fixtures: an app on the harness home with a slow poll, and helpers to let it settle."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from engine.service import EngineService
from tests.conftest import Harness
from tui.app import SteplineApp
from tui.widgets.details import DetailsPane
from tui.widgets.log_tail import LogTail
from tui.widgets.run_tree import JobNode, RunNode, RunTree, StepNode

SLOW_POLL_S = 30.0
"""Tests poll by hand (settle); a fast timer would keep Pilot from ever seeing the app idle."""


@pytest.fixture
def utc_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local times on screen are UTC in tests, so snapshots and asserts do not depend on the machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def make_app(harness: Harness, mode: str = "attached", clock: Callable[[], float] = time.time) -> SteplineApp:
    return SteplineApp(harness.home, mode=mode, poll_interval_s=SLOW_POLL_S, clock=clock)


async def settle(pilot, rounds: int = 4) -> None:  # type: ignore[no-untyped-def]
    """Poll events now and wait until every worker (and what its result starts) is done."""
    app = pilot.app
    for _ in range(rounds):
        app.main_screen.poll_now()
        app.main_screen.log_pane.poll()
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()


async def settle_until(pilot, predicate: Callable[[], object], timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Settle repeatedly until `predicate` holds (the engine works in real time)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await settle(pilot, rounds=1)
        await asyncio.sleep(0.05)


def publish_catalog(harness: Harness) -> None:
    """Let an engine start and stop once, as a daemon would, so the job catalogue is in the database."""
    from engine.service import EngineService
    service = EngineService(harness.home, harness.jobs_dir)
    service.start()
    service.stop()


def tree_text(app: SteplineApp) -> str:
    tree = app.main_screen.query_one(RunTree)
    lines = []
    for index in range(tree.last_line + 1):
        node = tree.get_node_at_line(index)
        if node is not None:
            label = node.label
            lines.append(label.plain if hasattr(label, "plain") else str(label))
    return "\n".join(lines)


def details_text(app: SteplineApp) -> str:
    pane = app.main_screen.query_one(DetailsPane)
    from rich.console import Console
    console = Console(width=200, record=True, color_system=None)
    console.print(pane.shown)
    return pane.border_title + "\n" + console.export_text()


async def run_first_run_of(pilot: Pilot, app: SteplineApp, job: str) -> None:
    """Press R on `job` and select its run (the home's first) once the tree shows it."""
    select(app, is_job(job))
    await pilot.press("R")
    await settle_until(pilot, lambda: 1 in app.main_screen.run_tree.runs)
    select(app, is_run(1))


def log_lines(app: SteplineApp) -> list[str]:
    return list(app.main_screen.query_one(LogTail).log_widget.lines)


def notifications(app: SteplineApp) -> str:
    """Every notice the console showed (at most MAX_TOASTS stay on screen at once)."""
    return "\n".join(message for _, message in app.notices)


# --- a real engine and the tree's lines, for the key tests -------------------------------------------


@pytest.fixture
def engine(harness):
    """The engine service of `stepline up`, in a thread, consuming commands every 50 ms."""
    service = EngineService(harness.home, harness.jobs_dir, mode="embedded", command_poll_s=0.05,
                            kill_grace_s=1.0, stop_grace_s=0.5)
    yield service
    service.stop()


def select(app, predicate) -> None:  # type: ignore[no-untyped-def]
    tree = app.main_screen.run_tree
    for index in range(tree.last_line + 1):
        node = tree.get_node_at_line(index)
        if node is not None and predicate(node.data):
            tree.move_cursor(node)
            return
    raise AssertionError(f"no tree line matches; tree is:\n{tree_text(app)}")


def is_job(name):  # type: ignore[no-untyped-def]
    return lambda data: isinstance(data, JobNode) and data.name == name


def is_step(name):  # type: ignore[no-untyped-def]
    return lambda data: isinstance(data, StepNode) and data.step.name == name


def is_run(run_id):  # type: ignore[no-untyped-def]
    return lambda data: isinstance(data, RunNode) and data.summary.id == run_id
