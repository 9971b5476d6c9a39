"""Schedules fire when crontab would: day-of-week numbers, aliases, DST days, intervals.

Fire times come from the trigger's get_next_fire_time; nothing waits for a clock.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from engine.timing import ScheduleError, cron_trigger, next_fire, parse_every, parse_zone

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
SUNDAY = datetime(2026, 1, 4, tzinfo=UTC)


def fires(schedule: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in [start, end), as the scheduler would walk them."""
    trigger = cron_trigger(schedule, zone)
    found: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < end:
        found.append(fire)
        # Step on in UTC: wall-clock arithmetic would drop `fold` and revisit a repeated hour.
        fire = trigger.get_next_fire_time(fire, (fire.astimezone(UTC) + timedelta(seconds=1)).astimezone(fire.tzinfo))
    return found


def weekdays(schedule: str) -> list[str]:
    return [f.strftime("%a") for f in fires(schedule, "UTC", SUNDAY, SUNDAY + timedelta(days=7))]


def test_1_to_5_fires_monday_to_friday():
    assert weekdays("30 2 * * 1-5") == ["Mon", "Tue", "Wed", "Thu", "Fri"]


def test_0_and_7_are_both_sunday():
    assert weekdays("0 0 * * 0") == ["Sun"]
    assert weekdays("0 0 * * 7") == ["Sun"]


def test_5_to_7_is_friday_saturday_sunday():
    assert weekdays("0 0 * * 5-7") == ["Sun", "Fri", "Sat"]


def test_a_range_from_0_starts_on_sunday():
    assert weekdays("0 0 * * 0-2") == ["Sun", "Mon", "Tue"]


def test_lists_and_steps_of_day_numbers_count_from_sunday():
    assert weekdays("0 0 * * 1,3,5") == ["Mon", "Wed", "Fri"]
    assert weekdays("0 0 * * */2") == ["Sun", "Tue", "Thu", "Sat"]


def test_day_names_mean_what_they_say():
    assert weekdays("0 0 * * mon-fri") == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert weekdays("0 0 * * fri-sun") == ["Sun", "Fri", "Sat"]


def test_a_day_of_month_and_a_day_of_week_fire_on_either_as_in_crontab():
    days = [f.day for f in fires("0 0 13 * 5", "UTC", datetime(2026, 2, 1, tzinfo=UTC),
                                 datetime(2026, 3, 1, tzinfo=UTC))]
    assert days == [6, 13, 20, 27]  # Fridays of February 2026, and the 13th (also a Friday)
    days = [f.day for f in fires("0 0 1 * 1", "UTC", datetime(2026, 2, 1, tzinfo=UTC),
                                 datetime(2026, 3, 1, tzinfo=UTC))]
    assert days == [1, 2, 9, 16, 23]  # the 1st (a Sunday) and every Monday


@pytest.mark.parametrize("alias, after, expected", [
    ("@hourly", datetime(2026, 1, 7, 10, 15, tzinfo=UTC), datetime(2026, 1, 7, 11, 0, tzinfo=UTC)),
    ("@daily", datetime(2026, 1, 7, 10, 15, tzinfo=UTC), datetime(2026, 1, 8, 0, 0, tzinfo=UTC)),
    ("@weekly", datetime(2026, 1, 7, 10, 15, tzinfo=UTC), datetime(2026, 1, 11, 0, 0, tzinfo=UTC)),
    ("@monthly", datetime(2026, 1, 7, 10, 15, tzinfo=UTC), datetime(2026, 2, 1, 0, 0, tzinfo=UTC)),
    ("@yearly", datetime(2026, 1, 7, 10, 15, tzinfo=UTC), datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
])
def test_aliases_fire_at_the_start_of_their_period(alias, after, expected):
    assert next_fire(alias, None, "UTC", after) == expected


def test_weekly_fires_on_sunday():
    assert next_fire("@weekly", None, "UTC", SUNDAY + timedelta(hours=1)).strftime("%a") == "Sun"


def test_schedules_are_read_in_their_time_zone():
    fire = next_fire("0 6 * * *", None, "Europe/Berlin", datetime(2026, 1, 7, 12, 0, tzinfo=UTC))
    assert fire.astimezone(UTC) == datetime(2026, 1, 8, 5, 0, tzinfo=UTC)


def fires_on(day: datetime, schedule: str) -> list[datetime]:
    """Fire times whose Berlin wall-clock date is `day`, as UTC."""
    found = fires(schedule, "Europe/Berlin", day - timedelta(days=1), day + timedelta(days=2))
    return [f.astimezone(UTC) for f in found if f.astimezone(BERLIN).date() == day.date()]


def test_a_daily_0230_fires_once_on_the_spring_forward_day():
    # 02:30 does not exist in Berlin on 2026-03-29 (02:00 CET jumps to 03:00 CEST): it fires once, right after.
    assert fires_on(datetime(2026, 3, 29, tzinfo=BERLIN), "30 2 * * *") == [
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC)]


