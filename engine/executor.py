"""Run step attempts as supervised OS processes.

Keeps one preloaded worker per job file (see worker.py) that forks each Python attempt
into its own session and process group (a Python attempt's request goes straight
to a process the worker forked ahead of need, when one is ready); starts shell attempts'
bash itself; pumps the attempt's output into its log
file (logpump.py), and kills whole process trees on cancel or timeout. A watchdog process
(watchdog.py) ends the attempts of an engine that dies without ending them. Knows
nothing of DAGs, retries or the database: the runner asks, and the executor
answers with events (Started, Result, Exited, LogClosed) through the `notify` callback.

A Python attempt sends its Result before its process exits; when an attempt has a
Result, it is always reported before the attempt's Exited.
"""
from __future__ import annotations

import collections
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from engine.jobfile import engine_path
from engine.logpump import LogPump
from engine.worker import (BIND_NOW_MARK, boot_ticks, decode, encode, env_key, input_variables, receive,
                           send_with_fds, start_ticks)

KILL_GRACE_S = 5.0
SPARES = 2
INHERITED_PEAK_MARGIN_KB = 8 * 1024
"""A shell step's peak memory counts only when above the engine's own mark by this much (see _reap_shell)."""
"""Processes each worker keeps forked ahead of need: one per slot of a 2-CPU machine's default parallelism."""
SPARE_IDLE_S = 60.0
"""Spares unused this long are let go (a daemon between runs holds no idle processes)."""
ENGINE_VARIABLE = "STEPLINE_ENGINE"
"""Set in every attempt's environment to its engine's token: the watchdog ends the processes that carry
its engine's when that engine dies (see watchdog.py)."""
WATCHDOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.py")
WATCHDOG_WAIT = 'read -r said; [ "$said" = closed ] && exit 0; exec "$1" "$2" "$3" "$4"'
"""The watchdog's wait, in sh: it costs an engine a millisecond, where an interpreter waiting would cost tens.
The engine says "closed" when it closes in order; an end of file without it starts watchdog.py."""


def _pidfd_works() -> bool:
    """Whether this system tells a process's end through a file descriptor (Linux 5.3 and later)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except (AttributeError, OSError):
        return False


_HAS_PIDFD = _pidfd_works()
"""Without it, shell attempts start in the worker, which waits for its children itself."""


@dataclass(frozen=True, slots=True)
class AttemptRequest:
    key: int
    """Caller's id for this attempt, echoed in every event."""
    job_file: str
    job: str
    step: str
    kind: str
    """"python" or "shell"."""
    command: str | None
    inputs: dict[str, str | bytes]
    """Upstream step name -> its output's pickle (small ones), or the path of its file."""
    params: dict[str, str]
    context: dict[str, Any]
    """Fields of engine.context.StepContext."""
    env: dict[str, str]
    """The step's own env= additions."""
    cwd: str
    log_path: str
    output_path: str
    result_path: str
    """Unused: a Python attempt's result comes over a pipe (the Result event)."""
    shell_output_path: str


@dataclass(frozen=True, slots=True)
class Started:
    key: int
    pid: int
    pid_started: float | None
    at: float


@dataclass(frozen=True, slots=True)
class Exited:
    key: int
    exit_code: int | None
    signal: int | None
    cpu_s: float | None
    peak_rss_bytes: int | None
    at: float
    lost: str | None = None
    """Set when the process could not be started or its worker died: the reason."""
    lost_detail: str = ""


@dataclass(frozen=True, slots=True)
class LogClosed:
    key: int
    at: float
    cut: str | None = None
    """Why the log file lacks the end of the output (a full disk), when it does."""


@dataclass(frozen=True, slots=True)
class Result:
    """What a Python attempt reported before exiting: {"ok": True, "preview", "has_output"} or
    {"ok": False, "summary", "detail"}. Its output is closed by then; its exit status follows."""
    key: int
    result: dict[str, Any]
    at: float


ExecutorEvent = Started | Result | Exited | LogClosed


