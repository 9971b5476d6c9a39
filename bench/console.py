"""`python -m bench.console`: the console on a big home and under a log flood.

1. ready: from constructing SteplineApp (database opened too) to the first screen update showing
   the jobs and the newest failed run's failed step selected with its attempts, on a home with
   100,000 runs and 1,000,000 events; headless (`run_test`, 120x40) and in a real terminal
   (`python -m cli tui` in tmux through tui-drive, which adds its own overhead).
2. key -> screen: with `stepline up`'s engine in the same process and a step printing 10,000
   lines/s followed in the log pane, the time from sending a key (the event Pilot.press sends,
   without its wait for idle) to the first screen update that shows its effect.
3. RSS of that process every 10 s during the flood.
Targets are printed, not enforced. Each measure runs in its own child process.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.environment import child_environment
from bench.scratch import add_scratch_option, scratch_folder, use_scratch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = Path(__file__).resolve().parent / "console_results.json"
# shared/ lies beside the checkout (CI puts a copy there too).
TUI_DRIVE = next((p for p in (Path(__file__).resolve().parents[2] / "shared/tools/tui-drive",
                              Path("/work/shared/tools/tui-drive")) if p.exists()),
                 Path("/work/shared/tools/tui-drive"))
READY_TARGET_S, KEY_TARGET_MS, RSS_TARGET_MB = 1.0, 100.0, 150.0
FLAT_MB = 10.0
"""RSS is "flat" when it grows less than this from the end of the warm-up to the end."""
JOBS, STEPS, T0 = 20, ("extract", "transform", "load", "report", "notify"), 1795752000.0
FLOOD_RATE, SAMPLE_S, KEY_GAP_S, KEY_TIMEOUT_S = 10_000, 10.0, 0.05, 5.0
SIZE = (120, 40)
REASON = "ValueError: bad row 17: price is negative"
TRACEBACK = ('Traceback (most recent call last):\n  File "etl.py", line 9, in transform\n'
             '    raise ValueError("bad row 17: price is negative")\n' + REASON)

ETL_JOBS = "from engine import job, step\n\n\ndef make(n):\n" + "".join(
    f"    @step\n    def {name}({STEPS[i - 1] if i else ''}):\n        return 1\n\n" for i, name in enumerate(STEPS)
) + f"    return job(f'etl_{{n:02d}}', [{', '.join(STEPS)}])\n\n\netl_jobs = [make(n) for n in range({JOBS})]\n"

FLOOD_JOB = """from engine import job, step

@step
def flood():
    import time
    pad, count, tick = "x" * 72, 0, time.monotonic()
    end = tick + {seconds}
    while tick < end:
        for _ in range({per_tick}):
            print(f"{{count:08d}}{{pad}}")
            count += 1
        tick += 0.01
        time.sleep(max(0.0, tick - time.monotonic()))
    return count

flood_job = job("flood", [flood])
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def stats(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values, default=float("nan"))}



