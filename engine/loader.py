"""Import job files one by one, validate each job's DAG and collect every problem.

A broken file (syntax error, import error, bad job) is reported with file:line
and a sentence saying what to do; it never stops the other files from loading. The
files are imported in a reader process (engine/reader.py), so neither a file whose
import crashes or exits the process nor one whose import never ends (each gets
IMPORT_TIMEOUT_S, as Airflow's DAG files get theirs) takes the caller down.
"""
from __future__ import annotations

import difflib
import heapq
import os
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from engine.definition import RESERVED_PARAMETERS, JobDef, StepDef, collecting_jobs
from engine.errors import JobDefinitionError
from engine.humanize import display_path
from engine.jobfile import ExitAtImport, import_job_file, import_timeout_s, is_from
from engine.worker import env_key


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    """Job file, as the user names it (relative when possible)."""
    line: int
    """1-based line, 0 when unknown."""
    message: str
    """What is wrong and what to do."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass(frozen=True, slots=True)
class LoadResult:
    jobs: dict[str, JobDef] = field(default_factory=dict)
    """Valid jobs by name."""
    problems: tuple[Problem, ...] = ()
    """Every problem of every file, in file order."""
    files: tuple[str, ...] = ()
    """Job files looked at."""


def job_files(jobs_dir: Path) -> list[Path]:
    return sorted(p for p in jobs_dir.glob("*.py") if not p.name.startswith(("_", ".")) and p.is_file())


def load_jobs(jobs_dir: str | os.PathLike[str], output: str | None = None,
              keep: dict[str, str] | None = None, memory: Path | None = None, fresh: bool = False) -> LoadResult:
    """Load every job file in `jobs_dir` (not recursive; files starting with _ are helpers), each imported in
    the reader process (engine/reader.py). `output`: a file for what job files print at import (default:
    stderr). Two files defining one job name: the first file (by name) keeps it, or the file `keep` names
    for it (absolute path by job name: a running engine's, so a new file cannot take over a job it runs);
    the other file's definition is the problem. `memory` and `fresh`: see reader.read_job_files."""
    keep = keep or {}
    folder = Path(jobs_dir)
    if not folder.is_dir():
        what = ("is a file, not the folder of job files" if folder.exists() else
                "jobs directory not found")
        problem = Problem(display_path(folder), 0, f"{what}; pass --jobs DIR or set STEPLINE_JOBS")
        return LoadResult(problems=(problem,))
    jobs: dict[str, JobDef] = {}
    problems: list[Problem] = []
    from engine.reader import read_job_files  # imports this module: loaded on first use

    files = job_files(folder)
    for file_jobs, file_problems in read_job_files(files, import_timeout_s(), output, memory, fresh):
        problems += file_problems
        for job_def in file_jobs:
            if job_def.name in jobs:
                kept, other = jobs[job_def.name], job_def
                if keep.get(job_def.name) == os.path.abspath(job_def.file) != os.path.abspath(kept.file):
                    kept, other = job_def, kept
                    jobs[job_def.name] = job_def
                problems.append(Problem(display_path(other.file), other.line,
                                        f"job '{other.name}' is already defined at "
                                        f"{display_path(kept.file)}:{kept.line}; rename one of them"))
                continue
            jobs[job_def.name] = job_def
    return LoadResult(jobs=jobs, problems=tuple(problems), files=tuple(display_path(p) for p in files))


def load_file(path: Path) -> tuple[list[JobDef], list[Problem]]:
    """The valid jobs of one file and the problems found in it."""
    shown = display_path(path)
    try:
        with collecting_jobs(path) as made:
            module = import_job_file(path)
    except KeyboardInterrupt:
        raise
    except SyntaxError as error:
        where = display_path(error.filename) if error.filename else shown
        return [], [Problem(where, error.lineno or 0,
                            f"syntax error: {error.msg}; fix the file (other job files still load)")]
    except JobDefinitionError as error:
        return [], [_definition_problem(path, error)]
    except BaseException as error:  # a job file may raise anything, SystemExit included
        return [], [Problem(shown, _line_in(path, error), _import_failure(error))]

    job_defs = [j for j in made if is_from(j.file, path)]
    problems: list[Problem] = []
    valid: list[JobDef] = []
    seen: dict[str, JobDef] = {}
    for job_def in job_defs:
        if job_def.name in seen:
            problems.append(Problem(shown, job_def.line, f"job '{job_def.name}' is already defined at line "
                                    f"{seen[job_def.name].line}; rename one of them"))
            continue
        seen[job_def.name] = job_def
        job_problems = validate_job(job_def)
        problems += [p for p in job_problems if p not in problems]  # a step shared by two jobs: once
        if not job_problems:
            valid.append(job_def)
    used = {(s.file, s.line) for j in job_defs for s in j.steps}
    for value in vars(module).values():
        if isinstance(value, StepDef) and is_from(value.file, path) and (value.file, value.line) not in used:
            used.add((value.file, value.line))
            problems.append(Problem(display_path(value.file), value.line,
                                    f"step '{value.name}' is not part of any job; add it to a job's list of "
                                    "steps or remove it"))
            problems += [Problem(display_path(value.file), value.line, f"step '{_short(value.name)}': {message}")
                         for message in value.problems]
    if not job_defs and not problems:
        problems.append(Problem(shown, 0, "defines no job; add `name = job(\"name\", [steps])` "
                                "or start the file name with _ if it is a helper module"))
    return valid, problems


def validate_job(job_def: JobDef) -> list[Problem]:
    """Every problem of one job: bad arguments, duplicate or unknown steps, cycles, schedule, time zone."""
    shown = display_path(job_def.file)
    problems: list[Problem] = []

    def report(step_def: StepDef | None, message: str) -> None:
        if step_def is None:
            problems.append(Problem(shown, job_def.line, message))
        else:
            problems.append(Problem(display_path(step_def.file), step_def.line, message))

    for message in job_def.problems:
        report(None, f"job '{job_def.name}': {message}")
    if not job_def.steps and not job_def.problems:
        report(None, f"job '{job_def.name}' has no steps; list at least one step")
    by_name: dict[str, StepDef] = {}
    for step_def in job_def.steps:
        for message in step_def.problems:
            report(step_def, f"step '{_short(step_def.name)}': {message}")
        if step_def.name in by_name:
            first = by_name[step_def.name]
            report(step_def, f"step '{step_def.name}' appears twice in job '{job_def.name}' "
                             f"(also at {display_path(first.file)}:{first.line}); give one of them another name")
            continue
        by_name[step_def.name] = step_def
    names = list(by_name)
    for step_def in by_name.values():
        for parameter in sorted(step_def.required - RESERVED_PARAMETERS):
            if parameter == step_def.name:
                report(step_def, f"step '{step_def.name}' takes a parameter named after itself, so it would "
                                 "wait on itself; rename the parameter or give it a default")
            elif parameter not in by_name:
                report(step_def, f"step '{step_def.name}' takes a parameter '{parameter}', which is not a step "
                                 f"of job '{job_def.name}'{_did_you_mean(parameter, names)}; a parameter "
                                 "names an upstream step, or is `params` or `context`, or has a default")
        if step_def.command is not None:  # a shell step reads its upstream outputs as STEPLINE_IN_<STEP>
            seen: dict[str, str] = {}
            for upstream in step_def.after:
                earlier = seen.setdefault(env_key(upstream), upstream)
                if earlier != upstream:
                    report(step_def, f"steps '{earlier}' and '{upstream}' both reach shell step '{step_def.name}' as "
                                     f"$STEPLINE_IN_{env_key(upstream)}, so one output would hide the other; "
                                     "rename one of them")
        for upstream in step_def.after:
            if upstream == step_def.name:
                report(step_def, f"step '{step_def.name}' waits on itself; remove '{upstream}' from its after=")
            elif upstream not in by_name:
                report(step_def, f"step '{step_def.name}' waits on '{upstream}', which is not a step of "
                                 f"job '{job_def.name}'{_did_you_mean(upstream, names)}")
    all_names = set(job_def.step_names)
    graph = {n: tuple(d for d in job_def.dependencies(s, all_names) if d != n and d in by_name)
             for n, s in by_name.items()}
    cycle = find_cycle(graph)
    if cycle:
        report(by_name[cycle[0]], f"job '{job_def.name}' has a cycle: {' → '.join(cycle)} (each step waits "
                                  "on the one before it); remove one of these dependencies")
    # Imported here: engine.timing pulls in apscheduler and tzlocal, which the preloaded worker
    # must not pay for in every forked attempt (the loader itself is not imported there either).
    from engine.timing import ScheduleError, cron_trigger, parse_every, parse_zone

    zone = job_def.timezone
    try:
        parse_zone(zone)
    except ScheduleError as error:
        report(None, f"job '{job_def.name}': {error}")
        zone = "UTC"  # still check the schedule, without reporting the zone twice
    try:
        if job_def.schedule is not None:
            trigger = cron_trigger(job_def.schedule, zone)
            if trigger.get_next_fire_time(None, datetime.now(timezone.utc)) is None:
                report(None, f"job '{job_def.name}': schedule '{job_def.schedule}' never fires (no date matches "
                             "its day and month, such as 31 February); fix the day or the month")
    except ScheduleError as error:
        report(None, f"job '{job_def.name}': {error}")
    try:
        if job_def.every is not None:
            parse_every(job_def.every)
    except ScheduleError as error:
        report(None, f"job '{job_def.name}': {error}")
    return problems


def find_cycle(dependencies: dict[str, tuple[str, ...]]) -> list[str]:
    """One cycle as [a, b, c, a] (a waits on ... which waits on a), or [] if the graph is a DAG."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(dependencies, WHITE)
    order = {node: index for index, node in enumerate(dependencies)}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        color[node] = GREY
        stack.append(node)
        for upstream in dependencies.get(node, ()):
            if color.get(upstream) == GREY:
                cycle = stack[stack.index(upstream):] + [upstream]
                return list(reversed(cycle))
            if color.get(upstream) == WHITE:
                found = visit(upstream)
                if found:
                    return found
        stack.pop()
        color[node] = BLACK
        return []

    for node in dependencies:
        if color[node] == WHITE:
            found = visit(node)
            if found:
                # Start at the cycle's step that comes first in the file, so the message is stable.
                ring = found[:-1]
                first = min(range(len(ring)), key=lambda i: order.get(ring[i], len(order)))
                ring = ring[first:] + ring[:first]
                return ring + [ring[0]]
    return []


def topological_order(job_def: JobDef) -> list[str]:
    """Step names so that every step comes after its dependencies; ties keep file order.

    Each position takes the first step in file order whose dependencies are all placed,
    so a file already listed in a valid order comes back unchanged.
    """
    names = set(job_def.step_names)
    remaining = {s.name: set(job_def.dependencies(s, names)) - {s.name} for s in job_def.steps}
    file_order = list(remaining)
    position = {name: index for index, name in enumerate(file_order)}
    waiting: dict[str, list[str]] = {name: [] for name in file_order}
    for name, deps in remaining.items():
        for dep in deps:
            if dep in waiting:
                waiting[dep].append(name)
    # The positions of the steps whose dependencies are all placed: the smallest goes next.
    free = [position[name] for name, deps in remaining.items() if not deps]
    heapq.heapify(free)
    order: list[str] = []
    while free:
        name = file_order[heapq.heappop(free)]
        order.append(name)
        for downstream in waiting[name]:
            deps = remaining[downstream]
            deps.discard(name)
            if not deps:
                heapq.heappush(free, position[downstream])
    if len(order) < len(remaining):
        raise ValueError(f"job '{job_def.name}' has a cycle")
    return order


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _line_in(path: Path, error: BaseException) -> int:
    """The deepest line of `path` in the traceback of `error` (0 if none)."""
    return _deepest_line(traceback.extract_tb(error.__traceback__), path)


def _deepest_line(frames: traceback.StackSummary, path: Path) -> int:
    """The line of the innermost of `frames` (outermost first) that runs in `path` (0 if none)."""
    line = 0
    target = str(path.resolve())
    for frame in frames:
        if os.path.abspath(frame.filename) == target:
            line = frame.lineno or 0
    return line


def _import_failure(error: BaseException) -> str:
    """What went wrong importing a job file, and what to do about it."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        return (f"the file imports '{error.name}', which is not installed; install the package that provides "
                "it into the Python environment stepline runs in, or fix the import")
    what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, ExitAtImport):
        return str(error)
    if isinstance(error, ImportError):
        return f"importing the file failed with {what}; check the import and the installed package's version"
    return f"importing the file failed with {what}; fix the file (other job files still load)"


def _definition_problem(path: Path, error: JobDefinitionError) -> Problem:
    # JobDefinitionError messages start with "file:line: " already; split it back out.
    text = str(error)
    head, _, rest = text.partition(": ")
    file, _, line = head.rpartition(":")
    if file and line.isdigit():
        return Problem(display_path(file), int(line), rest)
    return Problem(display_path(path), _line_in(path, error), text)


def _short(name: str) -> str:
    """A name as the head of a problem line: a 300-character one would bury the message after it."""
    return name if len(name) <= 60 else f"{name[:28]}…{name[-28:]}"
