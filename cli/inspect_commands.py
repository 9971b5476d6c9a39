"""Commands that look: check, jobs, runs, show, logs."""
from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any

import click

from cli import remote, render
from cli.main import Settings, group, load_job_files, pass_settings
from cli.remote import stop_if_engine_gone
from engine import query
from engine.errors import NotApplicableError, UnknownStepError, UsageError
from engine.humanize import display_path, natural_key
from engine.loader import LoadResult, Problem
from engine.states import GLYPHS, drawn_state, waiting_note


def load_or_report(settings: Settings) -> LoadResult:
    return load_job_files(settings)


@group.command(epilog="Example: stepline check --jobs sample_jobs   (in CI: stepline check --json > problems.json)")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: the problems, the jobs and files.")
@pass_settings
def check(settings: Settings, as_json: bool) -> None:
    """Load and validate every job file; exit 1 listing every problem."""
    result = load_job_files(settings, fresh=True)  # a file that hung before is tried again
    if as_json:
        render.print_json({"ok": not result.problems and bool(result.files), "jobs": sorted(result.jobs, key=natural_key),
                           "files": [_absolute(f) for f in result.files],
                           "problems": [_problem_document(p) for p in result.problems]})
        raise SystemExit(1 if result.problems or not result.files else 0)
    for problem in result.problems:
        click.echo(str(problem), err=True)
    count = len(result.jobs)
    files = len(result.files)
    if result.problems:
        click.echo(f"{len(result.problems)} problem{'s' if len(result.problems) != 1 else ''} in "
                   f"{settings.jobs_dir}; {count} job{'s' if count != 1 else ''} OK", err=True)
        raise SystemExit(1)
    if not files:  # a CI gate pointed at the wrong folder must not pass
        click.echo(f"no job files in {settings.jobs_dir}: nothing to check; pass --jobs DIR (or set STEPLINE_JOBS) "
                   "to the folder of your job files", err=True)
        raise SystemExit(1)
    click.echo(f"{count} job{'s' if count != 1 else ''} in {files} file{'s' if files != 1 else ''}: OK")


