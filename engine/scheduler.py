"""Schedules -> due runs: cron and interval triggers, time zones, misfires, pause and resume.

Owns the APScheduler BackgroundScheduler and stepline's own schedule record (the
Schedule table: paused, last fire, next fire), and decides what happens to fires
the engine missed (the job's `misfire` policy and `misfire_grace`). It never runs
anything: a fire becomes a `Due` handed to `on_due`, and the engine creates the
run and then reports it back with `fired()`. APScheduler keeps nothing durable;
after a restart, catch-up is computed here from Schedule.last_fire_at.

Threads: `on_due` is called from the thread calling `sync()` (catch-up at start)
and from APScheduler's scheduler thread (regular fires); it must only hand the
Due over (a queue), never run or wait. `fired()`, `pause()`, `resume()` and
`sync()` write to the database from their caller's thread (the engine's).
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from engine import store
from engine.definition import JobDef
from engine.timing import ScheduleError, cron_trigger, interval_trigger, parse_every

log = logging.getLogger("stepline.scheduler")
# APScheduler logs every fire at INFO and every late one at WARNING; stepline records its own decisions.
logging.getLogger("apscheduler").setLevel(logging.WARNING)

UTC = timezone.utc
#: Most catch-up runs misfire="all" creates for one job at once (the newest missed fires are kept).
MAX_CATCH_UP = 100
#: Fire times this close together are the same fire (interval arithmetic in float seconds drifts).
_SAME_FIRE_S = 0.001


@dataclass(frozen=True, slots=True)
class Due:
    job: str
    """The job whose schedule fired."""
    scheduled_for: float
    """Epoch seconds (UTC) of the fire time the run is for, not the time it was noticed."""
    catch_up: bool
    """True for a run made up for a misfire (engine down or late beyond the grace window)."""


@dataclass(slots=True)
class _Entry:
    """What the scheduler holds for one scheduled job."""
    job_def: JobDef
    trigger: BaseTrigger
    key: tuple[str | None, str | None, str | None]
    """(schedule, every, timezone): a change means a new trigger."""
    last_seen: float
    """Fires at or before this time were handed to on_due or decided on already."""
    paused: bool


def _noop() -> None:
    """The APScheduler job function: the fire itself is read from EVENT_JOB_SUBMITTED, which knows its time."""


class Scheduler:
    """Turns the schedules of loaded jobs into `Due` values; one per engine."""

    def __init__(self, on_due: Callable[[Due], None], clock: Callable[[], float] = time.time) -> None:
        self.on_due = on_due
        self.clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._synced = False
        # The debug executor runs the (empty) job function in the scheduler's own thread: no pool, no
        # max-instances refusals; the SUBMITTED event carries the fire time we need.
        self._aps = BackgroundScheduler(timezone=UTC, executors={"default": DebugExecutor()},
                                        job_defaults={"coalesce": True, "max_instances": 1,
                                                      "misfire_grace_time": None})
        self._aps.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start firing (jobs synced before start fire from then on)."""
        self._aps.start()

    def shutdown(self) -> None:
        """Stop firing; a fire in progress finishes handing over its Due first."""
        if self._aps.running:
            self._aps.shutdown(wait=True)

    # --- definitions -----------------------------------------------------------------------------------------

    def sync(self, jobs: Mapping[str, JobDef]) -> None:
        """Schedule every job of `jobs` with a schedule or interval, and drop jobs that have none any more.

        On the first call (engine start) the fires missed since each job's last recorded fire
        are handed to on_due as its misfire policy says. A job seen for the first time later
        (a job file added while running) starts fresh. Persists each job's next fire time.
        """
        now = self.clock()
        scheduled = {name: j for name, j in jobs.items() if (j.schedule or j.every) and not j.problems}
        rows = _schedule_rows()
        decisions: list[tuple[JobDef, list[float], list[Due], str]] = []
        with self._lock:
            for name in list(self._entries):
                if name not in scheduled:
                    del self._entries[name]
                    self._unschedule(name)
            for name, job_def in scheduled.items():
                paused, last_fire_at, next_fire_at = rows.get(name, (False, None, None))
                if last_fire_at is None and next_fire_at is not None and not self._synced and not paused:
                    # A job that has not fired yet is caught up from the first fire an earlier engine gave
                    # it, as one that has: a new daily job whose first 06:00 fell while the machine was down
                    # is a misfire. An interval also keeps that engine's phase: counted from each start
                    # instead, it would never fire under an engine restarted more often.
                    last_fire_at = next_fire_at - (_interval_s(job_def.every) if job_def.every else 1.0)
                key = (job_def.schedule, job_def.every, job_def.timezone)
                entry = self._entries.get(name)
                if entry is not None and entry.key == key and entry.paused == paused:
                    entry.job_def = job_def  # misfire options may have changed; the trigger did not
                    continue
                catching_up = not self._synced and last_fire_at is not None and not paused
                if entry is not None and not (entry.paused and not paused):
                    anchor = entry.last_seen  # redefined: the fires decided on so far stay decided
                elif not self._synced and last_fire_at is not None:
                    anchor = last_fire_at  # restart: an interval keeps its phase
                else:
                    anchor = now  # a new job, or resumed (paused through the store): fires from now on
                try:
                    trigger = _trigger(job_def, anchor)
                except ScheduleError as error:  # the loader rejects these; never let one stop the rest
                    log.warning("job '%s' is not scheduled: %s", name, error)
                    self._entries.pop(name, None)
                    self._unschedule(name)
                    continue
                if catching_up:
                    assert last_fire_at is not None
                    fires, more = _fires_between(trigger, last_fire_at, now)
                    if fires:
                        dues, message = _decide(job_def, fires, more, now, catching_up=True)
                        decisions.append((job_def, fires, dues, message))
                entry = _Entry(job_def, trigger, key, last_seen=max(anchor, now), paused=paused)
                self._entries[name] = entry
                self._schedule(name, entry, now)
            self._synced = True
            next_fires = {name: self._next_fire_locked(name) for name in self._entries}
            paused_count = sum(1 for entry in self._entries.values() if entry.paused)
        _record_sync(next_fires, paused_count, decisions, now)
        for _job_def, _fires, dues, _message in decisions:
            for due in dues:
                self.on_due(due)

    def scheduled_jobs(self) -> tuple[str, ...]:
        """Names of the jobs APScheduler currently holds (paused and unscheduled jobs are not among them)."""
        return tuple(sorted(j.id for j in self._aps.get_jobs()))

    # --- fires -----------------------------------------------------------------------------------------------

    def fired(self, job: str, scheduled_for: float) -> None:
        """Record that the engine acted on the fire of `job` at `scheduled_for` (its run exists now).

        Call it after creating the run (or deciding to skip it), from the engine's thread: until
        then a restart would still owe that fire. last_fire_at only ever moves forward.
        """
        _record_fire(job, scheduled_for, self.next_fire(job), self.clock())

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        """APScheduler's scheduler thread: a job's fire time came. Decide and hand over; nothing else."""
        try:
            for run_time in event.scheduled_run_times:
                self._fire(event.job_id, run_time.timestamp())
        except Exception:  # APScheduler would log and carry on; say whose fire it was
            log.exception("schedule fire of job '%s' failed", event.job_id)

    def _fire(self, job: str, scheduled_for: float) -> None:
        now = self.clock()
        with self._lock:
            entry = self._entries.get(job)
            if entry is None or entry.paused or scheduled_for <= entry.last_seen + _SAME_FIRE_S:
                return
            # Normally the only fire since the last one; after a stall (suspended machine, busy
            # scheduler thread) APScheduler coalesced the earlier ones, which we count here.
            earlier, more = _fires_between(entry.trigger, entry.last_seen, scheduled_for - _SAME_FIRE_S)
            fires = earlier + [scheduled_for]
            dues, message = _decide(entry.job_def, fires, more, now, catching_up=False)
            entry.last_seen = scheduled_for
        if message:
            # A misfire decision is state too; written from this thread, one short transaction.
            _record_misfire(entry.job_def, fires, dues, message, now)
        for due in dues:
            self.on_due(due)

    # --- pause -----------------------------------------------------------------------------------------------

    def pause(self, job: str) -> None:
        """Stop firing `job` until resumed, across restarts (Schedule.paused)."""
        with self._lock:
            entry = self._entries.get(job)
            if entry is not None:
                entry.paused = True
                self._unschedule(job)
        record_paused(job, True, None, self.clock())

    def resume(self, job: str) -> None:
        """Fire `job` again from now on, in its old phase (an every='3m' job that fired at :02 still does);
        fires it missed while paused are not made up, by this engine or by the next one."""
        now = self.clock()
        skipped: float | None = None
        with self._lock:
            entry = self._entries.get(job)
            if entry is not None and entry.paused:
                entry.paused = False
                fires, _ = _fires_between(entry.trigger, entry.last_seen, now, limit=1)
                skipped = fires[-1] if fires else None
                entry.last_seen = max(entry.last_seen, now)
                self._schedule(job, entry, now)
            next_fire = self._next_fire_locked(job)
        record_paused(job, False, next_fire, now, skipped_upto=skipped)

    def next_fire(self, job: str) -> float | None:
        """Epoch seconds of the job's next fire; None if it is paused, unscheduled or unknown."""
        with self._lock:
            return self._next_fire_locked(job)

    # --- APScheduler -----------------------------------------------------------------------------------------

    def _next_fire_locked(self, job: str) -> float | None:
        entry = self._entries.get(job)
        if entry is None or entry.paused:
            return None
        aps_job = self._aps.get_job(job)
        next_run = getattr(aps_job, "next_run_time", None)
        return next_run.timestamp() if next_run is not None else None

    def _schedule(self, name: str, entry: _Entry, now: float) -> None:
        if entry.paused:
            self._unschedule(name)
            return
        # Pass the first fire explicitly: computed from our clock, and APScheduler's pending jobs
        # (added before start) would otherwise compute it from theirs.
        first = entry.trigger.get_next_fire_time(None, _utc(now + _SAME_FIRE_S))
        # Remove, then add: before start() APScheduler queues adds, and replace_existing would queue a
        # second copy of the job instead of replacing the first.
        self._unschedule(name)
        self._aps.add_job(_noop, entry.trigger, id=name, name=name, next_run_time=first)

    def _unschedule(self, name: str) -> None:
        if self._aps.get_job(name) is not None:
            self._aps.remove_job(name)


