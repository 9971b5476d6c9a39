"""The preloaded worker: imports one job file once, then forks a process per attempt.

The executor starts one worker per job file (`python -m engine.worker FD SPARES IDLE FILE`)
and talks to it over a SOCK_SEQPACKET socket: dicts encoded with marshal (both ends
run the same interpreter), with the attempt's log pipe passed as a file descriptor.

Forking a process that has already paid the interpreter start-up and the job
module's imports makes a Python attempt cost about a fork, and the forks are made
ahead of need: after its first Python attempt the worker keeps SPARES processes
forked and set up, and hands each one's socket to the engine, which sends a Python
attempt's request straight to a spare (no hop through the worker). A spare tells
the worker when it is taken, over a pipe, and the worker forks its replacement;
spares unused for IDLE seconds are let go. The engine starts shell attempts itself;
the worker forks and execs bash for those it leaves here (upstream outputs of the
job's own classes, which only an attempt may unpickle). Every attempt
is a child of this process, so its exit status comes with CPU time and peak RSS
(wait4). The worker is single-threaded, which keeps fork safe.

If the engine goes away (the socket closes) the worker terminates every attempt
it started, so no step outlives its supervisor unseen.
"""
from __future__ import annotations

import gc
import io
import json
import marshal
import os
import pickle
import select
import signal
import _signal  # signal.signal without the enum wrapping: a fork's first calls to it cost ~0.3 ms
import socket
import _socket
import sys
import time
import traceback
from typing import Any

from engine.context import StepContext  # imported here, once: an attempt that imported it would pay each time

MAX_ENV_INPUT = 128 * 1024
PREVIEW_CHARS = 300
INLINE_OUTPUT_MAX = 16 * 1024
"""A pickled output up to this size goes back with the attempt's result and into the database; a larger
one into a file of its own. Creating a file per step costs more than a small step itself; the bound keeps
the database's rows and the engine's messages small."""


def message_size(sock: _socket.socket) -> int:
    """The size of the next message on a SOCK_SEQPACKET socket, without taking it (0: the peer closed).

    Reading into a buffer as large as the message, not a fixed maximum, matters: a megabyte allocated
    and freed per message costs fresh pages each time (3x the time of the read itself).
    """
    return sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)


FD_BYTES = 4  # a file descriptor in SCM_RIGHTS data: a C int
FDS_SPACE = socket.CMSG_SPACE(4 * FD_BYTES)


def receive(sock: _socket.socket) -> tuple[bytes, list[int]]:
    """One message and the file descriptors sent with it (b"" when the engine closed the socket).

    recvmsg itself rather than socket.recv_fds, whose Python code and arrays a forked process would
    pay in page copies on every message.
    """
    data, ancillary, _, _ = sock.recvmsg(max(message_size(sock), 1), FDS_SPACE)
    fds = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % FD_BYTES
            fds += [int.from_bytes(payload[i:i + FD_BYTES], sys.byteorder) for i in range(0, usable, FD_BYTES)]
    return data, fds


def send_with_fds(sock: _socket.socket, data: bytes, fds: list[int]) -> None:
    """socket.send_fds without its Python code and arrays (see receive)."""
    payload = b"".join(fd.to_bytes(FD_BYTES, sys.byteorder) for fd in fds)
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, payload)])


def encode(message: dict[str, Any]) -> bytes:
    """A message between stepline's own processes. marshal, not JSON: it is all C, so a forked process
    encoding or decoding one writes to fewer of its pages (each first write costs a page copy)."""
    return marshal.dumps(message)


def decode(data: bytes) -> dict[str, Any]:
    return marshal.loads(data)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = encode(message)
    if fds:
        send_with_fds(sock, data, fds)
    else:
        sock.send(data)


TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def boot_ticks() -> int | None:
    """Clock ticks since boot: the unit of a process's start time in /proc/PID/stat (None off Linux)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return None if clock is None else time.clock_gettime_ns(clock) // TICK_NS


def start_ticks(before: int | None) -> int | None:
    """The start time, in ticks since boot, of a process created since boot_ticks() returned `before`:
    known without reading /proc when no tick has passed since (the kernel stamps a new process with the
    same clock). None when a tick passed meanwhile (a fork takes about a tenth of a 10 ms tick, so about
    one start in ten): the engine then reads /proc."""
    return before if before is not None and boot_ticks() == before else None


def preview(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as error:  # a user's __repr__ may raise
        text = f"<{type(value).__name__}: repr failed: {error}>"
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def send_result(fd: int, result: dict[str, Any]) -> None:
    """Hand the attempt's result to the engine over its result pipe: a 4-byte length, then the message.

    The length frames the message, so the engine takes it without waiting for the pipe's end of
    file (a process the step forked may hold the pipe open).
    """
    write_framed(fd, encode(result))


def write_framed(fd: int, data: bytes) -> None:
    """Write `data` to a pipe after its 4-byte length, whole (a pipe may take it in parts)."""
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def load_input(source: str | bytes, step: str, plain_only: bool = False) -> Any:
    """An upstream step's output: its pickle (bytes), or the path of its file. `plain_only` (in the engine,
    never in an attempt): only plain data loads (see _PlainUnpickler), and a file too large for an
    environment variable is refused."""
    if isinstance(source, bytes):
        return _PlainUnpickler(io.BytesIO(source)).load() if plain_only else pickle.loads(source)
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        # The engine sends a path only for an output that was stored in a file (None comes inline).
        raise StepFailed(f"the output of step '{step}' is missing: its file {source} was removed; start a new "
                         "run of the job to make it again") from None
    with handle:
        if not plain_only:
            return pickle.load(handle)
        if os.fstat(handle.fileno()).st_size > 2 * MAX_ENV_INPUT:
            raise StepFailed(f"output of step '{step}' is too large for the environment")
        return _PlainUnpickler(handle).load()


def as_env_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return json.dumps(value, default=_as_json, allow_nan=False)
    except ValueError:  # NaN or an infinity, which JSON has no word for: null, as JavaScript writes them
        try:
            return json.dumps(_finite(value), default=_as_json, allow_nan=False)
        except (TypeError, ValueError):
            return str(value)
    except TypeError:
        return str(value)


def _finite(value: Any) -> Any:
    """`value` with every NaN and infinity inside lists, tuples and dicts as None (dataclasses as their fields)."""
    if isinstance(value, float):
        return value if value - value == 0 else None  # inf - inf and nan - nan are nan
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    as_json = _as_json(value) if not isinstance(value, (str, int, type(None))) else value
    return value if as_json is value or isinstance(as_json, str) else _finite(as_json)


def _as_json(value: Any) -> Any:
    """A dataclass as its fields (as JSON would show a dict); anything else JSON cannot write, as text."""
    import dataclasses  # only when an output needs it: not in every forked attempt

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


class StepTable:
    """The steps of one imported job file by (job, step), built once in the worker before any fork.

    An attempt looks its step up in a dict instead of walking the module: every object a forked
    attempt touches costs a copy-on-write page fault, and a fault costs microseconds.
    """

    def __init__(self, made: list[Any], job_file: str) -> None:
        """`made`: every job() made while the file imported (a job made in a loop or kept in a list has no
        name in the module). Only the file's own jobs count, as in the loader."""
        from engine.jobfile import is_from

        self.file = job_file
        self.steps = {(job_def.name, step_def.name): step_def for job_def in made if is_from(job_def.file, job_file)
                      for step_def in job_def.steps}

    def find(self, job_name: str, step_name: str) -> Any:
        try:
            return self.steps[job_name, step_name]
        except KeyError:
            if all(job != job_name for job, _ in self.steps):
                raise LookupError(f"job '{job_name}' is no longer defined in {self.file} (renamed?); put its name "
                                  "back to run this run's steps, or start a run of the job it became") from None
            raise LookupError(f"step '{step_name}' of job '{job_name}' is no longer defined in {self.file}; "
                              "restore it in the job file, or start a new run of the job") from None


