"""`python -m bench.service`: scheduler lateness and command latency of a running daemon.

Starts a real `stepline daemon` on a temporary home with 50 jobs on a 1-second
interval and keeps the W1 fan-out (1 -> 200 -> 1) running beside them, while a
writer sends a command every 200 ms. Then reads the database:
- lateness = first step of a scheduled run started - its scheduled time;
- command latency = command acknowledged - command written.
Prints p50/p99 beside the targets (lateness p99 < 100 ms, command p99 < 250 ms)
and writes JSON. Targets are printed, not enforced; the exit code is 1 when a run
failed (every tick and W1 run must succeed for the timings to mean anything).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.environment import child_environment
from bench.scratch import add_scratch_option, scratch_folder, use_scratch

LATENESS_TARGET_MS = 100.0
COMMAND_TARGET_MS = 250.0

TICK_JOBS = """from engine import job, step

def make(n):
    @step(name=f"tick_{n}")
    def tick():
        return n
    return job(f"tick_{n}", [tick], every="1s")

ticks = [make(n) for n in range(50)]
"""

FAN_OUT = """from engine import job, step

@step
def root():
    return 1

def leaf(n):
    @step(name=f"leaf_{n}")
    def run(root):
        return root + n
    return run

leaves = [leaf(n) for n in range(200)]

@step(after=[l.name for l in leaves])
def sink():
    return "done"