_environ_cache: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def _current_environ() -> dict[str, str]:
    """os.environ as a dict (do not modify), decoded again only when the environment has changed.

    Copying os.environ decodes every variable in Python (~35 µs); comparing its raw mapping with the
    last one seen is a C-level dict comparison (~1 µs).
    """
    global _environ_cache
    raw = getattr(os.environ, "_data", None)
    cache = _environ_cache
    if not isinstance(raw, dict):
        return dict(os.environ)
    if cache is None or cache[0] != raw:
        cache = _environ_cache = (dict(raw), dict(os.environ))
    return cache[1]


def attempt_environment(request: AttemptRequest, base: dict[str, str] | None = None,
                        engine: str = "") -> dict[str, str]:
    """The attempt's environment: `base` (the engine's), the attempt's STEPLINE_* variables, its params and
    the step's env=; `engine`: the engine's token (ENGINE_VARIABLE)."""
    env = dict(_current_environ() if base is None else base)
    context = request.context
    env.update(attempt_cookie(context["home"], context["run_id"], request.step, context["attempt"]))
    env.update({"STEPLINE_JOB": request.job, "PYTHONUNBUFFERED": "1", ENGINE_VARIABLE: engine})
    for key, value in request.params.items():
        env[f"STEPLINE_PARAM_{env_key(key)}"] = value
    if request.kind == "shell":
        env["STEPLINE_OUTPUT"] = request.shell_output_path
    env.update(request.env)
    return env


