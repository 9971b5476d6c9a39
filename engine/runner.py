"""Decide what runs: plan runs, walk their DAGs, retry, time out and cancel.

The Engine owns the active runs and makes every decision on one thread: which
step starts next (respecting the parallelism limit), when a failed attempt is
retried (delay, backoff, jitter), which steps become upstream_failed, and the
run's final state. It asks the executor to start and kill processes and never
spawns one itself; every state change is written through store.py together
with its event, and announced to an optional listener (the CLI prints them).
"""
from __future__ import annotations

import collections
import functools
import heapq
import itertools
import json
import os
import pickle
import queue
import random
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import store
from engine.definition import JobDef
from engine.errors import NotApplicableError, UnknownRunError, UnknownStepError
from engine.executor import AttemptRequest, Executor, ExecutorEvent, Exited, LogClosed, Result, Started
from engine.home import Home
from engine.plan import JobPlan, StepPlan, plan_job
from engine.states import AttemptState, Change, FailureReason, RunState, StepState
from engine.worker import INLINE_OUTPUT_MAX
from engine.worker import preview as preview_of

COMMAND_POLL_S = 0.1
LEFTOVER_GRACE_S = 2.0
"""How long an exited step's leftover processes may keep its output open before they are killed."""
EXIT_RECORD_DELAY_S = 1.0
"""Longest an attempt's exit status waits to be written after its step ended on its result (see _record_exit)."""
DETAIL_LINES = 20
REQUEST_INPUTS_MAX = 64 * 1024
"""Bytes of upstream outputs an attempt's request carries inline (one socket message); the rest go by file."""
OUTPUT_KEPT_MAX = 1024
"""Small outputs up to this size stay in memory for the run's life (see ActiveRun.outputs)."""
NO_OUTPUT = pickle.dumps(None)
"""The output of a shell step that wrote nothing to $STEPLINE_OUTPUT: its downstream steps receive None
inline. Not stored: with no row and no file, a later engine reads None too."""


@dataclass(frozen=True, slots=True)
class _Wake:
    """Put on the event queue by wake(): the engine's thread stops waiting and looks at what is due."""
    key: None = None


_WAKE = _Wake()


Output = tuple[bool, str | None, bytes | None]
"""A succeeded step's output: (has an output, its preview, its pickle when small enough to store inline)."""


def _reported_output(result: dict[str, Any]) -> Output:
    """The output a Python attempt reported: its pickle comes along when small (worker.INLINE_OUTPUT_MAX)."""
    return bool(result.get("has_output")), result.get("preview"), result.get("output")


@dataclass(slots=True)
class ActiveRun:
    id: int
    plan: JobPlan
    params: dict[str, str]
    step_ids: dict[str, int]
    states: dict[str, StepState]
    attempts: dict[str, int]
    """Attempts made so far per step (the last attempt's number)."""
    budget_base: dict[str, int]
    """Attempt count when the current retry budget began (a manual retry starts a new one)."""
    waiting_on: dict[str, int] = field(default_factory=dict)
    """Upstream steps not yet succeeded, per step still to run."""
    ready: collections.deque[str] = field(default_factory=collections.deque)
    """Steps that may start, first come first served."""
    newly_ready: list[str] = field(default_factory=list)
    """Steps made ready since the last _fill_slots: those it cannot start then wait for a free slot."""
    scheduled_for: float | None = None
    cancelling: str | None = None
    outputs: dict[str, bytes] = field(default_factory=dict)
    """Pickles of small outputs of steps that succeeded here: kept until their write (put off with
    store.later) lands, and for the run's life when up to OUTPUT_KEPT_MAX bytes (most are: counts, paths,
    flags), so the 200 steps of a fan-out do not each read the same one back from the database."""
    in_files: set[str] = field(default_factory=set)
    """Steps that succeeded here with an output kept in its own file (too large for the database)."""
    retrying: set[str] | None = None
    """The steps a retry runs again, while the retry waits in the queue for its turn (max_active_runs)."""
    step_plans: dict[str, StepPlan] = field(init=False)
    downstream: dict[str, list[str]] = field(init=False)
    """Direct downstream steps of every step (the plan's, computed once)."""

    def __post_init__(self) -> None:
        self.step_plans = {s.name: s for s in self.plan.steps}
        self.downstream = self.plan.downstream()

    def make_ready(self, name: str) -> None:
        """The step may start now: it joins the line for a slot (and is told it waits, if it must)."""
        self.ready.append(name)
        self.newly_ready.append(name)


@dataclass(slots=True)
class RunningAttempt:
    key: int
    run_id: int
    step: str
    number: int
    log_path: str
    attempt_id: int | None = None
    started_at: float | None = None
    exited: Exited | None = None
    result: dict[str, Any] | None = None
    """What a Python attempt reported before exiting (executor.Result)."""
    log_closed: bool = False
    kill_reason: FailureReason | None = None
    kill_state: StepState = StepState.FAILED
    finished: bool = False
    """The step has its outcome; the attempt stays known until its process has exited (see _record_exit)."""



