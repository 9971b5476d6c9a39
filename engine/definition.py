"""Job and step definitions: what a job file declares, as plain frozen values.

`step`, `shell` and `job` (re-exported by `engine/__init__.py`) build these.
They check the arguments they are given one by one and keep what is wrong as
`problems` on the value instead of raising, so one broken step or job never
stops the rest of its file from loading; the loader reports those problems and
checks the whole-job rules (unknown dependencies, cycles, schedules).
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import os
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from engine.errors import JobDefinitionError

#: Parameter names of a Python step that are not dependencies.
RESERVED_PARAMETERS = frozenset({"params", "context"})
#: Keyword options of step() and shell().
STEP_OPTIONS = ("retries", "retry_delay", "backoff", "jitter", "max_retry_delay", "timeout", "pool", "env",
                "cwd", "after")
#: Keyword options of job() after its name and steps.
JOB_OPTIONS = ("schedule", "every", "timezone", "params", "description", "misfire", "misfire_grace",
               "max_active_runs", "overlap")


@dataclass(slots=True)
class _Loading:
    path: str
    """Real path of the job file being imported."""
    jobs: list[JobDef] = field(default_factory=list)
    """Every job() made while it imports, in order."""
    real_paths: dict[str, str] = field(default_factory=dict)
    """Code file name -> its real path: each is resolved once per import, not once per step defined."""

    def is_job_file(self, filename: str) -> bool:
        real = self.real_paths.get(filename)
        if real is None:
            real = self.real_paths[filename] = os.path.realpath(filename)
        return real == self.path


_loading: ContextVar[_Loading | None] = ContextVar("stepline_loading", default=None)


@contextlib.contextmanager
def collecting_jobs(path: str | os.PathLike[str]) -> Iterator[list[JobDef]]:
    """Collect every job() made while importing the job file `path`, even ones not bound to a name.

    While active, job() and shell() place themselves at the deepest line of that file in
    the call stack, so a job made by a helper function is reported where the file calls it.
    """
    state = _Loading(os.path.realpath(path))
    token = _loading.set(state)
    try:
        yield state.jobs
    finally:
        _loading.reset(token)


@dataclass(frozen=True, slots=True)
class StepDef:
    name: str
    """Unique within its job; the name other steps depend on."""
    func: Callable[..., Any] | None = None
    """The Python function of a Python step; None for a shell step."""
    command: str | None = None
    """The bash command of a shell step; None for a Python step."""
    parameters: tuple[str, ...] = ()
    """Parameter names of `func` in order (dependencies are the ones naming steps)."""
    required: frozenset[str] = frozenset()
    """Parameters without a default: each must name a step or be params/context."""
    after: tuple[str, ...] = ()
    """Ordering-only dependencies."""
    retries: int = 0
    """Extra attempts after a failed one."""
    retry_delay_s: float = 0.0
    """Delay before the first retry."""
    backoff: float = 1.0
    """Each further retry waits this many times longer (1 = constant)."""
    jitter: float = 0.0
    """Adds up to this fraction of the delay at random, so retries spread out."""
    max_retry_delay_s: float = 3600.0
    """Upper bound of any retry delay after backoff and jitter."""
    timeout_s: float | None = None
    """Attempt wall-clock limit; None = no limit."""
    pool: str | None = None
    """Named pool limiting how many steps run at once across runs."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment variables of the step process."""
    cwd: str | None = None
    """Working directory of the step process (relative to the job file's folder)."""
    file: str = ""
    """Job file that defines the step."""
    line: int = 0
    """Line of the definition in `file`."""
    problems: tuple[str, ...] = ()
    """Bad arguments, as messages without file:line; the loader reports them and rejects the job."""

    @property
    def kind(self) -> str:
        return "python" if self.func is not None else "shell"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A Python step is still its function: a test (or another step) calls it with the values it would
        receive, `load([1, 2])`; nothing is recorded, as when Dagster or Prefect code calls an op or task."""
        if self.func is None:
            raise TypeError(f"'{self.name}' is a shell step: it has no Python function to call; stepline runs "
                            "its command (`stepline run JOB`)")
        return self.func(*args, **kwargs)

    def with_name(self, name: str) -> StepDef:
        return _replace(self, name=name)

    def without_function(self) -> StepDef:
        """The step as the engine needs it: its function stays in the process that imported the job file."""
        return self if self.func is None else _replace(self, func=runs_in_its_worker)


@dataclass(frozen=True, slots=True)
class JobDef:
    name: str
    steps: tuple[StepDef, ...]
    """Steps in the order the job file lists them."""
    schedule: str | None = None
    """5-field cron expression or alias, read in `timezone`."""
    every: str | None = None
    """Interval such as "30s", "15m", "2h"."""
    timezone: str | None = None
    """IANA zone of the schedule; None = the machine's zone."""
    params: Mapping[str, str] = field(default_factory=dict)
    """Default run parameters; `stepline run -p key=value` overrides them."""
    description: str = ""
    """One line shown by `stepline jobs` and the console."""
    file: str = ""
    """Job file that defines the job."""
    line: int = 0
    """Line of the job() call in `file`."""
    problems: tuple[str, ...] = ()
    """Bad arguments of job(), as messages without file:line; the loader reports them."""
    misfire: str = "once"
    """Fires missed while the engine was down or late: "skip", "once" (one catch-up run) or "all"."""
    misfire_grace_s: float = 60.0
    """A fire noticed later than this after its scheduled time is a misfire."""
    max_active_runs: int = 1
    """Runs of this job that may run at once; further runs wait, queued, for their turn."""
    overlap: str = "queue"
    """A fire while max_active_runs runs are active (running or queued): "queue" it or "skip" it."""

    def without_functions(self) -> JobDef:
        """The job as the loader's reader sends it: data only (see StepDef.without_function)."""
        return _replace(self, steps=tuple(step_def.without_function() for step_def in self.steps))

    def unknown_param(self, params: Mapping[str, str]) -> tuple[str, str] | None:
        """The first key of `params` this job does not take, and a sentence saying what it takes; None when all
        are taken. A job that declares its params= takes those keys only: a mistyped key would otherwise run
        with the default, unnoticed. A job that declares none takes any key (its steps read what they need)."""
        if not self.params:
            return None
        for key in params:
            if key not in self.params:
                from engine.loader import display_path

                close = difflib.get_close_matches(key, list(self.params), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                return key, (f"job '{self.name}' has no parameter '{key}'{hint}; its parameters are "
                             f"{', '.join(self.params)} (declared by params= at {display_path(self.file)}:{self.line})")
        return None

    def step(self, name: str) -> StepDef:
        for step_def in self.steps:
            if step_def.name == name:
                return step_def
        raise KeyError(name)

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def dependencies(self, step_def: StepDef, names: Container[str] | None = None) -> tuple[str, ...]:
        """Upstream step names: parameters naming steps of this job, then `after`.

        `names` is the job's step names as a set, from a caller asking about every step: built once
        there instead of once per step, which made planning a job of thousands of steps quadratic.
        """
        if names is None:
            names = set(self.step_names)
        deps = [p for p in step_def.parameters if p in names and p != step_def.name]
        from_parameters = set(deps)
        deps += [a for a in step_def.after if a not in from_parameters]
        return tuple(deps)


def runs_in_its_worker(*args: Any, **kwargs: Any) -> Any:
    """Stands for a Python step's function outside the processes that import its job file (the loader's
    reader and the preloaded worker): the engine itself never calls a step."""
    raise RuntimeError("a Python step runs in the preloaded worker of its job file, not in the engine")


def _replace(obj: Any, **changes: Any) -> Any:
    from dataclasses import replace
    return replace(obj, **changes)


def _name_problems(name: str, what: str) -> list[str]:
    """A step's name becomes part of its log and output file names, so it cannot hold a path; a job's
    name follows the same rule, so that either can name a file or folder."""
    if name in (".", "..") or any(c in "/\\" or not c.isprintable() for c in name):
        return [f"the {what} name {name!r} cannot be '.' or '..' or contain '/', '\\' or control characters "
                f"({what} names are part of file names in the home); use letters, digits, '_' or '-'"]
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return [f"the {what} name '{name[:3]}…{name[-3:]}' is {size} bytes long; a name can be at most "
                f"{MAX_NAME_BYTES} (it is part of file names in the home)"]
    if what == "step" and name in RESERVED_PARAMETERS:
        given = "the run parameters" if name == "params" else "the step's StepContext"
        return [f"a step cannot be named {name!r}: a parameter of that name receives {given}, not a step's "
                "output; rename the step"]
    return []


MAX_NAME_BYTES = 200
"""A file name holds at most 255 bytes, and a step's log is named `<step>.<attempt>.log`."""


def _param_clashes(params: Mapping[Any, Any]) -> list[str]:
    """Two keys that shell steps would read as one variable ("a.b" and "A_B" are both $STEPLINE_PARAM_A_B)."""
    from engine.worker import env_key

    seen: dict[str, str] = {}
    problems = []
    for key in map(str, params):
        variable = f"STEPLINE_PARAM_{env_key(key)}"
        if variable in seen:
            problems.append(f"params '{seen[variable]}' and '{key}' both reach shell steps as ${variable}, so one "
                            "would hide the other; rename one of them")
        seen.setdefault(variable, key)
    return problems


def _shown(value: Any) -> str:
    """A value in a message: a step by its name, anything else as a short repr."""
    if isinstance(value, StepDef):
        return f"step '{value.name}'"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, StepDef) for v in value):
        return "the list of steps [" + ", ".join(v.name for v in value) + "]"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _caller_location(depth: int = 2) -> tuple[str, int]:
    """File and line of the caller `depth` frames up, or of the job file being loaded if it is further up."""
    frame = inspect.currentframe()
    for _ in range(depth):
        frame = frame.f_back if frame is not None else None
    if frame is None:
        return "", 0
    caller = frame.f_code.co_filename, frame.f_lineno
    loading = _loading.get()
    if loading is not None:
        if frame.f_code.co_name == "<module>":
            # Made at the top level of a module: of that file, even one the job file imports to reuse its steps
            # (its jobs then load from it, not twice).
            return caller
        while frame is not None:
            if loading.is_job_file(frame.f_code.co_filename):
                return frame.f_code.co_filename, frame.f_lineno
            frame = frame.f_back
    return caller


