"""Schedules as APScheduler triggers: cron expressions, aliases, intervals, time zones.

Reads cron expressions the way crontab does, where APScheduler 3 differs:
day-of-week numbers count 0 (and 7) = Sunday, not 0 = Monday; a restricted
day-of-month and day-of-week fire on either (not both); and a schedule at a
fixed hour fires once on the day clocks fall back, not twice. Knows nothing of
jobs or the database: the loader validates with it, the scheduler fires with it.
"""
from __future__ import annotations

import difflib
import re
import zoneinfo
from datetime import datetime, timedelta, timezone, tzinfo

import tzlocal
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
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
#: Aliases named in messages (the synonyms @midnight and @annually work too).
SHOWN_ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly")
#: Crontab numbering: 0 = Sunday (7 is Sunday too).
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
#: (name in messages, APScheduler field, lowest, highest) of the five crontab fields in order.
_FIELDS = (
    ("minute", "minute", 0, 59),
    ("hour", "hour", 0, 23),
    ("day of month", "day", 1, 31),
    ("month", "month", 1, 12),
    ("day of week", "day_of_week", 0, 7),
)
_ITEM = re.compile(r"^(\*|\w+|\w+-\w+)(?:/(\d+))?$")
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ScheduleError(ValueError):
    """A schedule, interval or time zone that cannot be used; the message says why."""


def local_zone() -> tzinfo:
    """The machine's time zone, with its daylight-saving rules.

    Not `datetime.now().astimezone().tzinfo`: that is today's fixed offset, and a job at
    06:00 would drift to 05:00 or 07:00 after the next clock change.
    """
    try:
        return tzlocal.get_localzone()
    except Exception:  # no zone configured or an unreadable one: today's offset beats failing
        zone = datetime.now().astimezone().tzinfo
        assert zone is not None
        return zone


