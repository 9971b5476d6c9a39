"""How durations and job lines read: the same duration words as the CLI, compact job lines for narrow trees."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cli.render import duration
from engine.plan import JobPlan, StepPlan
from engine.query import JobSummary
from tui import format as fmt


@pytest.mark.parametrize("seconds", [0.0, 0.0004, 0.85, 0.9996, 1.0, 12.34, 59.96, 60.0, 245.0, 3599.6, 7380.0,
                                     86399.0, 90000.0, 400000.0])
def test_durations_read_exactly_like_the_cli(seconds):
    assert fmt.duration_text(seconds) == duration(seconds)
    assert fmt.duration_text(seconds, live=True) == duration(seconds)


def test_a_sub_second_duration_shows_milliseconds_not_zero_seconds():
    assert fmt.duration_text(0.85) == "850ms"


def test_relative_next_fire_is_coarse():
    now = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)
    assert fmt.relative_text(now + timedelta(hours=4, minutes=10), now) == "in 4h"
    assert fmt.relative_text(now + timedelta(minutes=14), now) == "in 14m"
    assert fmt.relative_text(now - timedelta(seconds=5), now) == "5s ago"


def test_a_compact_job_line_keeps_name_and_next_fire_and_drops_the_schedule():
    now = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)
    plan = JobPlan(job="etl_orders", file="/jobs/etl.py", schedule="0 6 * * *", steps=(StepPlan("a", "shell", ()),))
    job = JobSummary(name="etl_orders", file="/jobs/etl.py", description="", schedule="0 6 * * *", every=None,
                     timezone=None, paused=False, next_fire_at=now + timedelta(hours=4), last_fire_at=None, plan=plan)
    full = fmt.job_label("etl_orders", job, None, now).plain
    compact = fmt.job_label("etl_orders", job, None, now, compact=True).plain
    assert "0 6 * * *" in full and "no runs yet" in full
    assert compact == "  etl_orders  in 4h  no runs"
