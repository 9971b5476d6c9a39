"""Job and step definitions: what a job file declares, as plain frozen values.

`step`, `shell` and `job` (re-exported by `engine/__init__.py`) build these.
They check the arguments they are given one by one; whole-job rules (unknown
dependencies, cycles, schedules) are checked by the loader, so one broken job
never stops the rest of its file from loading.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import JobDefinitionError

#: Parameter names of a Python step that are not dependencies.
RESERVED_PARAMETERS = frozenset({"params", "context"})


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

    @property
    def kind(self) -> str:
        return "python" if self.func is not None else "shell"

    def with_name(self, name: str) -> StepDef:
        return _replace(self, name=name)


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

    def step(self, name: str) -> StepDef:
        for step_def in self.steps:
            if step_def.name == name:
                return step_def
        raise KeyError(name)

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def dependencies(self, step_def: StepDef) -> tuple[str, ...]:
        """Upstream step names: parameters naming steps of this job, then `after`."""
        names = set(self.step_names)
        deps = [p for p in step_def.parameters if p in names and p != step_def.name]
        deps += [a for a in step_def.after if a not in deps]
        return tuple(deps)


def _replace(obj: Any, **changes: Any) -> Any:
    from dataclasses import replace
    return replace(obj, **changes)


def _caller_location(depth: int = 2) -> tuple[str, int]:
    frame = inspect.currentframe()
    for _ in range(depth):
        frame = frame.f_back if frame is not None else None
    if frame is None:
        return "", 0
    return frame.f_code.co_filename, frame.f_lineno


def _number(value: Any, what: str, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise JobDefinitionError(f"{where}: {what} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _names(value: Iterable[str] | str | None, what: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise JobDefinitionError(f"{where}: {what} must list step names as strings, got {item!r}")
    return items


def _options(where: str, *, retries: int = 0, retry_delay: float = 0, backoff: float | bool = 1.0,
             jitter: float | bool = 0.0, max_retry_delay: float = 3600, timeout: float | None = None,
             pool: str | None = None, env: Mapping[str, Any] | None = None,
             cwd: str | os.PathLike[str] | None = None, after: Iterable[str] | str | None = None) -> dict[str, Any]:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise JobDefinitionError(f"{where}: retries must be a whole number >= 0, got {retries!r}")
    if backoff is True:
        backoff = 2.0
    elif backoff is False:
        backoff = 1.0
    if jitter is True:
        jitter = 0.5
    elif jitter is False:
        jitter = 0.0
    if timeout is not None:
        timeout = _number(timeout, "timeout (seconds)", where)
        if timeout == 0:
            raise JobDefinitionError(f"{where}: timeout must be more than 0 seconds (leave it out for no limit)")
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise JobDefinitionError(f"{where}: pool must be a non-empty name, got {pool!r}")
    if env is not None and not isinstance(env, Mapping):
        raise JobDefinitionError(f"{where}: env must be a dict of NAME: value, got {type(env).__name__}")
    jitter_fraction = _number(jitter, "jitter (a fraction of the delay)", where)
    if jitter_fraction > 1:
        raise JobDefinitionError(f"{where}: jitter is a fraction of the delay between 0 and 1, got {jitter!r}")
    return dict(
        retries=retries,
        retry_delay_s=_number(retry_delay, "retry_delay (seconds)", where),
        backoff=_number(backoff, "backoff (a multiplier)", where, minimum=1.0),
        jitter=jitter_fraction,
        max_retry_delay_s=_number(max_retry_delay, "max_retry_delay (seconds)", where),
        timeout_s=timeout,
        pool=pool,
        env={str(k): str(v) for k, v in (env or {}).items()},
        cwd=os.fspath(cwd) if cwd is not None else None,
        after=_names(after, "after", where),
    )


def step(func: Callable[..., Any] | None = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Make a Python function a step: `@step` or `@step(retries=2, timeout=600, ...)`.

    A parameter named after another step of the job is a dependency and receives
    that step's output; `params` receives the run parameters and `context` a
    StepContext (run id, attempt number, ...). The return value is persisted
    (pickled) for downstream steps and retries.
    """
    file, line = _caller_location()

    def decorate(fn: Callable[..., Any]) -> StepDef:
        if not callable(fn):
            raise JobDefinitionError(f"{file}:{line}: @step decorates a function, got {fn!r}")
        code = getattr(fn, "__code__", None)
        fn_file = code.co_filename if code else file
        fn_line = code.co_firstlineno if code else line
        where = f"{fn_file}:{fn_line}: step '{name or fn.__name__}'"
        signature = inspect.signature(fn)
        parameters, required = [], set()
        for parameter in signature.parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            parameters.append(parameter.name)
            if parameter.default is parameter.empty:
                required.add(parameter.name)
        return StepDef(name=name or fn.__name__, func=fn, parameters=tuple(parameters),
                       required=frozenset(required), file=fn_file, line=fn_line,
                       **_options(where, **options))

    if func is not None:
        return decorate(func)
    return decorate


def shell(name: str, command: str, **options: Any) -> StepDef:
    """A step that runs `command` through bash.

    Upstream outputs arrive as environment variables STEPLINE_IN_<STEP> (text as
    is, other values as JSON); run parameters as STEPLINE_PARAM_<KEY>. Whatever
    the command writes to the file named by $STEPLINE_OUTPUT becomes its output.
    """
    file, line = _caller_location()
    where = f"{file}:{line}: shell step '{name}'"
    if not isinstance(name, str) or not name:
        raise JobDefinitionError(f"{file}:{line}: shell() needs a step name as its first argument, got {name!r}")
    if not isinstance(command, str) or not command.strip():
        raise JobDefinitionError(f"{where}: the command must be a non-empty string, got {command!r}")
    return StepDef(name=name, command=command, file=file, line=line, **_options(where, **options))


def job(name: str, steps: Iterable[StepDef], *, schedule: str | None = None, every: str | None = None,
        timezone: str | None = None, params: Mapping[str, Any] | None = None,
        description: str = "") -> JobDef:
    """A named DAG of steps, optionally on a cron `schedule` (in `timezone`) or `every` interval."""
    file, line = _caller_location()
    where = f"{file}:{line}: job '{name}'"
    if not isinstance(name, str) or not name:
        raise JobDefinitionError(f"{file}:{line}: job() needs a name as its first argument, got {name!r}")
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise JobDefinitionError(f"{where}: steps must be a list of steps, got {steps!r}")
    step_defs = tuple(steps)
    for item in step_defs:
        if not isinstance(item, StepDef):
            hint = " (did you forget @step on it?)" if callable(item) else ""
            raise JobDefinitionError(f"{where}: {item!r} is not a step{hint}")
    if schedule is not None and every is not None:
        raise JobDefinitionError(f"{where}: give either schedule= (cron) or every= (interval), not both")
    if params is not None and not isinstance(params, Mapping):
        raise JobDefinitionError(f"{where}: params must be a dict of default run parameters")
    return JobDef(name=name, steps=step_defs, schedule=schedule, every=every, timezone=timezone,
                  params={str(k): str(v) for k, v in (params or {}).items()},
                  description=description, file=file, line=line)