def _number(value: Any, what: str, minimum: float = 0.0) -> float:
    """`value` as a float, or JobDefinitionError("<what>, got <value>") if it is not a finite number >= minimum."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum
            or not math.isfinite(value)):
        raise JobDefinitionError(f"{what}, got {value!r}")
    return float(value)


MAX_SECONDS = 366 * 24 * 3600
"""The longest delay or timeout a step may ask for: a clock time further off than the platform's time_t
reaches (1e308 seconds) would stop the engine that computes it."""


def _seconds(value: Any, option: str, what: str) -> float:
    """A number of seconds from 0 up to a year, for `option`; `what` says what it must be."""
    seconds = _number(value, what)
    if seconds > MAX_SECONDS:
        raise JobDefinitionError(f"{option} can be at most a year ({MAX_SECONDS} seconds), got {value!r}")
    return seconds


def _after(value: Any) -> tuple[str, ...]:
    """Step names of an after= value: a name, a step, or a list of names and steps."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, (str, StepDef)) else value
    if not isinstance(items, Iterable):
        raise JobDefinitionError(f"after must be a list of step names, got {value!r}")
    names = []
    for item in items:
        if isinstance(item, StepDef):
            names.append(item.name)
        elif isinstance(item, str) and item:
            names.append(item)
        else:
            raise JobDefinitionError(f"after must be a list of step names, got {item!r} in it")
    return tuple(names)


