"""The console's read layer: bundles of engine.query calls made in worker threads.

Each function runs off the UI thread, calls only engine.query, and returns plain values the
screen applies on the UI thread. Each worker thread closes its own SQLite connection when
done (peewee keeps one connection per thread, and Textual starts a thread per worker).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from engine import query, store
from engine.errors import SteplineError
from engine.query import AttemptView, CommandView, EngineStatus, JobSummary, RunSummary, RunView

PAGE_SIZE = 50
"""Runs loaded per page under a job; a "more" line loads the next page."""
FILTERS = ("all", "failed", "running")
FILTER_STATES: dict[str, tuple[str, ...]] = {"failed": ("failed",), "running": ("running", "queued")}

T = TypeVar("T")


def closing_connection(read: Callable[[], T]) -> T:
    """Run `read` and close this thread's database connection afterwards."""
    try:
        return read()
    finally:
        store.db.close()


@dataclass(frozen=True, slots=True)
class Catalog:
    jobs: list[JobSummary]
    problems: list[tuple[str, int, str]]
    last_runs: dict[str, RunSummary]


@dataclass(frozen=True, slots=True)
class Delta:
    """What changed since the last poll."""
    last_event_id: int
    status: EngineStatus
    counts: dict[str, int]
    runs: dict[int, RunSummary] = field(default_factory=dict)
    """Runs touched by new events (new runs included)."""
    views: dict[int, RunView] = field(default_factory=dict)
    """Full views of touched runs whose steps the tree shows."""
    catalog: Catalog | None = None
    """The job catalogue, when it or a schedule changed."""
    acked: list[CommandView] = field(default_factory=list)
    """Commands the engine acknowledged since the last poll."""
    steps_touched: set[tuple[int, str]] = field(default_factory=set)
    abandoned: frozenset[int] | None = None
    """Running runs whose engine is gone (None: not known, as when the poll failed)."""


def load_catalog() -> Catalog:
    return Catalog(jobs=query.jobs(), problems=query.load_problems(), last_runs=query.last_run_by_job())


AUTO_EXPAND_JOBS = 6
"""Up to this many jobs are all expanded at start; beyond, only jobs whose last run failed or runs."""


@dataclass(frozen=True, slots=True)
class Start:
    """Everything the first screen shows, read in one go: the console opens in one round trip."""
    catalog: Catalog
    delta: Delta
    """The engine's state, and the event id to poll from."""
    pages: dict[str, tuple[list[RunSummary], bool]]
    """The first page of runs (and whether there are more) of each job expanded at start."""
    focus: RunView | None
    """The newest failed run among the jobs' last runs, which the console opens on."""
    focus_step: str | None
    """Its first failed step."""
    focus_attempts: list[AttemptView]
    """That step's attempts."""


def jobs_to_expand(catalog: Catalog) -> list[str]:
    """Jobs open at start: all when they are few, else those whose last run failed or is active."""
    names = sorted({j.name for j in catalog.jobs} | set(catalog.last_runs))
    if len(names) <= AUTO_EXPAND_JOBS:
        return names
    return [name for name in names if name in catalog.last_runs
            and catalog.last_runs[name].state in ("failed", "running", "queued")]


def load_start(now: float) -> Start:
    """Everything the first screen needs, and the event id to poll from."""
    last_id = query.last_event_id()
    catalog = load_catalog()
    delta = Delta(last_event_id=last_id, status=query.engine_status(now), counts=query.run_counts(now))
    pages = {name: load_runs(name, "all", None) for name in jobs_to_expand(catalog)}
    failed = [run for run in catalog.last_runs.values() if run.state == "failed"]
    focus, focus_step, attempts = None, None, []
    if failed:
        try:
            focus = query.get_run(max(failed, key=lambda r: r.id).id)
        except SteplineError:  # deleted since the catalogue was read: open on the tree's top
            focus = None
    if focus is not None:
        focus_step = next((s.name for s in focus.steps if s.state == "failed"), None)
        attempts = query.attempts(focus.id, focus_step) if focus_step else []
    return Start(catalog, delta, pages, focus, focus_step, attempts)


