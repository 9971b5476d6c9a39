"""The console benchmark's smoke run completes and reports all three measures with sane counts.

Speed is printed by `python -m bench.console`, never asserted here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_console_bench_reports_ready_keys_and_rss(tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.console", "--quick", "--json", str(out),
                           "--scratch", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())

    database = report["database"]
    assert (database["jobs"], database["runs"], database["step_runs"]) == (20, 10_000, 50_000)
    assert database["events"] >= 100_000 and database["attempts"] > 40_000

    # 1. ready: every start reached the failed step with its attempts (None would mean it never did).
    ready = report["ready_headless"]["samples_s"]
    assert len(ready) == 3 and all(s is not None and s > 0 for s in ready)
    terminal = report["ready_terminal"]
    assert "skipped" in terminal or all(s is not None for s in terminal["samples_s"])

    # 2. keys: 20 tree keys and 20 log keys, each seen on screen, while the flood was followed.
    keys = report["keys"]
    assert keys["tree"]["count"] == 20 and keys["log"]["count"] == 20 and keys["all"]["count"] == 40
    assert keys["following"]
    assert keys["flood_lines"] > 0 and 0 < keys["log_widget_lines"] <= 40_000

    # 3. RSS: a sample at start and every 10 s of the 20 s flood.
    rss = report["rss"]
    assert len(rss["samples"]) == 3 and all(s["rss_mb"] > 0 for s in rss["samples"])
    assert isinstance(rss["flat"], bool)

    for measure in ("ready, headless", "key -> screen, tree", "key -> screen, log", "RSS over 20 s"):
        assert measure in done.stdout