# --- decisions (pure) ------------------------------------------------------------------------------------------


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _trigger(job_def: JobDef, anchor: float) -> BaseTrigger:
    """The job's trigger; an interval counts from `anchor` (its last fire), so its phase survives restarts."""
    if job_def.schedule:
        return cron_trigger(job_def.schedule, job_def.timezone)
    assert job_def.every
    parse_every(job_def.every)  # raises ScheduleError before the trigger would
    return interval_trigger(job_def.every, job_def.timezone, start=_utc(anchor))


def _interval_s(every: str) -> float:
    try:
        return parse_every(every)
    except ScheduleError:
        return 0.0  # reported by the loader; _trigger refuses it below


def _walk(trigger: BaseTrigger, after: float, upto: float) -> list[float]:
    """Every fire time in (after, upto], oldest first."""
    found: list[float] = []
    fire = trigger.get_next_fire_time(None, _utc(after + _SAME_FIRE_S))
    while fire is not None and fire.timestamp() <= upto:
        found.append(fire.timestamp())
        # Step on in UTC: local arithmetic would lose the fold of a repeated (fall-back) hour.
        fire = trigger.get_next_fire_time(fire, _utc(fire.timestamp() + _SAME_FIRE_S))
    return found


def _fires_between(trigger: BaseTrigger, after: float, upto: float,
                   limit: int = MAX_CATCH_UP) -> tuple[list[float], bool]:
    """The newest `limit` fire times in (after, upto], oldest first, and whether older ones were left out.

    Triggers only walk forward, and a second-by-second interval over a month of downtime is
    millions of fires: look back over a window that grows until it holds more than `limit`
    fires or reaches `after`, so the work stays about `limit` fires whatever the downtime.
    """
    if upto <= after:
        return [], False
    window = 1.0
    while True:
        start = max(after, upto - window)
        fires = _walk(trigger, start, upto)
        if len(fires) > limit:
            return fires[-limit:], True
        if start == after:
            return fires, False
        window *= 4


