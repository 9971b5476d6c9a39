"""The read side: runs, steps, attempts and events as plain values for the CLI and the console.

Every query is bounded (LIMIT or `id >`), selects what it needs and returns frozen
dataclasses; no peewee row or open cursor leaves this module.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, overload

from peewee import fn

from engine import store
from engine.errors import UnknownRunError, UnknownStepError
from engine.home import Home
from engine.plan import JobPlan
from engine.states import FailureReason, RunState
from engine.store import Attempt, Command, EngineState, Event, JobInfo, LoadProblem, Run, Schedule, StepRun

HEARTBEAT_S = 1.0
"""How often a running engine writes its heartbeat."""
STALE_AFTER_S = 5.0
"""A heartbeat older than this means the engine is not responding."""


@overload
def utc(at: float) -> datetime: ...
@overload
def utc(at: None) -> None: ...
@overload
def utc(at: float | None) -> datetime | None: ...


def utc(at: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (None stays None)."""
    return None if at is None else datetime.fromtimestamp(at, timezone.utc)


def _reason(summary: str | None, detail: str | None) -> FailureReason | None:
    return FailureReason(summary, detail or "") if summary else None


def _duration(started: datetime | None, ended: datetime | None, now: datetime | None) -> float | None:
    if started is None:
        return None
    end = ended or now
    return None if end is None else max(0.0, (end - started).total_seconds())


@dataclass(frozen=True, slots=True)
class AttemptView:
    number: int
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    cpu_s: float | None
    peak_rss_bytes: int | None
    log_path: str
    reason: FailureReason | None

    def duration_s(self, now: datetime | None = None) -> float | None:
        return _duration(self.started_at, self.ended_at, now)


@dataclass(frozen=True, slots=True)
class StepView:
    name: str
    position: int
    state: str
    kind: str
    """"python" or "shell"."""
    waiting_for: str | None
    """Why a waiting step waits: "upstream", "pool warehouse", "retry 2/3 at 03:12:40"."""
    attempts: int
    started_at: datetime | None
    ended_at: datetime | None
    reason: FailureReason | None
    has_output: bool
    output_preview: str | None
    upstream: tuple[str, ...]
    downstream: tuple[str, ...]

    def duration_s(self, now: datetime | None = None) -> float | None:
        return _duration(self.started_at, self.ended_at, now)


@dataclass(frozen=True, slots=True)
class RunSummary:
    id: int
    job: str
    state: str
    trigger: str
    created_at: datetime
    scheduled_for: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    reason: str | None
    params: dict[str, str]

    def duration_s(self, now: datetime | None = None) -> float | None:
        return _duration(self.started_at, self.ended_at, now)


@dataclass(frozen=True, slots=True)
class RunView:
    run: RunSummary
    steps: tuple[StepView, ...]
    """In DAG order."""
    plan: JobPlan

    def step(self, name: str) -> StepView:
        for step_view in self.steps:
            if step_view.name == name:
                return step_view
        raise KeyError(name)

    @property
    def id(self) -> int:
        return self.run.id

    @property
    def state(self) -> str:
        return self.run.state


@dataclass(frozen=True, slots=True)
class EventView:
    id: int
    at: datetime
    run_id: int | None
    step: str | None
    kind: str
    state: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class CommandView:
    id: int
    kind: str
    state: str
    result: str | None
    run_id: int | None = None
    job: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


_RUN_COLUMNS = (Run.id, Run.job, Run.state, Run.trigger, Run.created_at, Run.scheduled_for, Run.started_at,
                Run.ended_at, Run.reason, Run.params)


def _run_summary(row: Run) -> RunSummary:
    return RunSummary(id=row.id, job=row.job, state=row.state, trigger=row.trigger, created_at=utc(row.created_at),
                      scheduled_for=utc(row.scheduled_for), started_at=utc(row.started_at),
                      ended_at=utc(row.ended_at), reason=row.reason, params=json.loads(row.params or "{}"))


def list_runs(job: str | None = None, state: str | None = None, limit: int = 50,
              before_id: int | None = None) -> list[RunSummary]:
    """Runs newest first; page with `before_id` (the smallest id of the previous page)."""
    query = _runs_where(Run.select(*_RUN_COLUMNS), job, state, before_id)
    return [_run_summary(row) for row in query.order_by(Run.id.desc()).limit(limit)]


def count_runs(job: str | None = None, state: str | None = None, before_id: int | None = None) -> int:
    """How many runs list_runs would page through with these filters."""
    return _runs_where(Run.select(), job, state, before_id).count()


def _runs_where(query: Any, job: str | None, state: str | None, before_id: int | None) -> Any:
    if job is not None:
        query = query.where(Run.job == job)
    if state is not None:
        query = query.where(Run.state == state)
    if before_id is not None:
        query = query.where(Run.id < before_id)
    return query