class StepFailed(Exception):
    """Raised in an attempt process to fail it with a chosen reason."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(summary)
        self.summary = summary
        self.detail = detail


Result = tuple[int, dict[str, Any]]
"""Exit code and the result message of an attempt."""


def run_python_attempt(steps: StepTable, request: dict[str, Any]) -> Result:
    """Body of a forked Python attempt; returns the exit code and the result for the engine."""
    try:
        step_def = steps.find(request["job"], request["step"])
        kwargs: dict[str, Any] = {}
        for name in step_def.parameters:
            if name in request["inputs"]:
                try:
                    kwargs[name] = load_input(request["inputs"][name], name)
                except (AttributeError, ImportError, EOFError, pickle.UnpicklingError) as error:
                    if isinstance(error, (EOFError, pickle.UnpicklingError)):  # a renamed class: AttributeError
                        raise StepFailed(
                            f"the output of step '{name}' cannot be read back: its stored copy is damaged "
                            f"({type(error).__name__}: {error}); start a new run of the job to make it again"
                        ) from None
                    raise StepFailed(
                        f"the output of step '{name}' cannot be read back ({type(error).__name__}: {error}): it holds "
                        "an object of a class the job file no longer defines where it did (renamed or moved?); put "
                        "the class back, or start a new run of the job") from None
            elif name == "params":
                kwargs[name] = dict(request["params"])
            elif name == "context":
                kwargs[name] = StepContext(**request["context"])
        missing = [name for name in step_def.parameters if name in step_def.required and name not in kwargs]
        if missing:
            raise StepFailed(
                f"step '{request['step']}' now takes {', '.join(repr(m) for m in missing)}, which it did not when "
                f"run {request['context']['run_id']} started (a run keeps the steps and dependencies it started "
                "with); start a new run of the job, or give the parameter a default")
        value = step_def.func(**kwargs)
    except (StepFailed, LookupError) as error:
        return fail(str(error), "", retry=False)  # the job file or stored data must change first
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
        if code == 0:
            value = None
        else:
            detail = user_traceback(error)
            sys.stderr.write(detail)
            return fail(f"SystemExit: {error.code}", detail, code)
    except BaseException as error:
        detail = user_traceback(error)
        sys.stderr.write(detail)
        message = str(error).splitlines()[0] if str(error) else ""
        return fail(f"{type(error).__name__}: {message}".rstrip(": "), detail)
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        summary = (f"output of step '{request['step']}' cannot be persisted: {type(error).__name__}: {error}; "
                   "return plain data (str, numbers, lists, dicts, dataclasses) or write a file and return its path")
        sys.stderr.write(summary + "\n")
        # The step's own code ran fine: the detail is what it returned, not stepline's pickling frames.
        detail = f"the step returned {preview(value)} (type {type(value).__module__}.{type(value).__qualname__})"
        return fail(summary, detail, retry=False)  # the same code returns the same kind of value again
    result = {"ok": True, "preview": preview(value), "has_output": value is not None}
    if len(data) <= INLINE_OUTPUT_MAX:
        return 0, {**result, "output": data}
    output_path = request["output_path"]
    try:
        handle = open(output_path + ".tmp", "wb")
    except FileNotFoundError:
        os.makedirs(os.path.dirname(output_path), exist_ok=True)  # the run's first output
        handle = open(output_path + ".tmp", "wb")
    with handle:
        handle.write(data)
    os.replace(output_path + ".tmp", output_path)
    return 0, result


def user_traceback(error: BaseException) -> str:
    """The traceback from the step function down, without stepline's own frame on top."""
    tb = error.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def fail(summary: str, detail: str, code: int = 1, retry: bool = True) -> Result:
    """`retry`: False when another attempt cannot go otherwise (the job file must change first): the engine
    then spends none of the step's retries on it."""
    # An exit status is one byte: sys.exit(256) must not turn into a success.
    return (code if 0 < code < 256 else 1), {"ok": False, "summary": summary, "detail": detail, "retry": retry}


