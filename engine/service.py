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
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine import query, store
from engine.errors import SteplineError
from engine.home import Home
from engine.loader import LoadResult, load_jobs
from engine.plan import plan_job
from engine.recovery import close_abandoned_run, close_if_abandoned, close_runs_of_stopped_engines, is_alive
from engine.runner import Change, Engine
from engine.scheduler import Due, Scheduler

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
        # The lock is free; yet an engine may still run here, holding the lock of a file since deleted (by
        # someone clearing what looked like a stale lock): its heartbeat says so. Two engines would fire
        # every schedule twice.
        other = query.engine_status(time.time())
        if other.state == "running" and other.pid not in (None, os.getpid()) and query.process_exists(other.pid):
            os.close(fd)
            raise EngineLockedError(
                f"another stepline engine (pid {other.pid}) runs {self.path.parent}: its heartbeat is fresh, though "
                f"{self.path.name} was free (deleted while it ran?); stop it first (`kill {other.pid}`)")
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
                 heartbeat_s: float = query.HEARTBEAT_S, command_poll_s: float = 0.05,
                 kill_grace_s: float = 5.0, stop_grace_s: float = 10.0,
                 listener: Callable[[Change], None] | None = None, watch_files: bool = True) -> None:
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
        self._jobs_changed = threading.Event()
        self._loading: threading.Thread | None = None
        """The reload under way after a change of the job files, if any."""
        self._loaded: LoadResult | None = None
        """What that reload found, for the engine's thread to apply."""
        self._good_sources: dict[str, str] = {}
        self._watching = threading.Event()
        self.watch_files = watch_files
        self._lock = EngineLock(home)
        self._thread: threading.Thread | None = None
        self.engine: Engine | None = None
        self._due: queue.SimpleQueue[Due] = queue.SimpleQueue()
        self.scheduler = Scheduler(self._on_due, clock)
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
                                 kill_grace_s=self.kill_grace_s, listener=self.listener,
                                 worker_output=str(self.home.engine_log))
            # Recovery first: it dates the end of steps cut short by the dead engine's last heartbeat, which
            # this engine's first one would replace.
            self.recover()
            store.heartbeat(*self.identity, self.mode, self.clock(), starting=True)
            if self.watch_files:
                # Watch before loading, so no edit falls between the load and the first look.
                threading.Thread(target=self._watch, name="stepline-watch", daemon=True).start()
                self._watching.wait(5)
            self.reload_jobs()
            self.adopt_queued()
            self.scheduler.start()
            self.ready.set()
            log.info("engine started (pid %s, %s mode, home %s)", os.getpid(), self.mode, self.home.root)
            self._loop()
            self.scheduler.shutdown()  # stop firing first, then let running steps finish
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
            with store.batch():
                self._start_due_runs()
            if now >= next_poll:
                self._reload_changed_jobs()
                self.consume_commands()
                next_poll = now + self.command_poll_s
            self.engine.step(timeout_s=min(self.command_poll_s, self.heartbeat_s), consume_commands=False)

    def _watch(self) -> None:
        """Flag job-file changes (inotify, debounced); the engine thread reloads at its next turn."""
        import watchfiles

        def is_job_file(change: watchfiles.Change, path: str) -> bool:
            return path.endswith(".py")

        try:
            for changes in watchfiles.watch(self.jobs_dir, watch_filter=is_job_file, stop_event=self._stop,
                                            debounce=300, raise_interrupt=False, yield_on_timeout=True,
                                            rust_timeout=200):
                self._watching.set()  # the first (empty) yield means the watch is live
                if changes:
                    self._jobs_changed.set()
        except Exception as error:  # no inotify, folder gone: say so, keep the engine running
            self._watching.set()
            log.warning("not watching %s for changes (%s); restart the engine after editing job files",
                        self.jobs_dir, error)

    def adopt_queued(self) -> None:
        """Take up the runs an earlier engine of the home left queued, never started (it stopped, or was
        killed, before their turn): they keep their place, as a scheduler's queue survives a restart."""
        assert self.engine is not None
        for run in sorted(query.list_runs(state="queued", limit=10_000), key=lambda r: r.id):
            if run.id not in self.engine.active_run_ids and query.run_owner(run.id)[0] is None:
                job_def = self.jobs.jobs.get(run.job)
                self.engine.adopt_queued(run.id, job_def.max_active_runs if job_def else 1)
                log.info("run %s of %s was left queued by the previous engine; queued here", run.id, run.job)
        self._cancel_queued_runs_of_gone_jobs()  # renamed while no engine ran

    def _shutdown(self) -> None:
        assert self.engine is not None
        # Runs waiting for their turn stay queued for the next engine of the home, which takes them up
        # (see adopt_queued); started now, they would only be cancelled at the end of the grace period.
        left = self.engine.release_queued()
        if left:
            log.info("stopping: %d queued run(s) left for the next engine", len(left))
        active = self.engine.active_run_ids
        if active:
            log.info("stopping: waiting up to %ss for %d active run(s)", self.stop_grace_s, len(active))
        deadline = self.clock() + self.stop_grace_s
        while self.engine.active_run_ids and self.clock() < deadline:
            store.heartbeat(*self.identity, self.mode, self.clock())
            self.engine.step(timeout_s=0.1, consume_commands=False)
        for run_id in self.engine.active_run_ids:
            if self.engine.only_waits_for_retries(run_id):
                # A deploy's restart must not throw automatic retries away: the next engine runs them.
                log.info("stopping: run %s only waits for step retries; left for the next engine", run_id)
                self.engine.leave(run_id)
            else:
                self.engine.cancel(run_id, "engine stopping")
        while self.engine.active_run_ids:
            self.engine.step(timeout_s=0.1, consume_commands=False)

    # --- work ----------------------------------------------------------------------------------------------

    def _on_due(self, due: Due) -> None:
        """A schedule fired (scheduler's thread): hand it over and wake the engine, which may be waiting."""
        self._due.put(due)
        if self.engine is not None:
            self.engine.wake()

    def recover(self) -> None:
        """Close runs left running by an engine that is gone (pid + start time, safe against pid reuse)."""
        assert self.engine is not None
        for run_id, job, cut in close_runs_of_stopped_engines(self.identity, self.clock):
            log.warning("run %s of %s was left running by a stopped engine; closed (steps cut short: %s)",
                        run_id, job, ", ".join(cut) or "none")
            retryable = self._with_retries_left(run_id, cut)
            if retryable:
                try:
                    again = self.engine.retry(run_id, new_budget=False, steps=retryable)
                except SteplineError as error:  # its job file is gone, say: the run stays failed
                    log.warning("run %s: not retried: %s", run_id, error)
                    continue
                log.info("run %s: retrying %s, as their retry policy allows", run_id, ", ".join(again))

    def _with_retries_left(self, run_id: int, steps: list[str]) -> list[str]:
        """Those of `steps` with attempts left under their own retries= policy (a step without retries is
        not run again because another step of its run may be: it may load data, or send mail)."""
        run = query.get_run(run_id)
        return [name for name in steps if run.step(name).attempts <= run.plan.step(name).retries]

    def _reload_changed_jobs(self) -> None:
        """Reload the job files after a change, on a thread of its own: a file whose import hangs must not
        hold the engine's turns (step timeouts, cancels, schedules) for the import timeout. The result is
        applied on the engine's thread at a later turn."""
        loading = self._loading
        if loading is not None:
            if loading.is_alive():
                return
            self._loading = None
            if self._loaded is not None:
                fresh, self._loaded = self._loaded, None
                self.apply_jobs(fresh)
                jobs, problems = len(self.jobs.jobs), len(self.jobs.problems)
                log.info("job files reloaded: %d job%s, %d problem%s", jobs, "" if jobs == 1 else "s", problems,
                         "" if problems == 1 else "s")
        if self._jobs_changed.is_set():
            self._jobs_changed.clear()

            def load() -> None:
                try:
                    self._loaded = self._load()
                except Exception:  # never expected: say so, and keep the jobs loaded before
                    log.exception("reloading the job files failed")

            self._loading = threading.Thread(target=load, name="stepline-reload", daemon=True)
            self._loading.start()

    def _load(self) -> LoadResult:
        # A new file defining a job this engine runs does not take the job over: the job stays its file's.
        keep = {name: os.path.abspath(job_def.file) for name, job_def in self.jobs.jobs.items()}
        return load_jobs(self.jobs_dir, output=str(self.home.engine_log), keep=keep)  # not onto a console's screen

    def reload_jobs(self) -> LoadResult:
        """Load the job files now and apply them (see apply_jobs)."""
        return self.apply_jobs(self._load())

    def apply_jobs(self, fresh: LoadResult) -> LoadResult:
        """Use freshly loaded jobs; jobs of a file that is now broken keep their last good definition."""
        assert self.engine is not None
        broken = {os.path.abspath(p.file) for p in fresh.problems}
        jobs = dict(fresh.jobs)
        for name, job_def in self.jobs.jobs.items():
            if name not in jobs and os.path.abspath(job_def.file) in broken:
                jobs[name] = job_def
        self.jobs = LoadResult(jobs=jobs, problems=fresh.problems, files=fresh.files)
        self._cancel_queued_runs_of_gone_jobs()
        self.engine.keep_code(self._keep_good_sources(jobs, broken))
        self.scheduler.sync(self.jobs.jobs)
        plans = [(plan_job(j), j.description) for j in self.jobs.jobs.values()]
        store.publish_catalog(plans, [(p.file, p.line, p.message) for p in self.jobs.problems], self.clock())
        for problem in self.jobs.problems:
            log.warning("%s", problem)
        return self.jobs

    def _cancel_queued_runs_of_gone_jobs(self) -> None:
        """A queued run of a job that no file defines any more (renamed or removed) would fail each step on
        "no longer defined" when its turn came, and alert as a failure: it ends now, cancelled, saying why."""
        assert self.engine is not None
        for run_id, job in self.engine.queued_runs():
            if job not in self.jobs.jobs:
                reason = (f"job '{job}' is no longer defined in the job files (renamed or removed?) and this run "
                          "had not started; start a run of the job it became")
                log.info("run %s of %s: %s", run_id, job, reason)
                self.engine.cancel(run_id, reason)

    def _keep_good_sources(self, jobs: dict, broken: set[str]) -> dict[str, str]:
        """Copy every good job file aside; return the copies standing in for files now broken."""
        import hashlib

        folder = self.home.root / "code"
        kept = {}
        for path in {os.path.abspath(j.file) for j in jobs.values()}:
            if path in broken:
                if path in self._good_sources:
                    kept[path] = self._good_sources[path]
                continue
            try:
                source = Path(path).read_bytes()
            except OSError:
                continue
            copy = folder / f"{Path(path).stem}-{hashlib.blake2s(source, digest_size=6).hexdigest()}.py"
            if not copy.exists():
                folder.mkdir(exist_ok=True)
                copy.write_bytes(source)
            self._good_sources[path] = str(copy)
        return kept

    def _start_due_runs(self) -> None:
        """Turn schedule fires into runs, honouring each job's max_active_runs and overlap policy."""
        assert self.engine is not None
        while True:
            try:
                due = self._due.get_nowait()
            except queue.Empty:
                return
            job_def = self.jobs.jobs.get(due.job)
            if job_def is None:
                continue
            active = self.engine.active_runs_of(due.job)
            if job_def.overlap == "skip" and active >= job_def.max_active_runs:
                message = (f"{due.job}: fire for {time.strftime('%H:%M:%S', time.localtime(due.scheduled_for))} "
                           f"skipped, {active} run(s) still active (overlap='skip')")
                log.info("%s", message)
                store.record_schedule_event("skipped", message, self.clock())
            else:
                run_id = self.engine.enqueue(job_def, {}, trigger="schedule", scheduled_for=due.scheduled_for,
                                             max_active_runs=job_def.max_active_runs)
                log.info("run %s of %s %s for %s", run_id, due.job, "catches up" if due.catch_up else "scheduled",
                         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(due.scheduled_for)))
            self.scheduler.fired(due.job, due.scheduled_for)

    def consume_commands(self) -> None:
        assert self.engine is not None
        for command in store.pending_commands(kinds=COMMAND_KINDS):
            kind = command["kind"]
            if kind == "cancel" and not self._owns_or_orphan(command["run_id"]):
                continue  # another live engine (a `stepline run`) executes it and will take this command
            run_id = command["run_id"]
            # What the command does and its answer commit together: an engine killed in between leaves
            # neither (the command stays pending for the next engine), never a run nobody was told of.
            with store.batch():
                if not store.take_command(command["id"]):
                    continue  # its sender gave up on it meanwhile
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
            if query.run_summary(run_id).state not in ("running", "queued"):
                return True  # ended: any engine may answer that there is nothing left to cancel
            pid, started = query.run_owner(run_id)
        except SteplineError:
            return True
        return not is_alive(pid, started)

    def _execute(self, command: dict) -> tuple[str, int | None]:
        """Carry out one command; returns its result line and the run it concerns."""
        from engine.errors import NotApplicableError, UnknownJobError, unscheduled

        assert self.engine is not None
        kind, run_id, job = command["kind"], command["run_id"], command["job"]
        if kind == "trigger":
            job_def = self.jobs.jobs.get(job)
            if job_def is None:
                raise UnknownJobError(f"no job '{job}' is loaded; `stepline check` shows problems in job files")
            params = command["payload"].get("params") or {}
            unknown = job_def.unknown_param(params)
            if unknown is not None:  # the console's prompt, or any other writer of commands
                raise NotApplicableError(unknown[1])
            # A manual run counts against max_active_runs as a scheduled one does: past it, it waits its turn.
            active = self.engine.active_runs_of(job)
            new_id = self.engine.enqueue(job_def, params,
                                         trigger=command["payload"].get("trigger", "manual"),
                                         max_active_runs=job_def.max_active_runs)
            if active >= job_def.max_active_runs:
                return f"run {new_id} of {job} queued: {_waiting(active, 'it', job_def.max_active_runs)}", new_id
            return f"run {new_id} of {job} started", new_id
        if kind == "retry":
            if run_id not in self.engine.active_run_ids:  # its own queued runs have no engine recorded yet
                close_if_abandoned(run_id, clock=self.clock)
            job_name = store.Run.select(store.Run.job).where(store.Run.id == run_id).scalar()
            job_def = self.jobs.jobs.get(job_name) if job_name else None
            limit = job_def.max_active_runs if job_def is not None else None
            active = self.engine.active_runs_of(job_name) if job_name else 0
            again = self.engine.retry(run_id, command["step"], max_active_runs=limit)
            if self.engine.is_queued(run_id):
                waiting = _waiting(active, job_name, limit)
                return f"retry of {', '.join(again)} in run {run_id} queued: {waiting}", run_id
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
                raise UnknownJobError(f"no job '{job}' is loaded by the engine (pid {os.getpid()}); `stepline jobs` "
                                      "lists the jobs")
            job_def = self.jobs.jobs[job]
            if job_def.schedule is None and job_def.every is None:
                raise NotApplicableError(unscheduled(job, kind))
            if kind == "pause":
                self.scheduler.pause(job)
            else:
                self.scheduler.resume(job)
            log.info("schedule of %s %s", job, "paused" if kind == "pause" else "resumed")  # who stopped the fires?
            return f"{job} {'paused' if kind == 'pause' else 'resumed'}", None
        raise NotApplicableError(f"unknown command '{kind}'")


def _waiting(active: int, job: str | None, max_active_runs: int | None) -> str:
    """Why a run (or a retry) waits its turn: "1 run of it active, max_active_runs=1"."""
    return f"{active} run{'s' if active != 1 else ''} of {job} active, max_active_runs={max_active_runs}"