def environment_changes(env: dict[str, str], base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """What turns `base` into `env`: variables to set and variables to remove."""
    changed = {key: value for key, value in env.items() if base.get(key) != value}
    return changed, [key for key in base if key not in env]


def worker_start_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment the worker starts with: its own (`environ`), and the dynamic linker told to bind
    every symbol at start-up unless the user chose otherwise.

    Lazy binding writes each function's address into the process the first time it is called. In the
    worker, what its attempts call first would be bound in every forked attempt again, each write a
    copy-on-write page copy (about 16 per attempt). The worker removes the variable again at once
    (worker.BIND_NOW_MARK), so steps and the programs they run start as they would anywhere.
    """
    if "LD_BIND_NOW" in environ:
        return environ
    return {**environ, "LD_BIND_NOW": BIND_NOW_MARK}


class Worker:
    """One `python -m engine.worker` process for one job file."""

    def __init__(self, job_file: str, executor: Executor, source_file: str | None = None,
                 spare_count: int = SPARES, spare_idle_s: float = SPARE_IDLE_S, output: str | None = None) -> None:
        self.job_file = job_file
        self.source_file = source_file
        """A copy of the job file's last good version to import instead of the file, or None."""
        self._executor = executor
        self.broken: tuple[str, str] | None = None
        self.keys: set[int] = set()
        self.spares: collections.deque[tuple[int, socket.socket, float | None]] = collections.deque()
        """(pid, request socket, start time) of the processes forked ahead of need, oldest first."""
        engine_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = engine_end
        self._send_lock = threading.Lock()
        self.environ = {**_current_environ(), "PYTHONPATH": engine_path()}
        """The worker's own environment: each attempt request carries only its differences from it."""
        self._changes_from: tuple[dict[str, str], tuple[dict[str, str], list[str]]] | None = None
        # What the job file prints or warns while the worker imports it (attempts have their own logs) goes
        # to `output`: under the console, the terminal is the console's, and such lines would tear its screen.
        sink = open(output, "ab") if output else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "engine.worker", str(worker_end.fileno()), str(spare_count),
                 str(spare_idle_s), job_file] + ([source_file] if source_file else []),
                pass_fds=[worker_end.fileno()], stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                cwd=os.path.dirname(job_file) or None, env=worker_start_environment(self.environ),
                # Its own session: a terminal's Ctrl-C or hang-up reaches the engine, which decides; the
                # worker goes when the engine closes its socket.
                start_new_session=True)
        finally:
            if sink is not None:
                sink.close()
        worker_end.close()
        # The pump's thread reads the worker's messages, beside the attempts' pipes: an attempt's exit,
        # its result and the end of its log then come in one wake-up instead of three threads' turns.
        executor._logs.watch(engine_end.fileno(), self._on_readable, self._on_end)

    def start(self, request: AttemptRequest, write_fd: int, result_fd: int | None) -> None:
        """Ask the worker to start the attempt; it answers "started" with the pid."""
        message = self._message(request)
        # One lock orders this against the reader thread marking the worker broken or gone: an attempt
        # either reaches a live worker or fails with the worker's own reason, never with a race's.
        with self._send_lock:
            if self.broken:
                raise _CannotStart(*self.broken)
            self.keys.add(request.key)
            try:
                fds = [write_fd] if result_fd is None else [write_fd, result_fd]
                send_with_fds(self._sock, message, fds)
            except OSError:
                self.keys.discard(request.key)
                if self.broken:
                    raise _CannotStart(*self.broken) from None
                raise

    def start_on_spare(self, request: AttemptRequest, write_fd: int, result_fd: int, lock: threading.Lock,
                       started: Callable[[int, float | None], None]) -> bool:
        """Hand a Python attempt straight to a spare process; False when none is ready.

        The send and `started(pid, pid_started)` happen together under `lock`, which the executor also
        holds to map an exited pid to its attempt: an attempt's Started always comes before its Exited.
        """
        message = b""
        with self._send_lock:
            while not self.broken:
                try:
                    pid, spare_sock, pid_started = self.spares.popleft()
                except IndexError:  # none ready, or the pump's thread let them go just now
                    break
                message = message or self._message(request)
                try:
                    with lock:
                        send_with_fds(spare_sock, message, [write_fd, result_fd])
                        self.keys.add(request.key)
                        started(pid, pid_started)
                    return True
                except OSError:
                    continue  # that spare died: the next one, or the worker
                finally:
                    spare_sock.close()
        return False

    # add_spare and drop_spares run on the pump's thread and take no lock: the engine's thread may hold
    # _send_lock while its send waits for room in the worker's queue, and the worker makes room only
    # once the pump's thread has read what it sent. The deque's append and popleft are atomic.

    def add_spare(self, pid: int, spare_sock: socket.socket, start_ticks: int | None) -> None:
        pid_started = process_start_time(pid, start_ticks)
        if self.broken:
            spare_sock.close()
        else:
            self.spares.append((pid, spare_sock, pid_started))

    def drop_spares(self) -> None:
        """Let go of the spares: each sees its socket close and exits without running anything."""
        while True:
            try:
                _, spare_sock, _ = self.spares.popleft()
            except IndexError:
                return
            spare_sock.close()

    def _message(self, request: AttemptRequest) -> bytes:
        env_set, env_unset = self._environment_changes(request)
        return encode({"op": "start", "id": request.key, "job": request.job, "step": request.step,
                       "kind": request.kind, "command": request.command, "inputs": request.inputs,
                       "params": request.params, "context": request.context,
                       "env_set": env_set, "env_unset": env_unset, "cwd": request.cwd,
                       "output_path": request.output_path})

    def _environment_changes(self, request: AttemptRequest) -> tuple[dict[str, str], list[str]]:
        """The attempt's environment as changes to the worker's: a few variables instead of all of them.

        The engine's own environment rarely changes, so its difference from the worker's is kept
        until it does; the attempt's STEPLINE_* variables, params and env= are added on top.
        """
        environ = _current_environ()
        if self._changes_from is None or self._changes_from[0] is not environ:
            self._changes_from = (environ, environment_changes(environ, self.environ))
        changed, removed = self._changes_from[1]
        env = attempt_environment(request, base={}, engine=self._executor.token)
        env_set = {**changed, **{k: v for k, v in env.items() if self.environ.get(k) != v}}
        return env_set, [k for k in removed if k not in env_set]

    def take_keys(self, broken: tuple[str, str] | None = None) -> list[int]:
        """Mark the worker broken (when given) and hand over the attempts it still owed an answer."""
        with self._send_lock:
            if broken is not None:
                self.broken = broken
            keys = list(self.keys)
            self.keys.clear()
        return keys

    def stop(self) -> None:
        self.drop_spares()
        try:
            with self._send_lock:
                self._sock.send(encode({"op": "stop"}))
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        # The socket itself is closed by the pump's thread, at its end of stream (see _on_end).

    def _on_readable(self) -> bool:
        """One message from the worker, on the pump's thread; False when the worker is gone."""
        try:
            data, fds = receive(self._sock)
        except OSError:
            data, fds = b"", []
        if not data:
            return False
        message = decode(data)
        if message["op"] == "spare" and fds:
            self.add_spare(message["pid"], socket.socket(fileno=fds[0]), message.get("start_ticks"))
        elif message["op"] == "idle":
            self.drop_spares()
        else:
            self._executor._on_worker_message(self, message)
        return True

    def _on_end(self) -> None:
        with self._send_lock:  # never while start() sends on it
            self._sock.close()
        self.drop_spares()
        self._executor._on_worker_gone(self)