def _decide(job_def: JobDef, fires: list[float], more: bool, now: float,
            catching_up: bool) -> tuple[list[Due], str]:
    """The Dues for pending fire times of a job (oldest first), and a message if any was a misfire.

    A fire noticed within misfire_grace of its time runs as usual; older ones are misfires:
    "skip" runs none of them, "once" one run for the newest (none when an on-time fire
    follows, which stands for them), "all" one each (the newest MAX_CATCH_UP).
    """
    grace = job_def.misfire_grace_s
    cut = bisect.bisect_left(fires, now - grace)  # fires[:cut] are later than the grace window
    late, on_time = fires[:cut], fires[cut:]
    name = job_def.name
    if job_def.misfire == "all":
        dues = [Due(name, t, True) for t in late] + [Due(name, t, False) for t in on_time]
        dues = dues[-MAX_CATCH_UP:]
    elif on_time:
        dues = [Due(name, on_time[-1], False)]  # coalesced: the newest fire stands for the ones before it
    elif late and job_def.misfire == "once":
        dues = [Due(name, late[-1], True)]
    else:
        dues = []
    if not late:
        return dues, ""
    count = f"more than {len(late)}" if more else str(len(late))
    span = _when(late[0]) if len(late) == 1 else f"{_when(late[0])} to {_when(late[-1])}"
    why = "while the engine was stopped" if catching_up else "while the engine was busy or suspended"
    catch_ups = sum(1 for d in dues if d.catch_up)
    if job_def.misfire == "skip" or not catch_ups:
        outcome = "none made up" + (f" (the run for {_when(on_time[-1])} stands for them)" if on_time else "")
    elif catch_ups == 1:
        outcome = f"one catch-up run for {_when(late[-1])}"
    else:
        outcome = f"{catch_ups} catch-up runs"
    return dues, (f"{name}: {count} fire{'s' if count != '1' else ''} missed {why} ({span}); "
                  f"misfire='{job_def.misfire}': {outcome}")


