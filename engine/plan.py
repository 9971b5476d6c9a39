"""The frozen shape of a job as a run sees it: steps, dependencies and options.

A plan is built from a JobDef when a run is created and stored with the run as
JSON (its snapshot), so history, retries and the console keep the DAG the run
started with even after the job file changes. The step code itself is imported
from the job file when an attempt starts, so a fixed step can be retried.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from engine.definition import JobDef, StepDef


@dataclass(frozen=True, slots=True)
class StepPlan:
    name: str
    kind: str
    """"python" or "shell"."""
    upstream: tuple[str, ...]
    """Steps this one waits on (parameter dependencies first, then after=)."""
    inputs: tuple[str, ...] = ()
    """Upstream steps whose outputs this step receives."""
    command: str | None = None
    retries: int = 0
    retry_delay_s: float = 0.0
    backoff: float = 1.0
    jitter: float = 0.0
    max_retry_delay_s: float = 3600.0
    timeout_s: float | None = None
    pool: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class JobPlan:
    job: str
    file: str
    """Absolute path of the job file (the worker imports it for the step code)."""
    steps: tuple[StepPlan, ...]
    """In DAG order: every step after its upstream steps."""
    schedule: str | None = None
    every: str | None = None
    timezone: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    def step(self, name: str) -> StepPlan:
        for step_plan in self.steps:
            if step_plan.name == name:
                return step_plan
        raise KeyError(name)

    def downstream(self) -> dict[str, list[str]]:
        """Direct downstream steps of every step."""
        result: dict[str, list[str]] = {s.name: [] for s in self.steps}
        for step_plan in self.steps:
            for upstream in step_plan.upstream:
                result[upstream].append(step_plan.name)
        return result

    def all_downstream(self, name: str) -> list[str]:
        """Every step that (transitively) waits on `name`, in DAG order."""
        direct = self.downstream()
        found: set[str] = set()
        todo = list(direct[name])
        while todo:
            current = todo.pop()
            if current not in found:
                found.add(current)
                todo += direct[current]
        return [s.name for s in self.steps if s.name in found]

    def to_json(self) -> str:
        # Not asdict(): it deep-copies every value on the way, more than half the cost of submitting
        # a run of a big job; these values are plain JSON types already (tuples become lists).
        data = {name: getattr(self, name) for name in _JOB_FIELDS}
        data["steps"] = [{name: getattr(step_plan, name) for name in _STEP_FIELDS} for step_plan in self.steps]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JobPlan:
        data: dict[str, Any] = json.loads(text)
        steps = tuple(StepPlan(**{**s, "upstream": tuple(s["upstream"]), "inputs": tuple(s["inputs"])})
                      for s in data.pop("steps"))
        return cls(steps=steps, **data)


_JOB_FIELDS = tuple(f.name for f in fields(JobPlan))
_STEP_FIELDS = tuple(f.name for f in fields(StepPlan))


def plan_job(job_def: JobDef) -> JobPlan:
    """The plan of a validated job, steps in DAG order."""
    from engine.loader import topological_order

    order = topological_order(job_def)
    names = set(job_def.step_names)
    by_name: dict[str, StepDef] = {}
    for step_def in job_def.steps:
        by_name.setdefault(step_def.name, step_def)  # the first of a name, as JobDef.step() finds it
    steps = []
    for name in order:
        step_def = by_name[name]
        upstream = job_def.dependencies(step_def, names)
        inputs = (upstream if step_def.kind == "shell"
                  else tuple(p for p in step_def.parameters if p in upstream))
        steps.append(StepPlan(
            name=name, kind=step_def.kind, upstream=upstream, inputs=inputs, command=step_def.command,
            retries=step_def.retries, retry_delay_s=step_def.retry_delay_s, backoff=step_def.backoff,
            jitter=step_def.jitter, max_retry_delay_s=step_def.max_retry_delay_s,
            timeout_s=step_def.timeout_s, pool=step_def.pool, env=dict(step_def.env), cwd=step_def.cwd,
            line=step_def.line))
    return JobPlan(job=job_def.name, file=str(_absolute(job_def.file)), steps=tuple(steps),
                   schedule=job_def.schedule, every=job_def.every, timezone=job_def.timezone,
                   params=dict(job_def.params))


def _absolute(path: str) -> str:
    import os
    return os.path.abspath(path)
