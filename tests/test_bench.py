"""The benchmark's smoke run completes and every workload passes its correctness checks.

Speed is printed by `python -m bench`, never asserted here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"W1", "W2", "W3", "W4", "W5"}


def test_quick_bench_runs_every_workload_and_every_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out), "--scratch", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())

    assert {w["name"] for w in report["workloads"]} == WORKLOADS
    for workload in report["workloads"]:
        assert workload["result"]["check"]["ok"], (workload["name"], workload["result"]["check"]["detail"])
    assert report["checks_ok"]
    assert report["startup"]["python_s"] is not None and report["startup"]["shell_s"] is not None

    # The printed table names every workload and the machine it ran on.
    for name in WORKLOADS:
        assert f"\n{name} " in done.stdout
    assert f"{report['machine']['cpus']} CPUs" in done.stdout
    # Its homes were made where --scratch said, and kept without their large files: deleting thousands
    # of small files would slow the next run's file creation down (see bench/scratch.py).
    assert report["scratch"] == str(tmp_path) and f"homes in {tmp_path}" in done.stdout
    homes = list(tmp_path.glob("stepline-bench-*/home/stepline.db"))
    assert len(homes) >= len(WORKLOADS)
    kept = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert kept and all(p.stat().st_size < 1 << 20 for p in kept)
    w5_logs = list(tmp_path.glob("stepline-bench-W5-*/home/logs/*/*.log"))
    assert not w5_logs  # 20,000 lines of 81 bytes: removed


def test_quick_bench_counts_every_log_line_and_every_retry(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "W4,W5", "--json", str(out),
                    "--scratch", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                   check=True)
    workloads = {w["name"]: w for w in json.loads(out.read_text())["workloads"]}

    assert workloads["W4"]["result"]["check"]["attempts"] == 3
    assert workloads["W4"]["result"]["run_state"] == "succeeded"
    assert workloads["W5"]["result"]["check"]["log_lines"] == workloads["W5"]["size"]


def test_service_bench_measures_runs_that_did_their_work(tmp_path: Path) -> None:
    # Lateness of runs whose steps failed at once would look better than real work; the bench checks
    # that every scheduled and W1 run that ended succeeded, and says so.
    out = tmp_path / "service.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.service", "--seconds", "3", "--json", str(out),
                           "--scratch", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["runs_ended"].get("scheduled succeeded", 0) >= 50
    assert "scheduled failed" not in report["runs_ended"] and "w1 failed" not in report["runs_ended"]
    assert "lateness (scheduled -> 1st step)" in done.stdout and "checks: " in done.stdout
