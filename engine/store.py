"""peewee models, database setup and migrations, and the write helpers.

All state lives in one SQLite file per home, in WAL mode. Every write is a short
`IMMEDIATE` transaction that changes state and appends its event row together,
so a reader catching up on events (`id > last_seen`) never misses a change.
peewee rows never leave this module and `query.py`.
"""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

import peewee
from peewee import (AutoField, BooleanField, CharField, FloatField, ForeignKeyField, IntegerField,
                    Model, SqliteDatabase, TextField)

from engine.errors import StateDirError
from engine.home import Home

SCHEMA_VERSION = 1
PRAGMAS = {"journal_mode": "wal", "busy_timeout": 5000, "synchronous": "normal", "foreign_keys": 1}

db = SqliteDatabase(None)


class BaseModel(Model):
    class Meta:
        database = db
        legacy_table_names = False


class Meta(BaseModel):
    key = CharField(primary_key=True)
    value = TextField()


class Run(BaseModel):
    id = AutoField()
    job = CharField(index=True)
    state = CharField(index=True)
    trigger = CharField()
    params = TextField(default="{}")
    """JSON object of the run parameters."""
    snapshot = TextField()
    """JSON of the job definition the run started with (see plan.py)."""
    created_at = FloatField()
    scheduled_for = FloatField(null=True)
    started_at = FloatField(null=True)
    ended_at = FloatField(null=True)
    reason = TextField(null=True)
    owner_pid = IntegerField(null=True)
    """Engine process executing the run (with owner_started, safe against pid reuse)."""
    owner_started = FloatField(null=True)


class StepRun(BaseModel):
    id = AutoField()
    run = ForeignKeyField(Run, backref="step_runs", on_delete="CASCADE")
    name = CharField()
    position = IntegerField()
    """Index in DAG order, for display."""
    state = CharField()
    waiting_for = TextField(null=True)
    """Why a waiting step waits: "upstream", "a free slot", "pool warehouse", "retry 2/3 at 03:12:40"."""
    attempts = IntegerField(default=0)
    started_at = FloatField(null=True)
    ended_at = FloatField(null=True)
    reason = TextField(null=True)
    detail = TextField(null=True)
    has_output = BooleanField(default=False)
    output_preview = TextField(null=True)

    class Meta:
        indexes = ((("run", "name"), True),)


class Attempt(BaseModel):
    id = AutoField()
    step_run = ForeignKeyField(StepRun, backref="attempt_rows", on_delete="CASCADE")
    run_id = IntegerField(index=True)
    number = IntegerField()
    state = CharField()
    pid = IntegerField(null=True)
    pid_started = FloatField(null=True)
    """Process create time, so a reused pid is never mistaken for this attempt."""
    started_at = FloatField()
    ended_at = FloatField(null=True)
    exit_code = IntegerField(null=True)
    signal = IntegerField(null=True)
    cpu_s = FloatField(null=True)
    peak_rss_bytes = IntegerField(null=True)
    log_path = TextField()
    reason = TextField(null=True)
    detail = TextField(null=True)


class Event(BaseModel):
    id = AutoField()
    at = FloatField()
    run_id = IntegerField(null=True, index=True)
    step = CharField(null=True)
    kind = CharField()
    """run, step, attempt or command."""
    state = CharField(null=True)
    message = TextField(null=True)


class Command(BaseModel):
    id = AutoField()
    created_at = FloatField()
    kind = CharField()
    """cancel, retry, trigger, pause, resume."""
    run_id = IntegerField(null=True, index=True)
    job = CharField(null=True)
    step = CharField(null=True)
    payload = TextField(default="{}")
    state = CharField(default="pending", index=True)
    """pending, done or failed."""
    result = TextField(null=True)
    acked_at = FloatField(null=True)


class EngineState(BaseModel):
    """One row per home: which engine process runs it and when it last proved alive."""
    id = IntegerField(primary_key=True, default=1)
    pid = IntegerField(null=True)
    pid_started = FloatField(null=True)
    mode = CharField(null=True)
    """"daemon" or "embedded" (stepline up)."""
    started_at = FloatField(null=True)
    heartbeat_at = FloatField(null=True)
    stopped_at = FloatField(null=True)


