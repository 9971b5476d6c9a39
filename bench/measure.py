"""Run one workload in this (fresh) process and write what it measured as JSON.

`python -m bench.measure SPEC OUT` is started by bench/__main__.py once per
workload, so the engine's peak RSS (ru_maxrss of this process) belongs to that
workload alone. The clock starts just before `Engine.submit` and stops when
`run_until_done` returns; the worker's start-up is inside that window, which is
why the table subtracts a 1-step probe measured the same way.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import psutil

from bench.scratch import make_scratch_folder, trim
from bench.workloads import by_name
from engine import query, store
from engine.home import prepare_home
from engine.loader import load_jobs
from engine.runner import Engine


def worker_peak_rss_bytes() -> int | None:
    """Highest peak RSS (VmHWM) among this process's live worker children."""
    peaks = []
    for child in psutil.Process().children():
        try:
            if "engine.worker" not in " ".join(child.cmdline()):
                continue
            with open(f"/proc/{child.pid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) * 1024)
        except (psutil.Error, OSError):
            continue
    return max(peaks) if peaks else None


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _faults(who: int) -> int:
    """Minor page faults: after a fork, each page either process first writes is one (its copy)."""
    return resource.getrusage(who).ru_minflt


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    workload = by_name(spec["workload"])
    size = spec["size"]
    root = make_scratch_folder(f"stepline-bench-{workload.name}-")
    try:
        jobs_dir = root / "jobs"
        jobs_dir.mkdir()
        (jobs_dir / f"{workload.job}.py").write_text(workload.source(size))
        home = prepare_home(root / "home")
        store.open_database(home)
        loaded = load_jobs(jobs_dir)
        if loaded.problems:
            raise SystemExit("bench job file does not load: " + "; ".join(map(str, loaded.problems)))
        job_def = loaded.jobs[workload.job]
        engine = Engine(home, parallel=spec.get("parallel"))
        profiler = None
        if spec.get("profile"):
            import cProfile
            profiler = cProfile.Profile()
        try:
            if profiler is not None:
                profiler.enable()
            cpu_before = _cpu_s(resource.RUSAGE_SELF)
            faults_before = _faults(resource.RUSAGE_SELF)
            started = time.perf_counter()
            run_id = engine.submit(job_def, {})
            engine.run_until_done([run_id])
            wall_s = time.perf_counter() - started
            engine_cpu_s = _cpu_s(resource.RUSAGE_SELF) - cpu_before
            engine_faults = _faults(resource.RUSAGE_SELF) - faults_before
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(spec["profile"])
            worker_rss = worker_peak_rss_bytes()
        finally:
            engine.close()
        engine_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # The worker has been waited for by now; it waited for every attempt it forked.
        children_cpu_s = _cpu_s(resource.RUSAGE_CHILDREN)
        children_faults = _faults(resource.RUSAGE_CHILDREN)
        summary = query.run_summary(run_id)
        check = workload.check(home, run_id, size)
        return {"workload": workload.name, "size": size, "units": workload.units(size),
                "parallel": engine.parallel, "wall_s": wall_s, "engine_cpu_s": engine_cpu_s,
                "worker_and_attempts_cpu_s": children_cpu_s,
                "all_faults": engine_faults + children_faults,
                "run_state": summary.state, "run_duration_s": summary.duration_s(),
                "engine_peak_rss_bytes": engine_rss, "worker_peak_rss_bytes": worker_rss, "check": check}
    finally:
        trim(root)  # kept (see bench/scratch.py), without its large files


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = measure(spec)
    with open(sys.argv[2], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
