"""Talking to a running engine through the commands table: send, wait for the answer, follow a run."""
from __future__ import annotations

import time
from typing import Any

import click

from engine import query, store
from engine.errors import NotApplicableError, SteplineError
from engine.home import Home
from engine.states import Change

ACK_TIMEOUT_S = 15.0


def engine_holder(home: Home) -> int | None:
    """The pid of the engine (daemon or `stepline up`) running this home, if any."""
    from engine.service import EngineLock

    return EngineLock(home).holder()


def send(kind: str, home: Home, pid: int, **fields: Any) -> query.CommandView:
    """Write a command and wait for the engine's answer; a refusal becomes a SteplineError.

    If the engine stops (its lock is free) or does not answer in time, the command is withdrawn, so no
    later engine carries it out behind the user's back; an engine answers a command and does what it says
    in one transaction (store.take_command), so either it was done and answered, or nothing was done.
    """
    command_id = store.add_command(kind, **fields)
    try:
        return _answer(kind, home, pid, command_id)
    except KeyboardInterrupt:
        if store.withdraw_command(command_id, "withdrawn: interrupted (Ctrl-C) before the engine answered"):
            click.echo(f"interrupted: the {kind} command is withdrawn; nothing was done", err=True)
        else:
            answer = query.command(command_id)
            click.echo(f"interrupted, but the engine (pid {pid}) had already answered: "
                       f"{answer.result or answer.state}", err=True)
        raise SystemExit(130) from None


def _answer(kind: str, home: Home, pid: int, command_id: int) -> query.CommandView:
    deadline = time.monotonic() + ACK_TIMEOUT_S
    while True:
        answer = query.command(command_id)
        if answer.state != "pending":
            if answer.state == "failed":
                raise NotApplicableError(answer.result or f"the engine refused the {kind} command")
            return answer
        gone = engine_holder(home) is None
        if gone or time.monotonic() >= deadline:
            why = (f"the engine (pid {pid}) stopped before it answered the {kind} command" if gone else
                   f"the engine (pid {pid}) did not answer the {kind} command within {ACK_TIMEOUT_S:.0f}s")
            if store.withdraw_command(command_id, f"withdrawn: {why}"):
                then = ("start an engine (`stepline daemon`, or `stepline up`) and try again" if gone
                        else "check HOME/engine.log, or stop it and try again")
                raise SteplineError(f"{why}; nothing was done and the command is withdrawn; {then}")
            continue  # answered just now: take its answer
        time.sleep(0.05)


def follow(run_id: int, printer: Any, since_event: int) -> str:
    """Print the run's state changes from the event log until it ends; returns its final state.

    Ctrl-C stops following, not the run: its engine owns it."""
    try:
        return _follow(run_id, printer, since_event)
    except KeyboardInterrupt:
        click.echo(f"stopped following run {run_id}; it goes on in its engine: `stepline logs {run_id} --follow` "
                   f"follows it again, `stepline cancel {run_id}` stops it", err=True)
        raise SystemExit(130) from None  # as a shell reports a command ended by Ctrl-C


def _follow(run_id: int, printer: Any, since_event: int) -> str:
    last = since_event
    next_owner_check = time.monotonic() + 1.0
    while True:
        for event in query.events_since(last, run_id=run_id):
            last = event.id
            if event.kind in ("run", "step") and event.state:
                printer(Change(run_id, event.step, event.state, event.message, event.at.timestamp()))
        state = query.run_summary(run_id).state
        if state in ("succeeded", "failed", "cancelled"):
            for event in query.events_since(last, run_id=run_id):
                if event.kind in ("run", "step") and event.state:
                    printer(Change(run_id, event.step, event.state, event.message, event.at.timestamp()))
            return state
        if time.monotonic() >= next_owner_check:
            next_owner_check = time.monotonic() + 1.0
            stop_if_engine_gone(run_id)
        time.sleep(0.1)


def stop_if_engine_gone(run_id: int) -> None:
    """A command following a run whose engine is gone says so and stops, instead of waiting for changes
    that cannot come."""
    from engine.recovery import engine_gone  # psutil and the executor: only for the commands that follow a run

    pid = engine_gone(run_id)
    if pid is not None:
        raise NotApplicableError(f"the engine running run {run_id} (pid {pid}) stopped; the next engine to "
                                 f"start closes the run, and `stepline retry {run_id}` runs it again")