def _options(options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """StepDef fields from the keyword options of step() or shell(), and a message per bad option.

    A bad option keeps its default, so the step still exists for the loader to report on.
    """
    problems: list[str] = []
    for key in options:
        if key not in STEP_OPTIONS:
            close = difflib.get_close_matches(key, STEP_OPTIONS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "options are " + ", ".join(STEP_OPTIONS)
            problems.append(f"there is no option '{key}' ({hint})")

    def check(name: str, default: Any, convert: Callable[[Any], Any]) -> Any:
        if name not in options:
            return default
        try:
            return convert(options[name])
        except JobDefinitionError as error:
            problems.append(str(error))
            return default

    def retries(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise JobDefinitionError(f"retries must be a whole number of extra attempts (0 or more), got {value!r}")
        return value

    def backoff(value: Any) -> float:
        value = {True: 2.0, False: 1.0}.get(value, value) if isinstance(value, bool) else value
        return _number(value, "backoff multiplies the delay before each further retry and must be 1 or more "
                              "(True means 2)", minimum=1.0)

    def jitter(value: Any) -> float:
        value = {True: 0.5, False: 0.0}.get(value, value) if isinstance(value, bool) else value
        fraction = _number(value, "jitter is the fraction of the delay added at random and must be between 0 "
                                  "and 1 (True means 0.5)")
        if fraction > 1:
            raise JobDefinitionError("jitter is the fraction of the delay added at random and must be between 0 "
                                     f"and 1 (True means 0.5), got {value!r}")
        return fraction

    def timeout(value: Any) -> float | None:
        if value is None:
            return None
        seconds = _seconds(value, "timeout",
                           "timeout must be a number of seconds more than 0 (leave it out for no limit)")
        if seconds == 0:
            raise JobDefinitionError(f"timeout must be a number of seconds more than 0 (leave it out for no limit), "
                                     f"got {value!r}")
        return seconds

    def pool(value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise JobDefinitionError(f"pool must be a non-empty name, got {value!r}")
        return value

    def env(value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise JobDefinitionError(f"env must be a dict of NAME: value, got {type(value).__name__} {value!r}")
        for key in value:
            if not isinstance(key, str) or not key or "=" in key:
                raise JobDefinitionError(f"env must be a dict of NAME: value, got the name {key!r}")
            if value[key] is None:  # str(None) would hand the step the text "None"
                raise JobDefinitionError(f"env {key!r} is None; give it a value (numbers become text), or leave "
                                         "the name out")
        return {k: str(v) for k, v in value.items()}

    def cwd(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise JobDefinitionError(f"cwd must be a folder path, got {value!r}")
        return os.fspath(value)

    fields = dict(
        retries=check("retries", 0, retries),
        retry_delay_s=check("retry_delay", 0.0, lambda v: _seconds(
            v, "retry_delay", "retry_delay must be a number of seconds (0 or more)")),
        backoff=check("backoff", 1.0, backoff),
        jitter=check("jitter", 0.0, jitter),
        max_retry_delay_s=check("max_retry_delay", 3600.0, lambda v: _seconds(
            v, "max_retry_delay", "max_retry_delay must be a number of seconds (0 or more)")),
        timeout_s=check("timeout", None, timeout),
        pool=check("pool", None, pool),
        env=check("env", {}, env),
        cwd=check("cwd", None, cwd),
        after=check("after", (), _after),
    )
    return fields, problems


def step(func: Callable[..., Any] | None = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Make a Python function a step: `@step` or `@step(retries=2, timeout=600, ...)`.

    A parameter named after another step of the job is a dependency and receives
    that step's output; `params` receives the run parameters and `context` a
    StepContext (run id, attempt number, ...). The return value is persisted
    (pickled) for downstream steps and retries.
    """
    file, line = _caller_location()

    def decorate(fn: Callable[..., Any]) -> StepDef:
        if isinstance(fn, StepDef):
            raise JobDefinitionError(f"{file}:{line}: step '{fn.name}' is a step already: use @step once, with "
                                     "all its options in it (@step(retries=2, timeout=60))")
        if isinstance(fn, str):
            raise JobDefinitionError(f"{file}:{line}: @step decorates a function, got the text {fn!r}; to name "
                                     f"the step write @step(name={fn!r})")
        if not callable(fn):
            raise JobDefinitionError(f"{file}:{line}: @step decorates a function, got {_shown(fn)}")
        code = getattr(fn, "__code__", None)
        fn_file = code.co_filename if code else file
        fn_line = code.co_firstlineno if code else line
        step_name = name or getattr(fn, "__name__", "")
        problems = (_name_problems(step_name, "step") if isinstance(step_name, str) and step_name
                    else [f"the name must be a non-empty string, got {step_name!r}"] if name is not None
                    else [f"{_shown(fn)} has no __name__ to name the step after; give it one: "
                          "step(fn, name='load')"])
        if not step_name or not isinstance(step_name, str):
            step_name = f"<step at line {line}>"
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            problems.append("a step cannot be an async function (its result would be a coroutine, never run); "
                            "write a plain def that calls asyncio.run(...)")
        elif inspect.isgeneratorfunction(fn):
            problems.append("a step cannot be a generator function (it yields, and a generator cannot be kept as "
                            "an output); return the values instead, e.g. as a list")
        parameters, required = [], set()
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin or C callable: Python cannot tell what it takes
            problems.append(f"the parameters of {_shown(fn)} cannot be read (a builtin?); wrap the call in a def")
            signature = inspect.Signature()
        for parameter in signature.parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            parameters.append(parameter.name)
            if parameter.default is parameter.empty:
                required.add(parameter.name)
        fields, option_problems = _options(options)
        return StepDef(name=str(step_name), func=fn, parameters=tuple(parameters), required=frozenset(required),
                       file=fn_file, line=fn_line, problems=tuple(problems + option_problems), **fields)

    if func is not None:
        return decorate(func)
    return decorate


def shell(name: str, command: str | None = None, **options: Any) -> StepDef:
    """A step that runs `command` through bash.

    Upstream outputs arrive as environment variables STEPLINE_IN_<STEP> (text as
    is, other values as JSON); run parameters as STEPLINE_PARAM_<KEY>. Whatever
    the command writes to the file named by $STEPLINE_OUTPUT becomes its output.
    """
    file, line = _caller_location()
    problems = []
    if not isinstance(name, str) or not name:  # a problem of this step: the file's other jobs still load
        problems.append(f"shell() needs a step name as its first argument, got {name!r}")
        name = f"<shell step at line {line}>"
    problems += _name_problems(name, "step")
    if command is None:
        problems.append("shell() needs a name and a command: shell('report', 'echo done')")
    elif not isinstance(command, str) or not command.strip():
        problems.append(f"the command must be a non-empty string, got {command!r}")
    fields, option_problems = _options(options)
    return StepDef(name=name, command=command if isinstance(command, str) else "", file=file, line=line,
                   problems=tuple(problems + option_problems), **fields)


def _choice(value: Any, option: str, choices: dict[str, str]) -> str:
    """`value` if it is one of `choices` (name: meaning), else JobDefinitionError listing them."""
    if isinstance(value, str) and value in choices:
        return value
    listed = ", ".join(f"'{name}' ({meaning})" for name, meaning in choices.items())
    close = difflib.get_close_matches(value, list(choices), n=1) if isinstance(value, str) else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise JobDefinitionError(f"{option} must be one of {listed}, got {value!r}{hint}")


def _job_options(misfire: Any, misfire_grace: Any, max_active_runs: Any,
                 overlap: Any) -> tuple[dict[str, Any], list[str]]:
    """JobDef fields of job()'s scheduling options, and a message per bad one (which keeps its default)."""
    problems: list[str] = []

    def check(default: Any, convert: Callable[[], Any]) -> Any:
        try:
            return convert()
        except JobDefinitionError as error:
            problems.append(str(error))
            return default

    def active_runs() -> int:
        if isinstance(max_active_runs, bool) or not isinstance(max_active_runs, int) or max_active_runs < 1:
            raise JobDefinitionError(f"max_active_runs must be a whole number of runs (1 or more), "
                                     f"got {max_active_runs!r}")
        return max_active_runs

    fields = dict(
        misfire=check("once", lambda: _choice(misfire, "misfire", {
            "skip": "no catch-up run", "once": "one catch-up run", "all": "a run per missed fire"})),
        misfire_grace_s=check(60.0, lambda: _seconds(
            misfire_grace, "misfire_grace", "misfire_grace must be a number of seconds (0 or more)")),
        max_active_runs=check(1, active_runs),
        overlap=check("queue", lambda: _choice(overlap, "overlap", {
            "queue": "wait for a running one to end", "skip": "drop the fire"})),
    )
    return fields, problems


def job(name: str, steps: Iterable[StepDef], *, schedule: str | None = None, every: str | None = None,
        timezone: str | None = None, params: Mapping[str, Any] | None = None,
        description: str = "", misfire: str = "once", misfire_grace: float = 60,
        max_active_runs: int = 1, overlap: str = "queue", **unknown: Any) -> JobDef:
    """A named DAG of steps, optionally on a cron `schedule` (in `timezone`) or `every` interval."""
    file, line = _caller_location()
    problems: list[str] = []
    if not isinstance(name, str) or not name:  # a problem of this job: the file's other jobs still load
        problems.append(f"job() needs a name as its first argument, got {_shown(name)}")
        name = f"<job at line {line}>"
    for key in unknown:  # a problem of this job, not an exception that would take the whole file down
        close = difflib.get_close_matches(key, JOB_OPTIONS, n=1)
        if close:
            hint = f"did you mean '{close[0]}'?"
        elif key in STEP_OPTIONS:
            hint = f"{key}= is an option of each step: @step({key}=...) or shell(..., {key}=...)"
        else:
            hint = "options are " + ", ".join(JOB_OPTIONS)
        problems.append(f"there is no job option '{key}' ({hint})")
    problems += _name_problems(name, "job")
    step_defs: list[StepDef] = []
    if isinstance(steps, (str, bytes, StepDef)) or not isinstance(steps, Iterable):
        problems.append(f"steps must be a list of steps, got {_shown(steps)}")
        steps = ()
    for item in steps:
        if isinstance(item, StepDef):
            step_defs.append(item)
        elif inspect.isfunction(item):
            problems.append(f"'{item.__name__}' in its steps is a plain function, not a step "
                            "(did you forget @step on it?)")
        else:
            problems.append(f"{item!r} in its steps is not a step; list what @step or shell() returned")
    if schedule is not None and every is not None:
        problems.append("schedule= (cron) and every= (interval) are both given; keep one of them")
    if params is not None and not isinstance(params, Mapping):
        problems.append(f"params must be a dict of default run parameters, got {type(params).__name__}")
        params = None
    problems += _param_clashes(params or {})
    if not isinstance(description, str):
        problems.append(f"description must be a string, got {description!r}")
        description = ""
    options, option_problems = _job_options(misfire, misfire_grace, max_active_runs, overlap)
    problems += option_problems
    job_def = JobDef(name=name, steps=tuple(step_defs), schedule=schedule, every=every, timezone=timezone,
                     params={str(k): str(v) for k, v in (params or {}).items()},
                     description=description, file=file, line=line, problems=tuple(problems), **options)
    loading = _loading.get()
    if loading is not None:
        loading.jobs.append(job_def)
    return job_def
