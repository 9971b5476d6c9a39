"""Fixed runs for the timeline and graph tests, built as plain values (no database), and a
tiny App that opens one screen on mount so snap_compare and Pilot can drive it."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from textual.app import App
from textual.screen import Screen

from engine.plan import JobPlan, StepPlan
from engine.query import AttemptView, RunSummary, RunView, StepView
from engine.states import FailureReason

START = datetime(2024, 5, 1, 2, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def plan(job: str, upstream: dict[str, tuple[str, ...]]) -> JobPlan:
    """A plan whose steps are given in DAG order with their upstream steps."""
    return JobPlan(job=job, file=f"/jobs/{job}.py",
                   steps=tuple(StepPlan(name=name, kind="shell", upstream=ups) for name, ups in upstream.items()))


def attempt(number: int, state: str, start: float, end: float | None, exit_code: int | None = None,
            reason: str | None = None) -> AttemptView:
    return AttemptView(number=number, state=state, started_at=at(start), ended_at=None if end is None else at(end),
                       pid=1000 + number, exit_code=exit_code, signal=None, cpu_s=None, peak_rss_bytes=None,
                       log_path=f"/logs/{number}.log", reason=FailureReason(reason) if reason else None)


def step(job_plan: JobPlan, name: str, state: str, tries: list[AttemptView], ended: float | None = None,
         waiting_for: str | None = None, reason: str | None = None) -> StepView:
    downstream = job_plan.downstream()
    position = [s.name for s in job_plan.steps].index(name)
    last = tries[-1] if tries else None
    live = state in ("running", "waiting")  # the runner clears ended_at while a step waits for its retry
    return StepView(name=name, position=position, state=state, kind="shell", waiting_for=waiting_for,
                    attempts=len(tries), started_at=last.started_at if last else None,
                    ended_at=at(ended) if ended is not None else (last.ended_at if last and not live else None),
                    reason=FailureReason(reason) if reason else None, has_output=False, output_preview=None,
                    upstream=job_plan.step(name).upstream, downstream=tuple(downstream[name]))


def run_view(run_id: int, job_plan: JobPlan, state: str, steps: list[StepView], end: float | None) -> RunView:
    summary = RunSummary(id=run_id, job=job_plan.job, state=state, trigger="schedule", created_at=START,
                         scheduled_for=START, started_at=START, ended_at=None if end is None else at(end),
                         reason=None, params={})
    return RunView(run=summary, steps=tuple(steps), plan=job_plan)


def failed_run() -> tuple[RunView, dict[str, list[AttemptView]], datetime]:
    """nightly_sales run 12: extract ✓ → transform ✓ (retried once) → load_a ✓ / load_b ✗ → report ⊘."""
    job_plan = plan("nightly_sales", {
        "extract": (), "transform": ("extract",), "load_a": ("transform",), "load_b": ("transform",),
        "report": ("load_a", "load_b"),
    })
    tries = {
        "extract": [attempt(1, "succeeded", 0, 6, 0)],
        "transform": [attempt(1, "failed", 6, 10, 1, "exit code 1"), attempt(2, "succeeded", 15, 31, 0)],
        "load_a": [attempt(1, "succeeded", 31, 52, 0)],
        # load_b waited 3s for a slot in the warehouse pool before it started.
        "load_b": [attempt(1, "failed", 34, 41, 3, "exit code 3")],
        "report": [],
    }
    steps = [
        step(job_plan, "extract", "succeeded", tries["extract"]),
        step(job_plan, "transform", "succeeded", tries["transform"]),
        step(job_plan, "load_a", "succeeded", tries["load_a"]),
        step(job_plan, "load_b", "failed", tries["load_b"], reason="exit code 3"),
        step(job_plan, "report", "upstream_failed", [], ended=41, reason="upstream step 'load_b' did not succeed"),
    ]
    return run_view(12, job_plan, "failed", steps, end=52), tries, at(60)


def running_run() -> tuple[RunView, dict[str, list[AttemptView]], datetime]:
    """A run in progress, one step in each live state: running, waiting for a retry, waiting, pending."""
    job_plan = plan("hourly_feeds", {
        "fetch": (), "parse": ("fetch",), "audit": ("fetch",), "publish": ("parse", "audit"),
        "cleanup": ("publish",),
    })
    tries = {
        "fetch": [attempt(1, "succeeded", 0, 20, 0)],
        "parse": [attempt(1, "running", 20, None)],
        "audit": [attempt(1, "failed", 20, 26, 2, "exit code 2")],
        "publish": [],
        "cleanup": [],
    }
    steps = [
        step(job_plan, "fetch", "succeeded", tries["fetch"]),
        step(job_plan, "parse", "running", tries["parse"]),
        step(job_plan, "audit", "waiting", tries["audit"], waiting_for="retry 1/3 at 02:00:50"),
        step(job_plan, "publish", "waiting", [], waiting_for="upstream"),
        step(job_plan, "cleanup", "pending", []),
    ]
    return run_view(13, job_plan, "running", steps, end=None), tries, at(40)


class ScreenApp(App[None]):
    """Opens one screen on mount, nothing else."""

    def __init__(self, make_screen: Callable[[], Screen[None]]) -> None:
        super().__init__()
        self.make_screen = make_screen

    def on_mount(self) -> None:
        self.push_screen(self.make_screen())


def screen_text(app: App[object]) -> str:
    """What the terminal shows, as plain text lines."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip).rstrip() for strip in strips)
