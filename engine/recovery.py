"""Runs left behind by an engine that is gone: tell live owners from dead ones, and close the books.

An engine that dies (kill -9, reboot) leaves runs and attempts marked running.
Processes are identified by pid plus create time, so a reused pid is never taken
for the original. Surviving step processes of a dead engine are terminated (not
adopted): their output pipe died with the engine, so their logs could not be
completed anyway, and a clean retry is the honest outcome.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime

import peewee
import psutil

from engine import store
from engine.executor import attempt_cookie, end_escaped, kill_tree
from engine.states import AttemptState, RunState, StepState

ENGINE_GONE = "engine stopped while running"


def engine_gone(run_id: int) -> int | None:
    """The pid of the engine that ran `run_id`, if that engine is gone (killed, or its machine rebooted).

    Such a run stays "running" in the database until the next engine starts and closes it.
    """
    from engine import query

    pid, started = query.run_owner(run_id)
    return pid if pid is not None and not is_alive(pid, started) else None


def engine_gone_at(run_id: int) -> datetime | None:
    """When the engine of a running run was last seen alive, if it is gone: its durations stop there
    instead of growing until the next engine starts. Its last heartbeat when it held the home, else the
    run's last recorded change."""
    from engine import query

    pid = engine_gone(run_id)
    if pid is None:
        return None
    row = store.EngineState.get_or_none(store.EngineState.id == 1)
    if row is not None and row.pid == pid and row.heartbeat_at is not None:
        return query.utc(row.heartbeat_at)
    last = store.Event.select(peewee.fn.MAX(store.Event.at)).where(store.Event.run_id == run_id).scalar()
    return query.utc(last) if last is not None else None


def engine_gone_note(run_id: int) -> str | None:
    """What `stepline runs`, `show` and the console say of a running run whose engine is gone."""
    pid = engine_gone(run_id)
    return None if pid is None else f"its engine (pid {pid}) is gone; the next engine to start closes the run"


def abandoned_runs(owners: Mapping[int, tuple[int | None, float | None]]) -> frozenset[int]:
    """The runs of `owners` (query.running_run_owners) whose engine is gone, each engine checked once."""
    alive: dict[tuple[int, float | None], bool] = {}
    gone = set()
    for run_id, (pid, started) in owners.items():
        if pid is None:
            continue
        if (pid, started) not in alive:
            alive[pid, started] = is_alive(pid, started)
        if not alive[pid, started]:
            gone.add(run_id)
    return frozenset(gone)


def is_alive(pid: int | None, started: float | None) -> bool:
    """True when process `pid` exists and is the one that started at `started`."""
    if pid is None:
        return False
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) > 0.01:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def close_abandoned_run(run_id: int, reason: str = ENGINE_GONE, cancelled: bool = False,
                        clock: Callable[[], float] = time.time, kill_grace_s: float = 2.0) -> list[str]:
    """End a run whose engine is gone: kill leftover step processes, end attempts and steps, derive the run.

    Running attempts fail with `reason` (or are cancelled when `cancelled`); steps that never started are
    cancelled. Returns the names of the steps whose attempts were cut short.
    """
    running = list(store.Attempt.select(store.Attempt, store.StepRun.name)
                   .join(store.StepRun).where((store.Attempt.run_id == run_id) & (store.Attempt.state == "running")))
    home = os.path.dirname(store.db.database)
    engine_seen = _engine_last_seen(run_id)
    ends: dict[int, float] = {}
    for attempt in running:
        cookie = attempt_cookie(home, run_id, attempt.step_run.name, attempt.number)
        if attempt.pid is not None and is_alive(attempt.pid, attempt.pid_started):
            kill_tree(attempt.pid, kill_grace_s, cookie)
            ends[attempt.id] = clock()  # it ran until now
        else:  # its process is gone; what it left running in the background need not be
            end_escaped(cookie, kill_grace_s)
            ends[attempt.id] = _last_seen(attempt, engine_seen)
    now = clock()
    # The run ended when its last step did: not now, which may be hours after its engine died.
    ended = min(now, max(ends.values(), default=engine_seen or now))
    cut_short = []
    step_state = StepState.CANCELLED if cancelled else StepState.FAILED
    with store.write():
        for attempt in running:
            store.Attempt.update(state=AttemptState.CANCELLED if cancelled else AttemptState.FAILED,
                                 ended_at=min(now, ends[attempt.id]),
                                 reason=reason).where(store.Attempt.id == attempt.id).execute()
        steps = list(store.StepRun.select().where(store.StepRun.run == run_id))
        events = []
        for step_run in steps:
            state = StepState(step_run.state)
            if state.is_terminal:
                continue
            # A step waiting for its retry was cut short too: its next attempt never came.
            retrying = state == StepState.WAITING and (step_run.waiting_for or "").startswith("retry ")
            new_state = step_state if state == StepState.RUNNING or retrying else StepState.CANCELLED
            if state == StepState.RUNNING or retrying:
                cut_short.append(step_run.name)
            # A step waiting for its retry was not running: say what it waited for, not that it was cut.
            said = f"its engine stopped while it waited for its {step_run.waiting_for}" if retrying else reason
            store.StepRun.update(state=new_state, reason=said, waiting_for=None, ended_at=ended).where(
                store.StepRun.id == step_run.id).execute()
            step_run.state = new_state
            events.append({"at": now, "run_id": run_id, "step": step_run.name, "kind": "step",
                           "state": new_state.value, "message": said})
        final = {StepState(s.state) for s in steps}
        if cancelled:
            run_state = RunState.CANCELLED
        elif final & {StepState.FAILED, StepState.UPSTREAM_FAILED}:
            run_state = RunState.FAILED
        elif StepState.CANCELLED in final:
            run_state = RunState.CANCELLED
        else:
            run_state = RunState.SUCCEEDED
        store.Run.update(state=run_state, reason=reason, ended_at=ended).where(store.Run.id == run_id).execute()
        events.append({"at": now, "run_id": run_id, "step": None, "kind": "run", "state": run_state.value,
                       "message": reason})
        store.Event.insert_many(events).execute()
    return cut_short


