"""peewee models, database setup and migrations, and the write helpers.

All state lives in one SQLite file per home, in WAL mode. Every write is a short
`IMMEDIATE` transaction that changes state and appends its event row together,
so a reader catching up on events (`id > last_seen`) never misses a change.
peewee rows never leave this module and `query.py`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import peewee
from peewee import (AutoField, BlobField, BooleanField, CharField, FloatField, ForeignKeyField, IntegerField,
                    Model, SqliteDatabase, TextField)

from engine.errors import StateDirError
from engine.home import Home, unusable_database
from engine.states import RunState, waiting_note

SCHEMA_VERSION = 2
AUTOCHECKPOINT_PAGES = 10_000
"""A committing connection checkpoints itself past this many pages of log (SQLite's default: 1000); an engine
checkpoints on a thread of its own long before that (see Checkpointer)."""
PRAGMAS = {"journal_mode": "wal", "busy_timeout": 5000, "synchronous": "normal", "foreign_keys": 1,
           "wal_autocheckpoint": AUTOCHECKPOINT_PAGES}
CHECKPOINT_EVERY_S = 0.5

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


class StepOutput(BaseModel):
    """A step's output when it is small (see worker.INLINE_OUTPUT_MAX): its pickle, kept here rather than in
    a file of its own. Larger outputs are in HOME/outputs/RUN/STEP.pkl, and have no row."""
    step_run = ForeignKeyField(StepRun, primary_key=True, on_delete="CASCADE")
    data = BlobField()


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


MODELS = [Meta, Run, StepRun, StepOutput, Attempt, Event, Command, EngineState, Schedule, JobInfo, LoadProblem]


def _create_v1(database: SqliteDatabase) -> None:
    database.create_tables(MODELS)


def _add_step_outputs_v2(database: SqliteDatabase) -> None:
    database.create_tables([StepOutput])  # safe: a database made at version 2 has it from _create_v1


# Migration N brings a database from schema N-1 to N; append, never edit.
MIGRATIONS = {1: _create_v1, 2: _add_step_outputs_v2}


_run_id_floor = 0
"""The highest run id an earlier database of this home used, when this one holds no run yet (see below)."""


def _note_earlier_runs(home: Home) -> None:
    """A home whose database was moved aside (a damaged one, say) still holds the logs and outputs of its
    runs, in folders named by run id: new runs must not take those ids, or their logs would be appended to
    the old runs' files and `logs` would mix the two."""
    global _run_id_floor
    _run_id_floor = 0
    if _execute('SELECT 1 FROM "run" LIMIT 1', []).fetchone() is not None:
        return
    for folder in (home.logs, home.outputs):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        _run_id_floor = max([_run_id_floor] + [int(name) for name in names if name.isdigit()])


def open_database_to_read(home: Home) -> SqliteDatabase:
    """Bind the models to the database of a home stepline may not write (a read-only mount, a backup, another
    user's home), for the commands that only read: opened as it is, never migrated."""
    path = home.database
    if not db.is_closed():
        db.close()
    # immutable: SQLite reads the file without the locks and shared memory it could not create there.
    db.init(f"{path.as_uri()}?immutable=1", uri=True, pragmas={"query_only": 1}, timeout=5,
            check_same_thread=False)
    try:
        db.connect(reuse_if_open=True)
        current = schema_version(db)
    except (peewee.DatabaseError, sqlite3.DatabaseError) as error:
        raise unusable_database(path, str(error)) from None
    if current != SCHEMA_VERSION:
        raise StateDirError(f"{path} has schema version {current} and this stepline reads {SCHEMA_VERSION}; a "
                            "home stepline cannot write cannot be migrated: copy it to a writable place")
    return db


def open_database(home: Home) -> SqliteDatabase:
    """Bind the models to the home's database, creating or migrating it."""
    path = home.database
    if not db.is_closed():
        db.close()
    db.init(str(path), pragmas=PRAGMAS, timeout=5, check_same_thread=False)
    try:
        db.connect(reuse_if_open=True)
        migrate(db)
        _note_earlier_runs(home)
    except (peewee.DatabaseError, sqlite3.DatabaseError) as error:
        message = str(error)
        if "readonly" in message or "unable to open" in message:
            raise StateDirError(f"cannot write the database {path}: {message}; fix the permissions of "
                                "the state directory or pass --home DIR to a writable place") from None
        raise unusable_database(path, message) from None
    return db


class Checkpointer:
    """Copies the write-ahead log into the database file on a thread of its own, while an engine runs.

    SQLite checkpoints on the connection that commits once the log has grown past its limit, and a
    checkpoint ends with an fsync of the database file: 15-20 ms on the small VMs we measure, on the
    engine's thread, every 150-200 steps (each step's commits add a few pages). Here the engine's commits
    only append to the log; this thread checkpoints every CHECKPOINT_EVERY_S, PASSIVE (it never waits for
    a writer or a reader, and neither waits for it), so the log holds about that long of writes.
    """

    def __init__(self, path: str, every_s: float = CHECKPOINT_EVERY_S) -> None:
        self._path = path
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stepline-checkpoint", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            connection = sqlite3.connect(self._path, timeout=5, check_same_thread=False)
        except sqlite3.Error:
            return  # the engine's own connection says why; SQLite's own checkpoints take over
        try:
            while not self._stop.wait(self._every_s):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy, or the file went away: the next round (or SQLite's own checkpoint) catches up
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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


def event_row(kind: str, run_id: int | None, step: str | None, state: str | None,
           message: str | None, at: float) -> dict[str, Any]:
    return {"at": at, "run_id": run_id, "step": step, "kind": kind, "state": state, "message": message}


# The per-attempt helpers run several times per step; building their statements with peewee's query
# builder cost about as much as the SQLite work itself (bench/: ~0.5 ms per transaction), so they
# execute cached, parameterised SQL for the same statements instead, straight on the connection
# (peewee's execute_sql adds a cursor, logging and error wrapping to each one).


def _execute(sql: str, params: list[Any] | tuple[Any, ...]) -> sqlite3.Cursor:
    return db.connection().execute(sql, params)


@functools.lru_cache(maxsize=256)
def _update_sql(model: type[BaseModel], names: tuple[str, ...]) -> tuple[str, tuple[peewee.Field, ...]]:
    fields = tuple(model._meta.fields[name] for name in names)
    sets = ", ".join(f'"{f.column_name}" = ?' for f in fields)
    return f'UPDATE "{model._meta.table_name}" SET {sets} WHERE "id" = ?', fields


def _update_by_id(model: type[BaseModel], row_id: int, values: dict[str, Any]) -> None:
    sql, fields = _update_sql(model, tuple(values))
    _execute(sql, [f.db_value(v) for f, v in zip(fields, values.values())] + [row_id])


_EVENT_COLUMNS = ("at", "run_id", "step", "kind", "state", "message")
_INSERT_EVENT = (f'INSERT INTO "event" ({", ".join(chr(34) + c + chr(34) for c in _EVENT_COLUMNS)}) '
                 f'VALUES ({", ".join("?" for _ in _EVENT_COLUMNS)})')
_INSERT_ATTEMPT = ('INSERT INTO "attempt" ("step_run_id", "run_id", "number", "state", "pid", "pid_started", '
                   '"started_at", "log_path") VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
_STEP_RUNNING = ('UPDATE "step_run" SET "state" = \'running\', "waiting_for" = NULL, "attempts" = ?, '
                 '"started_at" = ?, "ended_at" = NULL, "reason" = NULL, "detail" = NULL WHERE "id" = ?')


_INSERT_RUN = ('INSERT INTO "run" ("job", "state", "trigger", "params", "snapshot", "created_at", "scheduled_for") '
               'VALUES (?, ?, ?, ?, ?, ?, ?)')
_INSERT_RUN_WITH_ID = ('INSERT INTO "run" ("id", "job", "state", "trigger", "params", "snapshot", "created_at", '
                       '"scheduled_for") VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
_INSERT_STEP_RUN = ('INSERT INTO "step_run" ("run_id", "name", "position", "state", "attempts", "has_output") '
                    'VALUES (?, ?, ?, ?, 0, 0)')


def insert_events(events: list[dict[str, Any]]) -> None:
    if len(events) == 1:
        _execute(_INSERT_EVENT, [events[0][c] for c in _EVENT_COLUMNS])
    elif events:
        db.connection().executemany(_INSERT_EVENT, [[event[c] for c in _EVENT_COLUMNS] for event in events])


# --- write helpers: each is one IMMEDIATE transaction, or part of the caller's batch() -------------------


class _Batch(threading.local):
    """Per thread: whether writes are being grouped (batch()), the transaction they opened, and the writes
    put off with later()."""
    grouping = False
    transaction: Any = None
    deferred: list[Callable[[], None]] | None = None


_batch = _Batch()


def write() -> Any:
    """The transaction for one write helper: its own IMMEDIATE one, or the batch's (opened at its first write)."""
    if _batch.deferred:
        _run_deferred()  # writes put off with later() come first: the event log keeps the order of changes
    if db.in_transaction():
        return contextlib.nullcontext()
    if _batch.grouping:
        _batch.transaction = db.atomic("IMMEDIATE")
        _batch.transaction.__enter__()
        return contextlib.nullcontext()
    return db.atomic("IMMEDIATE")


def later(work: Callable[[], None]) -> None:
    """Within a batch(): run `work`, a call of a write helper, just before the batch's next write or at its
    end, in the same transaction and in the order asked. The engine records a finished step this way after
    it has handed the next step of a chain to its process, which then need not wait for those statements.
    Outside a batch, `work` runs now."""
    if not _batch.grouping:
        work()
        return
    if _batch.deferred is None:
        _batch.deferred = []
    _batch.deferred.append(work)


def _run_deferred() -> None:
    deferred, _batch.deferred = _batch.deferred or [], None
    for work in deferred:
        work()


def batch() -> _Grouping:
    """Group the writes of one engine turn into one transaction: one commit instead of one per change.

    The engine wraps each turn's work (never its waiting) in it, so readers still see every change
    within milliseconds and a crash loses at most the turn it interrupted. A turn that writes nothing
    takes no lock.
    """
    return _Grouping()


class _Grouping:
    """batch()'s context manager; a class rather than a generator, as the engine enters it every turn."""
    __slots__ = ("nested",)

    def __enter__(self) -> None:
        self.nested = _batch.grouping or db.in_transaction()
        _batch.grouping = True

    def __exit__(self, error_type: type[BaseException] | None, error: BaseException | None,
                 traceback: Any) -> None:
        if self.nested:
            return
        outcome: tuple[Any, Any, Any] = (error_type, error, traceback)
        try:
            if error_type is None and _batch.deferred:
                _run_deferred()
        except BaseException as failure:
            outcome = (type(failure), failure, failure.__traceback__)  # the turn's writes roll back together
            raise
        finally:
            _batch.deferred = None
            transaction, _batch.transaction = _batch.transaction, None
            _batch.grouping = False
            if transaction is not None:
                transaction.__exit__(*outcome)


def batch_is_writing() -> bool:
    """Whether the current batch() writes (so one more write adds no commit of its own)."""
    return _batch.transaction is not None or bool(_batch.deferred)


def create_run(job: str, trigger: str, params: dict[str, str], snapshot: str, steps: Iterable[str],
               at: float, scheduled_for: float | None = None, state: str = "queued") -> tuple[int, dict[str, int]]:
    """A new run with a pending step run per step; returns the run id and step run ids by name."""
    values = [job, state, trigger, json.dumps(params), snapshot, at, scheduled_for]
    with write():
        if _run_id_floor and (_execute('SELECT MAX("id") FROM "run"', []).fetchone()[0] or 0) < _run_id_floor:
            run_id = _execute(_INSERT_RUN_WITH_ID, [_run_id_floor + 1, *values]).lastrowid
        else:
            run_id = _execute(_INSERT_RUN, values).lastrowid
        db.connection().executemany(_INSERT_STEP_RUN, [(run_id, name, i, "pending") for i, name in enumerate(steps)])
        insert_events([event_row("run", run_id, None, state, f"{trigger} run of {job}", at)])
        ids = dict(_execute('SELECT "name", "id" FROM "step_run" WHERE "run_id" = ?', [run_id]).fetchall())
    assert run_id is not None  # an INSERT's cursor always has it
    return run_id, ids


def set_run_state(run_id: int, state: str, at: float, reason: str | None = None,
                  started: bool = False, ended: bool = False, owner: tuple[int, float] | None = None,
                  clear_end: bool = False) -> None:
    sets = ['"state" = ?', '"reason" = ?']
    values: list[Any] = [state, reason]
    if started:
        sets.append('"started_at" = COALESCE("started_at", ?)')
        values.append(at)
    if ended:
        sets.append('"ended_at" = ?')
        values.append(at)
    if clear_end:
        sets.append('"ended_at" = NULL')
    if owner is not None:
        sets += ['"owner_pid" = ?', '"owner_started" = ?']
        values += list(owner)
    with write():
        _execute(f'UPDATE "run" SET {", ".join(sets)} WHERE "id" = ?', values + [run_id])
        insert_events([event_row("run", run_id, None, state, reason, at)])


def step_message(state: str, values: dict[str, Any]) -> str | None:
    """What a step's change says: a step waiting for its retry says when, then why its attempt failed."""
    if state == "waiting" and values.get("waiting_for"):
        return waiting_note(values["waiting_for"], values.get("reason"))
    return values.get("reason") or values.get("waiting_for")


def set_step_states(run_id: int, changes: list[tuple[int, str, str, dict[str, Any]]], at: float) -> None:
    """Apply (step_run_id, step name, state, extra columns) changes and their events together."""
    if not changes:
        return
    with write():
        events = []
        for step_run_id, name, state, extra in changes:
            values: dict[str, Any] = {"state": state, **extra}
            _update_by_id(StepRun, step_run_id, values)
            events.append(event_row("step", run_id, name, state, step_message(state, extra), at))
        insert_events(events)


def start_attempt(run_id: int, step_run_id: int, step: str, number: int, pid: int | None,
                  pid_started: float | None, log_path: str, at: float) -> int:
    """Record a started attempt and its step as running; returns the attempt id."""
    with write():
        attempt_id = _execute(_INSERT_ATTEMPT, [step_run_id, run_id, number, "running", pid, pid_started, at,
                                                log_path]).lastrowid
        _execute(_STEP_RUNNING, [number, at, step_run_id])
        insert_events([event_row("step", run_id, step, "running", f"attempt {number}", at)])
    assert attempt_id is not None  # an INSERT's cursor always has it
    return attempt_id


_STORE_OUTPUT = 'INSERT OR REPLACE INTO "step_output" ("step_run_id", "data") VALUES (?, ?)'


def finish_attempt(run_id: int, attempt_id: int, attempt_state: str, outcome: dict[str, Any],
                   step_changes: list[tuple[int, str, str, dict[str, Any]]], at: float,
                   output: tuple[int, bytes] | None = None) -> None:
    """End an attempt and apply the step state changes it causes, in one transaction.

    `output`: (step run id, pickle) of a step that succeeded with a small output (worker.INLINE_OUTPUT_MAX).
    A step run succeeds once at most (retry re-runs only steps that did not succeed), so there is no
    earlier output of it to replace or drop."""
    with write():
        if output is not None:
            _execute(_STORE_OUTPUT, list(output))
        _update_by_id(Attempt, attempt_id, {"state": attempt_state, "ended_at": at, **outcome})
        events = []
        for step_run_id, name, state, extra in step_changes:
            _update_by_id(StepRun, step_run_id, {"state": state, **extra})
            events.append(event_row("step", run_id, name, state, step_message(state, extra), at))
        insert_events(events)


def stored_output(step_run_id: int) -> bytes | None:
    """The pickle of a step's small output, as finish_attempt stored it (None: in its file, or none)."""
    row = _execute('SELECT "data" FROM "step_output" WHERE "step_run_id" = ?', [step_run_id]).fetchone()
    return None if row is None else bytes(row[0])


def has_output(step_run_id: int) -> bool:
    """Whether the step left an output (not None) when it succeeded."""
    row = _execute('SELECT "has_output" FROM "step_run" WHERE "id" = ?', [step_run_id]).fetchone()
    return bool(row and row[0])


def record_log_cut(run_id: int, step: str, attempt: int, message: str, at: float) -> None:
    with write():
        insert_events([event_row("log", run_id, step, f"cut {attempt}", message, at)])


def log_cuts(run_id: int) -> dict[tuple[str, int], str]:
    """(step, attempt) -> why its log lacks the end of its output."""
    rows = _execute('SELECT "step", "state", "message" FROM "event" WHERE "run_id" = ? AND "kind" = \'log\'',
                    [run_id]).fetchall()
    return {(step, int(state.split()[1])): message for step, state, message in rows
            if step and state and state.startswith("cut ")}


def record_exit(attempt_id: int, columns: dict[str, Any]) -> None:
    """Exit code, signal, CPU and peak RSS of an attempt that already ended on the result it sent."""
    with write():
        _update_by_id(Attempt, attempt_id, columns)


def add_command(kind: str, at: float | None = None, run_id: int | None = None, job: str | None = None,
                step: str | None = None, payload: dict[str, Any] | None = None) -> int:
    at = time.time() if at is None else at
    with write():
        command_id = Command.insert(created_at=at, kind=kind, run_id=run_id, job=job, step=step,
                                    payload=json.dumps(payload or {})).execute()
        Event.insert(event_row("command", run_id, step, "pending", f"{kind} requested", at)).execute()
    return command_id


def pending_commands(run_ids: Iterable[int] | None = None, kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    # Polled several times a second by the engine: plain SQL, no query building.
    sql = 'SELECT "id", "kind", "run_id", "job", "step", "payload" FROM "command" WHERE "state" = ?'
    values: list[Any] = ["pending"]
    for column, wanted in (("run_id", run_ids), ("kind", kinds)):
        if wanted is not None:
            chosen = list(wanted)
            sql += f' AND "{column}" IN ({", ".join("?" for _ in chosen)})'
            values += chosen
    rows = _execute(sql + ' ORDER BY "id" LIMIT 100', values).fetchall()
    return [{"id": row[0], "kind": row[1], "run_id": row[2], "job": row[3], "step": row[4],
             "payload": json.loads(row[5] or "{}")} for row in rows]


def take_command(command_id: int) -> bool:
    """Start answering a command: True while it is still pending (its sender has not withdrawn it).

    Within a batch() this opens the batch's transaction, which holds the database's write lock until the
    answer is written with it: what the command does, its answer, or neither (a crash rolls both back
    and the command stays pending); a sender cannot withdraw it in between."""
    with write():
        row = _execute('SELECT "state" FROM "command" WHERE "id" = ?', [command_id]).fetchone()
    return row is not None and row[0] == "pending"


def withdraw_command(command_id: int, reason: str, at: float | None = None) -> bool:
    """The sender gives up on a command no engine answered: False if an engine answered it first."""
    at = time.time() if at is None else at
    with write():
        withdrawn = _execute('UPDATE "command" SET "state" = \'failed\', "result" = ?, "acked_at" = ? '
                             'WHERE "id" = ? AND "state" = \'pending\'', [reason, at, command_id]).rowcount == 1
        if withdrawn:
            insert_events([event_row("command", None, None, "failed", reason, at)])
    return withdrawn


def ack_command(command_id: int, ok: bool, result: str, at: float | None = None,
                run_id: int | None = None) -> None:
    """Answer a command; `run_id` names the run it created or acted on, for the writer to follow."""
    at = time.time() if at is None else at
    state = "done" if ok else "failed"
    with write():
        _execute('UPDATE "command" SET "state" = ?, "result" = ?, "acked_at" = ?, '
                 '"run_id" = COALESCE(?, "run_id") WHERE "id" = ?', [state, result, at, run_id, command_id])
        insert_events([event_row("command", run_id, None, state, result, at)])


def publish_catalog(plans: list[tuple[Any, str]], problems: list[tuple[str, int, str]], at: float) -> None:
    """Replace the job catalogue: (JobPlan, description) pairs and (file, line, message) problems."""
    with write():
        JobInfo.delete().execute()
        LoadProblem.delete().execute()
        for plan, description in plans:
            JobInfo.insert(name=plan.job, file=plan.file, line=min((s.line for s in plan.steps), default=0),
                           description=description, schedule=plan.schedule, every=plan.every,
                           timezone=plan.timezone, plan=plan.to_json(), updated_at=at).execute()
        for file, line, message in problems:
            LoadProblem.insert(file=file, line=line, message=message).execute()
        Event.insert(event_row("catalog", None, None, None, f"{len(plans)} jobs, {len(problems)} problems", at)).execute()


def heartbeat(pid: int, pid_started: float, mode: str, at: float, starting: bool = False) -> None:
    values: dict[str, Any] = {"pid": pid, "pid_started": pid_started, "mode": mode, "heartbeat_at": at,
                              "stopped_at": None}
    if starting:
        values["started_at"] = at
    with write():
        EngineState.insert(id=1, **values).on_conflict("REPLACE" if starting else "IGNORE").execute()
        EngineState.update(values).where(EngineState.id == 1).execute()


def engine_stopped(pid: int, at: float) -> None:
    with write():
        EngineState.update(stopped_at=at).where((EngineState.id == 1) & (EngineState.pid == pid)).execute()


def record_schedule_event(state: str, message: str, at: float) -> None:
    with write():
        insert_events([event_row("schedule", None, None, state, message, at)])


def process_identity() -> tuple[int, float]:
    """(pid, create time) of this process, as stored in Run.owner_*."""
    import psutil
    return os.getpid(), psutil.Process().create_time()


# --- retention -------------------------------------------------------------------------------------------------

ENDED_RUN_STATES = tuple(state.value for state in RunState if state.is_terminal)


def prunable_runs(ended_before: float) -> list[int]:
    """Runs that ended before `ended_before`, oldest first; never a job's newest run (`stepline jobs` shows its
    state, and the ids of new runs go on after it)."""
    newest = Run.select(peewee.fn.MAX(Run.id)).group_by(Run.job)
    query = (Run.select(Run.id).where(Run.state.in_(ENDED_RUN_STATES), Run.ended_at < ended_before,
                                      Run.id.not_in(newest))
             .order_by(Run.id))
    return [row.id for row in query]


def delete_runs(run_ids: list[int]) -> None:
    """Delete runs with their steps, attempts, outputs, events and answered commands, a few hundred at a
    time (a transaction each, so an engine writing meanwhile waits for milliseconds, not for the whole)."""
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start:start + 500]
        with write():
            Run.delete().where(Run.id.in_(chunk)).execute()  # steps, attempts and outputs by ON DELETE CASCADE
            Event.delete().where(Event.run_id.in_(chunk)).execute()
            Command.delete().where(Command.run_id.in_(chunk), Command.state != "pending").execute()