@group.command(epilog="Example: stepline jobs --json | jq '.jobs[].name'")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_settings
def jobs(settings: Settings, as_json: bool) -> None:
    """Jobs with their steps, schedule, next fire time and last run.

    With an engine running the home, as that engine loaded them (see cli/catalog.py)."""
    from cli.catalog import engine_catalog, other_engine_folder
    from engine import timing

    home = settings.open_home(to_read=True)
    engine = engine_catalog(settings, home)
    listed: list[tuple[str, str, list[str], str, str | None, str | None, str | None]]
    if engine is not None:
        listed = [(j.name, j.file, [s.name for s in j.plan.steps], j.description, j.schedule, j.every, j.timezone)
                  for j in engine.jobs.values()]
        found = [_in_folder(problem, settings) for problem in engine.problems]
    else:
        result = load_or_report(settings)
        listed = [(name, d.file, list(d.step_names), d.description, d.schedule, d.every, d.timezone)
                  for name, d in result.jobs.items()]
        found = list(result.problems)
    last = query.last_run_by_job()
    catalog = {j.name: j for j in query.jobs()}
    paused = {name: j.paused for name, j in catalog.items()}
    now = datetime.now(timezone.utc)
    entries: list[dict[str, Any]] = []
    for name, file, steps, description, schedule, every, zone_name in sorted(listed, key=lambda j: natural_key(j[0])):
        # The engine's own next fire keeps an interval's phase; without an engine, compute it.
        recorded = catalog[name].next_fire_at if name in catalog else None
        next_fire = recorded if recorded and recorded > now else timing.next_fire(schedule, every, zone_name, now)
        zone = timing.parse_zone(zone_name)
        last_run = last.get(name)
        broken = engine.broken_file_of(engine.jobs[name]) if engine is not None else None
        entries.append({
            "name": name, "file": _absolute(file), "steps": steps,
            "description": description,
            "schedule": schedule or (f"every {every}" if every else None),
            "timezone": zone_name, "paused": paused.get(name, False),
            "next_fire": next_fire.astimezone(zone) if next_fire and not paused.get(name) else None,
            "last_run": {"id": last_run.id, "state": last_run.state, "ended_at": last_run.ended_at}
            if last_run else None,
            "file_broken": str(broken) if broken is not None else None,
        })
    problems = [_problem_document(p) for p in found]
    if as_json:
        render.print_json({"jobs": entries, "problems": problems})
        return
    color = render.use_color()
    if not entries and not problems:
        click.echo(f"no jobs in {settings.jobs_dir}; write one (see docs/jobs.md) or pass --jobs DIR")
    elif entries:
        rows: list[list[str]] = []
        states: list[str | None] = []
        for entry in entries:
            fire = entry["next_fire"]
            when = "paused" if entry["paused"] else (
                f"{fire.strftime('%Y-%m-%d %H:%M %Z')} ({render.relative(fire, now)})" if fire else "-")
            latest = entry["last_run"]
            rows.append([entry["name"], str(len(entry["steps"])), entry["schedule"] or "-", when,
                         f"{latest['id']} {latest['state']}" if latest else "-"])
            states.append(latest["state"] if latest else None)
        headers = ["job", "steps", "schedule", "next fire", "last run"]
        descriptions = [entry["description"] for entry in entries]
        if any(descriptions):
            headers, rows = _with_descriptions(headers, rows, descriptions)
        click.echo(render.table(headers, rows, states, 4, color))
        elsewhere = other_engine_folder(settings, home) if engine is None else None
        if elsewhere is not None:
            click.echo(f"the engine (pid {elsewhere[0]}) running this home loads the jobs of {elsewhere[1]}, not "
                       f"these: the fires above are not its; `stepline --jobs {elsewhere[1]} jobs` lists its jobs",
                       err=True)
        elif any(entry["next_fire"] for entry in entries) and engine is None and remote.engine_holder(home) is None:
            click.echo("no engine runs this home now: the fires above happen only while `stepline daemon` (or "
                       "`stepline up`) runs", err=True)
    stderr_color = render.use_color(sys.stderr)
    for problem in found:
        click.echo(render.paint(str(problem), "failed", stderr_color), err=True)
    kept = [entry["name"] for entry in entries if entry["file_broken"]]
    if engine is not None and kept:  # file_broken comes from the engine's catalogue only
        click.echo(f"the engine (pid {engine.pid}) keeps running the last good version of "
                   f"{', '.join(repr(name) for name in kept)} until {'its file is' if len(kept) == 1 else 'their files are'}"
                   " fixed", err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) in job files; `stepline check` lists them", err=True)


def _problem_document(problem: Problem) -> dict[str, Any]:
    """A problem in JSON: the file absolute (the same from any working directory), no line for a whole file."""
    return {"file": _absolute(problem.file), "line": problem.line or None, "message": problem.message}


def _absolute(path: str) -> str:
    """A file as JSON names it: absolute and normalised, the same from any working directory."""
    return os.path.normpath(os.path.abspath(path))


def _in_folder(problem: Problem, settings: Settings) -> Problem:
    """An engine's problem names the file as the engine's working directory saw it: name it in the jobs folder."""
    if not problem.file.endswith(".py"):
        return problem
    return Problem(display_path(settings.jobs_dir / os.path.basename(problem.file)), problem.line, problem.message)


@group.command(epilog="Example: stepline runs --job nightly_sales --status failed --limit 5")
@click.option("--job", help="Only runs of this job.")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
              help="Only runs in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="At most N runs.")
