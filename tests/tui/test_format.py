"""How durations and job lines read: the same duration words as the CLI, compact job lines for narrow trees."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cli.render import duration
from engine.plan import JobPlan, StepPlan
from engine.query import JobSummary, RunSummary, StepView
from tui import format as fmt


@pytest.mark.parametrize("seconds", [0.0, 0.0004, 0.85, 0.9996, 1.0, 12.34, 59.96, 60.0, 245.0, 3599.6, 7380.0,
                                     86399.0, 90000.0, 400000.0])
def test_durations_read_exactly_like_the_cli(seconds):
    assert fmt.duration_text(seconds) == duration(seconds)
    assert fmt.duration_text(seconds, live=True) == duration(seconds)


def test_a_sub_second_duration_shows_milliseconds_not_zero_seconds():
    assert fmt.duration_text(0.85) == "850ms"
    assert fmt.duration_text(0.9994) == "999ms"
    assert fmt.duration_text(0.9996) == "1.0s"  # not "1000ms"


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
    assert "0 6 * * *" in full and "no runs" in full
    assert compact == "  etl_orders  in 4h  no runs"


def test_a_next_fire_no_engine_made_reads_overdue_not_as_the_next_one():
    # With the engine stopped or killed, "next 00:50:02" stayed on screen long after 00:50:02.
    now = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)
    plan = JobPlan(job="ticker", file="/jobs/t.py", every="10s", steps=(StepPlan("a", "shell", ()),))
    job = JobSummary(name="ticker", file="/jobs/t.py", description="", schedule=None, every="10s",
                     timezone=None, paused=False, next_fire_at=now - timedelta(minutes=8), last_fire_at=None, plan=plan)
    assert "overdue since" in fmt.job_label("ticker", job, None, now).plain
    assert fmt.job_label("ticker", job, None, now, compact=True).plain == "  ticker  overdue  no runs"
    just_due = JobSummary(name="ticker", file="/jobs/t.py", description="", schedule=None, every="10s", timezone=None,
                          paused=False, next_fire_at=now - timedelta(seconds=1), last_fire_at=None, plan=plan)
    assert "overdue" not in fmt.job_label("ticker", just_due, None, now).plain  # the engine is about to record it


def test_a_running_run_whose_engine_is_gone_reads_so_and_stops_counting():
    now = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)
    started = now - timedelta(minutes=7)
    run = RunSummary(id=12, job="etl", state="running", trigger="manual", created_at=started, scheduled_for=None,
                     started_at=started, ended_at=None, reason=None, params={})
    step = StepView(name="load", position=0, state="running", kind="shell", waiting_for=None, attempts=1,
                    started_at=started, ended_at=None, reason=None, has_output=False, output_preview=None,
                    upstream=(), downstream=())
    assert "7m00s" in fmt.run_label(run, now).plain and fmt.run_label(run, now).plain.startswith("● #12")
    gone = fmt.run_label(run, now, abandoned=True).plain
    assert gone.startswith("◌ #12") and gone.endswith("engine gone  manual") and "7m" not in gone
    assert fmt.step_label(step, now, abandoned=True).plain == "◌ load  engine gone"
    assert fmt.step_label(step, now).plain == "● load  7m00s"
    finished = RunSummary(id=13, job="etl", state="failed", trigger="manual", created_at=started, scheduled_for=None,
                          started_at=started, ended_at=now, reason=None, params={})
    assert fmt.run_label(finished, now, abandoned=True).plain.startswith("✗ #13")  # only a running run is drawn so


def test_a_next_fire_also_reads_in_the_schedule_zone_when_that_differs(utc_zone):
    # The cron line says 06:00 in Paris; a console in UTC shows 05:00, and the 06:00 the user wrote.
    at = datetime(2026, 11, 28, 5, 0, tzinfo=timezone.utc)
    assert fmt.stamp_in_zone_text(at, "Europe/Paris") == "2026-11-28 05:00:00 (06:00 CET in Europe/Paris)"
    assert fmt.stamp_in_zone_text(at, "Asia/Tokyo") == "2026-11-28 05:00:00 (14:00 JST in Asia/Tokyo)"
    late = datetime(2026, 11, 28, 23, 30, tzinfo=timezone.utc)
    assert fmt.stamp_in_zone_text(late, "Asia/Tokyo") == "2026-11-28 23:30:00 (11-29 08:30 JST in Asia/Tokyo)"
    assert fmt.stamp_in_zone_text(at, "UTC") == "2026-11-28 05:00:00"  # same as here: said once
    assert fmt.stamp_in_zone_text(at, None) == "2026-11-28 05:00:00"


def test_the_trigger_prompt_reads_params_as_a_shell_would():
    from tui.screens.trigger import parse_params

    assert parse_params("""day=2026-11-27 note='two words' say="it's" empty=""") == {
        "day": "2026-11-27", "note": "two words", "say": "it's", "empty": ""}
    with pytest.raises(ValueError, match="'oops' is not key=value"):
        parse_params("a=1 oops")
    with pytest.raises(ValueError, match="No closing quotation"):
        parse_params("note='unclosed")


def test_the_header_says_a_killed_engine_is_gone(utc_zone):
    from engine.query import EngineStatus

    status = EngineStatus("gone", pid=4242, mode="daemon",
                          heartbeat_at=datetime(2026, 11, 27, 3, 12, 40, tzinfo=timezone.utc))
    assert fmt.engine_text(status, "attached").plain == "✗ engine gone (pid 4242) since 03:12:40"
    assert fmt.engine_text(status, "attached", compact=True).plain == "✗ engine gone since 03:12:40"


def test_a_step_line_too_long_for_the_tree_cuts_the_name_not_the_duration():
    now = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)
    step = StepView(name="transform_stage_number_01", position=0, state="succeeded", kind="shell", waiting_for=None,
                    attempts=2, started_at=now - timedelta(milliseconds=2), ended_at=now, reason=None,
                    has_output=False, output_preview=None, upstream=(), downstream=())
    assert fmt.step_label(step, now).plain == "✓ transform_stage_number_01  2ms  ×2"
    assert fmt.step_label(step, now, width=40).plain == "✓ transform_stage_number_01  2ms  ×2"
    assert fmt.step_label(step, now, width=25).plain == "✓ transform_sta…  2ms  ×2"
    assert fmt.step_label(step, now, width=25).cell_len == 25


def test_job_names_sort_as_people_count():
    from engine.humanize import natural_key

    assert sorted(["job_10", "job_2", "Job_1", "etl", "job_100"], key=natural_key) == [
        "etl", "Job_1", "job_2", "job_10", "job_100"]


def test_a_job_file_reads_relative_to_where_stepline_was_started_when_below_it(tmp_path, monkeypatch):
    # The details pane is 40 columns at 80x24: "sample_jobs/etl_orders.py", not the absolute path cut mid-word.
    from engine.humanize import display_path

    (tmp_path / "jobs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "jobs" / "etl.py") == "jobs/etl.py"
    assert display_path("/elsewhere/etl.py") == "/elsewhere/etl.py"
    monkeypatch.chdir(tmp_path / "jobs")
    assert display_path(tmp_path / "other" / "etl.py") == str(tmp_path / "other" / "etl.py")