def poll(last_id: int, now: float, loaded_runs: Iterable[int], pending_commands: Iterable[int],
         limit: int = 1000, counts: dict[str, int] | None = None) -> Delta:
    """What changed since event `last_id`; `counts` (the run counts known) are reused when no event came."""
    events = query.events_since(last_id, limit=limit)
    new_last = events[-1].id if events else last_id
    touched = {e.run_id for e in events if e.run_id is not None}
    steps = {(e.run_id, e.step) for e in events if e.run_id is not None and e.step}
    wants_catalog = any(e.kind in ("catalog", "schedule") for e in events)
    runs: dict[int, RunSummary] = {}
    for run_id in sorted(touched):
        try:
            runs[run_id] = query.run_summary(run_id)
        except SteplineError:
            continue
    loaded = set(loaded_runs)
    views = {run_id: query.get_run(run_id) for run_id in sorted(touched & loaded) if run_id in runs}
    acked = []
    for command_id in pending_commands:
        try:
            view = query.command(command_id)
        except Exception:  # the command row is gone (a reset home): nothing to wait for
            continue
        if view.state != "pending":
            acked.append(view)
    catalog = load_catalog() if wants_catalog else None
    # Counting runs scans the state index (20 ms at 100,000 runs): only when an event can have changed them.
    counts = query.run_counts(now) if events or counts is None else counts
    return Delta(last_event_id=new_last, status=query.engine_status(now), counts=counts, runs=runs,
                 views=views, catalog=catalog, acked=acked, steps_touched=steps, abandoned=abandoned_runs())


def abandoned_runs() -> frozenset[int]:
    """Running runs whose engine was killed: they stay "running" until an engine starts and closes them."""
    owners = query.running_run_owners()
    if not owners:
        return frozenset()
    from engine.recovery import abandoned_runs as of_owners  # psutil and the executor: only while runs run

    return of_owners(owners)


def load_runs(job: str, run_filter: str, before_id: int | None) -> tuple[list[RunSummary], bool]:
    """One page of a job's runs, newest first, and whether there are more."""
    states = FILTER_STATES.get(run_filter)
    if states is None:
        page = query.list_runs(job=job, limit=PAGE_SIZE + 1, before_id=before_id)
    else:
        merged: list[RunSummary] = []
        for state in states:
            merged += query.list_runs(job=job, state=state, limit=PAGE_SIZE + 1, before_id=before_id)
        page = sorted(merged, key=lambda r: r.id, reverse=True)
    return page[:PAGE_SIZE], len(page) > PAGE_SIZE


GO_TO_RUN_MAX = 2000
"""Most runs `/#N` loads to reach an old run: past that, the tree would hold too much; `stepline show N`."""


def load_runs_down_to(job: str, run_filter: str, before_id: int | None,
                      down_to: int) -> tuple[list[RunSummary], bool] | None:
    """A job's runs from before `before_id` (None: the newest) down to run `down_to`, newest first, and
    whether older ones remain; None when that is more than GO_TO_RUN_MAX runs."""
    states: tuple[str | None, ...] = FILTER_STATES.get(run_filter) or (None,)
    runs: list[RunSummary] = []
    more = False
    for state in states:
        older = query.count_runs(job=job, state=state, before_id=down_to)
        wanted = query.count_runs(job=job, state=state, before_id=before_id) - older
        if wanted > GO_TO_RUN_MAX:
            return None
        runs += query.list_runs(job=job, state=state, limit=max(1, wanted), before_id=before_id)
        more = more or older > 0
    return sorted((r for r in runs if r.id >= down_to), key=lambda r: r.id, reverse=True), more


def load_attempts(run_id: int, step: str) -> list[AttemptView]:
    return query.attempts(run_id, step)


def load_timeline(run_id: int) -> tuple[RunView, dict[str, list[AttemptView]]]:
    view = query.get_run(run_id)
    by_step = query.run_attempts(run_id)
    return view, {s.name: by_step.get(s.name, []) for s in view.steps}


def write_command(kind: str, **fields: object) -> int:
    """Write one command for the engine (store.add_command is the console's only write)."""
    return store.add_command(kind, **fields)  # type: ignore[arg-type]