def _engine_last_seen(run_id: int) -> float | None:
    """The last heartbeat of the run's engine if it was the home's daemon (`stepline run` engines write none)."""
    from engine import query

    pid, _ = query.run_owner(run_id)
    row = store.EngineState.get_or_none(store.EngineState.id == 1)
    return row.heartbeat_at if row is not None and pid is not None and row.pid == pid else None


def _last_seen(attempt: store.Attempt, engine_seen: float | None) -> float:
    """When an attempt whose process is gone was last known to run: its log's last write, or its engine's last
    heartbeat (a silent step ran at least as long as its engine lived), or else its start."""
    seen = [attempt.started_at]
    try:
        seen.append(os.path.getmtime(attempt.log_path))
    except OSError:
        pass
    if engine_seen is not None:
        seen.append(engine_seen)
    return max(seen)


def close_if_abandoned(run_id: int, clock: Callable[[], float] = time.time) -> None:
    """A run still marked running (or queued) whose engine is gone is closed first, so it can be retried."""
    from engine import query

    if query.run_summary(run_id).state in ("running", "queued") and not _has_live_engine(run_id):
        close_abandoned_run(run_id, clock=clock)


def cancel_if_abandoned(run_id: int, reason: str = "cancelled by user (its engine had stopped)",
                        home_engine: int | None = None) -> bool:
    """Cancel a run at once when no engine would act on a cancel command: its engine is gone (or it never
    had one). Leftover step processes are ended. False, doing nothing, when its engine is alive.

    `home_engine`: the pid of the engine holding the home (daemon or console), if any. A queued run that never
    started has no engine of its own yet: it waits in that engine's queue, which must take the command."""
    if _has_live_engine(run_id):
        return False
    if home_engine is not None:
        from engine import query

        if query.run_summary(run_id).state == "queued" and query.run_owner(run_id)[0] is None:
            return False
    close_abandoned_run(run_id, reason, cancelled=True)
    return True


def _has_live_engine(run_id: int) -> bool:
    """Whether the engine recorded as running `run_id` is alive (False when none was ever recorded)."""
    from engine import query

    return is_alive(*query.run_owner(run_id))


def close_runs_of_stopped_engines(own: tuple[int, float] | None = None,
                                  clock: Callable[[], float] = time.time) -> list[tuple[int, str, list[str]]]:
    """Close every run left running (or queued after it ran) by an engine that is gone.

    Any engine runs this when it starts: the daemon, the console's embedded engine, and the one in
    `stepline run` or `stepline retry`, so a run killed with its engine does not show as running until
    a daemon happens to start. Runs of live engines (`own` is the caller's) are left alone, and so are
    queued runs that never ran (no engine recorded): they wait in the queue of the home's daemon or
    console engine, and one that starts takes up those its predecessor left (EngineService.adopt_queued).
    Returns (run id, job, steps cut short) per closed run.
    """
    from engine import query

    closed = []
    for summary in query.list_runs(state="running", limit=10_000) + query.list_runs(state="queued", limit=10_000):
        pid, started = query.run_owner(summary.id)
        if pid is None and summary.state == "queued":
            continue  # waiting for its turn in the home engine's queue, this one's or the next one's
        if (pid, started) != own and not is_alive(pid, started):
            closed.append((summary.id, summary.job, close_abandoned_run(summary.id, clock=clock)))
    return closed
