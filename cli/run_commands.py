"""Commands that act: run, retry, cancel."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import click

from cli import remote, render
from cli.catalog import engine_catalog, other_engine_folder
from cli.inspect_commands import format_run, pass_settings, run_document
from cli.main import Settings, group, load_job_files
from engine import query, store
from engine.errors import NotApplicableError, UnknownJobError, UsageError, unscheduled
from engine.home import Home
from engine.states import GLYPHS, Change, drawn_state
from engine.worker import env_key

if TYPE_CHECKING:
    from engine.definition import JobDef
    from engine.runner import Engine


def parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-p {pair!r}: write parameters as key=value, e.g. -p day=2026-11-27")
        key = key.strip()
        same = next((k for k in params if env_key(k) == env_key(key)), None)
        if same == key:
            raise UsageError(f"-p {key} is given twice; give each parameter once")
        if same is not None:
            raise UsageError(f"-p {same} and -p {key} both reach shell steps as $STEPLINE_PARAM_{env_key(key)}; "
                             "give one of them another name")
        params[key] = value
    return params


class Printer:
    """Prints the engine's state changes as they happen, one aligned line each."""

    def __init__(self, color: bool, quiet: bool = False, steps: Iterable[str] = ()) -> None:
        self.color = color
        self.quiet = quiet
        self.started: dict[tuple[int, str], float] = {}
        # As wide as the job's longest step name (within reason), so the state column lines up.
        self.width = min(40, max([12, *(render.cell_width(name) for name in steps)]))

    def __call__(self, change: Change) -> None:
        """Print one change; when nobody reads the output any more (`| head`), the run goes on silently."""
        if self.quiet:
            return
        line = self.line(change)
        if line is not None and not render.echo_or_mute(line):
            self.quiet = True

    def line(self, change: Change) -> str | None:
        clock = time.strftime("%H:%M:%S", time.localtime(change.at))
        if change.state == "queued" or (change.state == "waiting" and change.message == "upstream"):
            return None  # every step waits for its upstream at first: saying so for each one is noise
        if change.step is None:
            text = f"run {change.run_id} {change.state}" + (f": {change.message}" if change.message else "")
            return f"{clock}  " + render.paint(text, change.state, self.color)
        key = (change.run_id, change.step)
        note = change.message or ""
        if change.state == "running":
            self.started[key] = change.at
        elif change.state in ("succeeded", "failed", "cancelled") and key in self.started:
            took = render.duration(change.at - self.started[key])
            note = f"{took}" + (f"  {note}" if note else "")
        elif change.state == "waiting" and note:
            note = f"waiting for {note}" if not note.startswith("retry") else note
        glyph = GLYPHS.get(drawn_state(change.state, change.message), " ")
        state = render.paint(f"{change.state:<15}", change.state, self.color)
        return f"{clock}  {glyph} {render.pad(change.step, self.width)} {state} {note}".rstrip()


def _refuse_if_job_file_broken(run_id: int) -> None:
    """A retry runs the job file's current code: with that file broken, every step it reruns would fail on
    the import and lose the output it had. (A daemon retries with the file's last good version.)"""
    from pathlib import Path

    from engine.jobfile import import_timeout_s
    from engine.loader import display_path
    from engine.plan import JobPlan
    from engine.reader import read_job_files

    row = store.Run.get_or_none(store.Run.id == run_id)
    if row is None:
        return  # the engine says what is wrong
    path = JobPlan.from_json(row.snapshot).file
    if not os.path.exists(path):
        return
    [(jobs, problems)] = read_job_files([Path(path)], import_timeout_s())
    if row.job in {job_def.name for job_def in jobs}:
        return
    if problems:
        raise NotApplicableError(f"job '{row.job}' of run {run_id} does not load from {display_path(path)} now "
                                 f"({problems[0]}); fix the file, then retry: its steps would run the broken file")
    names = ", ".join(repr(job_def.name) for job_def in jobs)
    raise NotApplicableError(f"job '{row.job}' of run {run_id} is no longer defined in {display_path(path)} "
                             f"(renamed?{f' the file defines {names}' if names else ''}); a retry runs the file's "
                             "current code, so put the job's name back to retry this run, or start a run of the job "
                             "it became")


