"""Fixed console data for snapshots: rows written through the engine's store helpers at fixed times.

Run ids, times, durations and log lines are the same on every machine and every run.
"""
from __future__ import annotations

from engine import store
from engine.plan import JobPlan, StepPlan
from tests.conftest import Harness

T0 = 1795752000.0
"""2026-11-27 04:00:00 UTC; the frozen clock shows T0 + NOW_S (06:00:30)."""
NOW_S = 2 * 3600 + 30

TRACEBACK = """Traceback (most recent call last):
  File "/srv/jobs/sales.py", line 14, in transform
    rows = [check(row) for row in extract]
  File "/srv/jobs/sales.py", line 9, in check
    raise ValueError(f"bad row {row.id}: price is negative")
ValueError: bad row 17: price is negative"""


def _log(harness: Harness, run_id: int, step: str, attempt: int, lines: list[tuple[float, str]]) -> str:
    path = harness.home.attempt_log(run_id, step, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    import time
    with open(path, "w") as handle:
        for at, text in lines:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z "
            handle.write(stamp + text + "\n")
    return str(path)


def _attempt(harness: Harness, run_id: int, step_ids: dict[str, int], step: str, number: int, start: float,
             end: float, state: str, outcome: dict, changes: list, log: list[tuple[float, str]]) -> None:
    path = _log(harness, run_id, step, number, log)
    attempt_id = store.start_attempt(run_id, step_ids[step], step, number, 4000 + number, None, path, start)
    store.finish_attempt(run_id, attempt_id, state, outcome, changes, end)


def fill(harness: Harness) -> None:
    """nightly_sales: run 1 succeeded yesterday-ish, run 2 failed at 03:00 in transform after a retry."""
    sales = JobPlan(job="nightly_sales", file="/srv/jobs/sales.py", schedule="0 3 * * *", steps=(
        StepPlan("extract", "python", ()), StepPlan("transform", "python", ("extract",), inputs=("extract",),
                                                    retries=1, retry_delay_s=5),
        StepPlan("load", "shell", ("transform",), command="psql -f load.sql")))
    hello = JobPlan(job="hello", file="/srv/jobs/hello.py", every="15m", steps=(StepPlan("say_hello", "shell", ()),))
    store.publish_catalog([(sales, "Nightly sales load into the warehouse"), (hello, "")], [], T0)
    names = [s.name for s in sales.steps]

    run_id, ids = store.create_run("nightly_sales", "schedule", {"region": "eu"}, sales.to_json(), names, T0,
                                   scheduled_for=T0)
    store.set_run_state(run_id, "running", T0 + 1, started=True)
    for index, name in enumerate(names):
        start = T0 + 1 + index * 10
        _attempt(harness, run_id, ids, name, 1, start, start + 8, "succeeded",
                 {"exit_code": 0, "cpu_s": 1.5, "peak_rss_bytes": 52_000_000},
                 [(ids[name], name, "succeeded", {"ended_at": start + 8})], [(start, f"{name} ok")])
    store.set_run_state(run_id, "succeeded", T0 + 31, ended=True)

    base = T0 + 3600
    run_id, ids = store.create_run("nightly_sales", "schedule", {"region": "eu"}, sales.to_json(), names, base,
                                   scheduled_for=base)
    store.set_run_state(run_id, "running", base + 1, started=True)
    _attempt(harness, run_id, ids, "extract", 1, base + 1, base + 13, "succeeded",
             {"exit_code": 0, "cpu_s": 2.25, "peak_rss_bytes": 81_000_000},
             [(ids["extract"], "extract", "succeeded", {"ended_at": base + 13})],
             [(base + 1, "fetching rows from the shop API"), (base + 12, "fetched 1840 rows")])
    failure = {"exit_code": 1, "cpu_s": 0.75, "peak_rss_bytes": 64_000_000,
               "reason": "ValueError: bad row 17: price is negative", "detail": TRACEBACK}
    log = [(base + 14, "cleaning 1840 rows"), (base + 15, "row 16 ok")] + [
        (base + 15, line) for line in TRACEBACK.splitlines()]
    _attempt(harness, run_id, ids, "transform", 1, base + 14, base + 16, "failed", failure,
             [(ids["transform"], "transform", "waiting", {"waiting_for": "retry 1/1 at 03:00:21",
                                                           "reason": failure["reason"], "detail": TRACEBACK})], log)
    later = [(at + 7, text) for at, text in log]
    _attempt(harness, run_id, ids, "transform", 2, base + 21, base + 23, "failed", failure,
             [(ids["transform"], "transform", "failed", {"reason": failure["reason"], "detail": TRACEBACK,
                                                          "ended_at": base + 23, "waiting_for": None}),
              (ids["load"], "load", "upstream_failed", {"reason": "upstream step 'transform' did not succeed",
                                                        "ended_at": base + 23})], later)
    store.set_run_state(run_id, "failed", base + 23, reason="step 'transform' failed", ended=True)
