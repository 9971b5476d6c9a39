"""The long-running engine: one per home, taking commands, firing schedules and running runs.

Used headless by `stepline daemon` and in a background thread by `stepline up`.
It holds the home's engine lock (a second engine exits at once naming the holder),
writes a heartbeat so readers can tell running from stopped from hung, publishes
the job catalogue, closes runs a dead engine left behind, and consumes the
commands table (trigger, retry, cancel, pause, resume), acknowledging each one.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine import query, store
from engine.errors import SteplineError
from engine.home import Home
from engine.loader import LoadResult, load_jobs
from engine.plan import plan_job
from engine.recovery import close_abandoned_run, is_alive
from engine.runner import Change, Engine

log = logging.getLogger("stepline.engine")

COMMAND_KINDS = ("trigger", "retry", "cancel", "pause", "resume")


class EngineLockedError(SteplineError):
    """Another engine already runs this home."""


class EngineLock:
    """An exclusive flock on home/engine.lock; the OS releases it when its holder dies, so stale locks fix themselves."""

    def __init__(self, home: Home) -> None:
        self.path = home.root / "engine.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EngineLockedError(f"another stepline engine (pid {holder}) already runs {self.path.parent}; "
                                    "use `stepline tui` to attach to it, or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def holder(self) -> int | None:
        """The pid of the engine holding this home, or None when no engine runs it."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EngineService:
    """Runs an Engine until stopped; call `run()` in the thread that should own it."""

    def __init__(self, home: Home, jobs_dir: str | os.PathLike[str], mode: str = "daemon",
                 parallel: int | None = None, clock: Callable[[], float] = time.time,
                 heartbeat_s: float = query.HEARTBEAT_S, command_poll_s: float = 0.1,
                 kill_grace_s: float = 5.0, stop_grace_s: float = 10.0,
                 listener: Callable[[Change], None] | None = None) -> None:
        self.home = home
        self.jobs_dir = Path(jobs_dir)
        self.mode = mode
        self.parallel = parallel
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.command_poll_s = command_poll_s
        self.kill_grace_s = kill_grace_s
        self.stop_grace_s = stop_grace_s
        self.listener = listener
        self.jobs: LoadResult = LoadResult()
        self.ready = threading.Event()
        """Set once the lock is held, recovery is done and jobs are loaded."""
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._lock = EngineLock(home)
        self._thread: threading.Thread | None = None
        self.engine: Engine | None = None
        self.identity = store.process_identity()

    # --- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a background thread; raises here if the engine cannot start (e.g. the lock is held)."""
        self._thread = threading.Thread(target=self._run_catching, name="stepline-engine", daemon=True)
        self._thread.start()
        while not self.ready.wait(0.05):
            if self.stopped.is_set():
                break
        if self.error is not None:
            raise self.error

    def stop(self, grace_s: float | None = None) -> None:
        """Stop firing, let running steps finish within the grace period, then cancel them."""
        if grace_s is not None:
            self.stop_grace_s = grace_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def request_stop(self) -> None:
        self._stop.set()

    def _run_catching(self) -> None:
        try:
            self.run()
        except BaseException as error:  # handed to start() / the caller
            self.error = error
            self.stopped.set()

    def run(self) -> None:
        self._lock.acquire()
        try:
            self.engine = Engine(self.home, parallel=self.parallel, clock=self.clock,
                                 kill_grace_s=self.kill_grace_s, listener=self.listener)
            store.heartbeat(*self.identity, self.mode, self.clock(), starting=True)
            self.recover()
            self.reload_jobs()
            self.ready.set()
            log.info("engine started (pid %s, %s mode, home %s)", os.getpid(), self.mode, self.home.root)
            self._loop()
            self._shutdown()
        finally:
            if self.engine is not None:
                self.engine.close()
            store.engine_stopped(self.identity[0], self.clock())
            self._lock.release()
            self.stopped.set()
            log.info("engine stopped")

    def _loop(self) -> None:
        assert self.engine is not None
        next_beat = next_poll = 0.0
        while not self._stop.is_set():
            now = self.clock()
            if now >= next_beat:
                store.heartbeat(*self.identity, self.mode, now)
                next_beat = now + self.heartbeat_s
            if now >= next_poll:
                self.consume_commands()
                next_poll = now + self.command_poll_s
            self.engine.step(timeout_s=min(self.command_poll_s, self.heartbeat_s), consume_commands=False)

    def _shutdown(self) -> None:
        assert self.engine is not None
        active = self.engine.active_run_ids
        if active:
            log.info("stopping: waiting up to %ss for %d active run(s)", self.stop_grace_s, len(active))
        deadline = self.clock() + self.stop_grace_s
        while self.engine.active_run_ids and self.clock() < deadline:
            store.heartbeat(*self.identity, self.mode, self.clock())
            self.engine.step(timeout_s=0.1, consume_commands=False)
        for run_id in self.engine.active_run_ids:
            self.engine.cancel(run_id, "engine stopping")
        while self.engine.active_run_ids:
            self.engine.step(timeout_s=0.1, consume_commands=False)

    # --- work ----------------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Close runs left running by an engine that is gone (pid + start time, safe against pid reuse)."""
        assert self.engine is not None
        for summary in query.list_runs(state="running", limit=10_000) + query.list_runs(state="queued", limit=10_000):
            pid, started = query.run_owner(summary.id)
            if (pid, started) != self.identity and not is_alive(pid, started):
                cut = close_abandoned_run(summary.id, clock=self.clock)
                log.warning("run %s of %s was left running by a stopped engine; closed (steps cut short: %s)",
                            summary.id, summary.job, ", ".join(cut) or "none")
                if cut and self._retries_left(summary.id, cut):
                    again = self.engine.retry(summary.id, new_budget=False)
                    log.info("run %s: retrying %s, as their retry policy allows", summary.id, ", ".join(again))

    def _retries_left(self, run_id: int, steps: list[str]) -> bool:
        """Whether any of `steps` has attempts left under its retries= policy."""
        run = query.get_run(run_id)
        return any(run.step(name).attempts <= run.plan.step(name).retries for name in steps)

    def reload_jobs(self) -> LoadResult:
        self.jobs = load_jobs(self.jobs_dir)
        plans = [(plan_job(j), j.description) for j in self.jobs.jobs.values()]
        store.publish_catalog(plans, [(p.file, p.line, p.message) for p in self.jobs.problems], self.clock())
        for problem in self.jobs.problems:
            log.warning("%s", problem)
        return self.jobs

    def consume_commands(self) -> None:
        assert self.engine is not None
        for command in store.pending_commands(kinds=COMMAND_KINDS):
            kind = command["kind"]
            if kind == "cancel" and not self._owns_or_orphan(command["run_id"]):
                continue  # another live engine (a `stepline run`) executes it and will take this command
            run_id = command["run_id"]
            try:
                ok, (result, run_id) = True, self._execute(command)
            except SteplineError as error:
                ok, result = False, str(error)
            store.ack_command(command["id"], ok, result, self.clock(), run_id=run_id)

    def _owns_or_orphan(self, run_id: int | None) -> bool:
        assert self.engine is not None
        if run_id is None or run_id in self.engine.active_run_ids:
            return True
        try:
            pid, started = query.run_owner(run_id)
        except SteplineError:
            return True
        return not is_alive(pid, started)

    def _execute(self, command: dict) -> tuple[str, int | None]:
        """Carry out one command; returns its result line and the run it concerns."""
        from engine.errors import NotApplicableError, UnknownJobError

        assert self.engine is not None
        kind, run_id, job = command["kind"], command["run_id"], command["job"]
        if kind == "trigger":
            job_def = self.jobs.jobs.get(job)
            if job_def is None:
                raise UnknownJobError(f"no job '{job}' is loaded; `stepline check` shows problems in job files")
            new_id = self.engine.submit(job_def, command["payload"].get("params") or {},
                                        trigger=command["payload"].get("trigger", "manual"))
            return f"run {new_id} of {job} started", new_id
        if kind == "retry":
            summary = query.run_summary(run_id)
            if summary.state in ("running", "queued") and run_id not in self.engine.active_run_ids:
                pid, started = query.run_owner(run_id)
                if not is_alive(pid, started):
                    close_abandoned_run(run_id, clock=self.clock)
            again = self.engine.retry(run_id, command["step"])
            return f"retrying {', '.join(again)} in run {run_id}", run_id
        if kind == "cancel":
            if run_id in self.engine.active_run_ids:
                self.engine.cancel(run_id, command["payload"].get("reason") or "cancelled by user")
                return f"run {run_id} cancelling", run_id
            summary = query.run_summary(run_id)
            if summary.state not in ("running", "queued"):
                raise NotApplicableError(f"run {run_id} already {summary.state}; nothing to cancel")
            close_abandoned_run(run_id, "cancelled by user (its engine had stopped)", cancelled=True,
                                clock=self.clock)
            return f"run {run_id} cancelled", run_id
        if kind in ("pause", "resume"):
            if job not in self.jobs.jobs:
                raise UnknownJobError(f"no job '{job}' is loaded")
            set_paused(job, kind == "pause", self.clock())
            return f"{job} {'paused' if kind == 'pause' else 'resumed'}", None
        raise NotApplicableError(f"unknown command '{kind}'")


def set_paused(job: str, paused: bool, at: float) -> None:
    with store.db.atomic("IMMEDIATE"):
        store.Schedule.insert(job=job, paused=paused, updated_at=at).on_conflict(
            conflict_target=[store.Schedule.job],
            update={store.Schedule.paused: paused, store.Schedule.updated_at: at}).execute()
        store.Event.insert(at=at, run_id=None, step=None, kind="schedule", state="paused" if paused else "resumed",
                           message=job).execute()
