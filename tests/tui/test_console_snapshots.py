"""Snapshots of the main screen with a failed run, and of the help screen, at 80x24 and 120x40.

The data is fixed (tests/tui/console_data.py), the clock frozen and the zone UTC, so nothing
on screen depends on when or where the test runs.
"""
from __future__ import annotations

import pytest

from tests.tui.conftest import make_app, settle
from tests.tui.console_data import NOW_S, T0, fill

pytestmark = pytest.mark.usefixtures("utc_zone")


def frozen_app(harness):  # type: ignore[no-untyped-def]
    fill(harness)
    return make_app(harness, clock=lambda: T0 + NOW_S)


async def _settle(pilot) -> None:  # type: ignore[no-untyped-def]
    await settle(pilot)


async def _help(pilot) -> None:  # type: ignore[no-untyped-def]
    await settle(pilot)
    await pilot.press("question_mark")
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_main_screen_with_a_failed_run(harness, snap_compare, size):  # type: ignore[no-untyped-def]
    assert snap_compare(frozen_app(harness), terminal_size=size, run_before=_settle)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_help_screen(harness, snap_compare, size):  # type: ignore[no-untyped-def]
    assert snap_compare(frozen_app(harness), terminal_size=size, run_before=_help)