def parse_zone(name: str | None) -> tzinfo:
    """The zone of an IANA name, or the machine's zone for None."""
    if name is None:
        return local_zone()
    if not isinstance(name, str):
        raise ScheduleError(f"timezone must be an IANA name such as 'Europe/Berlin', got {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zones = sorted(zoneinfo.available_timezones())
        same_but_case = [zone for zone in zones if zone.lower() == name.lower()]  # "utc", "europe/berlin"
        close = same_but_case or difflib.get_close_matches(name, zones, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "use an IANA name such as 'Europe/Berlin'"
        raise ScheduleError(f"unknown time zone '{name}' ({hint})") from None


def _value(token: str, field: int, expression: str) -> int:
    """The number of one value of a field: digits, or a day or month name."""
    label, _, low, high = _FIELDS[field]
    names = {4: _DAY_NAMES, 3: _MONTH_NAMES}.get(field, ())
    if token.lower() in names:
        return names.index(token.lower()) + (1 if field == 3 else 0)
    if not token.isdigit():
        raise ScheduleError(f"schedule '{expression}': the {label} field has '{token}', which is not a number"
                            + (" or a name" if names else "") + f" in {low}-{high}")
    number = int(token)
    if not low <= number <= high:
        extra = " (0 and 7 are Sunday)" if field == 4 else ""
        raise ScheduleError(f"schedule '{expression}': {label} {number} is out of range {low}-{high}{extra}")
    return number


def _check_field(text: str, field: int, expression: str) -> None:
    """Raise ScheduleError unless every item of the field is a value, range, list or step in range."""
    label = _FIELDS[field][0]
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise ScheduleError(f"schedule '{expression}': the {label} field '{text}' is not valid; use a number, "
                                "a range (1-5), a list (1,3), a step (*/15) or *")
        body, step = match.groups()
        if step is not None and int(step) == 0:
            raise ScheduleError(f"schedule '{expression}': the step in '{item}' must be 1 or more")
        if body == "*":
            continue
        start, _, end = body.partition("-")
        first = _value(start, field, expression)
        last = _value(end, field, expression) if end else first
        if field == 4 and last == 0:
            last = 7  # "fri-sun" runs to the end of the week
        if last < first:
            raise ScheduleError(f"schedule '{expression}': the range '{body}' runs backwards; "
                                "write the smaller value first")


def _days_of_week(text: str) -> str:
    """A crontab day-of-week field (0 and 7 = Sunday) as APScheduler names (0 = Monday)."""
    if text == "*":
        return "*"
    days: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = 0, 6
        elif "-" in body:
            start, end = (_day_number(t) for t in body.split("-", 1))
            end = 7 if end == 0 and start > 0 else end  # "5-7" and "5-sun" run to Sunday
        else:
            start = end = _day_number(body)
            if step_text:  # "1/2" means from Monday every second day, as in Vixie cron
                end = 6
        days.update(day % 7 for day in range(start, end + 1, step))
    monday_first = [day for day in (1, 2, 3, 4, 5, 6, 0) if day in days]
    return ",".join(_DAY_NAMES[day] for day in monday_first)


def _day_number(token: str) -> int:
    return _DAY_NAMES.index(token.lower()) if token.lower() in _DAY_NAMES else int(token)


class _CrontabTrigger(CronTrigger):
    """A CronTrigger that fires once, not twice, at a fixed hour repeated when clocks fall back."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None and fire.fold and fire.replace(fold=0).utcoffset() != fire.utcoffset():
            # The second pass through a repeated wall-clock hour: crontab ran this time already.
            # Step on in UTC: wall-clock arithmetic drops fold and would land in the first pass again.
            later = (fire.astimezone(timezone.utc) + timedelta(seconds=1)).astimezone(self.timezone)
            fire = super().get_next_fire_time(fire, later)
        return fire


def cron_trigger(expression: str, zone: str | None = None) -> BaseTrigger:
    """A trigger for a 5-field crontab expression or alias, read in `zone`, firing as crontab would."""
    tz = parse_zone(zone)
    if not isinstance(expression, str):
        raise ScheduleError(f"schedule must be a cron expression such as '0 6 * * *', got {expression!r}")
    text = ALIASES.get(expression.strip().lower(), expression.strip())
    fields = text.split()
    if len(fields) != 5:
        if text.startswith("@"):
            raise ScheduleError(f"schedule '{expression}' is not a known alias; use one of "
                                + ", ".join(SHOWN_ALIASES) + " or a 5-field cron expression")
        if text.lower().startswith("every"):
            raise ScheduleError(f"schedule '{expression}' is not a cron expression; for a job that runs at an "
                                "interval write every= with a number and a unit, such as every='5m' (or schedule='@daily')")
        raise ScheduleError(
            f"schedule '{expression}' has {len(fields)} field{'s' if len(fields) != 1 else ''}; a cron "
            "schedule has 5 (minute hour day-of-month month day-of-week) or is one of " + ", ".join(SHOWN_ALIASES))
    for index, field_text in enumerate(fields):
        _check_field(field_text, index, expression)
    minute, hour, day, month, day_of_week = fields
    fixed_hour = not hour.startswith("*")
    trigger_class = _CrontabTrigger if fixed_hour else CronTrigger
    weekdays = _days_of_week(day_of_week)
    try:
        if not day.startswith("*") and not day_of_week.startswith("*"):
            # crontab fires when either day field matches; APScheduler would need both.
            return OrTrigger([
                trigger_class(minute=minute, hour=hour, day=day, month=month, timezone=tz),
                trigger_class(minute=minute, hour=hour, month=month, day_of_week=weekdays, timezone=tz),
            ])
        return trigger_class(minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=tz)
    except ValueError as error:
        raise ScheduleError(f"schedule '{expression}' is not a valid cron expression: {error}") from None


def parse_every(text: str) -> float:
    """Seconds of an interval such as "30s", "15m", "2h", "1d"."""
    match = _INTERVAL.match(str(text))
    if not isinstance(text, str) or not match or float(match.group(1)) <= 0:
        raise ScheduleError(f"every={text!r} is not an interval; write a number and a unit, "
                            "such as '30s', '15m', '2h' or '1d'")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > MAX_INTERVAL_S:
        raise ScheduleError(f"every={text!r} is more than a year; for a job that runs that seldom, write a cron "
                            "schedule for the day it should run (schedule='0 6 1 1 *')")
    return seconds


MAX_INTERVAL_S = 366 * 86400
"""Longer intervals would overflow a date computed from them (every='1e12d'); cron says "once a year" better."""


def interval_trigger(every: str, zone: str | None = None, start: datetime | None = None) -> IntervalTrigger:
    """A trigger firing every interval from `start` (default: one interval from now)."""
    return IntervalTrigger(seconds=parse_every(every), start_date=start, timezone=parse_zone(zone))


def next_fire(schedule: str | None, every: str | None, zone: str | None, after: datetime) -> datetime | None:
    """The first fire time at or after `after` (aware), or None for unscheduled jobs.

    An interval counts from `after` (the last fire, or now), not from the real clock.
    """
    if schedule:
        return cron_trigger(schedule, zone).get_next_fire_time(None, after)
    if every:
        return after + timedelta(seconds=parse_every(every))
    return None