class Schedule(BaseModel):
    """stepline's own record of a job's schedule; APScheduler keeps nothing durable."""
    job = CharField(primary_key=True)
    paused = BooleanField(default=False)
    last_fire_at = FloatField(null=True)
    """Scheduled time of the last fire the engine acted on (for catch-up after downtime)."""
    next_fire_at = FloatField(null=True)
    updated_at = FloatField(null=True)


class JobInfo(BaseModel):
    """The job catalogue as the engine last loaded it, so readers never import job files."""
    name = CharField(primary_key=True)
    file = TextField()
    line = IntegerField()
    description = TextField(default="")
    schedule = CharField(null=True)
    every = CharField(null=True)
    timezone = CharField(null=True)
    plan = TextField()
    """JSON of the job's plan (steps in DAG order with their upstream steps)."""
    updated_at = FloatField()


class LoadProblem(BaseModel):
    """A problem the engine found loading job files (file:line and what to do)."""
    id = AutoField()
    file = TextField()
    line = IntegerField()
    message = TextField()


MODELS = [Meta, Run, StepRun, Attempt, Event, Command, EngineState, Schedule, JobInfo, LoadProblem]


def _create_v1(database: SqliteDatabase) -> None:
    database.create_tables(MODELS)


# Migration N brings a database from schema N-1 to N; append, never edit.
MIGRATIONS = {1: _create_v1}


def open_database(home: Home) -> SqliteDatabase:
    """Bind the models to the home's database, creating or migrating it."""
    path = home.database
    if not db.is_closed():
        db.close()
    db.init(str(path), pragmas=PRAGMAS, timeout=5, check_same_thread=False)
    try:
        db.connect(reuse_if_open=True)
        migrate(db)
    except (peewee.DatabaseError, sqlite3.DatabaseError) as error:
        message = str(error)
        if "readonly" in message or "unable to open" in message:
            raise StateDirError(f"cannot write the database {path}: {message}; fix the permissions of "
                                "the state directory or pass --home DIR to a writable place") from None
        raise StateDirError(f"{path} is not a usable stepline database ({message}); move it aside "
                            "and stepline will start a new one") from None
    return db


def schema_version(database: SqliteDatabase) -> int:
    if not database.table_exists("meta"):
        return 0
    row = Meta.get_or_none(Meta.key == "schema_version")
    return int(row.value) if row else 0


def migrate(database: SqliteDatabase) -> None:
    with database.atomic("IMMEDIATE"):
        current = schema_version(database)
        if current > SCHEMA_VERSION:
            raise StateDirError(f"{database.database} has schema version {current}, newer than this "
                                f"stepline understands ({SCHEMA_VERSION}); upgrade stepline")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](database)
            Meta.replace(key="schema_version", value=str(version)).execute()
        # SQLite opens a file it may not write read-only without a word; find out now, not at the first run.
        Meta.update(value=Meta.value).where(Meta.key == "schema_version").execute()


def _event(kind: str, run_id: int | None, step: str | None, state: str | None,
           message: str | None, at: float) -> dict[str, Any]:
    return {"at": at, "run_id": run_id, "step": step, "kind": kind, "state": state, "message": message}


# The per-attempt helpers run several times per step; building their statements with peewee's query
# builder cost about as much as the SQLite work itself (bench/: ~0.5 ms per transaction), so they
# execute cached, parameterised SQL for the same statements instead.


@functools.lru_cache(maxsize=256)
def _update_sql(model: type[BaseModel], names: tuple[str, ...]) -> tuple[str, tuple[peewee.Field, ...]]:
    fields = tuple(model._meta.fields[name] for name in names)
    sets = ", ".join(f'"{f.column_name}" = ?' for f in fields)
    return f'UPDATE "{model._meta.table_name}" SET {sets} WHERE "id" = ?', fields


def _update_by_id(model: type[BaseModel], row_id: int, values: dict[str, Any]) -> None:
    sql, fields = _update_sql(model, tuple(values))
    db.execute_sql(sql, [f.db_value(v) for f, v in zip(fields, values.values())] + [row_id])