def _stored_run(row: store.Run, plan: JobPlan, rows: dict[str, store.StepRun], states: dict[str, StepState],
                new_budget: bool = True) -> ActiveRun:
    """A run the database holds, to run here: `rows` are its step runs by name. `new_budget`: its steps'
    automatic retries count from their attempts so far (a manual retry), or from the first (recovery)."""
    return ActiveRun(id=row.id, plan=plan, params=json.loads(row.params),
                     step_ids={name: r.id for name, r in rows.items()}, states=states,
                     attempts={name: r.attempts for name, r in rows.items()},
                     budget_base={name: r.attempts if new_budget else 0 for name, r in rows.items()},
                     scheduled_for=row.scheduled_for)

class Engine:
    """Executes runs of jobs. Call its methods from one thread (the engine thread)."""

    def __init__(self, home: Home, parallel: int | None = None, clock: Callable[[], float] = time.time,
                 kill_grace_s: float = 5.0, listener: Callable[[Change], None] | None = None,
                 rng: random.Random | None = None, worker_output: str | None = None) -> None:
        self.home = home
        self.parallel = max(1, parallel or os.cpu_count() or 1)
        self._clock = clock
        self._listener = listener
        self._rng = rng or random.Random()
        self._events: queue.SimpleQueue[ExecutorEvent | _Wake] = queue.SimpleQueue()
        # worker_output: where the preloaded workers' own output goes (what a job file prints or warns while
        # it imports); None keeps this process's stdout and stderr.
        self._executor = Executor(self._events.put, clock, kill_grace_s, worker_output=worker_output)
        self._runs: dict[int, ActiveRun] = {}
        self._attempts: dict[int, RunningAttempt] = {}
        self._keys = itertools.count(1)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._next_command_poll = 0.0
        self._queued: list[tuple[ActiveRun, int]] = []
        self._plans: dict[int, tuple[JobDef, JobPlan, str]] = {}
        self.owner = store.process_identity()
        self._checkpointer = store.Checkpointer(str(home.database))
        self._unrecorded_exits: list[tuple[int, dict[str, Any]]] = []

    # --- public API -----------------------------------------------------------------------------------

    @property
    def active_run_ids(self) -> list[int]:
        """Runs this engine has started or queued and not yet ended."""
        return list(self._runs) + [r.id for r, _ in self._queued]

    def submit(self, job_def: JobDef, params: dict[str, str] | None = None, trigger: str = "manual",
               scheduled_for: float | None = None) -> int:
        """Create a run of `job_def` and start it now; returns the run id."""
        run = self._create_run(job_def, params, trigger, scheduled_for)
        self._activate(run, set(run.states))
        return run.id

    def enqueue(self, job_def: JobDef, params: dict[str, str] | None = None, trigger: str = "manual",
                scheduled_for: float | None = None, max_active_runs: int = 1) -> int:
        """Create a queued run that starts once fewer than `max_active_runs` runs of its job are active."""
        run = self._create_run(job_def, params, trigger, scheduled_for)
        self._queued.append((run, max_active_runs))
        return run.id

    def queued_runs(self) -> list[tuple[int, str]]:
        """(run id, job) of the runs waiting in this engine's queue, oldest first."""
        return [(run.id, run.plan.job) for run, _ in self._queued]

    def is_queued(self, run_id: int) -> bool:
        return any(run.id == run_id for run, _ in self._queued)

    def active_runs_of(self, job: str) -> int:
        """Runs of `job` running or queued in this engine."""
        return (sum(1 for r in self._runs.values() if r.plan.job == job)
                + sum(1 for r, _ in self._queued if r.plan.job == job))

    def _plan(self, job_def: JobDef) -> tuple[JobPlan, str]:
        """The plan of `job_def` and its JSON, made once per loaded definition (a reload makes new ones)."""
        cached = self._plans.get(id(job_def))
        if cached is None or cached[0] is not job_def:
            if len(self._plans) >= 1000:
                self._plans.clear()
            plan = plan_job(job_def)
            cached = self._plans[id(job_def)] = (job_def, plan, plan.to_json())
        return cached[1], cached[2]

    def _create_run(self, job_def: JobDef, params: dict[str, str] | None, trigger: str,
                    scheduled_for: float | None) -> ActiveRun:
        plan, snapshot = self._plan(job_def)
        merged = {**plan.params, **(params or {})}
        now = self._clock()
        run_id, step_ids = store.create_run(plan.job, trigger, merged, snapshot,
                                            [s.name for s in plan.steps], now, scheduled_for)
        self._announce(Change(run_id, None, RunState.QUEUED, f"{trigger} run of {plan.job}", now))
        return ActiveRun(id=run_id, plan=plan, params=merged, step_ids=step_ids,
                         states={s.name: StepState.PENDING for s in plan.steps},
                         attempts={s.name: 0 for s in plan.steps}, budget_base={s.name: 0 for s in plan.steps},
                         scheduled_for=scheduled_for)

    def adopt_queued(self, run_id: int, max_active_runs: int = 1) -> None:
        """Queue here a run that an earlier engine of the home queued and never started (stopped or killed
        before its turn): it keeps its place, as a scheduler's queue survives a restart. A queued retry runs
        its pending steps only: the steps that succeeded before keep their outputs."""
        row = store.Run.get_by_id(run_id)
        rows = {r.name: r for r in store.StepRun.select().where(store.StepRun.run == run_id)}
        states = {name: StepState(r.state) for name, r in rows.items()}
        run = _stored_run(row, JobPlan.from_json(row.snapshot), rows, states)
        if any(state != StepState.PENDING for state in states.values()):
            run.retrying = {name for name, state in states.items() if state == StepState.PENDING}
        self._queued.append((run, max_active_runs))

    def release_queued(self) -> list[int]:
        """Let go of the runs waiting in this engine's queue, left queued for the next engine (stopping)."""
        released = [run.id for run, _ in self._queued]
        self._queued.clear()
        return released

    def _start_queued(self) -> None:
        for entry in list(self._queued):
            run, max_active = entry
            if sum(1 for r in self._runs.values() if r.plan.job == run.plan.job) < max_active:
                self._queued.remove(entry)
                if store.Run.select(store.Run.state).where(store.Run.id == run.id).scalar() != "queued":
                    continue  # ended meanwhile from outside (a cancel): its end stands
                if run.retrying is not None:
                    self._activate(run, run.retrying, retry=True)
                else:
                    self._activate(run, set(run.states))

    def retry(self, run_id: int, step: str | None = None, new_budget: bool = True,
              steps: Sequence[str] | None = None, max_active_runs: int | None = None) -> list[str]:
        """Re-run the failed steps of a finished run (or `step`, whatever its state, and every step after it)
        in the same run.

        Other steps that succeeded keep their persisted outputs; returns the step names that will run again.
        A manual retry gives each step a `new_budget` of automatic retries; recovery after a crash
        continues the old one, for the `steps` it chose (and what waits on them) only.
        """
        row = store.Run.get_or_none(store.Run.id == run_id)
        if row is None:
            raise UnknownRunError(f"run {run_id} does not exist; `stepline runs` lists the runs")
        if run_id in self.active_run_ids or not RunState(row.state).is_terminal:
            raise NotApplicableError(f"run {run_id} is still {row.state}; wait for it to end or cancel it "
                                     f"(`stepline cancel {run_id}`) before retrying")
        plan = JobPlan.from_json(row.snapshot)
        if not os.path.exists(plan.file):
            raise NotApplicableError(f"run {run_id}'s job file {plan.file} is gone (moved or deleted); put it back "
                                     f"to retry this run, or start a new run of job '{row.job}' from its new file")
        rows = {r.name: r for r in store.StepRun.select().where(store.StepRun.run == run_id)}
        states = {name: StepState(r.state) for name, r in rows.items()}
        if step is not None:
            if step not in states:
                import difflib
                close = difflib.get_close_matches(step, list(states), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UnknownStepError(f"run {run_id} of job '{row.job}' has no step '{step}'{hint}; "
                                       f"its steps are: {', '.join(states)}")
            # A step that succeeded runs again too when named (Airflow's "clear"): its code or its data was
            # fixed, so it and everything after it, whose inputs it makes, run again on the new output.
            again = [step] + list(plan.all_downstream(step))
        elif steps is not None:
            # Recovery: these steps, and what waits on them unless it also waits on a step that stays failed.
            again = list(steps)
            downstream = {d for s in steps for d in plan.all_downstream(s)}
            for step_plan in plan.steps:  # in the DAG's order: upstream first
                if (step_plan.name in downstream and states[step_plan.name] != StepState.SUCCEEDED
                        and step_plan.name not in again
                        and all(states[u] == StepState.SUCCEEDED or u in again for u in step_plan.upstream)):
                    again.append(step_plan.name)
        if step is not None:
            for name in again:  # each must get what it waits on, from this retry or from an earlier success
                blocked = next((u for u in plan.step(name).upstream
                                if states[u] != StepState.SUCCEEDED and u not in again), None)
                if blocked is not None:
                    raise NotApplicableError(
                        f"step '{name}' of run {run_id} waits on '{blocked}', which {_did(states[blocked])}; retry "
                        f"that one (`stepline retry {run_id} {blocked}` runs '{name}' after it), or the run from "
                        f"its failure (`stepline retry {run_id}`)")
        if step is None and steps is None:
            again = [name for name, state in states.items() if state.is_retryable]
            if not again:
                raise NotApplicableError(f"run {run_id} has no failed, upstream_failed or cancelled steps "
                                         "to retry")
        run = _stored_run(row, plan, rows, states, new_budget)
        now = self._clock()
        changes = []
        for name in again:
            run.states[name] = StepState.PENDING
            changes.append((run.step_ids[name], name, StepState.PENDING.value,
                            # Nothing of the earlier round stays on the step: a pending step that showed an
                            # old output and a duration counting from an old start read as done or running.
                            {"reason": None, "detail": None, "waiting_for": None, "ended_at": None,
                             "started_at": None, "has_output": False, "output_preview": None}))
        store.set_step_states(run_id, changes, now)
        if max_active_runs is not None and self.active_runs_of(row.job) >= max_active_runs:
            # It waits its turn as a new run would: max_active_runs keeps two loads off one warehouse.
            run.retrying = set(again)
            store.set_run_state(run_id, RunState.QUEUED, now, reason="retry: " + ", ".join(again), clear_end=True)
            self._announce(Change(run_id, None, RunState.QUEUED, f"retry of run {run_id} waits its turn", now))
            self._queued.append((run, max_active_runs))
            return again
        self._activate(run, set(again), retry=True)
        return again

    def cancel(self, run_id: int, reason: str = "cancelled by user") -> None:
        for entry in self._queued:
            if entry[0].id == run_id:
                self._queued.remove(entry)
                self._runs[run_id] = entry[0]  # a queued run ends here, through the usual path
                break
        run = self._runs.get(run_id)
        if run is None:
            raise NotApplicableError(f"run {run_id} is not running in this engine")
        if run.cancelling:
            return
        run.cancelling = reason
        now = self._clock()
        changes = []
        for name, state in run.states.items():
            if state in (StepState.PENDING, StepState.WAITING):
                run.states[name] = StepState.CANCELLED
                changes.append((run.step_ids[name], name, StepState.CANCELLED.value,
                                {"reason": reason, "waiting_for": None, "ended_at": now}))
        run.ready.clear()
        run.newly_ready.clear()
        self._write_steps(run, changes, now)
        for attempt in self._attempts.values():
            if attempt.run_id == run_id and not attempt.finished:
                attempt.kill_reason = FailureReason(reason)
                attempt.kill_state = StepState.CANCELLED
                self._executor.kill(attempt.key)
        self._maybe_finish_run(run)

    def only_waits_for_retries(self, run_id: int) -> bool:
        """Whether nothing of the run runs now and what is left waits for a retry (or for such a step)."""
        run = self._runs.get(run_id)
        if run is None or run.ready or any(a.run_id == run_id and not a.finished for a in self._attempts.values()):
            return False
        states = run.states.values()
        return StepState.WAITING in states and all(
            state in (StepState.WAITING, StepState.PENDING) or state.is_terminal for state in states)

    def leave(self, run_id: int) -> None:
        """Stop tracking a run without ending it (a stopping engine, for a run only waiting for retries): it
        stays running in the database, its engine gone, and the next engine closes it and runs the retries
        its steps have left (see EngineService.recover), as after a crash, instead of losing them."""
        self._runs.pop(run_id, None)

    def kill_now(self, run_id: int) -> None:
        """A run being cancelled: SIGKILL its steps' processes now instead of after their SIGTERM grace."""
        for attempt in self._attempts.values():
            if attempt.run_id == run_id and not attempt.finished and attempt.kill_reason is not None:
                self._executor.kill(attempt.key, 0)

    def run_until_done(self, run_ids: list[int] | None = None, consume_commands: bool = True) -> None:
        """Drive the engine until the given runs (default: all active runs) have ended."""
        def pending() -> bool:
            active = set(self.active_run_ids)
            return any(r in active for r in run_ids) if run_ids is not None else bool(active)

        while pending():
            self.step(consume_commands=consume_commands)

    def step(self, timeout_s: float = 0.5, consume_commands: bool = True) -> None:
        """Handle what is due: start queued runs and ready steps, process executor events and timers."""
        # Usually the previous turn has started all it could; only submit(), retry() and the like
        # leave something to start here.
        if self._queued or any(run.ready for run in self._runs.values()):
            with store.batch():
                self._start_queued()
                self._fill_slots()
        now = self._clock()
        wait = timeout_s
        if self._timers:
            wait = max(0.0, min(wait, self._timers[0][0] - now))
        if consume_commands and self._runs:
            wait = min(wait, max(0.0, self._next_command_poll - now))
        try:
            event = self._events.get(timeout=wait)
        except queue.Empty:
            event = None
        with store.batch():
            self._handle_all(event)
            self._run_timers()
            # Start what these events released before committing them: the next step of a chain does
            # not wait for the commit, and its first state change joins the same transaction.
            self._start_queued()
            self._fill_slots()
            # An attempt handed to a spare process has reported Started already: record it in this
            # transaction too, instead of a turn and a commit of its own.
            self._handle_all(self._next_event())
            if self._unrecorded_exits and store.batch_is_writing():
                self._write_exits()
        if consume_commands and self._runs and self._clock() >= self._next_command_poll:
            self._next_command_poll = self._clock() + COMMAND_POLL_S
            self._consume_commands()

    def _next_event(self) -> ExecutorEvent | _Wake | None:
        try:
            return self._events.get_nowait()
        except queue.Empty:
            return None

    def _handle_all(self, event: ExecutorEvent | _Wake | None) -> None:
        """Handle `event` and every event already queued behind it."""
        while event is not None:
            self._handle(event)
            event = self._next_event()

    def wake(self) -> None:
        """Make a waiting step() return now; callable from any thread (e.g. when a schedule fires)."""
        self._events.put(_WAKE)

    def keep_code(self, sources: dict[str, str]) -> None:
        """Job file -> copy of its last good version: attempts of broken files run the copy."""
        self._executor.keep_code(sources)

    def close(self) -> None:
        self._executor.close()
        with store.batch():
            self._write_exits()
        self._checkpointer.stop()

    # --- run life cycle -------------------------------------------------------------------------------

    def _activate(self, run: ActiveRun, to_run: set[str], retry: bool = False) -> None:
        # The run's log and output folders are made where they are first needed, off this thread:
        # by the log pump (logs) and by the worker or the attempt (outputs).
        now = self._clock()
        message = "retry: " + ", ".join(s.name for s in run.plan.steps if s.name in to_run) if retry else None
        store.set_run_state(run.id, RunState.RUNNING, now, reason=message, started=True, owner=self.owner,
                            clear_end=retry)
        self._announce(Change(run.id, None, RunState.RUNNING, message, now))
        self._runs[run.id] = run
        changes = []
        for step_plan in run.plan.steps:
            name = step_plan.name
            if name not in to_run:
                continue
            blocking = [u for u in step_plan.upstream if run.states[u] != StepState.SUCCEEDED]
            run.waiting_on[name] = len(blocking)
            if blocking:
                run.states[name] = StepState.WAITING
                changes.append((run.step_ids[name], name, StepState.WAITING.value, {"waiting_for": "upstream"}))
            else:
                run.make_ready(name)
        self._write_steps(run, changes, now)

    def _fill_slots(self) -> None:
        running = sum(1 for a in self._attempts.values() if not a.finished)
        runs = list(self._runs.values())
        # Round robin, one ready step per run per turn, and a run that got a slot goes to the back of
        # the line: a new run's first step does not queue behind the hundreds of ready steps of a
        # wide run that started earlier, whichever run the last slot went to.
        while running < self.parallel:
            started = False
            for run in runs:
                while run.ready and running < self.parallel:
                    name = run.ready.popleft()
                    if run.states[name] not in (StepState.PENDING, StepState.WAITING):
                        continue
                    self._start_attempt(run, name)
                    self._runs[run.id] = self._runs.pop(run.id)
                    running += 1
                    started = True
                    break
            if not started:
                break
        # Ready steps left without a slot now wait for one, and say so once: only the steps made ready
        # since the last call are looked at, not every step of a wide run still in line.
        for run in runs:
            if run.newly_ready:
                now = self._clock()
                changes = []
                for name in run.newly_ready:
                    if run.states[name] in (StepState.PENDING, StepState.WAITING):  # not started, failed or cancelled
                        run.states[name] = StepState.WAITING
                        changes.append((run.step_ids[name], name, StepState.WAITING.value,
                                        {"waiting_for": f"a free slot (--parallel {self.parallel})"}))
                run.newly_ready.clear()
                self._write_steps(run, changes, now)

    def _start_attempt(self, run: ActiveRun, name: str) -> None:
        step_plan = run.step_plans[name]
        number = run.attempts[name] + 1
        run.attempts[name] = number
        run.states[name] = StepState.RUNNING
        key = next(self._keys)
        home = self.home
        log_path = home.attempt_log_str(run.id, name, number)
        self._attempts[key] = RunningAttempt(key, run.id, name, number, log_path)
        inputs = self._inputs(run, step_plan.inputs)
        request = AttemptRequest(
            key=key, job_file=run.plan.file, job=run.plan.job, step=name, kind=step_plan.kind,
            command=step_plan.command, inputs=inputs, params=run.params,
            context={"run_id": run.id, "job": run.plan.job, "step": name, "attempt": number,
                     "params": run.params, "home": str(home.root),
                     "scheduled_for": _iso(run.scheduled_for)},
            env=step_plan.env, cwd=self._cwd(run.plan, step_plan), log_path=log_path,
            output_path=home.output_file_str(run.id, name),
            result_path="",
            shell_output_path=home.shell_output_file_str(run.id, name, number))
        self._executor.start(request)

    def _inputs(self, run: ActiveRun, names: tuple[str, ...]) -> dict[str, str | bytes]:
        """Upstream outputs for a request: a small one as its pickle, a large one as the path of its file."""
        inputs: dict[str, str | bytes] = {}
        room = REQUEST_INPUTS_MAX
        for name in names:
            data = run.outputs.get(name)
            if data is None:  # stored by an earlier engine, or written and let go; or large, in its file
                data = store.stored_output(run.step_ids[name])
                if data is None and name not in run.in_files and not store.has_output(run.step_ids[name]):
                    data = NO_OUTPUT  # it returned None: no file to look for (a missing one is an error)
            path = self.home.output_file_str(run.id, name)
            if data is not None and len(data) > room:  # rare: many inputs near the inline bound
                if not os.path.exists(path):  # once: attempts started earlier may be reading it
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path + ".tmp", "wb") as handle:
                        handle.write(data)
                    os.replace(path + ".tmp", path)
                data = None
            if data is None:
                inputs[name] = path
            else:
                inputs[name] = data
                room -= len(data)
        return inputs

    def _cwd(self, plan: JobPlan, step_plan: StepPlan) -> str:
        folder = os.path.dirname(plan.file)
        return os.path.join(folder, step_plan.cwd) if step_plan.cwd else folder

    # --- executor events ------------------------------------------------------------------------------

    def _handle(self, event: ExecutorEvent | _Wake) -> None:
        if isinstance(event, _Wake):
            return
        attempt = self._attempts.get(event.key)
        if attempt is None:
            return
        if isinstance(event, Started):
            self._on_started(attempt, event)
        elif isinstance(event, Result):
            attempt.result = event.result
        elif isinstance(event, Exited):
            attempt.exited = event
            if attempt.finished:
                self._record_exit(attempt, event)
                return
            if event.lost and attempt.attempt_id is None:
                self._record_start(attempt, None, None, event.at)
            if not attempt.log_closed:
                self._after(LEFTOVER_GRACE_S, lambda: self._reap_leftovers(attempt))
        elif isinstance(event, LogClosed):
            attempt.log_closed = True
            if event.cut:  # said where the user reads logs (`logs`, `show`), not only in engine.log
                store.record_log_cut(attempt.run_id, attempt.step, attempt.number, event.cut, event.at)
        if attempt.finished or not attempt.log_closed:
            return
        if attempt.exited is not None:
            self._finish(attempt)
        elif attempt.result is not None and attempt.kill_reason is None and attempt.started_at is not None:
            # The attempt has reported its result and closed its output: the step is done; its
            # process is still exiting, and its exit status is recorded when it comes.
            self._finish(attempt)

    def _on_started(self, attempt: RunningAttempt, event: Started) -> None:
        self._record_start(attempt, event.pid, event.pid_started, event.at)
        run = self._runs[attempt.run_id]
        timeout_s = run.step_plans[attempt.step].timeout_s
        if timeout_s:
            self._after(timeout_s, lambda: self._time_out(attempt, timeout_s))

    def _record_start(self, attempt: RunningAttempt, pid: int | None, pid_started: float | None,
                      at: float) -> None:
        run = self._runs[attempt.run_id]
        attempt.started_at = at
        attempt.attempt_id = store.start_attempt(run.id, run.step_ids[attempt.step], attempt.step,
                                                 attempt.number, pid, pid_started, attempt.log_path, at)
        self._announce(Change(run.id, attempt.step, StepState.RUNNING, f"attempt {attempt.number}", at,
                              attempt.number))

    def _time_out(self, attempt: RunningAttempt, timeout_s: float) -> None:
        if (attempt.finished or attempt.exited is not None or attempt.result is not None
                or attempt.kill_reason is not None):
            return
        attempt.kill_reason = FailureReason(f"timed out after {_seconds(timeout_s)}")
        self._executor.kill(attempt.key)

    def _reap_leftovers(self, attempt: RunningAttempt) -> None:
        if not attempt.finished and not attempt.log_closed:
            self._executor.reap_leftovers(attempt.key)

    def _finish(self, attempt: RunningAttempt) -> None:
        attempt.finished = True
        exited = attempt.exited
        if exited is not None:
            self._executor.forget(attempt.key)
            del self._attempts[attempt.key]
        run = self._runs[attempt.run_id]
        step_plan = run.step_plans[attempt.step]
        now = self._clock()
        state, reason, output = self._outcome(run, step_plan, attempt, exited)
        outcome: dict[str, Any] = {"reason": reason.summary if reason else None,
                                   "detail": reason.detail if reason else None}
        if exited is not None:
            outcome.update(_exit_columns(exited))
        name = attempt.step
        extra: dict[str, Any] = {"reason": outcome["reason"], "detail": outcome["detail"], "ended_at": now}
        changes = []
        stored: tuple[int, bytes] | None = None
        if state == StepState.SUCCEEDED:
            extra.update(has_output=output[0], output_preview=output[1], waiting_for=None)
            if output[2] is None and output[0]:
                run.in_files.add(name)
            if output[2] is not None:
                run.outputs[name] = output[2]
                if output[2] is not NO_OUTPUT:  # read back as None anyway: no file, no row
                    stored = (run.step_ids[name], output[2])
            changes.append((run.step_ids[name], name, state.value, extra))
            attempt_state = AttemptState.SUCCEEDED
        elif (state == StepState.FAILED and self._may_retry(run, step_plan) and not run.cancelling
              and (attempt.result or {}).get("retry", True)):
            used = run.attempts[name] - run.budget_base[name]
            delay = self._retry_delay(step_plan, used)
            due = now + delay
            label = f"retry {used}/{step_plan.retries} at {time.strftime('%H:%M:%S', time.localtime(due))}"
            state = StepState.WAITING
            extra.update(waiting_for=label, ended_at=None)
            changes.append((run.step_ids[name], name, state.value, extra))
            attempt_state = AttemptState.FAILED
            self._after(delay, lambda: self._retry_due(run, name))
        else:
            attempt_state = AttemptState.CANCELLED if state == StepState.CANCELLED else AttemptState.FAILED
            changes.append((run.step_ids[name], name, state.value, extra))
            changes += self._fail_downstream(run, name, now)
        run.states[name] = state
        # Written just before this turn's next write or at its end, in its transaction: the next step of a
        # chain is handed to its process first (see step()).
        store.later(functools.partial(self._write_finish, run, name, attempt.attempt_id or 0, attempt_state,
                                      outcome, changes, now, stored))
        for step_run_id, changed, new_state, values in changes:
            self._announce(Change(run.id, changed, new_state, store.step_message(new_state, values), now,
                                  attempt.number if changed == name else None))
        if state == StepState.SUCCEEDED:
            for downstream in run.downstream[name]:
                if downstream in run.waiting_on and run.states[downstream] in (StepState.PENDING,
                                                                                StepState.WAITING):
                    run.waiting_on[downstream] -= 1
                    if run.waiting_on[downstream] == 0:
                        run.make_ready(downstream)
        self._maybe_finish_run(run)

    @staticmethod
    def _write_finish(run: ActiveRun, name: str, attempt_id: int, attempt_state: str, outcome: dict[str, Any],
                      changes: list[tuple[int, str, str, dict[str, Any]]], at: float,
                      output: tuple[int, bytes] | None) -> None:
        store.finish_attempt(run.id, attempt_id, attempt_state, outcome, changes, at, output)
        if output is not None and len(output[1]) > OUTPUT_KEPT_MAX:
            run.outputs.pop(name, None)  # the database has it now (in this turn's transaction)

    def _record_exit(self, attempt: RunningAttempt, exited: Exited) -> None:
        """The process of an attempt whose step finished on its result has exited: complete the attempt."""
        self._executor.forget(attempt.key)
        del self._attempts[attempt.key]
        if attempt.attempt_id is not None:
            # The step's outcome is committed already. The exit status, CPU time and peak RSS join the next
            # turn that writes anyway, at most EXIT_RECORD_DELAY_S later, rather than taking a commit of
            # their own: in a chain of Python steps, every exit lands between two steps' turns.
            if not self._unrecorded_exits:
                self._after(EXIT_RECORD_DELAY_S, self._write_exits)
            self._unrecorded_exits.append((attempt.attempt_id, _exit_columns(exited)))
        run = self._runs.get(attempt.run_id)
        if run is not None:
            self._maybe_finish_run(run)

    def _write_exits(self) -> None:
        exits, self._unrecorded_exits = self._unrecorded_exits, []
        for attempt_id, columns in exits:
            store.record_exit(attempt_id, columns)

    def _outcome(self, run: ActiveRun, step_plan: StepPlan, attempt: RunningAttempt,
                 exited: Exited | None) -> tuple[StepState, FailureReason | None, Output]:
        no_output: Output = (False, None, None)
        result = attempt.result or {}
        if exited is None:  # finished on the result the attempt sent before exiting
            if result.get("ok"):
                return StepState.SUCCEEDED, None, _reported_output(result)
            return StepState.FAILED, FailureReason(result.get("summary") or "failed", result.get("detail", "")), no_output
        if exited.lost:
            return StepState.FAILED, FailureReason(exited.lost, exited.lost_detail), no_output
        if attempt.kill_reason is not None:
            detail = self._log_tail(attempt.log_path)
            return attempt.kill_state, FailureReason(attempt.kill_reason.summary, detail), no_output
        if exited.exit_code == 0:
            if step_plan.kind == "shell":
                return self._shell_output(run, step_plan, attempt)
            if result.get("ok"):
                return StepState.SUCCEEDED, None, _reported_output(result)
            return StepState.SUCCEEDED, None, no_output
        if result.get("summary"):
            return StepState.FAILED, FailureReason(result["summary"], result.get("detail", "")), no_output
        if exited.signal:
            summary = f"killed by signal {exited.signal} ({_signal_name(exited.signal)})"
        else:
            summary = f"exit code {exited.exit_code}"
        return StepState.FAILED, FailureReason(summary, self._log_tail(attempt.log_path)), no_output

    def _shell_output(self, run: ActiveRun, step_plan: StepPlan,
                      attempt: RunningAttempt) -> tuple[StepState, FailureReason | None, Output]:
        path = self.home.shell_output_file_str(run.id, step_plan.name, attempt.number)
        try:
            raw = read_shell_output(path)
        except FileNotFoundError:
            return StepState.SUCCEEDED, None, (False, None, NO_OUTPUT)
        except (OSError, ValueError) as error:  # whatever the command made of the path: the step's failure
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            return StepState.FAILED, FailureReason(f"its output could not be read from $STEPLINE_OUTPUT: {reason}",
                                                   path), (False, None, None)
        text = raw.decode("utf-8", "replace").rstrip("\n")
        data = pickle.dumps(text)
        if len(data) <= INLINE_OUTPUT_MAX:
            return StepState.SUCCEEDED, None, (True, preview_of(text), data)
        with open(self.home.output_file_str(run.id, step_plan.name), "wb") as handle:
            handle.write(data)
        return StepState.SUCCEEDED, None, (True, preview_of(text), None)

    def _may_retry(self, run: ActiveRun, step_plan: StepPlan) -> bool:
        used = run.attempts[step_plan.name] - run.budget_base[step_plan.name]
        return used <= step_plan.retries

    def _retry_delay(self, step_plan: StepPlan, failures: int) -> float:
        if not step_plan.retry_delay_s:
            return 0.0
        try:
            growth = step_plan.backoff ** (failures - 1)
        except OverflowError:  # retries=10000, backoff=2: past the largest float, the maximum applies
            return step_plan.max_retry_delay_s
        delay = step_plan.retry_delay_s * growth
        if step_plan.jitter:
            delay *= 1 + self._rng.uniform(0, step_plan.jitter)
        return min(delay, step_plan.max_retry_delay_s)

    def _retry_due(self, run: ActiveRun, name: str) -> None:
        if run.states.get(name) == StepState.WAITING and not run.cancelling and run.id in self._runs:
            run.make_ready(name)

    def _fail_downstream(self, run: ActiveRun, name: str, now: float) -> list[tuple[int, str, str, dict[str, Any]]]:
        changes = []
        for downstream in run.plan.all_downstream(name):
            if run.states[downstream] in (StepState.PENDING, StepState.WAITING):
                run.states[downstream] = StepState.UPSTREAM_FAILED
                if downstream in run.ready:
                    run.ready.remove(downstream)
                changes.append((run.step_ids[downstream], downstream, StepState.UPSTREAM_FAILED.value,
                                {"reason": f"upstream step '{name}' did not succeed", "waiting_for": None,
                                 "ended_at": now}))
        return changes

    def _maybe_finish_run(self, run: ActiveRun) -> None:
        # From the end: the last steps in DAG order are the last to end, so an unfinished run is
        # told in a step or two rather than after walking every step of a wide run.
        if not all(state.is_terminal for state in reversed(run.states.values())):
            return
        if any(a.run_id == run.id for a in self._attempts.values()):
            return
        states = set(run.states.values())
        reason: str | None
        if run.cancelling:
            state, reason = RunState.CANCELLED, run.cancelling
        elif states & {StepState.FAILED, StepState.UPSTREAM_FAILED}:
            failed = [n for n, s in run.states.items() if s == StepState.FAILED]
            state, reason = RunState.FAILED, _failed_steps(failed) if failed else None
        elif StepState.CANCELLED in states:
            state, reason = RunState.CANCELLED, "steps were cancelled"
        else:
            state, reason = RunState.SUCCEEDED, None
        now = self._clock()
        store.set_run_state(run.id, state, now, reason=reason, ended=True)
        self._executor.release_output_folder(os.fspath(self.home.run_output_dir(run.id)))
        del self._runs[run.id]
        self._announce(Change(run.id, None, state, reason, now))

    # --- commands, timers, helpers ----------------------------------------------------------------------

    def _consume_commands(self) -> None:
        for command in store.pending_commands(run_ids=list(self._runs), kinds=["cancel"]):
            run_id = command["run_id"]
            if run_id in self._runs:
                with store.batch():  # the cancel and its answer commit together (see store.take_command)
                    if store.take_command(command["id"]):
                        self.cancel(run_id, command["payload"].get("reason") or "cancelled by user")
                        store.ack_command(command["id"], True, f"run {run_id} cancelling", self._clock())

    def _after(self, delay_s: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self._clock() + delay_s, next(self._timer_seq), callback))

    def _run_timers(self) -> None:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            callback()

    def _write_steps(self, run: ActiveRun, changes: list[tuple[int, str, str, dict[str, Any]]], now: float) -> None:
        store.set_step_states(run.id, changes, now)
        for _, name, state, extra in changes:
            self._announce(Change(run.id, name, state, store.step_message(state, extra), now))

    def _announce(self, change: Change) -> None:
        if self._listener is not None:
            self._listener(change)

    def _log_tail(self, path: str, lines: int = DETAIL_LINES) -> str:
        from engine.logread import tail_lines
        return "\n".join(tail_lines(path, lines))