def attempt_environment(request: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    """The attempt's whole environment: the worker's own `base` with the request's changes."""
    env = {**base, **request["env_set"]}
    for key in request["env_unset"]:
        env.pop(key, None)
    return env


def shell_environment(request: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    """Environment of a shell attempt: upstream outputs and params as STEPLINE_* variables."""
    return {**attempt_environment(request, base), **input_variables(request["inputs"])}


def input_variables(inputs: dict[str, str | bytes], plain_only: bool = False) -> dict[str, str]:
    """A shell attempt's STEPLINE_IN_<STEP> variables, from its upstream outputs (see load_input)."""
    variables = {}
    for name, source in inputs.items():
        text = as_env_text(load_input(source, name, plain_only))
        if "\0" in text:
            raise StepFailed(f"output of step '{name}' holds a NUL character, which no environment variable can "
                             f"(STEPLINE_IN_{env_key(name)}); have '{name}' write its data to a file and return "
                             "the file's path")
        if len(text) > MAX_ENV_INPUT:
            raise StepFailed(f"output of step '{name}' is {len(text)} characters, too large for the environment "
                             f"variable STEPLINE_IN_{env_key(name)}; have '{name}' return a file path instead")
        variables[f"STEPLINE_IN_{env_key(name)}"] = text
    return variables


def env_key(name: str) -> str:
    """A step name as the end of a variable name bash can expand: ASCII letters and digits, anything else as
    `_`, accents dropped first (überprüfen -> UBERPRUFEN; bash names are ASCII, so $STEPLINE_IN_ÜBERPRÜFEN
    would read as $STEPLINE_IN_ followed by text)."""
    if not name.isascii():
        import unicodedata  # only for names that need it: the worker's forks map every module it holds
        name = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name).upper()


def become_attempt_process(sock: socket.socket) -> None:
    """In a freshly forked child: its own session, no engine connection, default signal handling."""
    os.setsid()
    sock.close()
    for number in CHILD_DEFAULT_SIGNALS:
        _signal.signal(number, _signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def spare_main(steps: StepTable, spare_sock: _socket.socket, sock: socket.socket, base_env: dict[str, str],
               taken_fd: int) -> None:
    """A process forked ahead of need: set up, it waits for its attempt's request; never returns.

    The fork and the child's set-up (each page it touches is a copy-on-write fault) happen while
    other attempts run, so an attempt starts as soon as its request arrives. The request comes from
    the engine itself; the spare then writes its pid to `taken_fd`, so the worker forks its successor.
    """
    try:
        become_attempt_process(sock)
        warm_up()
        data, fds = receive(spare_sock)
    except BaseException:
        os._exit(1)
    if not data or len(fds) != 2:
        os._exit(0)  # the engine let go of this spare (stopping, or new code): nothing to run
    try:
        os.write(taken_fd, os.getpid().to_bytes(4, "big"))
        os.close(taken_fd)
    except OSError:
        pass  # the worker is gone; the attempt runs anyway
    spare_sock.close()
    child_main(steps, decode(data), fds[0], fds[1], None, base_env)


WARM_REQUEST = encode({
    "op": "start", "id": 0, "job": "j", "step": "s", "kind": "python", "command": None, "inputs": {"u": "/"},
    "params": {"k": "v"}, "context": {"run_id": 0, "job": "j", "step": "s", "attempt": 1, "params": {"k": "v"},
                                      "home": "/", "scheduled_for": None},
    "env_set": {"STEPLINE_RUN_ID": "0"}, "env_unset": [], "cwd": "/", "output_path": "/"})
ATTEMPT_VARIABLES = ("STEPLINE_RUN_ID", "STEPLINE_JOB", "STEPLINE_STEP", "STEPLINE_ATTEMPT", "STEPLINE_HOME",
                     "PYTHONUNBUFFERED")


def warm_up() -> None:
    """In a spare, before its request arrives: do once what every attempt does first.

    Each page a forked process first writes costs a copy, several microseconds on a small VM. Parsing a
    request and setting the attempt's variables write the same pages every time, so a spare writes
    them while it waits, and its attempt starts without those copies. Nothing of it is left behind.
    """
    decode(WARM_REQUEST)
    environ = os.environ
    for key in ATTEMPT_VARIABLES:
        old = environ.get(key)
        environ[key] = "0"
        if old is None:
            del environ[key]
        else:
            environ[key] = old


def child_main(steps: StepTable, request: dict[str, Any], log_fd: int, result_fd: int | None,
               sock: socket.socket | None, base_env: dict[str, str]) -> None:
    """Runs in the forked attempt process; never returns. `sock`: the engine connection, still to close.

    A Python attempt ends by closing its output (the log reaches its end) and then sending its
    result, so the engine can finish the step without waiting for this process's exit teardown.
    """
    code = 1
    result: dict[str, Any] | None = None
    try:
        if sock is not None:
            become_attempt_process(sock)
        if result_fd is not None:
            os.set_inheritable(result_fd, False)  # bash and the processes a step starts never see it
        # fd 0 is /dev/null and sys.stdin/stdout/stderr are set up already (prepare_stdio, in the worker).
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        if request["kind"] == "shell":
            try:
                env = shell_environment(request, base_env)
            except StepFailed as error:
                os.write(2, (error.summary + "\n").encode())
                code, result = fail(error.summary, "")
                if result_fd is not None:
                    send_result(result_fd, result)
                os._exit(code)
            os.execve("/bin/bash", ["bash", "-c", request["command"]], env)
        set_environment(request["env_set"], request["env_unset"])
        code, result = run_python_attempt(steps, request)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        result = None
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    if result is not None and result_fd is not None:
        try:
            # Close the log pipe first: the engine finishes the step on the result and the log's end.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            send_result(result_fd, result)
        except BaseException:
            pass  # the engine falls back on the exit status
    os._exit(code)


CHILD_DEFAULT_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGHUP)


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only (str, bytes, numbers, None, lists, dicts, ...): it refuses every class
    and function a pickle names, so loading cannot run code. Safe in the engine itself."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def ensure_output_folder(request: dict[str, Any]) -> None:
    """A shell step writes $STEPLINE_OUTPUT itself: its run's output folder must exist beforehand (made each
    time: the engine removes an empty one when its run ends, and a retry may come after that)."""
    try:
        os.makedirs(os.path.dirname(request["output_path"]), exist_ok=True)
    except OSError:
        pass  # the step's own write to $STEPLINE_OUTPUT then fails and says why


def set_environment(changes: dict[str, str], removed: list[str]) -> None:
    """Apply an attempt's environment changes to os.environ (the worker's environment before them)."""
    environ = os.environ
    for key in removed:
        environ.pop(key, None)
    for key, value in changes.items():
        environ[key] = value


def prepare_stdio() -> None:
    """Once, in the worker: the standard streams every attempt inherits.

    stdin reads /dev/null; stdout and stderr are line-buffered text streams over fds 1 and 2, which
    each attempt points at its log pipe (line buffering: the log shows each line as it is printed,
    and a killed step loses nothing it printed). The worker itself never writes to them.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(os.devnull)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)


def import_within_time(job_file: str, source: bytes | None) -> list[Any]:
    """Import the job file within the time the engine's loader gives it (jobfile.IMPORT_TIMEOUT_S): an
    import that hangs here although the engine's went through (it waits on something) fails the
    attempts with a reason instead of leaving them starting for ever. The worker's only thread is the
    main one, so SIGALRM interrupts even a blocked system call."""
    from engine.definition import collecting_jobs
    from engine.jobfile import ImportTimedOut, import_job_file, import_timeout_s

    timeout_s = import_timeout_s()

    def expired(number: int, frame: Any) -> None:
        raise ImportTimedOut(timeout_s)

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        with collecting_jobs(job_file) as made:
            import_job_file(job_file, source)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the steps' own, as they inherit it
    return made


def serve(sock: socket.socket, spare_count: int, spare_idle_s: float, job_file: str,
          source_file: str | None = None) -> None:
    try:
        source = None
        if source_file:
            with open(source_file, "rb") as file:
                source = file.read()
        made = import_within_time(job_file, source)
    except BaseException as error:
        from engine.jobfile import ImportTimedOut

        detail = traceback.format_exc()
        summary = f"job file {job_file} failed to import: {type(error).__name__}: {error}"
        if isinstance(error, ImportTimedOut):
            summary = f"job file {job_file}: {error}"
        elif isinstance(error, FileNotFoundError) and error.filename == job_file:
            summary, detail = f"job file {job_file} is gone (moved or deleted); put it back and retry", ""
        broken = {"op": "broken", "summary": summary, "detail": detail}
        send(sock, broken)
        # Stay and answer every request with the import error until the engine lets go: exiting with a
        # request unread would reset the socket and could lose this very message on the engine's side.
        while True:
            try:
                data, fds = receive(sock)
            except OSError:
                return
            for fd in fds:
                os.close(fd)
            if not data or decode(data).get("op") == "stop":
                return
            send(sock, broken)
    prepare_stdio()
    steps = StepTable(made, job_file)
    # Everything imported so far is shared with every attempt: move it out of the collector's sight,
    # so a step that allocates enough to trigger a full collection does not walk (and so copy) the
    # worker's pages. Python's documentation recommends this for pre-forking servers.
    gc.freeze()
    base_env = dict(os.environ)
    send(sock, {"op": "ready", "pid": os.getpid()})

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    taken_r, taken_w = os.pipe()  # spares write their pid here when the engine hands them an attempt
    os.set_blocking(taken_r, False)
    children: dict[int, int | None] = {}  # pid -> attempt id (None: a spare's, known to the engine only)
    spares: set[int] = set()  # pids of spares not taken yet
    want_spares = False  # from the first Python attempt on: a job file of shell steps never needs one
    last_use = time.monotonic()  # of a spare, or of a Python attempt forked here

    def make_spare() -> bool:
        ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # no Python-level wrapper
        before = boot_ticks()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return False
        if pid == 0:
            ours.close()
            os.close(taken_r)
            spare_main(steps, theirs, sock, base_env, taken_w)
        theirs.close()
        spares.add(pid)
        try:
            send(sock, {"op": "spare", "pid": pid, "start_ticks": start_ticks(before)}, [ours.fileno()])
        finally:
            ours.close()  # the engine holds the spare's socket now; closing it is how it lets go
        return True

    def take_spares() -> None:
        nonlocal last_use
        try:
            data = os.read(taken_r, 4096)
        except BlockingIOError:
            return
        last_use = time.monotonic()
        for offset in range(0, len(data) - 3, 4):
            pid = int.from_bytes(data[offset:offset + 4], "big")
            spares.discard(pid)
            children[pid] = None

    def reap() -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in spares:
                take_spares()  # a spare that exits right after its request can be reaped before it is read
            if pid in spares:
                # Never taken, as far as the worker knows; yet the engine may have sent it a request just
                # before it died. The engine knows which: it ignores the exit of a spare it never used.
                spares.discard(pid)
                attempt_id = None
            elif pid in children:
                attempt_id = children.pop(pid)
            else:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            send(sock, {"op": "exited", "id": attempt_id, "pid": pid,
                        "exit_code": exit_code if exit_code >= 0 else None,
                        "signal": -exit_code if exit_code < 0 else None,
                        "cpu_s": usage.ru_utime + usage.ru_stime,
                        "peak_rss_bytes": usage.ru_maxrss * 1024})

    try:
        while True:
            idle_in = max(0.0, last_use + spare_idle_s - time.monotonic()) if spares and want_spares else None
            try:
                watched: list[Any] = [sock, wake_r, taken_r]
                readable, _, _ = select.select(watched, [], [], idle_in)
            except InterruptedError:
                continue
            if want_spares and spares and time.monotonic() - last_use >= spare_idle_s:
                # Unused for a while (a daemon between runs): the engine lets go of them, and they exit
                # without running anything. The next Python attempt is forked here and brings them back.
                send(sock, {"op": "idle"})
                want_spares = False
            if taken_r in readable:
                take_spares()
            if wake_r in readable:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                reap()
            if sock in readable:
                try:
                    data, fds = receive(sock)
                except ConnectionResetError:
                    data, fds = b"", []
                request: dict[str, Any] = decode(data) if data else {"op": "stop"}
                if request["op"] == "start":
                    if request["kind"] == "shell":
                        ensure_output_folder(request)
                    log_fd = fds[0]
                    result_fd = fds[1] if len(fds) > 1 else None  # none for a shell step without inputs
                    for fd in fds:
                        os.set_inheritable(fd, False)  # an attempt gets the log as fds 1 and 2 only
                    before = boot_ticks()
                    if request["kind"] == "python":
                        want_spares, last_use = True, time.monotonic()
                    pid = os.fork()
                    if pid == 0:
                        child_main(steps, request, log_fd, result_fd, sock, base_env)
                    for fd in fds:
                        os.close(fd)
                    children[pid] = request["id"]
                    send(sock, {"op": "started", "id": request["id"], "pid": pid, "start_ticks": start_ticks(before)})
                elif request["op"] == "stop":
                    data = b""
                if not data:
                    abandon(children, spares)
                    return
                reap()
            while want_spares and len(spares) < spare_count and make_spare():
                pass
    except (BrokenPipeError, ConnectionResetError):
        # A message to an engine killed between two of its reads fails before its socket reads as closed:
        # the engine is gone all the same, and its attempts must not outlive it.
        abandon(children, spares)


def abandon(children: dict[int, int | None], spares: set[int]) -> None:
    """The engine is gone: terminate every attempt's process group, then kill what is left."""
    for pid in spares:
        try:
            os.kill(pid, signal.SIGKILL)  # nothing of a step runs there yet
        except ProcessLookupError:
            pass
    children.update(dict.fromkeys(spares))
    for pid in children:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.05)
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


BIND_NOW_MARK = "stepline-worker"
"""LD_BIND_NOW as the engine sets it for the worker alone (executor.worker_start_environment)."""


def main() -> None:
    if os.environ.get("LD_BIND_NOW") == BIND_NOW_MARK:
        del os.environ["LD_BIND_NOW"]  # bound already; the attempts' environment is the engine's
    fd, spare_count, spare_idle_s, job_file = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    source_file = sys.argv[5] if len(sys.argv) > 5 else None
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # no attempt process may hold the engine's connection
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the engine, which decides
    try:
        serve(sock, spare_count, spare_idle_s, job_file, source_file)
    finally:
        sock.close()
    # Not the interpreter's exit, which waits for every thread: one the job file started at import would
    # keep the worker (and the engine stopping it) waiting.
    os._exit(0)


if __name__ == "__main__":
    main()
