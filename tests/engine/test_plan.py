"""Planning a job: DAG order, dependencies and the plan's JSON snapshot, for small and very wide jobs."""
from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest

from engine.definition import JobDef, StepDef
from engine.loader import topological_order
from engine.plan import JobPlan, plan_job


def _first_free_step_order(job_def: JobDef) -> list[str]:
    """The rule topological_order keeps, spelled out: each position takes the first step in file order
    whose dependencies are all placed."""
    remaining = {s.name: set(job_def.dependencies(s)) - {s.name} for s in job_def.steps}
    order: list[str] = []
    while remaining:
        name = next((n for n, deps in remaining.items() if not deps), None)
        if name is None:
            raise ValueError("cycle")
        del remaining[name]
        order.append(name)
        for deps in remaining.values():
            deps.discard(name)
    return order


def _random_dag(rng: random.Random, size: int) -> JobDef:
    """Steps listed in a shuffled file order, each waiting on a few steps made before it."""
    made: list[StepDef] = []
    for index in range(size):
        upstream = rng.sample([s.name for s in made], k=min(len(made), rng.randint(0, 3)))
        made.append(StepDef(name=f"s{index}", command="true", after=tuple(upstream)))
    rng.shuffle(made)
    return JobDef(name="j", steps=tuple(made))


@pytest.mark.parametrize("seed", range(20))
def test_topological_order_places_the_first_free_step_in_file_order_each_time(seed):
    job_def = _random_dag(random.Random(seed), size=40)
    assert topological_order(job_def) == _first_free_step_order(job_def)


def test_topological_order_of_a_cycle_is_an_error():
    job_def = JobDef(name="j", steps=(StepDef(name="a", command="true", after=("b",)),
                                      StepDef(name="b", command="true", after=("a",)),
                                      StepDef(name="c", command="true")))
    with pytest.raises(ValueError, match="cycle"):
        topological_order(job_def)


def test_dependencies_are_parameters_naming_steps_then_after_without_repeating_them():
    def load(extract, transform, params):
        return None

    steps = (StepDef(name="extract", command="true"), StepDef(name="transform", command="true"),
             StepDef(name="load", func=load, parameters=("extract", "transform", "params"),
                     after=("transform", "audit")), StepDef(name="audit", command="true"))
    job_def = JobDef(name="j", steps=steps)
    assert job_def.dependencies(steps[2]) == ("extract", "transform", "audit")
    assert job_def.dependencies(steps[2], set(job_def.step_names)) == ("extract", "transform", "audit")


def test_a_wide_fan_out_and_fan_in_is_planned_root_first_and_sink_last():
    width = 3000
    root = StepDef(name="root", command="true")
    middle = [StepDef(name=f"s{i}", command="true", after=("root",)) for i in range(width)]
    sink = StepDef(name="sink", command="true", after=tuple(s.name for s in middle))
    plan = plan_job(JobDef(name="wide", steps=(sink, *reversed(middle), root), file="/jobs/wide.py"))
    assert [s.name for s in plan.steps] == ["root"] + [f"s{i}" for i in reversed(range(width))] + ["sink"]
    assert len(plan.steps[-1].upstream) == width
    assert plan.downstream()["root"] == [f"s{i}" for i in reversed(range(width))]


def test_the_plan_snapshot_is_every_field_in_order_and_reads_back_equal():
    def report(transform, context):
        return None

    job_def = JobDef(name="j", file="/jobs/j.py", params={"day": "today"}, schedule="@daily",
                     steps=(StepDef(name="transform", command="echo hi", env={"A": "1"}, cwd="sub", retries=2,
                                    retry_delay_s=1.5, backoff=2.0, jitter=0.5, timeout_s=30.0, pool="db",
                                    line=3),
                            StepDef(name="report", func=report, parameters=("transform", "context"), line=7)))
    plan = plan_job(job_def)
    assert plan.to_json() == json.dumps(asdict(plan), separators=(",", ":"))
    assert JobPlan.from_json(plan.to_json()) == plan