def test_a_daily_0230_fires_once_on_the_fall_back_day():
    # 02:30 happens twice in Berlin on 2026-10-25 (CEST, then CET): crontab runs it the first time only.
    assert fires_on(datetime(2026, 10, 25, tzinfo=BERLIN), "30 2 * * *") == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]


def test_the_days_around_the_clock_changes_fire_once_each():
    for day in (28, 30):
        assert len(fires_on(datetime(2026, 3, day, tzinfo=BERLIN), "30 2 * * *")) == 1
    for day in (24, 26):
        assert len(fires_on(datetime(2026, 10, day, tzinfo=BERLIN), "30 2 * * *")) == 1


def test_an_hourly_schedule_fires_every_real_hour_on_the_fall_back_day():
    assert len(fires_on(datetime(2026, 10, 25, tzinfo=BERLIN), "0 * * * *")) == 25
    assert len(fires_on(datetime(2026, 3, 29, tzinfo=BERLIN), "0 * * * *")) == 23


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400),
                                           ("1.5h", 5400), (" 10 s ", 10)])
def test_intervals_are_a_number_and_a_unit(text, seconds):
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["15 minutes", "15", "0s", "-5m", "m", "2w"])
def test_other_intervals_are_refused_with_examples(text):
    with pytest.raises(ScheduleError) as caught:
        parse_every(text)
    assert str(caught.value) == (f"every='{text}' is not an interval; write a number and a unit, "
                                 "such as '30s', '15m', '2h' or '1d'")


def test_an_interval_must_be_text_and_at_most_a_year():
    with pytest.raises(ScheduleError, match=r"^every=300 is not an interval; write a number and a unit"):
        parse_every(300)  # type: ignore[arg-type]
    with pytest.raises(ScheduleError) as caught:
        parse_every("1000000d")
    assert str(caught.value) == ("every='1000000d' is more than a year; for a job that runs that seldom, write a cron "
                                 "schedule for the day it should run (schedule='0 6 1 1 *')")


def test_an_interval_written_as_a_schedule_points_at_every():
    with pytest.raises(ScheduleError) as caught:
        cron_trigger("every 5 minutes")
    assert str(caught.value) == ("schedule 'every 5 minutes' is not a cron expression; for a job that runs at an "
                                 "interval write every= with a number and a unit, such as every='5m' (or "
                                 "schedule='@daily')")


def test_an_interval_counts_from_the_given_time_not_the_clock():
    after = datetime(2020, 5, 1, 12, 0, tzinfo=UTC)
    assert next_fire(None, "15m", "UTC", after) == datetime(2020, 5, 1, 12, 15, tzinfo=UTC)


def test_an_unscheduled_job_never_fires():
    assert next_fire(None, None, None, SUNDAY) is None


def test_an_unknown_zone_suggests_a_close_name():
    with pytest.raises(ScheduleError) as caught:
        parse_zone("America/New_Yrok")
    assert str(caught.value) == "unknown time zone 'America/New_Yrok' (did you mean 'America/New_York'?)"


def test_no_zone_means_the_machines_zone():
    assert parse_zone(None).utcoffset(datetime.now()) == datetime.now().astimezone().utcoffset()


def test_no_zone_follows_the_machines_daylight_saving_rules(monkeypatch):
    import tzlocal
    monkeypatch.setenv("TZ", "Europe/Berlin")
    tzlocal.reload_localzone()
    try:
        winter = next_fire("0 6 * * *", None, None, datetime(2026, 1, 7, 12, 0, tzinfo=UTC))
        summer = next_fire("0 6 * * *", None, None, datetime(2026, 7, 7, 12, 0, tzinfo=UTC))
    finally:
        monkeypatch.undo()
        tzlocal.reload_localzone()
    assert winter.astimezone(UTC).hour == 5
    assert summer.astimezone(UTC).hour == 4


@pytest.mark.parametrize("typed, meant", [("utc", "UTC"), ("europe/berlin", "Europe/Berlin")])
def test_a_zone_written_in_the_wrong_case_suggests_its_spelling(typed, meant):
    with pytest.raises(ScheduleError) as caught:
        parse_zone(typed)
    assert str(caught.value) == f"unknown time zone '{typed}' (did you mean '{meant}'?)"