class Executor:
    """Starts, watches and kills attempts; reports through `notify` from the pump's thread (and, for a
    kill or a worker's death, a short-lived one)."""

    def __init__(self, notify: Callable[[ExecutorEvent], None], clock: Callable[[], float] = time.time,
                 kill_grace_s: float = KILL_GRACE_S, spares: int = SPARES,
                 spare_idle_s: float = SPARE_IDLE_S, worker_output: str | None = None) -> None:
        self._notify = notify
        self._worker_output = worker_output
        self._clock = clock
        self.kill_grace_s = kill_grace_s
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self._spares = spares
        self._spare_idle_s = spare_idle_s
        self._pids: dict[int, int] = {}  # key -> pid
        self._keys_by_pid: dict[int, int] = {}  # pid -> key: the worker reports a spare's exit by pid only
        self._kill_pending: dict[int, float] = {}  # key -> grace, for kills asked before the pid is known
        self._cookies: dict[int, dict[str, str]] = {}  # key -> the attempt's variables (see attempt_cookie)
        self._read_fds: dict[int, int] = {}  # key -> pipe read end
        self._logs = LogPump(self._on_log_closed, clock, self._on_result)
        self._kept: dict[str, str] = {}
        self._retired: list[Worker] = []
        self.token = secrets.token_hex(8)
        """This engine's value of ENGINE_VARIABLE in its attempts' environments."""
        self._watchdog_fd: int | None = None  # our end of the watchdog's pipe; it acts when this closes
        self._shells: dict[int, subprocess.Popen[bytes]] = {}  # key -> bash started here, until reaped
        self._devnull: int | None = None
        self._output_folders: set[str] = set()

    def start(self, request: AttemptRequest) -> None:
        """Start an attempt: its output and result are watched from now on, on the pump's thread."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        # A shell step without inputs reports through its exit status only: no result pipe to watch.
        result_read, result_write = (os.pipe2(os.O_CLOEXEC) if request.kind == "python" or request.inputs
                                     else (None, None))
        self._read_fds[request.key] = read_fd
        self._cookies[request.key] = attempt_cookie(request.context["home"], request.context["run_id"],
                                                    request.step, request.context["attempt"])
        # Both pipes are watched before the worker can answer (see _exited); the pump's thread creates
        # the log file while the worker forks, and the pipe holds what the attempt writes meanwhile.
        self._logs.add(read_fd, request.log_path, request.key, result_read)
        self._start_watchdog()
        lost: Exited | None = None
        message = b""
        try:
            if request.cwd != os.path.dirname(request.job_file) and not os.path.isdir(request.cwd):
                # Said here, with the step's own words: the process would only fail with a traceback of ours.
                raise _CannotStart(f"the step's working directory {request.cwd} does not exist; create it, or "
                                   "fix the step's cwd= (relative paths start at the job file's folder)", "")
            if not (request.kind == "shell" and self._start_shell(request, write_fd)):
                worker = self._worker_for(request.job_file)
                if result_write is None or request.kind != "python" or not worker.start_on_spare(
                        request, write_fd, result_write, self._lock,
                        lambda pid, pid_started: self._started(request.key, pid, pid_started)):
                    worker.start(request, write_fd, result_write)
        except _CannotStart as broken:
            message = (broken.summary + "\n" + broken.detail).encode()
            lost = Exited(request.key, None, None, None, None, self._clock(), lost=broken.summary,
                          lost_detail=broken.detail)
        except OSError as error:
            lost = Exited(request.key, None, None, None, None, self._clock(),
                          lost=f"could not start the step process: {error}")
        finally:
            if result_write is not None:
                os.close(result_write)
        try:
            if message:
                os.write(write_fd, message)
        finally:
            os.close(write_fd)
        if lost is not None:
            self._exited(lost)

    def _start_shell(self, request: AttemptRequest, write_fd: int) -> bool:
        """Start a shell attempt's bash from the engine itself; False leaves the attempt to its worker.

        A shell step needs nothing its job file's worker imported, so the engine spares it the hop there
        and back (a message each way, a wake-up of the worker for each), and a job file of shell steps
        needs no worker at all. subprocess starts bash with vfork + exec, so the engine's memory is not
        copied. The worker still starts a shell step whose upstream outputs are more than plain data
        (only a process that imported the job file may unpickle its classes), and any the engine cannot
        start: its fork path says why in the attempt's log.
        """
        if not _HAS_PIDFD:
            return False
        try:
            env = attempt_environment(request, engine=self.token)
            env.update(input_variables(request.inputs, plain_only=True))
        except Exception:  # not plain data, too large, unreadable: the worker's fork path says why
            return False
        folder = os.path.dirname(request.shell_output_path)
        if folder not in self._output_folders:  # bash writes $STEPLINE_OUTPUT itself
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError:
                return False
            if len(self._output_folders) > 1000:  # a daemon's: one per run
                self._output_folders.clear()
            self._output_folders.add(folder)
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        before = boot_ticks()
        # A process started with vfork + exec inherits the engine's own high-water mark of memory (Linux takes
        # the old address space's, which vfork shares): the step's peak is known only if it went higher.
        engine_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            process = subprocess.Popen(["/bin/bash", "-c", request.command or ""], env=env, cwd=request.cwd,
                                       stdin=self._devnull, stdout=write_fd, stderr=write_fd,
                                       start_new_session=True)
        except (OSError, ValueError, subprocess.SubprocessError):
            return False
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError:  # out of file descriptors: the attempt fails, saying so, and leaves nothing running
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            raise
        key = request.key
        self._shells[key] = process
        with self._lock:
            self._started(key, process.pid, process_start_time(process.pid, start_ticks(before)))
        self._logs.watch(pidfd, lambda: self._reap_shell(key, process, engine_peak_kb), lambda: os.close(pidfd))
        return True

    def _reap_shell(self, key: int, process: subprocess.Popen[bytes], engine_peak_kb: int) -> bool:
        """On the pump's thread, when a shell attempt's pidfd says it ended: report its exit; False then."""
        try:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        except ChildProcessError:  # nothing here reaps it but this; yet never leave its attempt hanging
            pid, status, usage = process.pid, None, None
        if pid == 0:
            return True
        code = os.waitstatus_to_exitcode(status) if status is not None else None
        process.returncode = code  # reaped: subprocess must not try again
        self._shells.pop(key, None)
        # Above the engine's own mark by a margin: Linux counts each thread's pages in batches, so the mark the
        # engine read a moment before the vfork can trail the one the step inherited by a few megabytes.
        peak = (usage.ru_maxrss * 1024 if usage and usage.ru_maxrss > engine_peak_kb + INHERITED_PEAK_MARGIN_KB
                else None)
        self._exited(Exited(key, code if code is not None and code >= 0 else None,
                            -code if code is not None and code < 0 else None,
                            usage.ru_utime + usage.ru_stime if usage else None, peak, self._clock()))
        return False

    def _start_watchdog(self) -> None:
        """Once, with the first attempt: the process that ends this engine's attempts if it dies (watchdog.py)."""
        if self._watchdog_fd is not None:
            return
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        self._watchdog_fd = write_fd
        try:
            subprocess.Popen(["/bin/sh", "-c", WATCHDOG_WAIT, "stepline-watchdog", sys.executable, WATCHDOG,
                              self.token, str(self.kill_grace_s)],
                             stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        except OSError:
            pass  # attempts run without it; the next engine to start ends what a dead one left
        finally:
            os.close(read_fd)

    def _end_shells(self) -> None:
        """Closing with shell attempts running: end them as a worker ends its attempts when it stops."""
        if not self._shells:
            return
        for process in list(self._shells.values()):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace_s
        while self._shells and time.monotonic() < deadline:
            time.sleep(0.02)  # the pump's thread reaps them
        for process in list(self._shells.values()):
            _signal_group(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while self._shells and time.monotonic() < deadline:
            time.sleep(0.02)

    def _started(self, key: int, pid: int, pid_started: float | None) -> None:
        """The attempt's process exists: report Started, and end it at once if a kill is pending.

        Called with self._lock held (kill() and the exit of a spare's attempt look the pid up under it).
        """
        self._pids[key] = pid
        self._keys_by_pid[pid] = key
        grace = self._kill_pending.pop(key, None)
        self._notify(Started(key, pid, pid_started, self._clock()))
        if grace is not None:
            threading.Thread(target=kill_tree, args=(pid, grace, self._cookies.get(key)), daemon=True).start()

    def kill(self, key: int, grace_s: float | None = None) -> None:
        """Terminate the attempt's whole process tree: SIGTERM, then SIGKILL after the grace period."""
        grace = self.kill_grace_s if grace_s is None else grace_s
        with self._lock:
            pid = self._pids.get(key)
            if pid is None:
                self._kill_pending[key] = grace
                return
        threading.Thread(target=kill_tree, args=(pid, grace, self._cookies.get(key)), daemon=True,
                         name="stepline-kill").start()

    def reap_leftovers(self, key: int) -> None:
        """The attempt's main process has exited but something still holds its output open: end it."""
        with self._lock:
            pid = self._pids.get(key)
        if pid is not None:
            kill_tree(pid, 0.5, self._cookies.get(key))
        fd = self._read_fds.get(key)
        if fd is not None:
            self._logs.force_close(fd)

    def forget(self, key: int) -> None:
        with self._lock:
            pid = self._pids.pop(key, None)
            if pid is not None:
                self._keys_by_pid.pop(pid, None)
            self._kill_pending.pop(key, None)
        self._read_fds.pop(key, None)
        self._cookies.pop(key, None)

    def pid_of(self, key: int) -> int | None:
        with self._lock:
            return self._pids.get(key)

    def _retire(self, worker: Worker) -> None:
        """A worker with old code finishes its running attempts, then stops."""
        worker.drop_spares()
        if worker.keys and worker.process.poll() is None:
            self._retired.append(worker)
        else:
            worker.stop()

    def close(self) -> None:
        for worker in list(self._workers.values()) + self._retired:
            worker.stop()
        self._retired.clear()
        self._workers.clear()
        self._end_shells()
        self._logs.stop()
        if self._watchdog_fd is not None:
            try:
                os.write(self._watchdog_fd, b"closed\n")  # its attempts are ended: the watchdog just exits
            except OSError:
                pass  # it is gone already
        for fd in (self._watchdog_fd, self._devnull):
            if fd is not None:
                os.close(fd)
        self._watchdog_fd = self._devnull = None

    def release_output_folder(self, folder: str) -> None:
        """A run ended: its output folder goes if no step wrote an output there (a shell step's folder is
        made before it starts, in case it writes $STEPLINE_OUTPUT), so a home does not fill up with empty
        folders, one per run. A retry makes it again."""
        self._output_folders.discard(folder)
        try:
            os.rmdir(folder)
        except OSError:
            pass  # holds outputs, or was never made

    def keep_code(self, sources: dict[str, str]) -> None:
        """Job file -> copy of its last good version: attempts of these (broken) files run the copy."""
        self._kept = dict(sources)

    def _worker_for(self, job_file: str) -> Worker:
        worker = self._workers.get(job_file)
        source = self._kept.get(job_file)
        stale = worker is not None and (worker.source_file != source
                                        or (source is None and _changed_since(job_file, worker)))
        if worker is None or worker.process.poll() is not None or stale:
            if worker is not None:
                self._retire(worker)
            worker = Worker(job_file, self, source, self._spares, self._spare_idle_s, self._worker_output)
            worker.mtime = _mtime(job_file)  # type: ignore[attr-defined]
            self._workers[job_file] = worker
        return worker

    def _on_worker_message(self, worker: Worker, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "started":
            pid_started = process_start_time(message["pid"], message.get("start_ticks"))
            with self._lock:
                self._started(message["id"], message["pid"], pid_started)
        elif op == "exited":
            if message["id"] is None:  # an attempt started on a spare: the worker knows its pid only
                with self._lock:
                    key = self._keys_by_pid.pop(message["pid"], None)
                if key is None:
                    return
                message["id"] = key
            worker.keys.discard(message["id"])
            if worker in self._retired and not worker.keys:
                self._retired.remove(worker)
                threading.Thread(target=worker.stop, daemon=True, name="stepline-worker-stop").start()
            self._exited(Exited(message["id"], message["exit_code"], message["signal"], message["cpu_s"],
                                message["peak_rss_bytes"], self._clock()))
        elif op == "broken":
            for key in worker.take_keys((message["summary"], message["detail"])):
                self._exited(Exited(key, None, None, None, None, self._clock(), lost=message["summary"],
                                    lost_detail=message["detail"]))

    def _on_worker_gone(self, worker: Worker) -> None:
        summary, detail = worker.broken or ("the worker process running this step died", "")
        keys = worker.take_keys()
        if keys:  # their processes get a grace period to end: not on the pump's thread, which serves everyone
            threading.Thread(target=self._end_orphans, args=(keys, summary, detail), daemon=True,
                             name="stepline-worker-gone").start()

    def _end_orphans(self, keys: list[int], summary: str, detail: str) -> None:
        for key in keys:
            with self._lock:
                pid = self._pids.get(key)
            if pid is not None:
                kill_tree(pid, 1.0)
            self._exited(Exited(key, None, None, None, None, self._clock(), lost=summary, lost_detail=detail))
            fd = self._read_fds.get(key)
            if fd is not None:
                self._logs.force_close(fd)

    def _on_log_closed(self, key: int, cut: str | None) -> None:
        self._notify(LogClosed(key, self._clock(), cut))

    def _on_result(self, key: int, result: dict[str, Any]) -> None:
        self._notify(Result(key, result, self._clock()))

    def _exited(self, event: Exited) -> None:
        """Report an exit after the attempt's Result, if it sent one (its process is gone: it is in the pipe)."""
        self._logs.settle_result(event.key, lambda: self._notify(event))


class _CannotStart(Exception):
    """An attempt that cannot start (its worker's import failed, its working directory is missing), and why."""

    def __init__(self, summary: str, detail: str) -> None:
        super().__init__(summary)
        self.summary = summary
        self.detail = detail


def attempt_cookie(home: str, run_id: int, step: str, attempt: int) -> dict[str, str]:
    """The variables that name an attempt: set in its environment (attempt_environment), inherited by every
    process it starts, and looked for when its processes are ended (escaped_processes)."""
    return {"STEPLINE_HOME": home, "STEPLINE_RUN_ID": str(run_id), "STEPLINE_STEP": step,
            "STEPLINE_ATTEMPT": str(attempt)}


def escaped_processes(cookie: dict[str, str], known: set[int]) -> list[psutil.Process]:
    """Processes of this user, outside `known`, whose environment carries `cookie`: what an attempt started
    that left its tree and its process group (a daemon that forked twice and called setsid). Found the
    way Jenkins finds a build's leftovers, by the variables they inherited."""
    found = []
    uid = os.getuid()
    for process in psutil.process_iter(["uids"]):
        if process.pid in known or process.pid == os.getpid():
            continue
        try:
            uids = process.info["uids"]
            if uids is None or uids.real != uid:
                continue
            environment = process.environ()
        except psutil.Error:
            continue
        if all(environment.get(name) == value for name, value in cookie.items()):
            found.append(process)
    return found


def kill_tree(pid: int, grace_s: float, cookie: dict[str, str] | None = None) -> None:
    """SIGTERM the process, its descendants and its process group, and the processes that carry the
    attempt's `cookie` (attempt_cookie) after escaping both; SIGKILL what survives `grace_s`."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        children = []
    if cookie:
        children += escaped_processes(cookie, {pid, *(p.pid for p in children)})
    for process in children:
        _signal_process(process, signal.SIGTERM)
    _signal_group(pid, signal.SIGTERM)
    try:
        leader = [psutil.Process(pid)]
    except psutil.Error:
        leader = []
    alive = _wait_ended(leader + children, grace_s)
    # The whole group first, in one signal: a leader that saw its children die one by one could end
    # as if it had finished. It also reaches a double-forked grandchild, which left our process tree
    # but not our group; then whatever left the group too.
    _signal_group(pid, signal.SIGKILL)
    for process in alive:
        _signal_process(process, signal.SIGKILL)


def end_escaped(cookie: dict[str, str], grace_s: float) -> None:
    """SIGTERM the processes that carry an attempt's `cookie` (its main process is gone); SIGKILL what
    survives `grace_s`."""
    processes = escaped_processes(cookie, set())
    for process in processes:
        _signal_process(process, signal.SIGTERM)
    alive = _wait_ended(processes, grace_s)
    for process in alive:
        _signal_process(process, signal.SIGKILL)


def _wait_ended(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still alive after waiting up to `timeout_s` for them to end.

    Unlike psutil.wait_procs, this never reaps a process: a shell attempt is the engine's own child, and
    its exit status and resource use are read where it is reaped (Executor._reap_shell). A zombie counts
    as ended.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        processes = [process for process in processes if _is_alive(process)]
        left = deadline - time.monotonic()
        if not processes or left <= 0:
            return processes
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_start_time(pid: int, start_ticks: int | None = None) -> float | None:
    """The process's start time as psutil tells it (what recovery compares against), or None if it is gone.

    `start_ticks`: its start in clock ticks since boot, when the worker that made it knows (see
    worker.start_ticks); then nothing is read from /proc.

    Computed here with psutil's own formula on Linux: psutil reads the boot time from /proc/stat on
    every call, a file the kernel builds with a line per CPU and per interrupt, which made up a fifth
    of the I/O thread's time per step. The boot time is read once a second instead.
    """
    if start_ticks is not None:
        return start_ticks / _CLOCK_TICKS + _boot_time()
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return float(fields[19]) / _CLOCK_TICKS + _boot_time()
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):  # not Linux's /proc: ask psutil
        try:
            return psutil.Process(pid).create_time()
        except psutil.Error:
            return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_boot: list[float] = [0.0, -1.0]  # boot time, and the monotonic time it was read


def _boot_time() -> float:
    now = time.monotonic()
    if now - _boot[1] >= 1.0:
        _boot[:] = [psutil.boot_time(), now]
    return _boot[0]


def _signal_process(process: psutil.Process, number: int) -> None:
    try:
        process.send_signal(number)
    except psutil.Error:
        pass


def _signal_group(pgid: int, number: int) -> None:
    try:
        os.killpg(pgid, number)
    except (ProcessLookupError, PermissionError):
        pass


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _changed_since(job_file: str, worker: Worker) -> bool:
    """A new attempt gets the job file's current code: restart the worker when the file changed."""
    return _mtime(job_file) != getattr(worker, "mtime", 0.0)
