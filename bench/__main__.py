"""`python -m bench`: run the standard workloads, print a table, write JSON.

Each workload runs in a fresh Engine in a fresh child process (bench/measure.py),
so its wall time includes the worker's start-up and its peak RSS is its own.
Start-up is measured the same way with a 1-step job and subtracted:
per-step cost = (wall - start-up) / (steps - 1). Floors (plain process starts)
are measured in the same invocation, on the same machine, for comparison.
Correctness checks decide the exit code; targets are only printed.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.environment import child_environment
from bench.scratch import add_scratch_option, use_scratch
from bench.workloads import CHATTY_LOOP, LINE_CHARS, PROBES, WORKLOADS, Workload

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"
CHILD_TIMEOUT_S = 900
PER_STEP_TARGET_MS = 3.0
SHELL_OVER_FLOOR_TARGET_MS = 2.0
LOG_TARGET_S = 2.0
RSS_TARGET_BYTES = 100 * 1024 * 1024


# --- floors ---------------------------------------------------------------------------------------------


def floor_ms(command: list[str], count: int) -> float:
    """Milliseconds per `subprocess.run(command)`, averaged over `count` calls."""
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    started = time.perf_counter()
    for _ in range(count):
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000 / count


def fork_floor_ms(count: int) -> float:
    """Milliseconds per bare fork + _exit + wait from this interpreter: what a preloaded worker pays at least."""
    started = time.perf_counter()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return (time.perf_counter() - started) * 1000 / count


def page_copy_us(pages: int = 2000, count: int = 5) -> float:
    """CPU microseconds per copy-on-write fault: a forked child writes `pages` pages it shares with this
    process, against one that writes none. Forked attempts cost mostly such faults, so this is the unit
    that moves per-step costs most from one machine to another (it is several times dearer in a VM)."""
    shared = bytearray(pages * mmap.PAGESIZE)
    shared[::mmap.PAGESIZE] = b"\1" * pages  # backed by pages of its own before any fork

    def children_cpu_s(write: bool) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                if write:
                    shared[::mmap.PAGESIZE] = b"\2" * pages
                os._exit(0)
            os.waitpid(pid, 0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime

    idle_s, writing_s = children_cpu_s(False), children_cpu_s(True)
    return max(0.0, writing_s - idle_s) * 1e6 / (count * pages)


def chatty_own_s(lines: int) -> float:
    """The W5 step's own time: the same loop, line-buffered as in an attempt, printing to /dev/null."""
    code = ("import io, sys, time\n"
            "sys.stdout = io.TextIOWrapper(io.FileIO(1, 'w', closefd=False), encoding='utf-8', "
            "line_buffering=True)\n"
            "started = time.perf_counter()\n"
            + CHATTY_LOOP.format(pad=LINE_CHARS - 8, lines=lines) +
            "sys.stdout.flush()\n"
            "sys.stderr.write(repr(time.perf_counter() - started))\n")
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, check=True)
    return float(result.stderr.strip())


# --- running one workload in a child ---------------------------------------------------------------------