_EVENT_COLUMNS = ("at", "run_id", "step", "kind", "state", "message")
_INSERT_EVENT = (f'INSERT INTO "event" ({", ".join(chr(34) + c + chr(34) for c in _EVENT_COLUMNS)}) '
                 f'VALUES ({", ".join("?" for _ in _EVENT_COLUMNS)})')
_INSERT_ATTEMPT = ('INSERT INTO "attempt" ("step_run_id", "run_id", "number", "state", "pid", "pid_started", '
                   '"started_at", "log_path") VALUES (?, ?, ?, ?, ?, ?, ?, ?)')


def _insert_events(events: list[dict[str, Any]]) -> None:
    for event in events:
        db.execute_sql(_INSERT_EVENT, [event[c] for c in _EVENT_COLUMNS])


# --- write helpers: each is one IMMEDIATE transaction -------------------------------------------------


def create_run(job: str, trigger: str, params: dict[str, str], snapshot: str, steps: Iterable[str],
               at: float, scheduled_for: float | None = None, state: str = "queued") -> tuple[int, dict[str, int]]:
    """A new run with a pending step run per step; returns the run id and step run ids by name."""
    with db.atomic("IMMEDIATE"):
        run_id = Run.insert(job=job, state=state, trigger=trigger, params=json.dumps(params),
                            snapshot=snapshot, created_at=at, scheduled_for=scheduled_for).execute()
        rows = [{"run": run_id, "name": name, "position": i, "state": "pending"}
                for i, name in enumerate(steps)]
        for start in range(0, len(rows), 200):
            StepRun.insert_many(rows[start:start + 200]).execute()
        Event.insert(_event("run", run_id, None, state, f"{trigger} run of {job}", at)).execute()
    ids = {r.name: r.id for r in StepRun.select(StepRun.id, StepRun.name).where(StepRun.run == run_id)}
    return run_id, ids


def set_run_state(run_id: int, state: str, at: float, reason: str | None = None,
                  started: bool = False, ended: bool = False, owner: tuple[int, float] | None = None,
                  clear_end: bool = False) -> None:
    changes: dict[Any, Any] = {Run.state: state, Run.reason: reason}
    if started:
        changes[Run.started_at] = peewee.fn.COALESCE(Run.started_at, at)
    if ended:
        changes[Run.ended_at] = at
    if clear_end:
        changes[Run.ended_at] = None
    if owner is not None:
        changes[Run.owner_pid], changes[Run.owner_started] = owner
    with db.atomic("IMMEDIATE"):
        Run.update(changes).where(Run.id == run_id).execute()
        Event.insert(_event("run", run_id, None, state, reason, at)).execute()


def set_step_states(run_id: int, changes: list[tuple[int, str, str, dict[str, Any]]], at: float) -> None:
    """Apply (step_run_id, step name, state, extra columns) changes and their events together."""
    if not changes:
        return
    with db.atomic("IMMEDIATE"):
        events = []
        for step_run_id, name, state, extra in changes:
            values: dict[str, Any] = {"state": state, **extra}
            _update_by_id(StepRun, step_run_id, values)
            message = extra.get("reason") or extra.get("waiting_for")
            events.append(_event("step", run_id, name, state, message, at))
        _insert_events(events)


def start_attempt(run_id: int, step_run_id: int, step: str, number: int, pid: int | None,
                  pid_started: float | None, log_path: str, at: float) -> int:
    """Record a started attempt and its step as running; returns the attempt id."""
    with db.atomic("IMMEDIATE"):
        cursor = db.execute_sql(_INSERT_ATTEMPT, [step_run_id, run_id, number, "running", pid, pid_started, at,
                                                  log_path])
        attempt_id = cursor.lastrowid
        _update_by_id(StepRun, step_run_id, {"state": "running", "waiting_for": None, "attempts": number,
                                             "started_at": at, "ended_at": None, "reason": None, "detail": None})
        _insert_events([_event("step", run_id, step, "running", f"attempt {number}", at)])
    return attempt_id


def finish_attempt(run_id: int, attempt_id: int, attempt_state: str, outcome: dict[str, Any],
                   step_changes: list[tuple[int, str, str, dict[str, Any]]], at: float) -> None:
    """End an attempt and apply the step state changes it causes, in one transaction."""
    with db.atomic("IMMEDIATE"):
        _update_by_id(Attempt, attempt_id, {"state": attempt_state, "ended_at": at, **outcome})
        events = []
        for step_run_id, name, state, extra in step_changes:
            _update_by_id(StepRun, step_run_id, {"state": state, **extra})
            events.append(_event("step", run_id, name, state, extra.get("reason") or extra.get("waiting_for"), at))
        _insert_events(events)


