"""`stepline prune`: delete the runs that ended long ago, with their logs and outputs (Airflow's `db clean`)."""
from __future__ import annotations

import os
import re
import shutil
import time
from datetime import datetime, timezone

import click

from cli import render
from cli.main import Settings, group, pass_settings
from engine.errors import UsageError

_AGE = re.compile(r"^\s*(\d+)\s*(m|h|d|w)\s*$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds of an age such as "90m", "12h", "30d" or "8w"."""
    match = _AGE.match(text)
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--older-than {text!r}: write a number and a unit, m, h, d or w (e.g. 30d)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


@group.command(epilog="""
\b
Examples:
  stepline prune --older-than 30d --dry-run   what would go
  stepline prune --older-than 30d             delete runs that ended more than 30 days ago
""")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Runs that ended longer ago than this: 90m, 12h, 30d, 8w.")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@pass_settings
def prune(settings: Settings, older_than: str, dry_run: bool) -> None:
    """Delete runs that ended more than AGE ago, with their steps, attempts, events, logs and outputs.

    Running and queued runs are never touched, nor the newest run of each job. Safe while an engine runs.
    """
    from engine import store

    age_s = parse_age(older_than)
    home = settings.open_home()
    cutoff = max(0.0, time.time() - age_s)  # "older than 10,000 years": everything that ended
    run_ids = store.prunable_runs(cutoff)
    folders = [folder for run_id in run_ids for folder in (os.path.join(home.logs, str(run_id)),
                                                               os.path.join(home.outputs, str(run_id)))
               if os.path.isdir(folder)]
    size = sum(_size(folder) for folder in folders)
    before = render.local_time(datetime.fromtimestamp(cutoff, timezone.utc))
    what = f"{len(run_ids):,} run{'s' if len(run_ids) != 1 else ''} that ended before {before}"
    if dry_run:
        click.echo(f"would delete {what} ({render.bytes_size(size)} of logs and outputs)" if run_ids
                   else f"no run ended before {before}; nothing to delete")
        return
    if not run_ids:
        click.echo(f"no run ended before {before}; nothing to delete")
        return
    store.delete_runs(run_ids)  # the rows first: a run is never listed without its folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    click.echo(f"deleted {what} ({render.bytes_size(size)} of logs and outputs freed)")


def _size(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total
