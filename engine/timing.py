"""Schedules as APScheduler triggers: cron expressions, aliases, intervals, time zones.

Translates crontab's day-of-week numbers (0 and 7 = Sunday) to names, because
APScheduler 3 counts 0 = Monday and would fire every numeric schedule a day late.
"""
from __future__ import annotations

import difflib
import re
import zoneinfo
from datetime import datetime, tzinfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ScheduleError(ValueError):
    """A schedule, interval or time zone that cannot be used; the message says why."""


def local_zone() -> tzinfo:
    """The machine's time zone."""
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def parse_zone(name: str | None) -> tzinfo:
    if name is None:
        return local_zone()
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (use an IANA name such as 'Europe/Berlin')"
        raise ScheduleError(f"unknown time zone '{name}'{hint}") from None


def _translate_day_of_week(field: str) -> str:
    def name(token: str) -> str:
        if token.isdigit():
            number = int(token)
            if number > 7:
                raise ScheduleError(f"day of week {number} is out of range 0-7 (0 and 7 are Sunday)")
            return _DAY_NAMES[number]
        return token

    parts = []
    for item in field.split(","):
        body, _, step = item.partition("/")
        if "-" in body:
            start, end = body.split("-", 1)
            if start.isdigit() and end.isdigit() and int(end) == 7 and int(start) > 0:
                # "5-7" in crontab means fri..sun; APScheduler needs it split at the week's end.
                parts.append(f"{name(start)}-sat{('/' + step) if step else ''}")
                parts.append("sun")
                continue
            body = f"{name(start)}-{name(end)}"
        else:
            body = name(body)
        parts.append(body + (f"/{step}" if step else ""))
    return ",".join(parts)


def cron_trigger(expression: str, zone: str | None = None) -> CronTrigger:
    """A CronTrigger for a 5-field crontab expression or alias, read in `zone`."""
    tz = parse_zone(zone)
    text = ALIASES.get(expression.strip().lower(), expression.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"'{expression}' has {len(fields)} fields; a cron schedule has 5 "
            "(minute hour day-of-month month day-of-week) or is one of "
            + ", ".join(sorted(a for a in ALIASES if a not in ('@midnight', '@annually'))))
    minute, hour, day, month, day_of_week = fields
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_translate_day_of_week(day_of_week), timezone=tz)
    except ValueError as error:
        raise ScheduleError(f"'{expression}' is not a valid cron schedule: {error}") from None


def parse_every(text: str) -> float:
    """Seconds of an interval such as "30s", "15m", "2h", "1d"."""
    match = _INTERVAL.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ScheduleError(f"'{text}' is not an interval; write a number and a unit, such as '30s', '15m', '2h' or '1d'")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def interval_trigger(every: str, zone: str | None = None) -> IntervalTrigger:
    return IntervalTrigger(seconds=parse_every(every), timezone=parse_zone(zone))


def next_fire(schedule: str | None, every: str | None, zone: str | None, after: datetime) -> datetime | None:
    """The first fire time at or after `after` (aware), or None for unscheduled jobs."""
    if schedule:
        trigger = cron_trigger(schedule, zone)
    elif every:
        trigger = interval_trigger(every, zone)
    else:
        return None
    return trigger.get_next_fire_time(None, after)