w1 = job("w1", [root, *leaves, sink])
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="How long to measure (default 60).")
    parser.add_argument("--parallel", type=int, help="The daemon's --parallel (default: CPU count).")
    parser.add_argument("--json", dest="json_path", default=str(Path(__file__).parent / "service_results.json"))
    add_scratch_option(parser)
    args = parser.parse_args()
    use_scratch(args)

    with scratch_folder("stepline-bench-service-") as folder:
        root = Path(folder)
        (root / "jobs").mkdir()
        (root / "jobs" / "ticks.py").write_text(TICK_JOBS)
        (root / "jobs" / "w1.py").write_text(FAN_OUT)
        env = child_environment(STEPLINE_HOME=str(root / "home"), STEPLINE_JOBS=str(root / "jobs"))
        command = [sys.executable, "-m", "cli", "daemon", "--grace", "0"]
        if args.parallel:
            command += ["--parallel", str(args.parallel)]
        daemon = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, cwd=root)
        database = root / "home" / "stepline.db"
        while not database.exists():
            time.sleep(0.05)
        time.sleep(1.0)
        connection = sqlite3.connect(database, timeout=5, isolation_level=None)
        connection.execute("PRAGMA busy_timeout=5000")

        def write_command(kind: str, job: str | None = None) -> None:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO command (created_at, kind, job, payload, state) "
                               "VALUES (?, ?, ?, '{}', 'pending')", (time.time(), kind, job))
            connection.execute("COMMIT")

        started = time.time()
        deadline = started + args.seconds
        next_command = started
        w1_runs = 0
        while time.time() < deadline:
            active = connection.execute("SELECT COUNT(*) FROM run WHERE job='w1' AND state IN "
                                        "('queued','running')").fetchone()[0]
            if not active and not connection.execute(
                    "SELECT COUNT(*) FROM command WHERE kind='trigger' AND state='pending'").fetchone()[0]:
                write_command("trigger", "w1")
                w1_runs += 1
            if time.time() >= next_command:
                write_command("pause" if int(time.time() * 5) % 2 else "resume", "w1")
                next_command += 0.2
            time.sleep(0.02)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)

        # Per scheduled run: fire -> run created -> run started -> first step running; lateness is their sum.
        phases = connection.execute(
            "SELECT r.created_at - r.scheduled_for, r.started_at - r.created_at, MIN(a.started_at) - r.started_at "
            "FROM run r JOIN attempt a ON a.run_id = r.id WHERE r.trigger = 'schedule' AND r.created_at >= ? "
            "GROUP BY r.id", (started,)).fetchall()
        lateness_ms = [sum(row) * 1000 for row in phases]
        command_ms = [row[0] * 1000 for row in connection.execute(
            "SELECT acked_at - created_at FROM command WHERE acked_at IS NOT NULL AND kind IN ('pause','resume')")]
        w1_steps = connection.execute("SELECT COUNT(*) FROM attempt WHERE run_id IN "
                                      "(SELECT id FROM run WHERE job='w1')").fetchone()[0]
        # Every run must have done its work: a step that failed at once would make lateness look good.
        outcomes = dict(connection.execute(
            "SELECT CASE WHEN job = 'w1' THEN 'w1 ' ELSE 'scheduled ' END || state, COUNT(*) FROM run "
            "WHERE state IN ('succeeded', 'failed') GROUP BY 1").fetchall())
        connection.close()

    result = {
        "seconds": args.seconds, "parallel": args.parallel or os.cpu_count(), "cpus": os.cpu_count(),
        "scheduled_runs": len(lateness_ms), "w1_runs_triggered": w1_runs, "w1_attempts": w1_steps,
        "runs_ended": outcomes,
        "lateness_ms": {"p50": percentile(lateness_ms, 0.5), "p99": percentile(lateness_ms, 0.99),
                        "max": max(lateness_ms, default=float("nan"))},
        "command_ms": {"count": len(command_ms), "p50": percentile(command_ms, 0.5),
                       "p99": percentile(command_ms, 0.99), "max": max(command_ms, default=float("nan"))},
    }
    phase_names = ("fire -> run created", "run created -> started", "run started -> 1st step")
    result["lateness_phases_ms"] = {
        name: {"p50": percentile([row[i] * 1000 for row in phases], 0.5),
               "p99": percentile([row[i] * 1000 for row in phases], 0.99)}
        for i, name in enumerate(phase_names)}
    Path(args.json_path).write_text(json.dumps(result, indent=2))
    late, cmd = result["lateness_ms"], result["command_ms"]
    print(f"stepline bench.service: {result['cpus']} CPUs, parallel {result['parallel']}, "
          f"{args.seconds:.0f} s, 50 jobs every 1s + W1 fan-out ({w1_runs} runs, {w1_steps} attempts)")
    print(f"{'measure':<34}{'count':>7}{'p50':>11}{'p99':>11}{'max':>11}  target       result")
    print(f"{'lateness (scheduled -> 1st step)':<34}{len(lateness_ms):>7}{late['p50']:>9.1f}ms{late['p99']:>9.1f}ms"
          f"{late['max']:>9.1f}ms  p99 < {LATENESS_TARGET_MS:.0f}ms  "
          f"{'pass' if late['p99'] < LATENESS_TARGET_MS else 'FAIL'}")
    for name, values in result["lateness_phases_ms"].items():
        print(f"{'  ' + name:<34}{'':>7}{values['p50']:>9.1f}ms{values['p99']:>9.1f}ms")
    print(f"  (the 50 jobs fire in the same instant; with {result['parallel']} slots the last first step waits for "
          f"about {50 // result['parallel']} steps per slot ahead of it, W1's included)")
    print(f"{'command latency (written -> ack)':<34}{cmd['count']:>7}{cmd['p50']:>9.1f}ms{cmd['p99']:>9.1f}ms"
          f"{cmd['max']:>9.1f}ms  p99 < {COMMAND_TARGET_MS:.0f}ms  "
          f"{'pass' if cmd['p99'] < COMMAND_TARGET_MS else 'FAIL'}")
    failed = outcomes.get("scheduled failed", 0) + outcomes.get("w1 failed", 0)
    print(f"checks: scheduled runs {outcomes.get('scheduled succeeded', 0)} succeeded, "
          f"{outcomes.get('scheduled failed', 0)} failed; W1 runs {outcomes.get('w1 succeeded', 0)} succeeded, "
          f"{outcomes.get('w1 failed', 0)} failed (runs cut short at the end are cancelled)  "
          f"{'ok' if not failed and outcomes.get('scheduled succeeded') else 'FAIL'}")
    if failed or not outcomes.get("scheduled succeeded"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