def _when(seconds: float) -> str:
    return _utc(seconds).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- schedule record (one IMMEDIATE transaction each; candidates for store.py) -------------------------------


def _schedule_rows() -> dict[str, tuple[bool, float | None, float | None]]:
    """(paused, last_fire_at, next_fire_at) by job."""
    query = store.Schedule.select(store.Schedule.job, store.Schedule.paused, store.Schedule.last_fire_at,
                                  store.Schedule.next_fire_at)
    return {row.job: (bool(row.paused), row.last_fire_at, row.next_fire_at) for row in query}


def _upsert(job: str, values: dict[str, Any]) -> None:
    """Insert or update the job's Schedule row; call inside a transaction."""
    if store.Schedule.update(values).where(store.Schedule.job == job).execute() == 0:
        store.Schedule.insert(job=job, **values).execute()


def _event(at: float, state: str, message: str) -> None:
    store.insert_events([store.event_row("schedule", None, None, state, message, at)])


def _record_sync(next_fires: dict[str, float | None], paused: int,
                 decisions: list[tuple[JobDef, list[float], list[Due], str]], at: float) -> None:
    with store.write():
        for job, next_fire in next_fires.items():
            _upsert(job, {"next_fire_at": next_fire, "updated_at": at})
        store.Schedule.update(next_fire_at=None, updated_at=at).where(
            store.Schedule.job.not_in(list(next_fires)) & store.Schedule.next_fire_at.is_null(False)).execute()
        for job_def, fires, dues, message in decisions:
            _misfire_changes(job_def, fires, dues, message, at)
        _event(at, "synced", f"{len(next_fires)} scheduled jobs ({paused} paused)")


def _record_misfire(job_def: JobDef, fires: list[float], dues: list[Due], message: str, at: float) -> None:
    with store.write():
        _misfire_changes(job_def, fires, dues, message, at)


def _misfire_changes(job_def: JobDef, fires: list[float], dues: list[Due], message: str, at: float) -> None:
    if not message:
        return
    if not dues:
        # Nothing will call fired() for these: record that they were decided on, so a restart
        # (perhaps with another policy) does not owe them again.
        _advance_last_fire(job_def.name, fires[-1], at)
    _event(at, "misfire", message)


def _advance_last_fire(job: str, scheduled_for: float, at: float) -> None:
    row = store.Schedule.get_or_none(store.Schedule.job == job)
    last = row.last_fire_at if row is not None else None
    _upsert(job, {"last_fire_at": scheduled_for if last is None else max(last, scheduled_for), "updated_at": at})


# Once per fire of every scheduled job: plain SQL. last_fire_at only ever moves forward.
_RECORD_FIRE = ('INSERT INTO "schedule" ("job", "paused", "last_fire_at", "next_fire_at", "updated_at") '
                'VALUES (?, 0, ?, ?, ?) ON CONFLICT ("job") DO UPDATE SET '
                '"last_fire_at" = MAX(COALESCE("last_fire_at", excluded."last_fire_at"), excluded."last_fire_at"), '
                '"next_fire_at" = excluded."next_fire_at", "updated_at" = excluded."updated_at"')


def _record_fire(job: str, scheduled_for: float, next_fire: float | None, at: float) -> None:
    with store.write():
        store.db.execute_sql(_RECORD_FIRE, [job, scheduled_for, next_fire, at])
        _event(at, "fired", f"{job}: run due for {_when(scheduled_for)}")


def record_paused(job: str, paused: bool, next_fire: float | None, at: float,
                  skipped_upto: float | None = None) -> None:
    """Persist a pause or resume (and its event); used directly when no engine runs the home.

    The fires of the pause count as decided on (skipped), so the next engine does not catch up on them
    after a restart: an engine resuming gives `skipped_upto`, the newest such fire, which keeps an
    interval's phase. A resume while no engine runs counts as the job's last fire."""
    values: dict[str, Any] = {"paused": paused, "next_fire_at": next_fire, "updated_at": at}
    with store.write():
        row = store.Schedule.get_or_none(store.Schedule.job == job) if not paused else None
        if skipped_upto is not None:
            values["last_fire_at"] = max(row.last_fire_at or skipped_upto, skipped_upto) if row else skipped_upto
        elif not paused and next_fire is None:
            if row is not None and row.paused:
                values["last_fire_at"] = max(row.last_fire_at or at, at)
        _upsert(job, values)
        _event(at, "paused" if paused else "resumed", job)