def build_home(root: Path, runs_per_job: int) -> dict[str, Any]:
    """20 jobs x runs_per_job runs of 5 steps, 10% failed in transform after 2 attempts, 10 events per run."""
    from engine import store
    from engine.home import prepare_home
    from engine.loader import load_jobs
    from engine.plan import plan_job

    started = time.perf_counter()
    jobs_dir = root / "jobs"
    jobs_dir.mkdir()
    (jobs_dir / "etl.py").write_text(ETL_JOBS)
    home = prepare_home(root / "home")
    loaded = load_jobs(jobs_dir)
    plans = {name: plan_job(job_def) for name, job_def in loaded.jobs.items()}
    store.open_database(home)
    store.publish_catalog([(plan, "bench ETL job") for plan in plans.values()], [], T0)
    store.db.close()
    snapshots = {name: plan.to_json() for name, plan in plans.items()}
    total = JOBS * runs_per_job

    def runs():
        for i in range(total):
            at, failed = T0 + i * 30, i % 10 == 7 or i == total - 1
            yield (i + 1, f"etl_{i % JOBS:02d}", "failed" if failed else "succeeded", "schedule", "{}",
                   snapshots[f"etl_{i % JOBS:02d}"], at, at, at + 1, at + 26,
                   "step 'transform' failed" if failed else None)

    def step_rows(run_id: int, state: str, at: float):
        """(step_run row, its attempts, its two events) per step."""
        for k, name in enumerate(STEPS):
            start, end = at + 1 + 5 * k, at + 5 + 5 * k
            if state == "succeeded" or k == 0:
                row, tries, reason, detail = ("succeeded", None, None), [("succeeded", start, end, 0, None, None)], None, None
            elif k == 1:
                reason, detail = REASON, TRACEBACK
                row = ("failed", reason, detail)
                tries = [("failed", start, start + 2, 1, reason, detail), ("failed", start + 2, end, 1, reason, detail)]
            else:
                reason, detail = "upstream step 'transform' did not succeed", None
                row, tries = ("upstream_failed", reason, None), []
            yield ((run_id - 1) * 5 + k + 1, run_id, name, k, row[0], len(tries), start if tries else None, end,
                   row[1], row[2]), tries, [(start, run_id, name, "step", "running" if tries else "waiting",
                                             "attempt 1" if tries else "upstream"), (end, run_id, name, "step", row[0], reason)]

    connection = sqlite3.connect(home.database, isolation_level=None)
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA cache_size=-262144")
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany("INSERT INTO run (id, job, state, trigger, params, snapshot, created_at, scheduled_for, "
                           "started_at, ended_at, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?)", runs())
    batch_steps, batch_attempts, batch_events = [], [], []
    for run_id, state, at in connection.execute("SELECT id, state, created_at FROM run ORDER BY id").fetchall():
        for step_row, tries, events in step_rows(run_id, state, at):
            batch_steps.append(step_row)
            for number, (a_state, a_start, a_end, code, reason, detail) in enumerate(tries, 1):
                batch_attempts.append((step_row[0], run_id, number, a_state, 4000 + number, a_start, a_end, code,
                                       0.5, 50_000_000, str(home.attempt_log(run_id, step_row[2], number)),
                                       reason, detail))
            batch_events += events
        if len(batch_events) >= 200_000 or run_id == total:
            connection.executemany("INSERT INTO step_run (id, run_id, name, position, state, attempts, started_at, "
                                   "ended_at, reason, detail, has_output) VALUES (?,?,?,?,?,?,?,?,?,?,0)", batch_steps)
            connection.executemany("INSERT INTO attempt (step_run_id, run_id, number, state, pid, started_at, "
                                   "ended_at, exit_code, cpu_s, peak_rss_bytes, log_path, reason, detail) "
                                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", batch_attempts)
            connection.executemany('INSERT INTO event ("at", run_id, step, kind, state, message) '
                                   "VALUES (?,?,?,?,?,?)", batch_events)
            batch_steps, batch_attempts, batch_events = [], [], []
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = {table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
              for table in ("run", "step_run", "attempt", "event", "job_info")}
    target = connection.execute("SELECT MAX(id) FROM run WHERE state = 'failed'").fetchone()[0]
    connection.close()
    # Log files only for the newest failed run (the one the console opens on); other attempts have none.
    for step, number in (("extract", 1), ("transform", 1), ("transform", 2)):
        path = home.attempt_log(target, step, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"2026-11-27T04:00:{i:02d}.000Z {step} line {i}\n" for i in range(40)) +
                        "".join(f"2026-11-27T04:00:41.000Z {line}\n" for line in TRACEBACK.splitlines()))
    return {"jobs": counts["job_info"], "runs": counts["run"], "step_runs": counts["step_run"],
            "attempts": counts["attempt"], "events": counts["event"], "target_run": target,
            "build_s": time.perf_counter() - started, "size_mb": home.database.stat().st_size / 2**20,
            "home": str(home.root), "jobs_dir": str(jobs_dir)}