def run_summary(run_id: int) -> RunSummary:
    row = Run.select(*_RUN_COLUMNS).where(Run.id == run_id).first()
    if row is None:
        raise UnknownRunError(f"run {run_id} does not exist; `stepline runs` lists the runs")
    return _run_summary(row)


def get_run(run_id: int) -> RunView:
    """A run with its steps in DAG order."""
    row = Run.get_or_none(Run.id == run_id)
    if row is None:
        raise UnknownRunError(f"run {run_id} does not exist; `stepline runs` lists the runs")
    plan = JobPlan.from_json(row.snapshot)
    downstream = plan.downstream()
    by_name = {s.name: s for s in plan.steps}
    steps = []
    for step_row in StepRun.select().where(StepRun.run == run_id).order_by(StepRun.position):
        step_plan = by_name.get(step_row.name)
        steps.append(StepView(
            name=step_row.name, position=step_row.position, state=step_row.state,
            kind=step_plan.kind if step_plan else "python", waiting_for=step_row.waiting_for,
            attempts=step_row.attempts, started_at=utc(step_row.started_at), ended_at=utc(step_row.ended_at),
            reason=_reason(step_row.reason, step_row.detail), has_output=step_row.has_output,
            output_preview=step_row.output_preview,
            upstream=step_plan.upstream if step_plan else (), downstream=tuple(downstream.get(step_row.name, ()))))
    return RunView(run=_run_summary(row), steps=tuple(steps), plan=plan)


def attempts(run_id: int, step: str) -> list[AttemptView]:
    """Attempts of one step run, oldest first."""
    query = (Attempt.select(Attempt).join(StepRun)
             .where((StepRun.run == run_id) & (StepRun.name == step)).order_by(Attempt.number))
    return [_attempt_view(a) for a in query]


def run_attempts(run_id: int) -> dict[str, list[AttemptView]]:
    """Attempts of every step of a run by step name, each step's oldest first: one query, not one per step."""
    query = (Attempt.select(Attempt, StepRun.name).join(StepRun)
             .where(StepRun.run == run_id).order_by(StepRun.id, Attempt.number))
    by_step: dict[str, list[AttemptView]] = {}
    for row in query:
        by_step.setdefault(row.step_run.name, []).append(_attempt_view(row))
    return by_step


def _attempt_view(a: Attempt) -> AttemptView:
    return AttemptView(number=a.number, state=a.state, started_at=utc(a.started_at), ended_at=utc(a.ended_at),
                       pid=a.pid, exit_code=a.exit_code, signal=a.signal, cpu_s=a.cpu_s,
                       peak_rss_bytes=a.peak_rss_bytes, log_path=a.log_path, reason=_reason(a.reason, a.detail))


def events_since(last_id: int, limit: int = 1000, run_id: int | None = None) -> list[EventView]:
    """Events after `last_id`, oldest first, at most `limit`."""
    query = Event.select().where(Event.id > last_id)
    if run_id is not None:
        query = query.where(Event.run_id == run_id)
    return [EventView(id=e.id, at=utc(e.at), run_id=e.run_id, step=e.step, kind=e.kind, state=e.state,
                      message=e.message) for e in query.order_by(Event.id).limit(limit)]


def last_event_id() -> int:
    return Event.select(fn.MAX(Event.id)).scalar() or 0


def find_step(run_ids: list[int], text: str) -> tuple[int, str] | None:
    """The first step (newest run first, DAG order) among `run_ids` whose name contains `text`, any case."""
    if not run_ids or not text:
        return None
    needle = text.lower()
    for start in range(0, len(run_ids), 500):  # SQLite caps the parameters of one statement
        chunk = run_ids[start:start + 500]
        row = (StepRun.select(StepRun.run, StepRun.name)
               .where(StepRun.run.in_(chunk) & (fn.instr(fn.lower(StepRun.name), needle) > 0))
               .order_by(StepRun.run.desc(), StepRun.position).tuples().first())
        if row is not None:
            return int(row[0]), str(row[1])
    return None


def last_run_by_job() -> dict[str, RunSummary]:
    """The newest run of every job that has one."""
    newest = Run.select(fn.MAX(Run.id)).group_by(Run.job)
    return {row.job: _run_summary(row) for row in Run.select(*_RUN_COLUMNS).where(Run.id.in_(newest))}


FAILED_RECENTLY_S = 24 * 3600
"""The console's header counts the runs that failed within this long: a count of every failure since the
home began only grows, stays red for ever and says nothing about tonight."""