def run_child(workload: Workload, size: int, parallel: int | None, profile_dir: Path | None,
              repeat_index: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stepline-bench-out-") as folder:
        out = Path(folder) / "result.json"
        spec: dict[str, Any] = {"workload": workload.name, "size": size, "parallel": parallel}
        if profile_dir is not None:
            spec["profile"] = str(profile_dir / f"{workload.name}.{repeat_index}.prof")
        env = child_environment()
        try:
            done = subprocess.run([sys.executable, "-m", "bench.measure", json.dumps(spec), str(out)], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return _crashed(workload, size, f"did not finish within {CHILD_TIMEOUT_S}s")
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            return _crashed(workload, size, f"measuring process exited with {done.returncode}: {tail}")
        return json.loads(out.read_text())


def _crashed(workload: Workload, size: int, detail: str) -> dict[str, Any]:
    return {"workload": workload.name, "size": size, "units": workload.units(size), "parallel": None,
            "wall_s": None, "engine_peak_rss_bytes": None, "worker_peak_rss_bytes": None,
            "check": {"ok": False, "detail": detail}}


def run_repeated(workload: Workload, size: int, repeat: int, parallel: int | None,
                 profile_dir: Path | None) -> dict[str, Any]:
    """Median wall over `repeat` fresh runs; the largest RSS; every run's check must pass."""
    runs = [run_child(workload, size, parallel, profile_dir, i) for i in range(repeat)]
    failed = [r for r in runs if not r["check"]["ok"]]
    result = dict(failed[0] if failed else runs[0])
    walls = [r["wall_s"] for r in runs if r["wall_s"] is not None]
    result["wall_s"] = statistics.median(walls) if walls and not failed else result["wall_s"]
    result["walls_s"] = walls
    cpus = [r["engine_cpu_s"] for r in runs if r.get("engine_cpu_s") is not None]
    result["engine_cpu_s"] = statistics.median(cpus) if cpus else None
    result["all_cpu_s"] = _median_all_cpu_s(runs)
    result["all_faults"] = _median_all_faults(runs)
    for key in ("engine_peak_rss_bytes", "worker_peak_rss_bytes"):
        values = [r[key] for r in runs if r.get(key) is not None]
        result[key] = max(values) if values else None
    return result


def _median_all_cpu_s(runs: list[dict[str, Any]]) -> float | None:
    """Median CPU time of every process of a run: the engine, its worker and the attempts the worker forked."""
    totals = [r["engine_cpu_s"] + r["worker_and_attempts_cpu_s"] for r in runs
              if r["check"]["ok"] and r.get("engine_cpu_s") is not None
              and r.get("worker_and_attempts_cpu_s") is not None]
    return statistics.median(totals) if totals else None


def _median_all_faults(runs: list[dict[str, Any]]) -> float | None:
    """Median minor page faults of every process of a run (as _median_all_cpu_s)."""
    totals = [r["all_faults"] for r in runs if r["check"]["ok"] and r.get("all_faults") is not None]
    return statistics.median(totals) if totals else None


# --- verdicts and the table -------------------------------------------------------------------------------


def judge(name: str, result: dict[str, Any], startup_s: dict[str, float | None], floors: dict[str, float],
          own_s: float | None, startup_cpu_s: dict[str, tuple[float | None, float | None, float | None]]
          ) -> dict[str, Any]:
    """Per-step cost and the time/RSS verdicts of one workload result."""
    workload = WORKLOADS[name]
    wall, units = result["wall_s"], result["units"]
    start = startup_s[workload.kind]
    per_step_ms = None
    if wall is not None and start is not None and units > 1:
        per_step_ms = (wall - start) * 1000 / (units - 1)
    start_cpu, start_all_cpu, start_faults = startup_cpu_s[workload.kind]
    faults = result.get("all_faults")
    verdict: dict[str, Any] = {"startup_s": start, "per_step_ms": per_step_ms,
                               "engine_cpu_per_step_ms": _per_step_ms(result.get("engine_cpu_s"), start_cpu, units),
                               "all_cpu_per_step_ms": _per_step_ms(result.get("all_cpu_s"), start_all_cpu, units),
                               "faults_per_step": (None if faults is None or start_faults is None or units <= 1
                                                   else (faults - start_faults) / (units - 1))}
    if name in ("W1", "W2"):
        verdict["floor"] = f"fork {floors['fork_ms']:.2f} ms"
        verdict["target"] = f"<= {PER_STEP_TARGET_MS:g} ms/step"
        verdict["time_ok"] = per_step_ms is not None and per_step_ms <= PER_STEP_TARGET_MS
    elif name == "W3":
        over = None if per_step_ms is None else per_step_ms - floors["sh_ms"]
        verdict["over_floor_ms"] = over
        verdict["floor"] = f"sh {floors['sh_ms']:.2f} ms"
        verdict["target"] = f"<= sh + {SHELL_OVER_FLOOR_TARGET_MS:g} ms/step"
        verdict["time_ok"] = over is not None and over <= SHELL_OVER_FLOOR_TARGET_MS
    elif name == "W5":
        limit = None if own_s is None else LOG_TARGET_S + own_s
        verdict["own_s"] = own_s
        verdict["limit_s"] = limit
        verdict["floor"] = f"own {own_s:.2f} s" if own_s is not None else "-"
        verdict["target"] = f"<= 2 s + own = {limit:.2f} s" if limit is not None else "-"
        verdict["time_ok"] = wall is not None and limit is not None and wall <= limit
    else:
        verdict["floor"] = "-"
        verdict["target"] = "checks only"
        verdict["time_ok"] = None
    rss = result.get("engine_peak_rss_bytes")
    verdict["rss_ok"] = rss is not None and rss < RSS_TARGET_BYTES
    return verdict


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} ms"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.1f} MB"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("pass" if value else "FAIL")


def table(rows: list[list[str]], header: list[str], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(row)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def render(report: dict[str, Any]) -> str:
    machine, floors, startup = report["machine"], report["floors"], report["startup"]
    out = [f"stepline bench{' --quick' if report['quick'] else ''}: {machine['cpus']} CPUs, "
           f"Python {machine['python']}, SQLite {machine['sqlite']}, {machine['platform']}",
           f"parallel: {report['parallel_label']}; homes in {report['scratch']} (--scratch)",
           "",
           f"floors (ms per call): python -c pass {floors['python_ms']:.2f} (x{floors['count_python']})   "
           f"sh -c 'echo hi' {floors['sh_ms']:.2f} (x{floors['count_sh']})   "
           f"bash -c 'echo hi' {floors['bash_ms']:.2f} (x{floors['count_sh']})   "
           f"fork+_exit+wait {floors['fork_ms']:.2f} (x{floors['count_fork']})   "
           f"page copy (copy-on-write fault) {floors['page_copy_us']:.1f} us",
           f"start-up (1-step job, submit to run end, median of {startup['repeat']}): "
           f"python {_ms(_scale(startup['python_s']), 1)} (engine CPU {_ms(_scale(startup['python_engine_cpu_s']), 1)})"
           f"   shell {_ms(_scale(startup['shell_s']), 1)} (engine CPU {_ms(_scale(startup['shell_engine_cpu_s']), 1)})",
           ""]
    header = ["workload", "steps", "wall", "start-up", "per-step", "floor", "target", "time",
              "engine CPU/step", "all CPU/step", "faults/step", "engine RSS", "worker RSS", "RSS<100MB", "checks"]
    rows = []
    for item in report["workloads"]:
        result, verdict = item["result"], item["verdict"]
        steps = str(result["units"]) if item["name"] != "W4" else f"1 ({result['units']} att.)"
        per_step = _ms(verdict["per_step_ms"])
        if item["name"] == "W3" and verdict.get("over_floor_ms") is not None:
            per_step += f" (sh+{verdict['over_floor_ms']:.2f})"
        if item["name"] == "W5":
            per_step = "-"
        elif verdict["per_step_ms"] is not None and verdict["per_step_ms"] < 0:
            per_step = "~0 (noise)"  # a few attempts that took less than the start-up probe's median
        rows.append([f"{item['name']} {item['label']}", steps, _seconds(result["wall_s"]),
                     _ms(_scale(verdict["startup_s"]), 1), per_step, verdict["floor"], verdict["target"],
                     _flag(verdict["time_ok"]), _ms_or_noise(verdict["engine_cpu_per_step_ms"]),
                     _ms_or_noise(verdict.get("all_cpu_per_step_ms")), _count(verdict.get("faults_per_step")),
                     _mb(result.get("engine_peak_rss_bytes")),
                     _mb(result.get("worker_peak_rss_bytes")), _flag(verdict["rss_ok"]),
                     "ok" if result["check"]["ok"] else "FAILED"])
    out.append(table(rows, header, right={1, 2, 3, 4, 8, 9, 10, 11, 12}))
    notes = [f"  {item['name']}: {item['result']['check']['detail']}" for item in report["workloads"]
             if not item["result"]["check"]["ok"]]
    w5 = next((item for item in report["workloads"] if item["name"] == "W5"), None)
    if w5 is not None and w5["result"]["check"].get("attempt_duration_s") is not None:
        check = w5["result"]["check"]
        notes.append(f"  W5: {check['log_lines']} lines in the log; attempt ran {check['attempt_duration_s']:.3f} s "
                     f"(cpu {check['attempt_cpu_s'] or 0:.3f} s); the same loop to /dev/null takes "
                     f"{w5['verdict']['own_s']:.3f} s")
    if notes:
        out += ["", "notes:"] + notes
    out += ["", "per-step = (wall - start-up) / (steps - 1); W4 divides by attempts (3: within the start-up "
                "probe's noise, so '~0 (noise)' when the run beat the probe); "
                "W3's target is over the sh floor (its steps run bash, whose own floor is printed too); W5's wall is judged against 2 s plus the step's own time.",
            "engine CPU/step = the same formula over the engine process's CPU time (all its threads): "
            "the orchestrator's own cost, steadier than wall time on a busy machine.",
            "all CPU/step = the same over every process of the run (engine, worker, attempts: fork, copy-on-write "
            "faults, exit); per-step wall cannot be less than it divided by the CPU count.",
            "faults/step = the same over every process's minor page faults: most are the copies a fork's "
            "copy-on-write makes, so faults/step x page copy is most of the all-CPU figure of a Python step."]
    return "\n".join(out)


def _ms_or_noise(value: float | None) -> str:
    """A per-step CPU figure; below zero (a few units that cost less than the probe's median) it is noise."""
    return "~0 (noise)" if value is not None and value < 0 else _ms(value)


def _count(value: float | None) -> str:
    return "-" if value is None else ("~0 (noise)" if value < 0 else f"{value:.0f}")


def _per_step_ms(total_s: float | None, startup_s: float | None, units: int) -> float | None:
    if total_s is None or startup_s is None or units <= 1:
        return None
    return (total_s - startup_s) * 1000 / (units - 1)


def _scale(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run for tests")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results ({DEFAULT_JSON})")
    parser.add_argument("--only", default="", help="comma-separated workloads to run, e.g. W1,W3")
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs per workload; the median wall counts")
    parser.add_argument("--parallel", type=int, default=None, help="Engine parallelism (default: CPU count)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile of the engine thread per workload into this folder")
    add_scratch_option(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = use_scratch(args)
    names = [n.strip().upper() for n in args.only.split(",") if n.strip()] or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    cpus = os.cpu_count() or 1
    machine = {"cpus": cpus, "python": platform.python_version(), "implementation": platform.python_implementation(),
               "sqlite": sqlite3.sqlite_version, "platform": f"{platform.system()} {platform.machine()}",
               "processor": platform.processor() or platform.machine()}
    counts = {"count_python": 5 if quick else 30, "count_sh": 20 if quick else 200, "count_fork": 20 if quick else 200}
    floors = {"python_ms": floor_ms([sys.executable, "-c", "pass"], counts["count_python"]),
              "sh_ms": floor_ms(["sh", "-c", "echo hi"], counts["count_sh"]),
              # Shell steps run through bash (the job API's contract); W3's target is over sh.
              "bash_ms": floor_ms(["bash", "-c", "echo hi"], counts["count_sh"]),
              "fork_ms": fork_floor_ms(counts["count_fork"]), "page_copy_us": page_copy_us(), **counts}
    startup_repeat = 1 if quick else 3
    startup_runs = {kind: [run_child(probe, 1, args.parallel, None, i) for i in range(startup_repeat)]
                    for kind, probe in PROBES.items()}
    startup: dict[str, Any] = {"repeat": startup_repeat}
    for kind, runs in startup_runs.items():
        walls = [r["wall_s"] for r in runs if r["check"]["ok"] and r["wall_s"] is not None]
        startup[f"{kind}_s"] = statistics.median(walls) if walls else None
        startup[f"{kind}_runs_s"] = walls
        startup[f"{kind}_engine_peak_rss_bytes"] = max((r["engine_peak_rss_bytes"] or 0) for r in runs)
        cpus = [r["engine_cpu_s"] for r in runs if r["check"]["ok"] and r.get("engine_cpu_s") is not None]
        startup[f"{kind}_engine_cpu_s"] = statistics.median(cpus) if cpus else None
        startup[f"{kind}_all_cpu_s"] = _median_all_cpu_s(runs)
        startup[f"{kind}_all_faults"] = _median_all_faults(runs)
    startup_s = {kind: startup[f"{kind}_s"] for kind in PROBES}
    startup_cpu_s = {kind: (startup[f"{kind}_engine_cpu_s"], startup[f"{kind}_all_cpu_s"], startup[f"{kind}_all_faults"])
                     for kind in PROBES}
    w5_size = WORKLOADS["W5"].quick_size if quick else WORKLOADS["W5"].size
    own_s = chatty_own_s(w5_size) if "W5" in names else None
    workloads = []
    for name in names:
        workload = WORKLOADS[name]
        size = workload.quick_size if quick else workload.size
        result = run_repeated(workload, size, max(1, args.repeat), args.parallel, args.profile)
        label = {"W1": f"fan-out 1->{size}->1", "W2": f"chain of {size} python", "W3": f"chain of {size} shell",
                 "W4": f"retry x{size} then ok", "W5": f"{size:,} log lines"}[name]
        workloads.append({"name": name, "label": label, "title": workload.title, "size": size,
                          "result": result, "verdict": judge(name, result, startup_s, floors, own_s,
                                                             startup_cpu_s)})
        print(f"  {name} done: {_seconds(result['wall_s'])}, checks {'ok' if result['check']['ok'] else 'FAILED'}",
              file=sys.stderr, flush=True)
    parallel = next((w["result"]["parallel"] for w in workloads if w["result"].get("parallel")), args.parallel)
    report = {"quick": quick, "machine": machine, "scratch": str(scratch), "floors": floors, "startup": startup,
              "parallel": parallel,
              "parallel_label": f"{parallel} ({'--parallel' if args.parallel else 'Engine default = CPU count'})",
              "targets": {"per_step_ms": PER_STEP_TARGET_MS, "shell_over_floor_ms": SHELL_OVER_FLOOR_TARGET_MS,
                          "log_extra_s": LOG_TARGET_S, "engine_rss_bytes": RSS_TARGET_BYTES},
              "workloads": workloads,
              "checks_ok": all(w["result"]["check"]["ok"] for w in workloads)
                           and all(startup_s[kind] is not None for kind in PROBES)}
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    return 0 if report["checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
