"""The `stepline` group: global options, error handling, and the commands it gathers.

SteplineError becomes one line on stderr (exit 1; usage errors exit 2). Anything
else is a bug: its traceback goes to the home's engine.log and one line says where.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from engine.errors import SteplineError, UsageError
from engine.home import (DATABASE_NAME, Home, is_damaged_database, is_disk_full, prepare_home, resolve_home,
                         unusable_database)

if TYPE_CHECKING:
    from engine.loader import LoadResult

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
COMMAND_MODULES = {
    "check": "inspect_commands", "jobs": "inspect_commands", "runs": "inspect_commands",
    "show": "inspect_commands", "logs": "inspect_commands",
    "run": "run_commands", "retry": "run_commands", "cancel": "run_commands", "pause": "run_commands",
    "resume": "run_commands",
    "up": "service_commands", "daemon": "service_commands", "tui": "service_commands",
    "prune": "prune_command",
}
"""The module that registers each command: only the one invoked is imported (`stepline tui` starts
without the loader, the runner's helpers and the CLI's renderers)."""


@dataclass
class Settings:
    home_path: str | None
    jobs_path: str | None

    @property
    def jobs_dir(self) -> Path:
        return Path(self.jobs_path or os.environ.get("STEPLINE_JOBS") or "jobs").expanduser().absolute()

    def open_home(self, to_read: bool = False) -> Home:
        """The home, created on first use, with its database open and migrated. `to_read`: a command that only
        reads (runs, show, logs, jobs) also works on a home it may not write, read as it is."""
        from engine import store

        root = resolve_home(self.home_path)
        if to_read and (root / DATABASE_NAME).is_file() and not os.access(root, os.W_OK | os.X_OK):
            home = prepare_home(root, create=False)
            store.open_database_to_read(home)
            return home
        home = prepare_home(self.home_path)
        store.open_database(home)
        return home


pass_settings = click.make_pass_decorator(Settings)


STUCK_IMPORTS = "stuck-imports.json"
"""In the home: the job files whose import timed out, until they change (see engine/reader.py)."""


def load_job_files(settings: Settings, fresh: bool = False) -> LoadResult:
    """The jobs of the jobs folder. What the files print while they are imported goes to stderr (see
    engine/reader.py): stdout carries the command's own output, which `--json` and pipes must get unmixed.
    A file whose import timed out before is not imported again until it changes, unless `fresh`."""
    from engine.loader import load_jobs

    root = resolve_home(settings.home_path)
    memory = root / STUCK_IMPORTS if root.is_dir() else None
    return load_jobs(settings.jobs_dir, memory=memory, fresh=fresh)


class SteplineGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(COMMAND_MODULES.values())):  # help lists every command
            importlib.import_module(f"cli.{module}")
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = COMMAND_MODULES.get(cmd_name)
            if module is not None:
                importlib.import_module(f"cli.{module}")
            else:  # not a known name: look among all of them, as before
                self.list_commands(ctx)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except UsageError as error:
            click.echo(f"stepline: {error}", err=True)
            sys.exit(2)
        except SteplineError as error:
            click.echo(f"stepline: {error}", err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader of the output went away (`stepline logs 12 | head`): stop quietly
            from cli.render import mute
            mute(sys.stdout)
            sys.exit(141)  # what a shell reports for a command ended by SIGPIPE, as `cat big | head` does
        except Exception as error:
            if is_disk_full(error):  # no bug, and no room to write its traceback either
                click.echo(f"stepline: the disk holding {_home_of(ctx)} is full, so what happened could not be "
                           "recorded; free some space, then `stepline runs` shows what to retry (the next engine to "
                           "start closes runs it left running)", err=True)
                sys.exit(1)
            if is_damaged_database(error):  # found only when a damaged page is read, not when it is opened
                click.echo(f"stepline: {unusable_database(_home_of(ctx) / DATABASE_NAME, str(error))}", err=True)
                sys.exit(1)
            # a bug: keep the traceback, show one line
            where = _log_bug(ctx)
            click.echo(f"stepline: internal error: {type(error).__name__}: {error} (traceback in {where}; "
                       "please report it)", err=True)
            sys.exit(70)


def _home_of(ctx: click.Context) -> Path:
    """The command's home, also when the failure came before its settings were made."""
    settings = ctx.find_object(Settings)
    return resolve_home(settings.home_path if settings else None)


def _log_bug(ctx: click.Context) -> str:
    try:
        path = _home_of(ctx) / "engine.log"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        return str(path)
    except OSError:
        import tempfile
        fd, name = tempfile.mkstemp(prefix="stepline-error-", suffix=".log")
        os.write(fd, traceback.format_exc().encode())
        os.close(fd)
        return name


@click.group(cls=SteplineGroup, context_settings=CONTEXT_SETTINGS, epilog="""
\b
Examples:
  stepline check                      validate every job file
  stepline run nightly_sales -p day=2026-11-27
  stepline runs --status failed       what failed lately
  stepline show 12                    steps, attempts and reasons of run 12
  stepline logs 12 load --follow      follow a step's log
  stepline retry 12                   re-run the failed steps of run 12
""")
@click.option("--home", "home_path", metavar="DIR", envvar="STEPLINE_HOME",
              help="State directory (database, logs, outputs). Env STEPLINE_HOME; default ./.stepline")
@click.option("--jobs", "jobs_path", metavar="DIR", envvar="STEPLINE_JOBS",
              help="Folder of job files. Env STEPLINE_JOBS; default ./jobs")
@click.version_option(package_name="stepline", prog_name="stepline")
@click.pass_context
def group(ctx: click.Context, home_path: str | None, jobs_path: str | None) -> None:
    """stepline: run jobs of steps on a schedule, see where and why they failed, retry from the keyboard."""
    # Absolute from the start: a job file that changes the working directory when imported must not move
    # the home or the jobs folder of a relative --home or --jobs.
    ctx.obj = Settings(str(resolve_home(home_path)), jobs_path)
    ctx.obj.jobs_path = str(ctx.obj.jobs_dir)
    _check_import_timeout()


def _check_import_timeout() -> None:
    """A mistyped STEPLINE_IMPORT_TIMEOUT fell back to 30s unsaid, and 0 made every job file "hang"."""
    import math

    value = os.environ.get("STEPLINE_IMPORT_TIMEOUT")
    if value is None:
        return
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise click.UsageError(f"STEPLINE_IMPORT_TIMEOUT must be a number of seconds more than 0, got {value!r}; "
                               "unset it for the default of 30")


def main() -> None:
    group(prog_name="stepline")