def run_counts(now: float | None = None) -> dict[str, int]:
    """Number of runs per run state; "failed" counts the runs that ended failed within FAILED_RECENTLY_S of
    `now`, when given."""
    rows: Any = Run.select(Run.state, fn.COUNT(Run.id)).where(Run.state != "failed").group_by(Run.state).tuples()
    counts = {state: count for state, count in rows}
    failed = Run.select().where(Run.state == "failed")
    if now is not None:
        failed = failed.where(Run.ended_at >= now - FAILED_RECENTLY_S)
    counts["failed"] = failed.count()
    return counts


def command(command_id: int) -> CommandView:
    row = Command.get_by_id(command_id)
    return CommandView(id=row.id, kind=row.kind, state=row.state, result=row.result, run_id=row.run_id,
                       job=row.job, payload=json.loads(row.payload or "{}"))


def run_owner(run_id: int) -> tuple[int | None, float | None]:
    """(pid, process create time) of the engine that last executed the run."""
    row = Run.select(Run.owner_pid, Run.owner_started).where(Run.id == run_id).first()
    if row is None:
        raise UnknownRunError(f"run {run_id} does not exist; `stepline runs` lists the runs")
    return row.owner_pid, row.owner_started


def step_output(home: Home, run_id: int, step: str) -> bytes | None:
    """The pickle of a step's output: stored in the database when small, else in its file (None: no output)."""
    row = StepRun.select(StepRun.id).where((StepRun.run == run_id) & (StepRun.name == step)).first()
    if row is None:
        raise UnknownStepError(f"run {run_id} has no step '{step}'; `stepline show {run_id}` lists its steps")
    data = store.stored_output(row.id)
    if data is not None:
        return data
    try:
        return home.output_file(run_id, step).read_bytes()
    except FileNotFoundError:
        return None


def running_run_owners() -> dict[int, tuple[int | None, float | None]]:
    """Run id -> (pid, process create time) of its engine, for every running run."""
    rows = Run.select(Run.id, Run.owner_pid, Run.owner_started).where(Run.state == RunState.RUNNING)
    return {row.id: (row.owner_pid, row.owner_started) for row in rows}


@dataclass(frozen=True, slots=True)
class JobSummary:
    name: str
    file: str
    description: str
    schedule: str | None
    every: str | None
    timezone: str | None
    plan: JobPlan
    paused: bool
    next_fire_at: datetime | None
    last_fire_at: datetime | None


def jobs() -> list[JobSummary]:
    """The job catalogue the engine last published, by name."""
    schedules = {s.job: s for s in Schedule.select()}
    result = []
    for row in JobInfo.select().order_by(JobInfo.name):
        schedule = schedules.get(row.name)
        result.append(JobSummary(
            name=row.name, file=row.file, description=row.description, schedule=row.schedule, every=row.every,
            timezone=row.timezone, plan=JobPlan.from_json(row.plan), paused=bool(schedule and schedule.paused),
            next_fire_at=utc(schedule.next_fire_at) if schedule else None,
            last_fire_at=utc(schedule.last_fire_at) if schedule else None))
    return result


def catalog_published_at() -> float | None:
    """When the engine last published the job catalogue (each load of the job files, good or not)."""
    return JobInfo.select(fn.MAX(JobInfo.updated_at)).scalar()


def load_problems() -> list[tuple[str, int, str]]:
    """(file, line, message) of every problem found when the engine last loaded the job files."""
    return [(p.file, p.line, p.message) for p in LoadProblem.select().order_by(LoadProblem.id).limit(500)]


@dataclass(frozen=True, slots=True)
class EngineStatus:
    state: str
    """"running", "stopped", "not responding", "gone" (killed: its process no longer exists) or "never started"."""
    pid: int | None = None
    mode: str | None = None
    """"daemon" or "embedded"."""
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None


def process_exists(pid: int | None) -> bool:
    """Whether process `pid` runs; a zombie (killed, not yet reaped: forever under a PID 1 that never reaps, as
    in some containers) does not."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"  # the state follows "(command name)"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists


def engine_status(now: float) -> EngineStatus:
    """Whether an engine runs this home, from its heartbeat (a process lookup only when that is stale)."""
    row = EngineState.get_or_none(EngineState.id == 1)
    if row is None or row.started_at is None:
        return EngineStatus("never started")
    if row.stopped_at is not None:
        state = "stopped"
    elif row.heartbeat_at is None or now - row.heartbeat_at > STALE_AFTER_S:
        state = "not responding" if process_exists(row.pid) else "gone"
    else:
        state = "running"
    return EngineStatus(state, pid=row.pid, mode=row.mode, heartbeat_at=utc(row.heartbeat_at),
                        started_at=utc(row.started_at))
