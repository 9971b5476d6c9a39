"""Commands that keep running: up (engine + console), daemon (engine only), tui (console only)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from typing import TYPE_CHECKING

import click

from cli.main import Settings, group, pass_settings
from engine.errors import UsageError
from engine.home import Home

if TYPE_CHECKING:
    from tui.app import SteplineApp


def setup_logging(home: Home, to_stderr: bool) -> None:
    logger = logging.getLogger("stepline")
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(home.engine_log, encoding="utf-8")]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


grace_option = click.option("--grace", "grace_s", type=float, default=10.0, show_default=True, metavar="SECONDS",
                            help="On stop, how long running steps may finish before they are cancelled.")
parallel_option = click.option("--parallel", type=click.IntRange(1, 512),
                               help="Steps running at once (default: CPU count).")


@group.command(epilog="""
\b
Example:
  stepline --jobs sample_jobs up
Keys are listed on the help screen (?). Closing the SSH link (SIGHUP) or SIGTERM
stops the engine like `q` does: running steps get --grace seconds, then are cancelled.
Run `stepline daemon` instead when runs must outlive the terminal.
""")
@grace_option
@parallel_option
@pass_settings
def up(settings: Settings, grace_s: float, parallel: int | None) -> None:
    """Engine and console in one process: the usual way to start stepline."""
    require_terminal("up", "`stepline daemon` runs the engine without one")
    from engine.service import EngineService
    from tui.app import SteplineApp

    home = settings.open_home()
    setup_logging(home, to_stderr=False)
    service = EngineService(home, settings.jobs_dir, mode="embedded", parallel=parallel, stop_grace_s=grace_s)
    service.start()
    app = SteplineApp(home, mode="embedded", stop_grace_s=grace_s)

    def hang_up(number: int, frame: object) -> None:
        # The terminal is gone (or we are told to stop): stop the engine as `q` would. The console may
        # never finish shutting down on a terminal that vanished, so the engine's stop and the exit do
        # not wait for it.
        def stop_then_exit() -> None:
            service.stop(grace_s)
            logging.getLogger("stepline.engine").info("%s: engine stopped, leaving", signal.Signals(number).name)
            os._exit(0)

        threading.Thread(target=stop_then_exit, name="stepline-hangup", daemon=True).start()
        app.call_later(app.exit)

    signal.signal(signal.SIGHUP, hang_up)
    signal.signal(signal.SIGTERM, hang_up)
    # Once the console is gone the terminal shows nothing while running steps get their grace period: say so.
    notice = threading.Timer(0.5, lambda: click.echo(
        f"stepline: stopping the engine: running steps get up to {grace_s:g}s to finish, then they are "
        "cancelled", err=True))
    try:
        run_console(app)
    finally:
        notice.start()
        service.stop(grace_s)
        notice.cancel()


@group.command(epilog="""
\b
Example:
  stepline --home /srv/stepline --jobs /srv/jobs daemon
Then, from any terminal on this host (over SSH too):  stepline --home /srv/stepline tui
""")
@grace_option
@parallel_option
@pass_settings
def daemon(settings: Settings, grace_s: float, parallel: int | None) -> None:
    """Engine only, headless, until SIGTERM or SIGINT; logs to stderr and HOME/engine.log."""
    from engine.service import EngineService

    home = settings.open_home()
    setup_logging(home, to_stderr=True)
    service = EngineService(home, settings.jobs_dir, mode="daemon", parallel=parallel, stop_grace_s=grace_s)

    def stop(number: int, frame: object) -> None:
        logging.getLogger("stepline.engine").info("%s received: stopping", signal.Signals(number).name)
        service.request_stop()

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, stop)
    # The engine loop runs on its own thread and the main thread only waits: a signal interrupts the
    # main thread, and a wait that a signal cut short once hung for good inside the engine's queue.
    service.start()
    while not service.stopped.wait(0.5):
        pass
    if service.error is not None:
        raise service.error


@group.command(epilog="Example (over SSH on the engine's host):  stepline --home /srv/stepline tui")
@pass_settings
def tui(settings: Settings) -> None:
    """The console, attached to the home of a running daemon."""
    require_terminal("tui", "`stepline runs`, `show` and `logs` read the home without one")
    from engine import store
    from engine.home import prepare_home
    from tui.app import SteplineApp

    home = prepare_home(settings.home_path, create=False)
    store.open_database(home)
    run_console(SteplineApp(home, mode="attached"))


def require_terminal(command: str, instead: str) -> None:
    """The console draws a full screen and reads keys: refuse plainly when stdin or stdout is not a terminal
    (a pipe, a cron job, `ssh host stepline up` without -t) rather than write escape codes into it."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(f"`stepline {command}` is a full-screen console and needs a terminal (stdin and stdout); "
                         f"over SSH use `ssh -t`; {instead}")


def run_console(app: SteplineApp) -> None:
    """Run the console until it exits. A bug inside it, which Textual shows and then exits on, is raised
    again here: stepline then exits 70 with the traceback in HOME/engine.log, as for any other bug."""
    app.run()
    error = getattr(app, "_exception", None)  # Textual keeps the first unhandled exception there
    if app.return_code and isinstance(error, Exception):
        raise error