def _names_job(path: str, job_name: str) -> bool:
    """Whether the job file at `path` (one that did not load) spells the job's name: its problem is the one
    to cite, not the first of the folder's."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return False
    return f'"{job_name}"' in text or f"'{job_name}'" in text


def _step_names(run_id: int) -> list[str]:
    """The steps of a run, to line up its stream; none when it does not exist (the engine says so)."""
    from engine.errors import UnknownRunError

    try:
        return [step.name for step in query.get_run(run_id).steps]
    except UnknownRunError:
        return []


def install_interrupt() -> dict[str, int]:
    """Ctrl-C, SIGTERM and SIGHUP ask the engine to cancel; a second one kills the run's steps without their
    grace period (see drive); a third quits at once, whatever state the engine is in."""
    caught = {"count": 0, "signal": 0}

    def handler(number: int, frame: object) -> None:
        caught["count"] += 1
        caught["signal"] = caught["signal"] or number
        if caught["count"] > 2:
            raise KeyboardInterrupt
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, handler)
    return caught


def drive(engine: Engine, run_id: int, caught: dict[str, int]) -> None:
    """Run the engine until the run ends, on its own thread: signals interrupt only the main thread,
    which just waits (a wait a signal cut short once hung for good inside the engine's queue)."""
    failure: list[BaseException] = []

    def loop() -> None:
        handled = 0
        try:
            while run_id in engine.active_run_ids:
                engine.step()
                if caught["count"] and not handled:
                    handled = 1
                    render.echo_or_mute("interrupted: cancelling the run (its steps get SIGTERM, then SIGKILL "
                                        "after 5s); press Ctrl-C again to kill them now", err=True)
                    engine.cancel(run_id, "interrupted from the terminal")
                if caught["count"] > 1 and handled == 1:
                    handled = 2
                    render.echo_or_mute("interrupted again: killing the run's steps now (SIGKILL)", err=True)
                    engine.kill_now(run_id)
        except BaseException as error:  # handed to the main thread
            failure.append(error)

    thread = threading.Thread(target=loop, name="stepline-engine", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if failure:
        raise failure[0]


def _run_and_attempts(run_id: int) -> tuple[query.RunView, dict[str, list[query.AttemptView]]]:
    run = query.get_run(run_id)
    return run, {s.name: query.attempts(run_id, s.name) for s in run.steps}


def handed_off(what: str, run_id: int, pid: int, as_json: bool, why: str = "") -> None:
    """Say that the engine holding the home took the run (`why`: why it waits, when queued); with --json, the
    run as it is now (the shape of `stepline show --json`), so a script gets JSON whether or not a daemon runs."""
    if as_json:
        render.echo_or_mute(render.json_text(run_document(*_run_and_attempts(run_id))))
        return
    click.echo(f"{what} by the engine (pid {pid}){f' ({why})' if why else ''}; follow it with `stepline logs "
               f"{run_id} --follow` or `stepline show {run_id}`")


def finish(home: Home, run_id: int, as_json: bool, caught: dict[str, int] | None = None) -> None:
    """Print the finished run and exit by its outcome, whether or not anybody still reads the output: 0 if
    it succeeded, 1 if not, and 128 + the signal's number (130 for Ctrl-C) when a signal (`caught`, see
    install_interrupt) cancelled it, as a shell reports a command a signal ended: a wrapper script tells a
    user's abort from a failed job."""
    run, attempts = _run_and_attempts(run_id)
    if as_json:
        render.echo_or_mute(render.json_text(run_document(run, attempts)))
    else:
        render.echo_or_mute("\n" + format_run(run, attempts, render.use_color()))
    if run.state == "succeeded":
        raise SystemExit(0)
    raise SystemExit(128 + caught["signal"] if caught and caught["signal"] else 1)


def refuse_unknown_params(job_def: JobDef, params: dict[str, str]) -> None:
    unknown = job_def.unknown_param(params)
    if unknown is not None:
        raise UsageError(f"-p {unknown[0]}: {unknown[1]}")


@group.command(epilog="""
\b
Examples:
  stepline run etl_orders
  stepline run etl_orders -p day=2026-11-27 -p region=eu
  stepline run etl_orders --parallel 4 --json
""")
@click.argument("job_name", metavar="JOB")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Run parameter (repeatable).")
@click.option("--parallel", type=click.IntRange(1, 512), help="Steps running at once (default: CPU count).")
@click.option("--json", "as_json", is_flag=True, help="No streaming; print the finished run as JSON.")
@click.option("--wait", is_flag=True, help="When a daemon runs the home: follow the run to its end and exit 0/1.")
@pass_settings
def run(settings: Settings, job_name: str, params: tuple[str, ...], parallel: int | None, as_json: bool,
        wait: bool) -> None:
    """Run JOB now and stream its step states; exit 0 if the run succeeded, 1 if not.

    When an engine (`stepline daemon` or `stepline up`) runs the home, the run is handed to it; add --wait
    to follow it to the end.
    """
    parsed = parse_params(params)
    home = settings.open_home()
    engine_jobs = engine_catalog(settings, home)
    if engine_jobs is not None and job_name in engine_jobs.jobs:
        # The engine runs the job as it loaded it (the last good version, if its file broke since): no import.
        hand_off(home, engine_jobs.pid, job_name, [s.name for s in engine_jobs.jobs[job_name].plan.steps], parsed,
                 parallel, as_json, wait)
        return
    result = load_job_files(settings)
    if job_name not in result.jobs:
        broken = [p for p in result.problems if f"'{job_name}'" in p.message] or [
            p for p in result.problems if _names_job(p.file, job_name)]
        if broken:
            raise UnknownJobError(f"job '{job_name}' cannot run: {broken[0]}")
        if result.problems:
            count = len(result.problems)
            raise UnknownJobError(f"no job '{job_name}' is loaded from {settings.jobs_dir}, where {count} "
                                  f"problem{'s' if count != 1 else ''} stop{'' if count != 1 else 's'} job files "
                                  f"from loading (first: {result.problems[0]}); `stepline check` lists them")
        import difflib
        close = difflib.get_close_matches(job_name, list(result.jobs), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownJobError(f"no job '{job_name}' in {settings.jobs_dir}{hint}; `stepline jobs` lists them")
    job_def = result.jobs[job_name]
    refuse_unknown_params(job_def, parsed)
    elsewhere = other_engine_folder(settings, home)
    if elsewhere is not None:
        raise NotApplicableError(
            f"the engine (pid {elsewhere[0]}) running this home loads the jobs of {elsewhere[1]}, not of "
            f"{settings.jobs_dir}: it would run its own '{job_name}', not this folder's; pass --jobs {elsewhere[1]}, "
            "or use another --home for this folder")
    pid = remote.engine_holder(home)
    if pid is not None:
        hand_off(home, pid, job_name, list(job_def.step_names), parsed, parallel, as_json, wait)
        return
    from engine.runner import Engine  # only the commands that run steps pay for importing the engine

    engine = Engine(home, parallel=parallel, listener=Printer(render.use_color(), as_json, job_def.step_names))
    close_runs_of_stopped_engines(engine)
    caught = install_interrupt()
    try:
        run_id = engine.submit(job_def, parsed)
        drive(engine, run_id, caught)
    finally:
        engine.close()
    finish(home, run_id, as_json, caught)


def hand_off(home: Home, pid: int, job_name: str, step_names: list[str], params: dict[str, str],
             parallel: int | None, as_json: bool, wait: bool) -> None:
    """Have the engine (`pid`) running the home start the run; follow it to its end with `wait`."""
    since = query.last_event_id()
    answer = remote.send("trigger", home, pid, job=job_name, payload={"params": params})
    assert answer.run_id is not None
    if parallel is not None and not as_json:
        click.echo(f"stepline: --parallel applies to a run's own engine; the engine (pid {pid}) runs this one "
                   "with its own limit (`stepline daemon --parallel N`)", err=True)
    if not wait:
        queued = answer.result is not None and " queued: " in answer.result
        handed_off(f"run {answer.run_id} of {job_name} {'queued' if queued else 'started'}", answer.run_id, pid,
                   as_json, answer.result.partition(": ")[2] if queued and answer.result else "")
        return
    remote.follow(answer.run_id, Printer(render.use_color(), as_json, step_names), since)
    finish(home, answer.run_id, as_json)


@group.command(epilog="""
\b
Examples:
  stepline retry 12             re-run every failed step of run 12 (and what waits on them)
  stepline retry 12 load        re-run step load of run 12 and the steps after it
""")
@click.argument("run_id", metavar="RUN", type=int)
@click.argument("step", required=False)
@click.option("--parallel", type=click.IntRange(1, 512), help="Steps running at once (default: CPU count).")
@click.option("--json", "as_json", is_flag=True, help="No streaming; print the finished run as JSON.")
@click.option("--wait", is_flag=True, help="When a daemon runs the home: follow the run to its end and exit 0/1.")
@pass_settings
def retry(settings: Settings, run_id: int, step: str | None, parallel: int | None, as_json: bool,
          wait: bool) -> None:
    """Re-run the failed steps of RUN as new attempts in the same run, reusing the outputs of steps that succeeded."""
    home = settings.open_home()
    pid = remote.engine_holder(home)
    if pid is not None:
        since = query.last_event_id()
        answer = remote.send("retry", home, pid, run_id=run_id, step=step)
        if not wait:
            handed_off(answer.result or f"retry of run {run_id} started", run_id, pid, as_json)
            return
        remote.follow(run_id, Printer(render.use_color(), as_json, _step_names(run_id)), since)
        finish(home, run_id, as_json)
    from engine.recovery import close_if_abandoned
    from engine.runner import Engine  # only the commands that run steps pay for importing the engine

    close_if_abandoned(run_id)
    _refuse_if_job_file_broken(run_id)
    engine = Engine(home, parallel=parallel, listener=Printer(render.use_color(), as_json, _step_names(run_id)))
    close_runs_of_stopped_engines(engine)
    caught = install_interrupt()
    try:
        again = engine.retry(run_id, step)
        if not as_json:
            click.echo(f"retrying {', '.join(again)} in run {run_id}")
        drive(engine, run_id, caught)
    finally:
        engine.close()
    finish(home, run_id, as_json, caught)


def close_runs_of_stopped_engines(engine: Engine) -> None:
    """As every engine does when it starts: runs whose engine was killed are closed, and the user told."""
    from engine import recovery

    for run_id, job, cut in recovery.close_runs_of_stopped_engines(engine.owner):
        steps = f" (steps cut short: {', '.join(cut)})" if cut else ""
        click.echo(f"closed run {run_id} of {job}: the engine that ran it stopped{steps}; "
                   f"`stepline retry {run_id}` runs what failed again", err=True)


@group.command(epilog="Example: stepline cancel 12")
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the run has ended.")
@pass_settings
def cancel(settings: Settings, run_id: int, wait: bool) -> None:
    """Cancel a running run: its step processes are stopped and its steps say why."""
    from engine.recovery import cancel_if_abandoned

    home = settings.open_home()
    summary = query.run_summary(run_id)
    if summary.state not in ("running", "queued"):
        raise NotApplicableError(f"run {run_id} already {summary.state}; nothing to cancel")
    holder = remote.engine_holder(home)
    if cancel_if_abandoned(run_id, home_engine=holder):
        click.echo(f"run {run_id} cancelled (the engine that ran it had stopped; leftover step processes ended)")
        return
    pid = query.run_owner(run_id)[0] or holder
    store.add_command("cancel", run_id=run_id, payload={"reason": "cancelled by user"})
    click.echo(f"cancel requested for run {run_id} (engine pid {pid})")
    if not wait:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = query.run_summary(run_id)
        if current.state not in ("running", "queued"):
            click.echo(f"run {run_id} {current.state}" + (f": {current.reason}" if current.reason else ""))
            return
        if cancel_if_abandoned(run_id, "cancelled by user (its engine stopped)", remote.engine_holder(home)):
            click.echo(f"run {run_id} cancelled (its engine stopped meanwhile)")
            return
        time.sleep(0.1)
    raise NotApplicableError(f"run {run_id} did not end within 60s of the cancel request; engine pid {pid} "
                             "may be stuck: check `stepline show` and its engine.log")


def _pause_or_resume(settings: Settings, job_name: str, pause: bool) -> None:
    from engine.scheduler import record_paused

    home = settings.open_home()
    pid = remote.engine_holder(home)
    if pid is not None:
        # The engine knows what it schedules, a job whose file is broken now (it keeps the last good
        # version) included: it is the one to ask, not the files as they are.
        answer = remote.send("pause" if pause else "resume", home, pid, job=job_name)
        click.echo(answer.result or "")
        return
    result = load_job_files(settings)
    if job_name not in result.jobs:
        raise UnknownJobError(f"no job '{job_name}' in {settings.jobs_dir}; `stepline jobs` lists them")
    job_def = result.jobs[job_name]
    if job_def.schedule is None and job_def.every is None:
        raise NotApplicableError(unscheduled(job_name, "pause" if pause else "resume"))
    record_paused(job_name, pause, None, time.time())
    click.echo(f"{job_name} {'paused' if pause else 'resumed'} (takes effect when an engine runs)")


@group.command(epilog="Example: stepline pause nightly_sales")
@click.argument("job_name", metavar="JOB")
@pass_settings
def pause(settings: Settings, job_name: str) -> None:
    """Pause JOB's schedule (kept across restarts); manual runs still work."""
    _pause_or_resume(settings, job_name, True)


@group.command(epilog="Example: stepline resume nightly_sales")
@click.argument("job_name", metavar="JOB")
@pass_settings
def resume(settings: Settings, job_name: str) -> None:
    """Resume JOB's schedule."""
    _pause_or_resume(settings, job_name, False)