SHELL_OUTPUT_MAX = 64 * 1024 * 1024
"""The most a shell step may write to $STEPLINE_OUTPUT: the engine reads it whole."""


def read_shell_output(path: str) -> bytes:
    """What a shell step wrote to $STEPLINE_OUTPUT. Opened without blocking (a command may have made the path a
    FIFO, whose open would wait for a writer for ever) and refused unless a regular file of at most
    SHELL_OUTPUT_MAX bytes (ValueError, saying what it is)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ValueError(f"the command made it {kind}; write the output into it as a file, "
                             "e.g. echo \"$value\" > \"$STEPLINE_OUTPUT\"")
        if info.st_size > SHELL_OUTPUT_MAX:
            raise ValueError(f"it holds {info.st_size / 2**20:.0f} MB, more than the {SHELL_OUTPUT_MAX // 2**20} MB "
                             "an output may be; write large data to a file of your own and output its path")
        with open(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def _exit_columns(exited: Exited) -> dict[str, Any]:
    return {"exit_code": exited.exit_code, "signal": exited.signal, "cpu_s": exited.cpu_s,
            "peak_rss_bytes": exited.peak_rss_bytes}


def _iso(at: float | None) -> str | None:
    """UTC as every JSON document of stepline writes it: "2026-11-28T06:00:00Z"."""
    if at is None:
        return None
    from datetime import datetime, timezone
    return datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _signal_name(number: int) -> str:
    import signal
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _did(state: StepState) -> str:
    """What a step that did not succeed did: "failed", "was cancelled", "did not run (upstream failed)"."""
    return {StepState.FAILED: "failed", StepState.CANCELLED: "was cancelled",
            StepState.UPSTREAM_FAILED: "did not run (its upstream failed)", StepState.SKIPPED: "was skipped"
            }.get(state, f"is {state.value}")


def _failed_steps(names: list[str]) -> str:
    """A run's reason: "step 'a' failed", "steps 'a' and 'b' failed", "steps 'a', 'b' and 'c' failed"."""
    quoted = [repr(name) for name in names]
    if len(quoted) == 1:
        return f"step {quoted[0]} failed"
    return f"steps {', '.join(quoted[:-1])} and {quoted[-1]} failed"