class PaintWatch:
    """Resolves when the app sends a screen update (compositor render done) while a condition holds."""

    def __init__(self, app: Any) -> None:
        self._original, self._predicate, self._future = app._display, None, None
        app._display = self._display  # the one call every screen update goes through (headless too)

    def _display(self, screen: Any, renderable: Any) -> None:
        self._original(screen, renderable)
        future = self._future
        if future is not None and not future.done() and renderable is not None and self._predicate():
            future.set_result(time.perf_counter())

    def arm(self, predicate: Callable[[], bool]) -> None:
        self._predicate, self._future = predicate, asyncio.get_running_loop().create_future()

    async def wait(self, timeout_s: float) -> float | None:
        try:
            return await asyncio.wait_for(self._future, timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self._future = None


def send_key(app: Any, key: str) -> None:
    """What Pilot.press sends for one key, without its wait for the app to go idle."""
    from textual import events
    event = events.Key(key, key if len(key) == 1 else None)
    event.set_sender(app)
    app._driver.send_message(event)


async def until(pilot: Any, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the console never reached the expected state")
        await pilot.pause(0.01)


async def open_once(home_path: str, target: int) -> float | None:
    from engine import store
    from engine.home import Home
    from tui.app import SteplineApp
    from tui.widgets.run_tree import StepNode

    started = time.perf_counter()
    home = Home(Path(home_path))
    store.open_database(home)
    app = SteplineApp(home, mode="attached")
    screen = app.main_screen

    def ready() -> bool:
        node = screen.run_tree.cursor_node
        return (len(screen.run_tree.jobs) == JOBS and node is not None and isinstance(node.data, StepNode)
                and node.data.run_id == target and node.data.step.name == "transform"
                and bool(screen.selected_attempts)
                and screen.details.border_title.startswith(f"step transform · run #{target}"))

    watch = PaintWatch(app)
    watch.arm(ready)
    async with app.run_test(size=SIZE):
        painted = await watch.wait(60.0)
    return None if painted is None else painted - started


async def flood_session(home_path: str, jobs_dir: str, seconds: float, keys: int) -> dict[str, Any]:
    import psutil
    from engine import query, store
    from engine.home import Home
    from engine.service import EngineService
    from tui.app import SteplineApp
    from tui.widgets.run_tree import RunNode, StepNode

    home = Home(Path(home_path))
    store.open_database(home)
    service = EngineService(home, jobs_dir, mode="embedded", kill_grace_s=1.0, stop_grace_s=0.0)
    service.start()
    store.add_command("trigger", job="flood")
    deadline = time.monotonic() + 60
    while not (runs := query.list_runs(job="flood", limit=1)) or not query.attempts(runs[0].id, "flood"):
        if time.monotonic() > deadline:
            raise TimeoutError("the flood step never started")
        time.sleep(0.05)
    run_id = runs[0].id
    app = SteplineApp(home, mode="embedded")
    screen, process = app.main_screen, psutil.Process()
    tree, pane = screen.run_tree, screen.log_pane
    watch = PaintWatch(app)
    result: dict[str, Any] = {"run_id": run_id}
    async with app.run_test(size=SIZE) as pilot:
        # It opens on the newest failed run's failed step first; then the flood step is selected.
        await until(pilot, lambda: run_id in tree.runs and isinstance(getattr(tree.cursor_node, "data", None), StepNode))
        tree.runs[run_id].expand()
        await until(pilot, lambda: (run_id, "flood") in tree.steps)
        tree.move_cursor(tree.steps[(run_id, "flood")])
        await until(pilot, lambda: pane.source is not None and pane.source.step == "flood"
                    and len(pane.log_widget.lines) > 1000)
        samples: list[dict[str, float]] = []

        async def sample() -> None:
            began, cpu_before = time.monotonic(), sum(process.cpu_times()[:2])
            for index in range(int(seconds // SAMPLE_S) + 1):
                await asyncio.sleep(max(0.0, began + index * SAMPLE_S - time.monotonic()))
                cpu = sum(process.cpu_times()[:2])
                samples.append({"t_s": round(time.monotonic() - began, 1), "rss_mb": process.memory_info().rss / 2**20,
                                "cpu_pct": 100 * (cpu - cpu_before) / SAMPLE_S if index else 0.0})
                cpu_before = cpu

        sampler = asyncio.create_task(sample())
        log = pane.log_widget
        on_run = lambda: (isinstance(tree.cursor_node.data, RunNode)  # noqa: E731
                          and screen.details.border_title.startswith(f"run #{run_id}"))
        on_step = lambda: (isinstance(tree.cursor_node.data, StepNode)  # noqa: E731
                           and screen.details.border_title.startswith("step flood"))
        at_top = lambda: not pane.follow and log.scroll_offset.y == 0  # noqa: E731
        at_end = lambda: pane.follow and log.scroll_offset.y > 0  # noqa: E731
        plan = [("tree", "up", on_run), ("tree", "down", on_step)] * (keys // 2)
        plan += [("focus", "l", lambda: log.has_focus)]
        plan += [("log", "g", at_top), ("log", "G", at_end)] * (keys // 2) + [("focus", "escape", lambda: tree.has_focus)]
        latencies: dict[str, list[float]] = {"tree": [], "log": []}
        timeouts = 0
        for kind, key, predicate in plan:
            watch.arm(predicate)
            sent = time.perf_counter()
            send_key(app, key)
            painted = await watch.wait(KEY_TIMEOUT_S)
            if painted is None:
                timeouts += 1  # no screen update in time: count when the state got there instead
                await until(pilot, predicate, 30.0)
                painted = time.perf_counter()
            if kind != "focus":
                latencies[kind].append((painted - sent) * 1000)
            await asyncio.sleep(KEY_GAP_S)
        await sampler
        attempt = query.attempts(run_id, "flood")[-1]
        with open(attempt.log_path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(attempt.log_path) - 4096))
            last = handle.read().splitlines()[-2]
        written = int(last[25:33]) + 1
        result.update(latencies_ms=latencies, timeouts=timeouts, samples=samples, log_widget_lines=len(log.lines),
                      flood_lines=written, flood_lines_per_s=written / (time.time() - attempt.started_at.timestamp()),
                      following=pane.source is not None and pane.source.step == "flood")
    service.stop(grace_s=0.0)
    return result


def child(args: argparse.Namespace) -> None:
    if args.child == "open":
        target = sqlite3.connect(Path(args.home) / "stepline.db").execute(
            "SELECT MAX(id) FROM run WHERE state = 'failed'").fetchone()[0]
        result: Any = {"samples_s": [asyncio.run(open_once(args.home, target)) for _ in range(args.repeat)]}
    else:
        result = asyncio.run(flood_session(args.home, args.jobs, args.flood_seconds, args.keys))
    Path(args.json_path).write_text(json.dumps(result))


def run_child(kind: str, info: dict[str, Any], args: argparse.Namespace, timeout_s: float) -> dict[str, Any]:
    out = Path(info["home"]).parent / f"{kind}.json"
    command = [sys.executable, "-m", "bench.console", "--child", kind, "--home", info["home"], "--jobs",
               info["jobs_dir"], "--json", str(out), "--flood-seconds", str(args.flood_seconds),
               "--keys", str(args.keys), "--repeat", str(args.repeat)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          env=child_environment())
    if done.returncode != 0:
        sys.exit(f"bench.console: the {kind} child failed:\n{done.stdout}{done.stderr}")
    return json.loads(out.read_text())



def terminal_start(info: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Launch -> the failed step's attempts on screen, through tui-drive (its own ~0.2 s included)."""
    if not TUI_DRIVE.exists() or shutil.which("tmux") is None:
        return {"skipped": "tui-drive or tmux not available"}
    env = {**os.environ, "TUI_DRIVE_SOCKET": f"stepline-bench-console-{os.getpid()}"}

    def timed(name: str, command: list[str], text: str) -> float | None:
        drive = lambda *a: subprocess.run([sys.executable, str(TUI_DRIVE), *a], env=env,  # noqa: E731
                                          capture_output=True, text=True, timeout=150)
        started = time.perf_counter()
        drive("start", name, "--size", f"{SIZE[0]}x{SIZE[1]}", "--cwd", str(ROOT), "--", *command)
        # Generous: on a loaded machine (tests in parallel) a start can take far longer than it should;
        # the time is what is measured, the wait only says whether the screen got there at all.
        ok = drive("wait", name, text, "--regex", "--timeout", "120").returncode == 0
        elapsed = time.perf_counter() - started
        drive("stop", name)
        return elapsed if ok else None

    floor = timed("floor", ["sh", "-c", "echo READY; sleep 60"], "READY")
    # The details title of the failed step: on screen at every size (the attempts line is not at 80x24).
    text = rf"step transform · run #{info['target_run']}\b"
    command = [sys.executable, "-m", "cli", "--home", info["home"], "--jobs", info["jobs_dir"], "tui"]
    samples = [timed(f"console{i}", command, text) for i in range(repeat)]
    return {"samples_s": samples, "tool_floor_s": floor, "text": text}



def row(name: str, count: object, p50: str, p99: str, top: str, target: str, ok: bool | str | None) -> str:
    verdict = ok if isinstance(ok, str) else "—" if ok is None else ("pass" if ok else "FAIL")
    return f"{name:<40}{count!s:>6}{p50:>10}{p99:>10}{top:>10}  {target:<16}{verdict}"


def report(result: dict[str, Any]) -> list[str]:
    db, ready, term, keys, rss = (result[k] for k in ("database", "ready_headless", "ready_terminal", "keys", "rss"))
    lines = [f"stepline bench.console: {result['cpus']} CPUs, load {result['load']:.1f}; home of {db['jobs']} jobs, "
             f"{db['runs']:,} runs, {db['step_runs']:,} step runs, {db['attempts']:,} attempts, {db['events']:,} "
             f"events ({db['size_mb']:.0f} MB, built in {db['build_s']:.1f} s)",
             row("measure", "count", "p50", "p99", "max", "target", "result")]
    got = [s for s in ready["samples_s"] if s is not None]
    lines.append(row("ready, headless run_test (median)", len(got), f"{ready['median_s']:.2f}s", "—",
                     f"{max(got, default=float('nan')):.2f}s", f"< {READY_TARGET_S:.0f} s", ready["median_s"] < READY_TARGET_S))
    if "skipped" in term:
        lines.append(row("ready, real terminal (tmux)", 0, "—", "—", "—", "< 1 s", None) + f" ({term['skipped']})")
    else:
        got = [s for s in term["samples_s"] if s is not None]
        lines.append(row("ready, real terminal incl. tool (median)", len(got), f"{term['median_s']:.2f}s", "—",
                         f"{max(got, default=float('nan')):.2f}s", f"< {READY_TARGET_S:.0f} s net",
                         term["net_s"] < READY_TARGET_S))
        lines.append(f"  net of tui-drive's own floor ({term['tool_floor_s']:.2f} s for `sh -c 'echo READY'`): "
                     f"{term['net_s']:.2f} s")
    for kind in ("tree", "log", "all"):
        s = keys[kind]
        lines.append(row(f"key -> screen, {dict(tree='tree Up/Down', log='log g/G', all='all keys')[kind]}", s["count"],
                         f"{s['p50']:.1f}ms", f"{s['p99']:.1f}ms", f"{s['max']:.1f}ms", f"p99 < {KEY_TARGET_MS:.0f}ms",
                         s["p99"] < KEY_TARGET_MS))
    lines.append(row(f"RSS over {rss['seconds']:.0f} s of flood (end)", len(rss["samples"]), f"{rss['start_mb']:.0f}MB", "—",
                     f"{rss['max_mb']:.0f}MB", f"< {RSS_TARGET_MB:.0f}MB, flat", rss["max_mb"] < RSS_TARGET_MB and rss["flat"])
                 + f" (end {rss['end_mb']:.0f} MB, +{rss['growth_after_warmup_mb']:.1f} MB after warm-up)")
    lines.append("  RSS MB by second: " + ", ".join(f"{s['t_s']:.0f}s {s['rss_mb']:.1f}" for s in rss["samples"]))
    lines.append("  process CPU % by 10 s: " + ", ".join(f"{s['cpu_pct']:.0f}" for s in rss["samples"][1:]))
    lines.append(f"  flood: {keys['flood_lines']:,} lines at {keys['flood_lines_per_s']:,.0f} lines/s; log widget "
                 f"holds {keys['log_widget_lines']:,} lines; key timeouts ({KEY_TIMEOUT_S:.0f} s): {keys['timeouts']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 runs / 100,000 events, 20 s flood, 2x20 keys.")
    parser.add_argument("--flood-seconds", type=float, help="Length of the flood (default 180; 20 with --quick).")
    parser.add_argument("--keys", type=int, help="Keys per kind (tree, log); default 50, 20 with --quick.")
    parser.add_argument("--repeat", type=int, default=3, help="Console starts per way of starting (default 3).")
    parser.add_argument("--json", dest="json_path", default=str(DEFAULT_JSON))
    add_scratch_option(parser)
    parser.add_argument("--child", choices=("open", "flood"), help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_scratch(args)
    args.flood_seconds = args.flood_seconds or (20.0 if args.quick else 180.0)
    args.keys = args.keys or (20 if args.quick else 50)
    if args.child:
        return child(args)

    with scratch_folder("stepline-bench-console-") as folder:
        info = build_home(Path(folder), 500 if args.quick else 5000)
        print(f"built the home in {info['build_s']:.1f} s; measuring...", file=sys.stderr)
        ready = run_child("open", info, args, 600)
        term = terminal_start(info, args.repeat)
        (Path(info["jobs_dir"]) / "flood.py").write_text(
            FLOOD_JOB.format(seconds=args.flood_seconds + 120, per_tick=FLOOD_RATE // 100))
        flood = run_child("flood", info, args, args.flood_seconds + 600)
    for measure in (ready, term):
        got = [s for s in measure.get("samples_s", []) if s is not None]
        measure["median_s"] = percentile(got, 0.5)
    if "samples_s" in term:
        term["net_s"] = term["median_s"] - (term["tool_floor_s"] or 0.0)
    tree, log = flood["latencies_ms"]["tree"], flood["latencies_ms"]["log"]
    samples = flood["samples"]
    warm = next((s for s in samples if s["t_s"] >= min(30.0, args.flood_seconds / 3)), samples[0])
    result = {
        "quick": args.quick, "cpus": os.cpu_count(), "load": os.getloadavg()[0], "database": info,
        "ready_headless": ready, "ready_terminal": term,
        "keys": {"tree": stats(tree), "log": stats(log), "all": stats(tree + log), "timeouts": flood["timeouts"],
                 "latencies_ms": flood["latencies_ms"], "flood_lines": flood["flood_lines"],
                 "flood_lines_per_s": flood["flood_lines_per_s"], "log_widget_lines": flood["log_widget_lines"],
                 "following": flood["following"]},
        "rss": {"seconds": args.flood_seconds, "samples": samples, "start_mb": samples[0]["rss_mb"],
                "end_mb": samples[-1]["rss_mb"], "max_mb": max(s["rss_mb"] for s in samples),
                "growth_after_warmup_mb": samples[-1]["rss_mb"] - warm["rss_mb"],
                "flat": samples[-1]["rss_mb"] - warm["rss_mb"] < FLAT_MB},
        "targets": {"ready_s": READY_TARGET_S, "key_p99_ms": KEY_TARGET_MS, "rss_mb": RSS_TARGET_MB, "flat_mb": FLAT_MB},
    }
    Path(args.json_path).write_text(json.dumps(result, indent=2))
    print("\n".join(report(result)))


if __name__ == "__main__":
    main()