@click.option("--before", "before_id", type=int, metavar="RUN", help="Only runs older than RUN (the next page).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_settings
def runs(settings: Settings, job: str | None, status: str | None, limit: int, before_id: int | None,
         as_json: bool) -> None:
    """Run history, newest first."""
    settings.open_home(to_read=True)
    found = query.list_runs(job=job, state=status, limit=limit, before_id=before_id)
    total = query.count_runs(job=job, state=status)  # every page's: it stays the same from page to page
    older = query.count_runs(job=job, state=status, before_id=found[-1].id) if found else 0
    next_before = found[-1].id if older else None
    if as_json:
        render.print_json({"runs": found, "total": total, "next_before": next_before})
        return
    if not found:
        click.echo("no runs yet; start one with `stepline run JOB`" if not (job or status or before_id is not None)
                   else "no runs match" + _unknown_job_hint(job))
        return
    now = datetime.now(timezone.utc)
    # A run that has not started (queued, or cancelled while queued) shows no start time, not its creation.
    rows = [[str(r.id), r.job, r.state, r.trigger, render.local_time(r.started_at) if r.started_at else "-",
             render.duration(r.duration_s(_stopped_at(r.id, now) if r.state == "running" else now)),
             (_gone_note(r.id) if r.state == "running" else "") or r.reason or ""]
            for r in found]
    states: list[str | None] = [r.state for r in found]
    click.echo(render.table(["run", "job", "state", "trigger", "started", "duration", "reason"], rows,
                            states, 2, render.use_color()))
    if next_before is not None:
        kept = "".join(f" --{name} {value}" for name, value in (("job", job), ("status", status)) if value)
        click.echo(f"{len(found)} of {total:,} runs; older ones: `stepline runs{kept} --before {next_before}` "
                   "(or --limit N)")


@group.command(epilog="Example: stepline show 12 --json")
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_settings
def show(settings: Settings, run_id: int, as_json: bool) -> None:
    """A run's steps: state, attempts, durations, exit codes, reasons and small outputs."""
    settings.open_home(to_read=True)
    run = query.get_run(run_id)
    attempts = {s.name: query.attempts(run_id, s.name) for s in run.steps}
    if as_json:
        render.print_json(run_document(run, attempts))
        return
    click.echo(format_run(run, attempts, render.use_color()))


def _unknown_job_hint(job: str | None) -> str:
    """When --job names no job the home knows: say so, with the closest name (a typo lists nothing)."""
    if job is None:
        return ""
    known = [summary.name for summary in query.jobs()] + list(query.last_run_by_job())
    if job in known:
        return ""
    import difflib

    close = difflib.get_close_matches(job, known, n=1)
    return f" (no job '{job}' is known here{f'; did you mean {close[0]!r}?' if close else ''})"


def _stopped_at(run_id: int, now: datetime) -> datetime:
    """`now`, or when the engine of a running run was last seen if it is gone: a dead run's clock stops."""
    from engine.recovery import engine_gone_at

    return engine_gone_at(run_id) or now


def _gone_note(run_id: int) -> str:
    """What a running run's row says when its engine is gone (it stays "running" until an engine starts)."""
    from engine.recovery import engine_gone_note  # psutil and the executor: only when a run is running

    return engine_gone_note(run_id) or ""


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def run_document(run: query.RunView, attempts: dict[str, list[query.AttemptView]]) -> dict[str, object]:
    """The JSON document of `show --json` (and of `run`/`retry --json`)."""
    steps = []
    for step in run.steps:
        entry = render.to_jsonable(step)
        entry["attempt_count"] = entry.pop("attempts")
        entry["attempts"] = render.to_jsonable(attempts[step.name])
        steps.append(entry)
    return {"run": render.to_jsonable(run.run), "steps": steps}


def format_run(run: query.RunView, attempts: dict[str, list[query.AttemptView]], color: bool) -> str:
    summary = run.run
    now = datetime.now(timezone.utc)
    if summary.state == "running":
        now = _stopped_at(summary.id, now)
    lines = [f"run {summary.id}  {summary.job}  " + render.paint(summary.state, summary.state, color)
             + f"  ({summary.trigger})"]
    when = f"started {render.local_time(summary.started_at)}" if summary.started_at else \
        f"queued {render.local_time(summary.created_at)}"
    if summary.ended_at:
        when += f", ended {render.local_time(summary.ended_at, with_date=False)}"
    lines.append(f"{when}, took {render.duration(summary.duration_s(now))}")
    if summary.scheduled_for:
        late = (f", started {render.duration((summary.started_at - summary.scheduled_for).total_seconds())} late"
                if summary.started_at else "")
        lines.append(f"scheduled for {render.local_time(summary.scheduled_for)}{late}")
    if summary.params:
        lines.append("params: " + " ".join(f"{k}={v}" for k, v in summary.params.items()))
    if summary.reason:
        lines.append(f"reason: {summary.reason}")
    gone = _gone_note(summary.id) if summary.state == "running" else ""
    if gone:
        lines.append(gone)
    lines.append("")
    rows, states = [], []
    for step in run.steps:
        # Exit code, CPU and memory of the step's attempt in this round only: a step a retry reset (and that
        # has not started again) has none yet, whatever its earlier attempts did.
        last = attempts[step.name][-1] if attempts[step.name] and step.started_at is not None else None
        exit_text = "-"
        if last is not None:
            exit_text = (f"signal {last.signal}" if last.signal else
                         str(last.exit_code) if last.exit_code is not None else "-")
        reason = step.reason.summary if step.reason else None
        note = (f"waiting for {waiting_note(step.waiting_for, reason)}" if step.state == "waiting" and step.waiting_for
                else reason or (f"→ {_cut(step.output_preview, 60)}" if step.output_preview else ""))
        rows.append([f"{GLYPHS.get(drawn_state(step.state, step.waiting_for), ' ')} {step.name}", step.state,
                     str(step.attempts),
                     render.duration(step.duration_s(now)), exit_text,
                     render.duration(last.cpu_s) if last and last.cpu_s is not None else "-",
                     render.bytes_size(last.peak_rss_bytes) if last else "-", note])
        states.append(step.state)
    lines.append(render.table(["step", "state", "tries", "duration", "exit", "cpu", "peak mem", "reason / output"],
                              rows, states, 1, color))
    for (step_name, number), cut in sorted(_log_cuts(summary.id).items()):
        lines.append(f"log of {step_name} (attempt {number}): {cut}")
    for step in run.steps:
        if step.state == "failed" and step.reason and step.reason.detail:
            lines += ["", render.paint(f"── {step.name}: {step.reason.summary}", "failed", color)]
            lines += ["   " + line for line in step.reason.detail.rstrip().splitlines()[-30:]]
    if summary.state == "failed":
        failed = [s.name for s in run.steps if s.state == "failed"]
        lines += ["", f"next: stepline logs {summary.id} {failed[0] if failed else ''}".rstrip()
                  + f"   ·   stepline retry {summary.id}"]
    return "\n".join(lines)


@group.command(epilog="""
\b
Examples:
  stepline logs 12              every step's latest attempt, in DAG order
  stepline logs 12 load         the latest attempt of step load
  stepline logs 12 load --attempt 1
  stepline logs 12 --follow     follow the run's logs until it ends
  stepline logs 12 load -n 50   the last 50 lines of step load's log
""")
@click.argument("run_id", metavar="RUN", type=int)
@click.argument("step", required=False)
@click.option("--attempt", type=int, help="Attempt number (default: the latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the step (or run) ends.")
@click.option("--tail", "-n", "tail", type=click.IntRange(min=0), metavar="N",
              help="Only the last N lines of each log (then new ones, with --follow).")
@pass_settings
def logs(settings: Settings, run_id: int, step: str | None, attempt: int | None, follow: bool,
         tail: int | None) -> None:
    """Step logs of a run, each line with its UTC timestamp."""
    settings.open_home(to_read=True)
    run = query.get_run(run_id)
    names = [s.name for s in run.steps]
    if step is not None and step not in names:
        import difflib
        close = difflib.get_close_matches(step, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownStepError(f"run {run_id} has no step '{step}'{hint}; its steps are: {', '.join(names)}")
    if attempt is not None and step is None:
        raise UsageError("--attempt needs a STEP: stepline logs RUN STEP --attempt N")
    chosen = run.step(step) if step is not None else None
    if chosen is not None and chosen.attempts == 0 and not follow:
        why = f" ({chosen.reason.summary})" if chosen.reason else ""
        raise NotApplicableError(f"step '{step}' of run {run_id} has no log: it never ran, it is "
                                 f"{chosen.state.replace('_', ' ')}{why}")
    try:
        _print_logs(run_id, [step] if step else names, step, attempt, follow, tail)
    except KeyboardInterrupt:  # Ctrl-C ends --follow, as it ends `tail -f`: no message, status 130
        raise SystemExit(130) from None


def _print_logs(run_id: int, chosen: list[str], step: str | None, attempt: int | None, follow: bool,
                tail: int | None = None) -> None:
    offsets: dict[tuple[str, int], int] = {}
    cuts = {} if follow else _log_cuts(run_id)  # following, the cuts are known at the end (see _drain)
    next_owner_check = time.monotonic() + 1.0
    multiple = len(chosen) > 1
    while True:
        for name in chosen:
            found = query.attempts(run_id, name)
            if attempt is not None:
                picked = [a for a in found if a.number == attempt]
                if not picked:
                    raise NotApplicableError(f"step '{name}' of run {run_id} has {len(found)} attempt(s); "
                                             f"there is no attempt {attempt}")
                found = picked
            elif found and not follow:
                found = found[-1:]
            elif not found and multiple and not follow:  # say so, rather than leave the step out
                never = query.get_run(run_id).step(name)
                why = f": {never.reason.summary}" if never.reason else ""
                click.echo(f"== {name} (never ran, {never.state.replace('_', ' ')}{why}) ==")
            for item in found:
                _print_new_lines(item, name, offsets, prefix=f"{name} | " if multiple and follow else "",
                                 header=None if follow or not multiple else f"== {name} (attempt {item.number}) ==",
                                 tail=tail)
                if not follow:
                    _say_if_cut(cuts, name, item.number)
        if not follow:
            return
        current = query.run_summary(run_id)
        if step is None and current.state in ("succeeded", "failed", "cancelled"):
            _drain(run_id, chosen, offsets, multiple)
            return
        if step is not None:
            state = query.get_run(run_id).step(step).state
            if state in ("succeeded", "failed", "cancelled", "upstream_failed", "skipped") and \
                    current.state in ("succeeded", "failed", "cancelled"):
                _drain(run_id, chosen, offsets, multiple)
                return
        if current.state == "running" and time.monotonic() >= next_owner_check:
            next_owner_check = time.monotonic() + 1.0
            try:
                stop_if_engine_gone(run_id)
            except NotApplicableError:
                _drain(run_id, chosen, offsets, multiple)
                raise
        time.sleep(0.2)


def _drain(run_id: int, names: list[str], offsets: dict[tuple[str, int], int], multiple: bool) -> None:
    cuts = _log_cuts(run_id)
    for name in names:
        for item in query.attempts(run_id, name):
            _print_new_lines(item, name, offsets, prefix=f"{name} | " if multiple else "", header=None)
            _say_if_cut(cuts, name, item.number)


def _log_cuts(run_id: int) -> dict[tuple[str, int], str]:
    from engine import store

    return store.log_cuts(run_id)


def _say_if_cut(cuts: dict[tuple[str, int], str], step: str, attempt: int) -> None:
    """A log a full disk cut short says so where it ends, not only in the engine's log."""
    from engine.logread import cut_note

    cut = cuts.get((step, attempt))
    if cut:
        click.echo(cut_note(cut))


def _print_new_lines(item: query.AttemptView, name: str, offsets: dict[tuple[str, int], int], prefix: str,
                     header: str | None, tail: int | None = None) -> None:
    from engine.logread import read_from, read_unended, tail_start

    key = (name, item.number)
    first = key not in offsets
    offset = offsets.get(key, 0)
    if first and tail is not None:
        offset = tail_start(item.log_path, tail)
    headed = header is not None and first
    if headed:
        click.echo(header)
    while True:
        lines, new_offset = read_from(item.log_path, offset)
        if lines:  # a megabyte at a time: one write per line made a 3-million-line log take 20 s
            click.echo("".join(f"{prefix}{line}\n" for line in lines), nl=False)
        if new_offset == offset:
            break
        offset = new_offset
    if item.state != "running":  # its last line may never have ended (a kill, a full disk): it is final
        rest, offset = read_unended(item.log_path, offset)
        if rest:
            click.echo(f"{prefix}{rest[0]}")
    if headed and offset == 0:
        click.echo("(no output)")  # a section of its own, not the next step's header right below
    offsets[key] = offset


def _with_descriptions(headers: list[str], rows: list[list[str]],
                       descriptions: list[str]) -> tuple[list[str], list[list[str]]]:
    """The table with a last column of the jobs' descriptions; on a terminal, cut to what fits its width (a
    table that wraps cannot be read), and left out when less than a few words would fit."""
    width = max(render.cell_width(line) for line in render.table(headers, rows).splitlines())
    room = shutil.get_terminal_size().columns - width - 2 if sys.stdout.isatty() else None
    if room is not None and room < 16:
        return headers, rows
    cells = [render.cut(text, room) if room is not None else text for text in descriptions]
    return headers + ["description"], [row + [cell or "-"] for row, cell in zip(rows, cells)]