def record_exit(attempt_id: int, columns: dict[str, Any]) -> None:
    """Exit code, signal, CPU and peak RSS of an attempt that already ended on the result it sent."""
    with db.atomic("IMMEDIATE"):
        _update_by_id(Attempt, attempt_id, columns)


def add_command(kind: str, at: float | None = None, run_id: int | None = None, job: str | None = None,
                step: str | None = None, payload: dict[str, Any] | None = None) -> int:
    at = time.time() if at is None else at
    with db.atomic("IMMEDIATE"):
        command_id = Command.insert(created_at=at, kind=kind, run_id=run_id, job=job, step=step,
                                    payload=json.dumps(payload or {})).execute()
        Event.insert(_event("command", run_id, step, "pending", f"{kind} requested", at)).execute()
    return command_id


def pending_commands(run_ids: Iterable[int] | None = None, kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    query = Command.select().where(Command.state == "pending")
    if run_ids is not None:
        query = query.where(Command.run_id.in_(list(run_ids)))
    if kinds is not None:
        query = query.where(Command.kind.in_(list(kinds)))
    return [{"id": c.id, "kind": c.kind, "run_id": c.run_id, "job": c.job, "step": c.step,
             "payload": json.loads(c.payload or "{}")} for c in query.order_by(Command.id).limit(100)]


def ack_command(command_id: int, ok: bool, result: str, at: float | None = None,
                run_id: int | None = None) -> None:
    """Answer a command; `run_id` names the run it created or acted on, for the writer to follow."""
    at = time.time() if at is None else at
    values: dict[Any, Any] = {Command.state: "done" if ok else "failed", Command.result: result, Command.acked_at: at}
    if run_id is not None:
        values[Command.run_id] = run_id
    with db.atomic("IMMEDIATE"):
        Command.update(values).where(Command.id == command_id).execute()
        Event.insert(_event("command", run_id, None, "done" if ok else "failed", result, at)).execute()


def publish_catalog(plans: list[tuple[Any, str]], problems: list[tuple[str, int, str]], at: float) -> None:
    """Replace the job catalogue: (JobPlan, description) pairs and (file, line, message) problems."""
    with db.atomic("IMMEDIATE"):
        JobInfo.delete().execute()
        LoadProblem.delete().execute()
        for plan, description in plans:
            JobInfo.insert(name=plan.job, file=plan.file, line=min((s.line for s in plan.steps), default=0),
                           description=description, schedule=plan.schedule, every=plan.every,
                           timezone=plan.timezone, plan=plan.to_json(), updated_at=at).execute()
        for file, line, message in problems:
            LoadProblem.insert(file=file, line=line, message=message).execute()
        Event.insert(_event("catalog", None, None, None, f"{len(plans)} jobs, {len(problems)} problems", at)).execute()


def heartbeat(pid: int, pid_started: float, mode: str, at: float, starting: bool = False) -> None:
    values: dict[str, Any] = {"pid": pid, "pid_started": pid_started, "mode": mode, "heartbeat_at": at,
                              "stopped_at": None}
    if starting:
        values["started_at"] = at
    with db.atomic("IMMEDIATE"):
        EngineState.insert(id=1, **values).on_conflict("REPLACE" if starting else "IGNORE").execute()
        EngineState.update(values).where(EngineState.id == 1).execute()


def engine_stopped(pid: int, at: float) -> None:
    with db.atomic("IMMEDIATE"):
        EngineState.update(stopped_at=at).where((EngineState.id == 1) & (EngineState.pid == pid)).execute()


def record_schedule_event(state: str, message: str, at: float) -> None:
    with db.atomic("IMMEDIATE"):
        Event.insert(_event("schedule", None, None, state, message, at)).execute()


def process_identity() -> tuple[int, float]:
    """(pid, create time) of this process, as stored in Run.owner_*."""
    import psutil
    return os.getpid(), psutil.Process().create_time()
