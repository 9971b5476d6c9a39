"""Schedules become due runs: DST days, weekdays, misfire policies, pause across restarts, real fires.

Catch-up is computed from Schedule.last_fire_at with an injected clock; only the
interval test lets APScheduler fire for real, and it waits on a condition.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from engine import job, shell, store
from engine.definition import JobDef
from engine.scheduler import MAX_CATCH_UP, Due, Scheduler, record_paused
from tests.conftest import wait_until

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def a_job(name: str = "j", **options: object) -> JobDef:
    return job(name, [shell("a", "true")], **options)  # type: ignore[arg-type]


def last_fired(name: str, at: datetime) -> None:
    """A Schedule row as an earlier engine left it."""
    store.Schedule.insert(job=name, last_fire_at=at.timestamp()).execute()


def restart(jobs: list[JobDef], now: datetime) -> tuple[Scheduler, list[Due]]:
    """A new Scheduler (as at engine start) synced with `jobs` at `now`; returns it and the Dues it handed over."""
    dues: list[Due] = []
    scheduler = Scheduler(dues.append, clock=Clock(now))
    scheduler.sync({j.name: j for j in jobs})
    return scheduler, dues


def times(dues: list[Due]) -> list[datetime]:
    return [datetime.fromtimestamp(d.scheduled_for, UTC) for d in dues]


def schedule_row(name: str) -> store.Schedule:
    return store.Schedule.get(store.Schedule.job == name)


def schedule_events(state: str) -> list[str]:
    query = store.Event.select().where((store.Event.kind == "schedule") & (store.Event.state == state))
    return [e.message for e in query.order_by(store.Event.id)]


# --- when schedules fire ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("before, after, expected", [
    # 2026-03-29: 02:30 does not exist in Berlin; it fires once, at 03:30 CEST (01:30 UTC).
    (datetime(2026, 3, 28, 0, 0, tzinfo=BERLIN), datetime(2026, 3, 31, 0, 0, tzinfo=BERLIN),
     [datetime(2026, 3, 28, 1, 30, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
      datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]),
    # 2026-10-25: 02:30 happens twice in Berlin; it fires the first time only (02:30 CEST, 00:30 UTC).
    (datetime(2026, 10, 24, 0, 0, tzinfo=BERLIN), datetime(2026, 10, 27, 0, 0, tzinfo=BERLIN),
     [datetime(2026, 10, 24, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
      datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]),
], ids=["spring-forward", "fall-back"])
def test_a_daily_0230_in_berlin_fires_once_on_each_clock_change_day(harness, before, after, expected):
    nightly = a_job(schedule="30 2 * * *", timezone="Europe/Berlin", misfire="all")
    last_fired("j", before)
    _, dues = restart([nightly], after)
    assert times(dues) == expected
    assert [t.astimezone(BERLIN).day for t in times(dues)] == [before.day, before.day + 1, before.day + 2]


def test_a_daily_0230_in_berlin_next_fires_after_the_spring_forward_gap(harness):
    scheduler, _ = restart([a_job(schedule="30 2 * * *", timezone="Europe/Berlin")],
                           datetime(2026, 3, 29, 1, 0, tzinfo=BERLIN))
    assert scheduler.next_fire("j") == datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()


def test_1_to_5_fires_monday_to_friday(harness):
    sunday = datetime(2026, 1, 4, tzinfo=UTC)
    last_fired("j", sunday)
    _, dues = restart([a_job(schedule="30 2 * * 1-5", timezone="UTC", misfire="all")], sunday + timedelta(days=7))
    assert [t.strftime("%a %H:%M") for t in times(dues)] == [
        "Mon 02:30", "Tue 02:30", "Wed 02:30", "Thu 02:30", "Fri 02:30"]


def test_an_alias_is_scheduled_like_its_cron_expression(harness):
    scheduler, _ = restart([a_job(schedule="@daily", timezone="UTC")], datetime(2026, 1, 7, 10, 15, tzinfo=UTC))
    assert scheduler.next_fire("j") == datetime(2026, 1, 8, tzinfo=UTC).timestamp()
    assert schedule_row("j").next_fire_at == datetime(2026, 1, 8, tzinfo=UTC).timestamp()


# --- misfires --------------------------------------------------------------------------------------------------

HOURLY_LAST = datetime(2026, 1, 7, 10, 0, tzinfo=UTC)
HOURLY_NOW = datetime(2026, 1, 7, 15, 20, tzinfo=UTC)  # 11:00 to 15:00 were missed, all past the grace window


def test_misfire_skip_makes_up_no_run_and_records_the_decision(harness):
    _, dues = restart_hourly("skip")
    assert dues == []
    assert schedule_row("j").last_fire_at == datetime(2026, 1, 7, 15, 0, tzinfo=UTC).timestamp()
    assert schedule_events("misfire") == [
        "j: 5 fires missed while the engine was stopped (2026-01-07 11:00:00 UTC to 2026-01-07 15:00:00 UTC); "
        "misfire='skip': none made up"]


def test_misfire_once_makes_up_one_run_for_the_latest_missed_fire(harness):
    _, dues = restart_hourly("once")
    assert dues == [Due("j", datetime(2026, 1, 7, 15, 0, tzinfo=UTC).timestamp(), catch_up=True)]
    assert schedule_events("misfire")[0].endswith("misfire='once': one catch-up run for 2026-01-07 15:00:00 UTC")


def test_misfire_once_is_the_default(harness):
    assert a_job().misfire == "once"


def test_misfire_all_makes_up_a_run_per_missed_fire_oldest_first(harness):
    _, dues = restart_hourly("all")
    assert [t.hour for t in times(dues)] == [11, 12, 13, 14, 15]
    assert all(d.catch_up for d in dues)


def test_misfire_all_makes_up_at_most_100_runs_the_newest(harness):
    last_fired("j", datetime(2026, 1, 7, 10, 0, tzinfo=UTC))  # every minute for 5 hours: 300 missed fires
    _, dues = restart([a_job(every="1m", misfire="all", misfire_grace=10)], datetime(2026, 1, 7, 15, 0, 30, tzinfo=UTC))
    assert len(dues) == MAX_CATCH_UP
    assert times(dues)[0] == datetime(2026, 1, 7, 13, 21, tzinfo=UTC)
    assert times(dues)[-1] == datetime(2026, 1, 7, 15, 0, tzinfo=UTC)
    assert "more than 100 fires missed" in schedule_events("misfire")[0]


def test_a_long_downtime_of_a_fast_interval_is_still_bounded(harness):
    last_fired("j", datetime(2025, 1, 7, tzinfo=UTC))  # a year of a fire per second
    _, dues = restart([a_job(every="1s", misfire="all", misfire_grace=0)], datetime(2026, 1, 7, tzinfo=UTC))
    assert len(dues) == MAX_CATCH_UP
    assert times(dues)[-1] == datetime(2026, 1, 7, tzinfo=UTC)


def test_a_fire_missed_by_less_than_the_grace_window_runs_as_usual(harness):
    last_fired("j", HOURLY_LAST)
    _, dues = restart([a_job(schedule="0 * * * *", timezone="UTC", misfire="skip", misfire_grace=60)],
                      datetime(2026, 1, 7, 11, 0, 30, tzinfo=UTC))
    assert dues == [Due("j", datetime(2026, 1, 7, 11, 0, tzinfo=UTC).timestamp(), catch_up=False)]
    assert schedule_events("misfire") == []


def test_a_job_that_never_fired_has_no_misfires(harness):
    _, dues = restart([a_job(schedule="0 * * * *", misfire="all")], HOURLY_NOW)
    assert dues == []


def test_only_the_first_sync_makes_up_missed_fires(harness):
    dues: list[Due] = []
    scheduler = Scheduler(dues.append, clock=Clock(HOURLY_NOW))
    scheduler.sync({})
    last_fired("j", HOURLY_LAST)
    scheduler.sync({"j": a_job(schedule="0 * * * *", misfire="all")})  # a job file added while running
    assert dues == []


def test_an_interval_keeps_its_phase_across_restarts(harness):
    last_fired("j", datetime(2026, 1, 7, 12, 0, tzinfo=UTC))
    scheduler, dues = restart([a_job(every="15m")], datetime(2026, 1, 7, 12, 20, tzinfo=UTC))
    assert dues == [Due("j", datetime(2026, 1, 7, 12, 15, tzinfo=UTC).timestamp(), catch_up=True)]
    assert scheduler.next_fire("j") == datetime(2026, 1, 7, 12, 30, tzinfo=UTC).timestamp()


def test_an_interval_that_never_fired_keeps_its_phase_across_restarts(harness):
    # Counted from each start, a 15-minute job under an engine restarted every 10 minutes never fired.
    first, _ = restart([a_job(every="15m")], datetime(2026, 1, 7, 12, 0, tzinfo=UTC))
    assert schedule_row("j").next_fire_at == datetime(2026, 1, 7, 12, 15, tzinfo=UTC).timestamp()
    first.shutdown()
    second, dues = restart([a_job(every="15m")], datetime(2026, 1, 7, 12, 10, tzinfo=UTC))
    assert dues == [] and second.next_fire("j") == datetime(2026, 1, 7, 12, 15, tzinfo=UTC).timestamp()
    second.shutdown()
    # Down across the fire it was due for: that is a misfire, caught up as the job's policy says.
    third, dues = restart([a_job(every="15m")], datetime(2026, 1, 7, 12, 20, tzinfo=UTC))
    assert dues == [Due("j", datetime(2026, 1, 7, 12, 15, tzinfo=UTC).timestamp(), catch_up=True)]
    assert third.next_fire("j") == datetime(2026, 1, 7, 12, 30, tzinfo=UTC).timestamp()


def test_a_cron_job_that_never_fired_is_caught_up_for_the_fires_missed_while_down(harness):
    # A new job whose first fire fell while the machine was down was never run: nothing to count from.
    first, _ = restart([a_job(schedule="* * * * *", timezone="UTC", misfire="all")],
                       datetime(2026, 1, 7, 12, 0, 20, tzinfo=UTC))
    first.shutdown()
    _, dues = restart([a_job(schedule="* * * * *", timezone="UTC", misfire="all")],
                      datetime(2026, 1, 7, 12, 3, 37, tzinfo=UTC))
    assert [(t.minute, t.second) for t in times(dues)] == [(1, 0), (2, 0), (3, 0)]
    assert [due.catch_up for due in dues] == [True, True, False]  # 12:03 is within misfire_grace: on time


def test_a_resume_while_no_engine_runs_does_not_bring_back_the_fires_of_the_pause(harness):
    last_fired("j", datetime(2026, 1, 7, 12, 0, tzinfo=UTC))
    record_paused("j", True, None, datetime(2026, 1, 7, 12, 0, 5, tzinfo=UTC).timestamp())
    record_paused("j", False, None, datetime(2026, 1, 7, 12, 10, tzinfo=UTC).timestamp())  # `stepline resume`
    _, dues = restart([a_job(every="1m", misfire="all")], datetime(2026, 1, 7, 12, 12, 30, tzinfo=UTC))
    assert [(t.minute, t.second) for t in times(dues)] == [(11, 0), (12, 0)]  # since the resume only


def test_a_resume_keeps_the_interval_phase_and_a_restart_never_brings_back_the_pause(harness):
    at = lambda minute, second: datetime(2026, 1, 7, 12, minute, second, tzinfo=UTC)  # noqa: E731
    every_3m = a_job(every="3m", misfire="all")
    last_fired("j", at(0, 2))
    scheduler, dues = restart([every_3m], at(0, 30))
    assert scheduler.next_fire("j") == at(3, 2).timestamp()
    scheduler.clock = Clock(at(1, 0))
    scheduler.pause("j")
    scheduler.clock = Clock(at(4, 0))  # the 12:03:02 fire fell in the pause
    scheduler.resume("j")
    assert scheduler.next_fire("j") == at(6, 2).timestamp()  # still at :02, not three minutes from the resume
    assert schedule_row("j").last_fire_at == at(3, 2).timestamp()
    scheduler.shutdown()
    _, dues = restart([every_3m], at(5, 0))  # the engine killed and started again
    assert dues == []


def test_fires_coalesced_by_a_stall_are_misfires_too(harness):
    # APScheduler hands over only the newest of the fires it missed (coalesce); the rest are counted here.
    scheduler, dues = restart([a_job(every="1m", misfire="all", misfire_grace=5)],
                              datetime(2026, 1, 7, 12, 0, tzinfo=UTC))
    scheduler.clock = Clock(datetime(2026, 1, 7, 12, 3, 1, tzinfo=UTC))  # suspended for three minutes
    scheduler._fire("j", datetime(2026, 1, 7, 12, 3, tzinfo=UTC).timestamp())
    assert [(t.minute, d.catch_up) for t, d in zip(times(dues), dues)] == [(1, True), (2, True), (3, False)]


def restart_hourly(misfire: str) -> tuple[Scheduler, list[Due]]:
    last_fired("j", HOURLY_LAST)
    return restart([a_job(schedule="0 * * * *", timezone="UTC", misfire=misfire)], HOURLY_NOW)


# --- the schedule record ---------------------------------------------------------------------------------------


def test_fired_records_the_last_and_next_fire(harness):
    scheduler, _ = restart([a_job(schedule="0 * * * *", timezone="UTC")], HOURLY_NOW)
    eleven = datetime(2026, 1, 7, 11, 0, tzinfo=UTC).timestamp()
    scheduler.fired("j", datetime(2026, 1, 7, 15, 0, tzinfo=UTC).timestamp())
    scheduler.fired("j", eleven)  # a late report of an older fire does not move it back
    row = schedule_row("j")
    assert row.last_fire_at == datetime(2026, 1, 7, 15, 0, tzinfo=UTC).timestamp()
    assert row.next_fire_at == datetime(2026, 1, 7, 16, 0, tzinfo=UTC).timestamp()
    assert schedule_events("fired")[0] == "j: run due for 2026-01-07 15:00:00 UTC"


def test_a_paused_job_stays_paused_across_a_restart(harness):
    hourly = a_job(schedule="0 * * * *", timezone="UTC")
    scheduler, _ = restart([hourly], HOURLY_NOW)
    assert scheduler.scheduled_jobs() == ("j",)
    scheduler.pause("j")
    assert scheduler.next_fire("j") is None
    assert scheduler.scheduled_jobs() == ()

    restarted, dues = restart([hourly], HOURLY_NOW + timedelta(hours=5))
    assert restarted.scheduled_jobs() == ()
    assert restarted.next_fire("j") is None
    assert dues == []
    assert schedule_row("j").paused and schedule_row("j").next_fire_at is None

    restarted.resume("j")
    assert restarted.scheduled_jobs() == ("j",)
    assert restarted.next_fire("j") == datetime(2026, 1, 7, 21, 0, tzinfo=UTC).timestamp()
    assert not schedule_row("j").paused
    assert schedule_row("j").next_fire_at == restarted.next_fire("j")
    assert dues == []  # fires missed while paused are not made up
    assert schedule_events("paused") == ["j"] and schedule_events("resumed") == ["j"]


def test_a_job_paused_in_the_store_is_paused_on_the_next_sync(harness):
    hourly = a_job(schedule="0 * * * *", timezone="UTC")
    scheduler, _ = restart([hourly], HOURLY_NOW)
    store.Schedule.update(paused=True).where(store.Schedule.job == "j").execute()
    scheduler.sync({"j": hourly})
    assert scheduler.next_fire("j") is None
    store.Schedule.update(paused=False).where(store.Schedule.job == "j").execute()
    scheduler.sync({"j": hourly})
    assert scheduler.next_fire("j") == datetime(2026, 1, 7, 16, 0, tzinfo=UTC).timestamp()


def test_a_job_left_out_of_a_resync_is_unscheduled(harness):
    scheduler, _ = restart([a_job("a", every="15m"), a_job("b", schedule="@hourly")], HOURLY_NOW)
    assert scheduler.scheduled_jobs() == ("a", "b")
    scheduler.sync({"a": a_job("a", every="15m")})
    assert scheduler.scheduled_jobs() == ("a",)
    assert scheduler.next_fire("b") is None
    assert schedule_row("b").next_fire_at is None


def test_a_changed_schedule_replaces_the_trigger_on_resync(harness):
    scheduler, _ = restart([a_job(schedule="0 * * * *", timezone="UTC")], HOURLY_NOW)
    scheduler.sync({"j": a_job(schedule="0 6 * * *", timezone="UTC")})
    assert scheduler.next_fire("j") == datetime(2026, 1, 8, 6, 0, tzinfo=UTC).timestamp()
    assert schedule_row("j").next_fire_at == datetime(2026, 1, 8, 6, 0, tzinfo=UTC).timestamp()


def test_a_job_without_a_schedule_is_not_scheduled(harness):
    scheduler, _ = restart([a_job("manual")], HOURLY_NOW)
    assert scheduler.scheduled_jobs() == ()
    assert scheduler.next_fire("manual") is None


# --- real fires ------------------------------------------------------------------------------------------------


def test_an_interval_job_fires_on_due_with_its_scheduled_time(harness):
    anchor = time.time() - 0.1
    store.Schedule.insert(job="j", last_fire_at=anchor).execute()
    dues: list[Due] = []
    scheduler = Scheduler(dues.append)
    scheduler.sync({"j": a_job(every="0.2s")})
    scheduler.start()
    try:
        wait_until(lambda: len(dues) >= 2)
    finally:
        scheduler.shutdown()
    assert all(d.job == "j" and not d.catch_up for d in dues)
    steps = [(d.scheduled_for - anchor) / 0.2 for d in dues]
    assert all(abs(s - round(s)) < 0.01 and round(s) >= 1 for s in steps)  # fire times, not "now"
    assert len(set(round(s) for s in steps)) == len(steps)
    scheduler.fired("j", dues[-1].scheduled_for)
    assert schedule_row("j").last_fire_at == dues[-1].scheduled_for


# --- job options the scheduler reads ---------------------------------------------------------------------------


def test_scheduling_options_have_defaults():
    plain = a_job()
    assert (plain.misfire, plain.misfire_grace_s, plain.max_active_runs, plain.overlap) == ("once", 60.0, 1, "queue")


@pytest.mark.parametrize("options, problem", [
    ({"misfire": "onec"}, "misfire must be one of 'skip' (no catch-up run), 'once' (one catch-up run), "
                          "'all' (a run per missed fire), got 'onec' (did you mean 'once'?)"),
    ({"misfire_grace": -1}, "misfire_grace must be a number of seconds (0 or more), got -1"),
    ({"max_active_runs": 0}, "max_active_runs must be a whole number of runs (1 or more), got 0"),
    ({"overlap": "wait"}, "overlap must be one of 'queue' (wait for a running one to end), 'skip' (drop the fire), "
                          "got 'wait'"),
])
def test_bad_scheduling_options_are_reported(options, problem):
    assert a_job(**options).problems == (problem,)
