"""The long-running engine: one per home, commands round-trip, graceful stop, recovery after kill -9."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta

import psutil
import pytest

from engine import query, store
from engine.loader import display_path
from engine.service import EngineLock, EngineLockedError, EngineService
from tests.conftest import wait_until


def start_daemon(harness, *args: str) -> subprocess.Popen[str]:
    process = harness.cli_process("daemon", *args)
    wait_until(lambda: query.engine_status(time.time()).state == "running" and
               query.engine_status(time.time()).pid == process.pid or process.poll() is not None)
    assert process.poll() is None, process.communicate()
    return process


def freeze_between_writes(harness, daemon: subprocess.Popen[str]) -> None:
    """SIGSTOP the daemon at a moment it holds no write transaction: frozen holding one, it would keep every
    other writer (the command line writing its command) waiting on the database, not on the engine."""
    for _ in range(200):
        daemon.send_signal(signal.SIGSTOP)
        wait_until(lambda: psutil.Process(daemon.pid).status() == psutil.STATUS_STOPPED)
        probe = sqlite3.connect(harness.home.database, timeout=0.01)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return
        except sqlite3.OperationalError:  # frozen inside a write: let it finish, and freeze it again
            daemon.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        finally:
            probe.close()
    raise AssertionError("the daemon held the database's write lock at every try")


def stop_daemon(daemon: subprocess.Popen[str]) -> None:
    daemon.send_signal(signal.SIGCONT)  # in case a test stopped it
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)


@pytest.fixture
def service(harness):
    services = []

    def start(**options):
        svc = EngineService(harness.home, harness.jobs_dir, command_poll_s=0.05, **options)
        svc.start()
        services.append(svc)
        return svc

    yield start
    for svc in services:
        svc.stop(0)


def answered(command_id: int) -> query.CommandView | None:
    answer = query.command(command_id)
    return answer if answer.state != "pending" else None


def test_a_second_engine_on_the_same_home_exits_naming_the_holder(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    first = start_daemon(harness)
    try:
        second = harness.cli("daemon")
        assert second.returncode == 1
        assert f"another stepline engine (pid {first.pid}) already runs {harness.home.root}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


def test_a_stale_lock_file_from_a_dead_engine_is_taken_over(harness):
    (harness.home.root / "engine.lock").write_text("999999")
    lock = EngineLock(harness.home)
    lock.acquire()
    try:
        assert lock.holder() is None or lock.holder() == os.getpid()
        with pytest.raises(EngineLockedError, match=f"pid {os.getpid()}"):
            EngineLock(harness.home).acquire()
    finally:
        lock.release()


def test_a_killed_engine_not_yet_reaped_counts_as_gone():
    # A zombie keeps its pid until its parent reaps it, for ever under a PID 1 that never does: a new
    # daemon must not refuse to start because of it.
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        wait_until(lambda: open(f"/proc/{child}/stat").read().rpartition(")")[2].split()[0] == "Z")
        assert not query.process_exists(child)
        assert query.process_exists(os.getpid())
    finally:
        os.waitpid(child, 0)


def test_the_engine_keeps_working_while_a_changed_job_file_is_stuck_at_import(harness, service):
    # The reload ran on the engine's thread: one file stuck at import held every step timeout, cancel
    # and schedule of the daemon for the whole import timeout (30 s).
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo ok")])\n')
    service()
    harness.write_job("hang.py", "import time\ntime.sleep(3600)\n")  # a change: the engine reloads

    def stuck_reader() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True)
                if "engine.reader" in p.cmdline() and any(a.endswith("hang.py") for a in p.cmdline())]

    [reader] = wait_until(stuck_reader)
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.run_summary(run_id).state == "succeeded")
    assert reader.is_running()  # all of it while the import was still stuck
    reader.kill()  # the import times out: the reload finishes with the file's problem
    wait_until(lambda: any("hang.py" in file for file, _, _ in query.load_problems()))


def test_a_job_file_whose_import_never_ends_does_not_stop_the_engine(harness, service, monkeypatch):
    # A connection made at import time that hangs must not keep the daemon from loading, scheduling and
    # running every other job: the file is reported and the engine goes on.
    monkeypatch.setenv("STEPLINE_IMPORT_TIMEOUT", "1")
    harness.write_job("hang.py", "import time\ntime.sleep(3600)\n")
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo ok")])\n')
    service()
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.run_summary(run_id).state == "succeeded")
    (problem,) = query.load_problems()
    assert problem[0].endswith("hang.py") and problem[1] == 3
    assert problem[2].startswith("importing the file did not finish within 1s")


def test_commands_are_carried_out_and_acknowledged(harness, service):
    harness.write_job("j.py", """
        @step
        def flaky(context):
            if context.attempt == 1:
                raise RuntimeError("first attempt fails")
            return "ok"
        j = job("j", [flaky], schedule="0 6 * * *")
    """)
    service()
    trigger = store.add_command("trigger", job="j", payload={"params": {"day": "monday"}})
    answer = wait_until(lambda: answered(trigger))
    assert answer.state == "done" and answer.run_id is not None
    run_id = answer.run_id
    wait_until(lambda: query.run_summary(run_id).state == "failed")
    assert query.run_summary(run_id).params == {"day": "monday"}

    retry = store.add_command("retry", run_id=run_id)
    assert wait_until(lambda: answered(retry)).result == f"retrying flaky in run {run_id}"
    wait_until(lambda: query.run_summary(run_id).state == "succeeded")
    assert query.get_run(run_id).step("flaky").attempts == 2

    refused = store.add_command("retry", run_id=run_id)
    answer = wait_until(lambda: answered(refused))
    assert answer.state == "failed"
    assert answer.result == f"run {run_id} has no failed, upstream_failed or cancelled steps to retry"

    pause = store.add_command("pause", job="j")
    assert wait_until(lambda: answered(pause)).result == "j paused"
    assert [j.paused for j in query.jobs() if j.name == "j"] == [True]
    unknown = store.add_command("trigger", job="nope")
    assert wait_until(lambda: answered(unknown)).state == "failed"


def test_a_trigger_with_a_key_the_job_does_not_declare_is_refused(harness, service):
    path = harness.write_job("j.py", """
        j = job("j", [shell("a", "true")], params={"day": "today"})
    """)
    service()
    typo = store.add_command("trigger", job="j", payload={"params": {"dya": "2026-11-20"}})
    answer = wait_until(lambda: answered(typo))
    assert answer.state == "failed" and answer.run_id is None
    assert answer.result == ("job 'j' has no parameter 'dya' (did you mean 'day'?); its parameters are day "
                             f"(declared by params= at {display_path(str(path))}:3)")
    assert query.list_runs(job="j") == []


def test_cancel_command_stops_a_running_run(harness, service):
    harness.write_job("j.py", """
        a = shell("a", "sleep 60")
        b = shell("b", "true", after=["a"])
        j = job("j", [a, b])
    """)
    service(kill_grace_s=0.5)
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.get_run(run_id).step("a").state == "running")
    store.add_command("cancel", run_id=run_id)
    wait_until(lambda: query.run_summary(run_id).state == "cancelled")
    run = query.get_run(run_id)
    assert run.step("a").state == "cancelled" and run.step("a").reason.summary == "cancelled by user"
    assert run.step("b").state == "cancelled"
    pid = query.attempts(run_id, "a")[0].pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_cancel_sent_after_its_run_ended_is_answered(harness, service):
    # The console's question was still open when the run ended: the engine that ran it, alive but no longer
    # running it, must still answer, or the command stays pending for ever.
    harness.write_job("j.py", """
        a = shell("a", "true")
        j = job("j", [a])
    """)
    service()
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.run_summary(run_id).state == "succeeded")
    cancel_id = store.add_command("cancel", run_id=run_id)
    cancel = wait_until(lambda: answered(cancel_id))
    assert (cancel.state, cancel.result) == ("failed", f"run {run_id} already succeeded; nothing to cancel")


def test_stopping_the_engine_kills_a_step_that_ignores_sigterm_after_the_grace_period(harness):
    harness.write_job("j.py", """
        a = shell("a", "trap '' TERM; echo started; while true; do sleep 0.1; done")
        j = job("j", [a])
    """)
    daemon = start_daemon(harness, "--grace", "0.2")
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.get_run(run_id).step("a").state == "running")
    pid = query.attempts(run_id, "a")[0].pid
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    run = query.get_run(run_id)
    assert run.state == "cancelled"
    assert run.step("a").reason.summary == "engine stopping"
    assert not psutil.pid_exists(pid)
    assert query.engine_status(time.time()).state == "stopped"


def test_after_kill_9_the_next_engine_closes_the_run_and_retries_as_policy_allows(harness):
    # Each step by its own policy: `load` (no retries) cut short stays failed, though `slow` in the same run
    # is retried; `flaky`, which was waiting for its retry, gets it instead of being cancelled.
    harness.write_job("j.py", """
        @step(retries=1)
        def slow(context):
            import os, time
            print("attempt", context.attempt, "pid", os.getpid(), flush=True)
            if context.attempt == 1:
                time.sleep(120)
            return context.attempt

        @step(retries=3, retry_delay=600)
        def flaky(context):
            if context.attempt == 1:
                raise ConnectionError("nope")
            return "ok"

        load = shell("load", "sleep 120")
        j = job("j", [slow, flaky, load])
    """)
    daemon = start_daemon(harness)
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.get_run(run_id).step("slow").state == "running"
               and query.attempts(run_id, "slow")[0].pid and query.get_run(run_id).step("load").state == "running"
               and query.get_run(run_id).step("flaky").state == "waiting")
    step_pid = query.attempts(run_id, "slow")[0].pid
    log_path = query.attempts(run_id, "slow")[0].log_path
    # What reached the log before the kill must survive it (a line still in the pipe dies with the engine).
    wait_until(lambda: os.path.exists(log_path) and "attempt 1" in open(log_path).read())
    beat = query.engine_status(time.time()).heartbeat_at
    wait_until(lambda: query.engine_status(time.time()).heartbeat_at != beat)  # one more heartbeat
    killed_after = query.engine_status(time.time()).heartbeat_at
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    # The worker notices its engine is gone and ends the attempt's process group.
    wait_until(lambda: not psutil.pid_exists(step_pid) or psutil.Process(step_pid).status() == "zombie")
    assert query.run_summary(run_id).state == "running"  # what the dead engine left behind

    second = start_daemon(harness)
    try:
        wait_until(lambda: query.run_summary(run_id).state == "failed")  # load stays failed
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    attempts = query.attempts(run_id, "slow")
    assert [a.state for a in attempts] == ["failed", "succeeded"]
    assert attempts[0].reason.summary == "engine stopped while running"
    assert "attempt 1" in open(attempts[0].log_path).read()
    assert [a.state for a in query.attempts(run_id, "flaky")] == ["failed", "succeeded"]
    [load] = query.attempts(run_id, "load")
    assert load.state == "failed"
    assert query.get_run(run_id).step("load").state == "failed"
    # It ran, silent, until its engine died: not a few milliseconds (its start and its log's one write).
    assert load.ended_at >= killed_after


def test_run_hands_the_run_to_a_running_daemon_and_wait_follows_it(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo hi"), shell("b", "exit 4", after=["a"])])\n')
    daemon = start_daemon(harness)
    try:
        result = harness.cli("run", "j", "--wait")
        assert result.returncode == 1, result.stderr
        assert "b" in result.stdout and "exit code 4" in result.stdout
        owner, _ = query.run_owner(query.list_runs(limit=1)[0].id)
        assert owner == daemon.pid
        quick = harness.cli("run", "j")
        run_id = query.list_runs(limit=1)[0].id
        assert quick.returncode == 0 and quick.stdout.startswith(
            f"run {run_id} of j started by the engine (pid {daemon.pid}); follow it with `stepline logs {run_id} "
            "--follow`")
        # A script asking for JSON gets JSON, whether or not a daemon takes the run: the run as it is now.
        as_json = harness.cli("run", "j", "--json")
        assert as_json.returncode == 0, as_json.stderr
        document = json.loads(as_json.stdout)
        assert document["run"]["id"] == run_id + 1 and document["run"]["job"] == "j"
    finally:
        stop_daemon(daemon)


def test_run_wait_stops_and_says_so_when_the_daemon_is_killed(harness):
    harness.write_job("j.py", 'j = job("j", [shell("slow", "sleep 300")])\n')
    daemon = start_daemon(harness)
    waiting = harness.cli_process("run", "j", "--wait")
    wait_until(lambda: query.list_runs() and query.list_runs()[0].state == "running")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 1, out + err
    run_id = query.list_runs()[0].id
    assert err.strip() == (f"stepline: the engine running run {run_id} (pid {daemon.pid}) stopped; the next engine "
                           f"to start closes the run, and `stepline retry {run_id}` runs it again")


def test_ctrl_c_stops_following_a_daemons_run_not_the_run(harness):
    harness.write_job("j.py", 'j = job("j", [shell("slow", "echo started; sleep 300")])\n')
    daemon = start_daemon(harness)
    try:
        waiting = harness.cli_process("run", "j", "--wait")
        assert waiting.stdout is not None
        assert "running" in waiting.stdout.readline()  # it follows the run now
        run_id = query.list_runs()[0].id
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 130, out + err
        assert err.strip() == (f"stopped following run {run_id}; it goes on in its engine: `stepline logs {run_id} "
                               f"--follow` follows it again, `stepline cancel {run_id}` stops it")
        assert query.run_summary(run_id).state == "running"
        follower = harness.cli_process("logs", str(run_id), "--follow")
        assert follower.stdout is not None
        assert follower.stdout.readline().endswith("Z started\n")  # it follows the log now
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=60)
        assert (follower.returncode, err) == (130, "")  # as `tail -f` ends: no "Aborted!", no traceback
        harness.cli("cancel", str(run_id), check=True)
    finally:
        stop_daemon(daemon)


def test_ctrl_c_before_the_daemon_answers_withdraws_the_command(harness):
    harness.write_job("j.py", 'j = job("j", [shell("s", "true")])\n')
    daemon = start_daemon(harness)
    freeze_between_writes(harness, daemon)  # alive and holding the home, but answering nothing yet
    try:
        sending = harness.cli_process("run", "j")
        wait_until(lambda: store.pending_commands(kinds=["trigger"]) or None)
        sending.send_signal(signal.SIGINT)
        out, err = sending.communicate(timeout=60)
        assert sending.returncode == 130, out + err
        assert err.strip() == "interrupted: the trigger command is withdrawn; nothing was done"
        daemon.send_signal(signal.SIGCONT)
        harness.cli("run", "j", "--wait", check=True)  # the daemon answers again: only this run is made
        assert [r.id for r in query.list_runs()] == [1]
    finally:
        stop_daemon(daemon)


def test_a_command_the_daemon_never_answered_is_withdrawn_and_never_carried_out_later(harness):
    # The daemon dies after the CLI wrote its trigger and before answering it: the CLI says so at once
    # (not after its 15 s timeout) and withdraws the command, so the next engine does not start a run
    # the user was told did not start.
    harness.write_job("j.py", 'j = job("j", [shell("s", "true")])\n')
    daemon = start_daemon(harness)
    freeze_between_writes(harness, daemon)  # alive and holding the home, but answering nothing
    try:
        sending = harness.cli_process("run", "j")
        wait_until(lambda: [c for c in store.pending_commands(kinds=["trigger"])] or None)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    out, err = sending.communicate(timeout=60)
    assert sending.returncode == 1, out + err
    assert err.strip() == (f"stepline: the engine (pid {daemon.pid}) stopped before it answered the trigger "
                           "command; nothing was done and the command is withdrawn; start an engine "
                           "(`stepline daemon`, or `stepline up`) and try again")
    again = start_daemon(harness)
    try:
        # The engine answers commands in the order they were written: once it has answered a later one,
        # it has passed the withdrawn trigger.
        later = store.add_command("pause", job="j")  # refused (j has no schedule), but answered
        wait_until(lambda: query.command(later).state == "failed")
        assert query.list_runs() == []
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)


@pytest.mark.filterwarnings("ignore:noisy import")  # the engine's loader imports the file in this process too
def test_what_a_job_file_prints_while_its_worker_imports_it_goes_to_the_engine_log_not_the_terminal(
        harness, service, capfd):
    # Under `stepline up` the terminal is the console's: a job file's print or warning at import (pandas
    # warns plenty) must not tear its screen. It goes to HOME/engine.log instead.
    harness.write_job("j.py", """
        import sys, warnings
        print("noisy import: stdout")
        print("noisy import: stderr", file=sys.stderr)
        warnings.warn("noisy import: a warning")

        @step
        def hello():
            print("hello from the step")

        j = job("j", [hello])
    """)
    service()
    capfd.readouterr()  # the engine's own loader imported the file in this process: not the worker's output
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.run_summary(run_id).state == "succeeded")
    engine_log = harness.home.engine_log.read_text()
    for line in ("noisy import: stdout", "noisy import: stderr", "UserWarning: noisy import: a warning"):
        assert line in engine_log
    captured = capfd.readouterr()
    assert "noisy import" not in captured.out + captured.err
    assert "hello from the step" in open(query.attempts(run_id, "hello")[0].log_path).read()


def test_an_edited_job_file_is_reloaded_and_a_broken_edit_keeps_the_last_good_definition(harness, service):
    path = harness.write_job("j.py", 'j = job("j", [shell("a", "echo one")])\n')
    svc = service()
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo two"), shell("b", "true", after=["a"])])\n')
    wait_until(lambda: [len(j.plan.steps) for j in query.jobs()] == [2])

    path.write_text(path.read_text() + "def broken(:\n")
    wait_until(lambda: query.load_problems())
    file, line, message = query.load_problems()[0]
    assert file.endswith("j.py") and line == 3 and message.startswith("syntax error")
    trigger = store.add_command("trigger", job="j")
    run_id = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.run_summary(run_id).state == "succeeded")
    assert [s.name for s in query.get_run(run_id).steps] == ["a", "b"]
    assert "two" in open(query.attempts(run_id, "a")[0].log_path).read()
    assert svc.jobs.jobs["j"].step_names == ("a", "b")


def test_a_scheduled_job_fires_and_its_runs_record_the_scheduled_time(harness, service):
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo tick")], every="0.5s")\n')
    service()
    run = wait_until(lambda: next((r for r in query.list_runs(job="j") if r.state == "succeeded"), None))
    assert run.trigger == "schedule"
    assert run.scheduled_for is not None and run.started_at >= run.scheduled_for
    assert [j.next_fire_at is not None for j in query.jobs()] == [True]


def test_a_paused_schedule_stays_paused_across_a_real_restart(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")], schedule="0 6 * * *", timezone="UTC")\n')
    daemon = start_daemon(harness)
    try:
        paused = harness.cli("pause", "j")
        assert paused.returncode == 0 and paused.stdout.strip() == "j paused", paused.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    again = start_daemon(harness)
    try:
        listing = harness.cli("jobs", "--json", check=True)
        import json
        (entry,) = json.loads(listing.stdout)["jobs"]
        assert entry["paused"] is True and entry["next_fire"] is None
        assert harness.cli("resume", "j", check=True).stdout.strip() == "j resumed"
        wait_until(lambda: [j.next_fire_at is not None for j in query.jobs()] == [True])
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)
    log = harness.home.engine_log.read_text()  # who stopped the fires, and when, is in the engine's log
    assert "schedule of j paused" in log and "schedule of j resumed" in log


def test_stepline_cancel_of_a_queued_run_goes_to_the_engine_whose_queue_holds_it(harness, service):
    # A queued run has no engine of its own yet: `stepline cancel` took it for abandoned, closed it in the
    # database ("its engine had stopped"), and the daemon ran it anyway, turning cancelled into succeeded.
    harness.write_job("j.py", """
        a = shell("a", "sleep 60")
        j = job("j", [a], every="1s")  # fires pile up behind the running one (max_active_runs=1)
    """)
    service(kill_grace_s=0.5)

    def queued() -> list[int]:
        return [r.id for r in query.list_runs(job="j", state="queued")]

    # One run running and one behind it (the very first run is queued too, for a moment, before it starts).
    wait_until(lambda: query.list_runs(job="j", state="running") and queued())
    second = queued()[-1]
    pause = store.add_command("pause", job="j")
    wait_until(lambda: answered(pause))  # no more fires from here on
    [first] = [r.id for r in query.list_runs(job="j", state="running")]
    result = harness.cli("cancel", str(second), "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"cancel requested for run {second} (engine pid {os.getpid()})"
    assert query.run_summary(second).state == "cancelled"
    for run_id in [first] + queued():  # the runs before it in the queue end: its turn would come now
        store.add_command("cancel", run_id=run_id)
    wait_until(lambda: not query.list_runs(job="j", state="running") and not queued())
    assert query.attempts(second, "a") == []  # never ran
    assert query.run_summary(second).state == "cancelled"
    [row] = [line.split() for line in harness.cli("runs").stdout.splitlines() if line.startswith(f"{second} ")]
    assert row[2:5] == ["cancelled", "schedule", "-"]  # no start time: it never started


def test_stepline_pause_reaches_a_job_the_daemon_runs_from_its_last_good_version(harness, service):
    # The file broke; the daemon keeps firing the job from its last good version. `stepline pause` read the
    # files as they are now, found no such job, and so could not stop it.
    path = harness.write_job("hb.py", 'hb = job("hb", [shell("a", "true")], every="1h")\n')
    harness.write_job("manual.py", 'manual = job("manual", [shell("a", "true")])\n')
    service()
    path.write_text(path.read_text() + "def broken(:\n")
    wait_until(lambda: any("hb.py" in file for file, _, _ in query.load_problems()))
    result = harness.cli("pause", "hb")
    assert (result.returncode, result.stdout.strip()) == (0, "hb paused"), result.stderr
    refused = harness.cli("pause", "manual")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "stepline: job 'manual' has no schedule to pause; it runs only when triggered"


def test_an_engine_killed_reads_as_gone_and_a_stuck_one_as_not_responding(harness):
    # "not responding" for a daemon killed with kill -9 suggested a hang, and stayed so for good.
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.heartbeat(dead.pid, 0.0, "daemon", 1000.0, starting=True)
    assert query.engine_status(1001.0).state == "running"
    assert query.engine_status(1100.0).state == "gone"
    store.heartbeat(os.getpid(), 0.0, "daemon", 1000.0, starting=True)  # alive, but its heartbeat stopped
    assert query.engine_status(1100.0).state == "not responding"


def test_a_manual_run_past_max_active_runs_waits_its_turn(harness, service):
    # Only scheduled fires were held to max_active_runs: two `stepline run` of a load job ran at once.
    harness.write_job("j.py", 'j = job("j", [shell("a", "sleep 60")])\n')  # max_active_runs=1
    service(kill_grace_s=0.5)
    first = harness.cli("run", "j")
    assert first.returncode == 0, first.stderr
    second = harness.cli("run", "j", "--parallel", "1")
    assert second.returncode == 0, second.stderr
    [queued] = [r.id for r in query.list_runs(job="j", state="queued")]
    assert second.stdout.startswith(f"run {queued} of j queued by the engine (pid {os.getpid()}) (1 run of it "
                                    "active, max_active_runs=1); follow it with")
    assert second.stderr.strip() == (f"stepline: --parallel applies to a run's own engine; the engine (pid "
                                     f"{os.getpid()}) runs this one with its own limit (`stepline daemon "
                                     "--parallel N`)")
    assert len(query.list_runs(job="j", state="running")) == 1
    for run in query.list_runs(job="j"):
        store.add_command("cancel", run_id=run.id)
    wait_until(lambda: not query.list_runs(job="j", state="running") and not query.list_runs(job="j", state="queued"))


def test_a_second_engine_refuses_a_home_whose_lock_file_was_deleted_under_a_running_one(harness):
    # Clearing what looks like a stale lock let two daemons fire every schedule twice.
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    daemon = start_daemon(harness)
    try:
        (harness.home.root / "engine.lock").unlink()
        second = harness.cli("daemon", timeout=60)
        assert second.returncode != 0
        assert f"another stepline engine (pid {daemon.pid}) runs" in second.stderr
        assert "engine.lock was free (deleted while it ran?)" in second.stderr
    finally:
        stop_daemon(daemon)


def test_runs_left_queued_by_a_stopped_engine_are_taken_up_by_the_next(harness):
    # A stop (or a crash) cancelled the runs waiting for their turn: scheduled work was lost with the engine.
    harness.write_job("j.py", 'j = job("j", [shell("a", "sleep 60")], every="1s")\n')
    first = start_daemon(harness, "--grace", "0.2")
    try:
        wait_until(lambda: query.list_runs(job="j", state="running")
                   and len(query.list_runs(job="j", state="queued")) >= 2)
        pause = store.add_command("pause", job="j")
        wait_until(lambda: answered(pause))
        [running] = query.list_runs(job="j", state="running")
        waiting = sorted(r.id for r in query.list_runs(job="j", state="queued"))
    finally:
        stop_daemon(first)
    assert query.run_summary(running.id).state == "cancelled"  # the grace ran out
    assert sorted(r.id for r in query.list_runs(job="j", state="queued")) == waiting  # left for the next engine
    second = start_daemon(harness)
    try:
        wait_until(lambda: query.run_summary(waiting[0]).state == "running")  # the oldest first
        assert [query.run_summary(i).state for i in waiting[1:]] == ["queued"] * (len(waiting) - 1)
        for run_id in waiting:
            store.add_command("cancel", run_id=run_id)
        wait_until(lambda: all(query.run_summary(i).state == "cancelled" for i in waiting))
    finally:
        stop_daemon(second)


def test_a_retry_waits_its_turn_behind_max_active_runs_and_keeps_what_succeeded(harness, service, tmp_path):
    # Two loads into one warehouse at once are what max_active_runs=1 prevents: a retry sent while another
    # run of the job runs waits, queued, as a new run would, and then runs only the steps it retries.
    gate = tmp_path / "open"
    harness.write_job("j.py", f"""
        first = shell("first", "echo once")
        load = shell("load", "while [ ! -e {gate} ]; do sleep 0.05; done", after=["first"])
        j = job("j", [first, load])
    """)
    service(kill_grace_s=0.5)
    trigger = store.add_command("trigger", job="j")
    earlier = wait_until(lambda: answered(trigger)).run_id
    wait_until(lambda: query.get_run(earlier).step("load").state == "running")
    store.add_command("cancel", run_id=earlier)
    wait_until(lambda: query.run_summary(earlier).state == "cancelled")
    again = store.add_command("trigger", job="j")
    blocking = wait_until(lambda: answered(again)).run_id
    wait_until(lambda: query.get_run(blocking).step("load").state == "running")

    command = store.add_command("retry", run_id=earlier)
    retry = wait_until(lambda: answered(command))
    assert retry.result == f"retry of load in run {earlier} queued: 1 run of j active, max_active_runs=1"
    assert query.run_summary(earlier).state == "queued"
    gate.touch()  # the blocking run ends; the retry's turn comes
    wait_until(lambda: query.run_summary(earlier).state == "succeeded")
    assert [len(query.attempts(earlier, name)) for name in ("first", "load")] == [1, 2]
    assert query.run_summary(blocking).state == "succeeded"


def test_with_a_daemon_jobs_and_run_use_the_jobs_it_loaded_broken_file_and_hanging_import_included(harness,
                                                                                                   monkeypatch):
    monkeypatch.setenv("STEPLINE_IMPORT_TIMEOUT", "2")  # the daemon's; the commands below get 600
    harness.write_job("good.py", 'good = job("good", [shell("a", "echo good")])\n')
    sched = harness.write_job("sched.py", 'sched = job("sched", [shell("a", "echo last good")], every="1h")\n')
    daemon = harness.cli_process("daemon")
    try:
        wait_until(lambda: query.engine_status(time.time()).state == "running")
        wait_until(lambda: {j.name for j in query.jobs()} == {"good", "sched"})
        published = query.catalog_published_at()
        sched.write_text(sched.read_text() + "def broken(:\n")
        # The import of this file never ends: the daemon gives up on it after its own time limit.
        harness.write_job("hangs.py", "import time\nwhile True:\n    time.sleep(1)\n", header=False)
        wait_until(lambda: (query.catalog_published_at() or 0) > published and len(query.load_problems()) == 2)
        listing = harness.cli("jobs", env={"STEPLINE_IMPORT_TIMEOUT": "600"})
        assert listing.returncode == 0, listing.stderr
        assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == ["good", "sched"]
        assert "keeps running the last good version of 'sched' until its file is fixed" in listing.stderr
        assert "sched.py:3: syntax error" in listing.stderr, listing.stderr
        assert "is taking long" not in listing.stderr  # nothing imported: the engine's catalogue was read
        document = json.loads(harness.cli("jobs", "--json").stdout)
        broken = {j["name"]: j["file_broken"] for j in document["jobs"]}
        assert broken["good"] is None and "syntax error" in broken["sched"]
        ran = harness.cli("run", "sched", "--wait", env={"STEPLINE_IMPORT_TIMEOUT": "600"})
        assert ran.returncode == 0, ran.stderr
        run_id = query.list_runs(job="sched", limit=1)[0].id
        assert "last good" in harness.cli("logs", str(run_id), "a").stdout
    finally:
        stop_daemon(daemon)


def test_a_new_file_defining_a_job_the_engine_runs_does_not_take_it_over(harness, service):
    harness.write_job("beta.py", 'beta = job("beta", [shell("fetch", "true"), shell("publish", "true")])\n')
    svc = service()
    assert svc.jobs.jobs["beta"].step_names == ("fetch", "publish")
    # Sorted first, this file would win a plain load: the engine keeps the job where it was.
    harness.write_job("aaa_dup.py", 'beta = job("beta", [shell("x", "echo dup")], every="5s")\n')
    [(file, _, message)] = wait_until(query.load_problems)  # the engine reloads the files
    assert svc.jobs.jobs["beta"].step_names == ("fetch", "publish")
    assert file.endswith("aaa_dup.py")
    assert "job 'beta' is already defined at" in message and "beta.py:" in message
    assert [s.name for s in {j.name: j for j in query.jobs()}["beta"].plan.steps] == ["fetch", "publish"]
    # Without a running engine, `stepline check` reports the clash all the same.
    assert harness.cli("check").returncode == 1


def test_queued_runs_of_a_job_renamed_in_its_file_end_cancelled_saying_why(harness, service, tmp_path):
    # Each one used to fail at its turn on "step 'long' of job 'delta' is no longer defined", an alert apiece.
    gate = tmp_path / "open"
    path = harness.write_job("delta.py", f'delta = job("delta", [shell("long", "while [ ! -e {gate} ]; do sleep 0.05; done")])\n')
    service(kill_grace_s=0.5)
    runs = [wait_until(lambda c=store.add_command("trigger", job="delta"): answered(c)).run_id for _ in range(3)]
    wait_until(lambda: query.run_summary(runs[0]).state == "running")
    assert [query.run_summary(r).state for r in runs[1:]] == ["queued", "queued"]
    path.write_text(path.read_text().replace('job("delta"', 'job("delta2"'))  # the engine reloads the file
    for run_id in runs[1:]:
        run = wait_until(lambda r=run_id: (v := query.get_run(r)).state == "cancelled" and v)
        assert run.step("long").state == "cancelled"
        assert run.step("long").reason.summary.startswith("job 'delta' is no longer defined in the job files (renamed")
    gate.touch()  # the run that had started keeps the job it started with
    wait_until(lambda: query.run_summary(runs[0]).state == "succeeded")


def test_a_step_waiting_for_its_retry_when_the_daemon_stops_is_retried_by_the_next(harness, tmp_path):
    # A deploy's SIGTERM cancelled such runs, while a crash (SIGKILL) kept their retries: now both keep them.
    marker = tmp_path / "failed once"
    harness.write_job("j.py", f"""
        import os

        @step(retries=3, retry_delay=600)
        def flaky():
            if not os.path.exists({str(marker)!r}):
                open({str(marker)!r}, "w").close()
                raise ConnectionError("503 on attempt 1")
            return "ok"

        @step
        def publish(flaky):
            return flaky

        j = job("j", [flaky, publish])
    """)
    first = start_daemon(harness)
    try:
        harness.cli("run", "j", check=True)
        wait_until(lambda: (query.get_run(1).step("flaky").waiting_for or "").startswith("retry 1/3 at "))
    finally:
        stop_daemon(first)
    assert first.returncode == 0
    assert query.run_summary(1).state == "running"  # left for the next engine, not cancelled
    second = start_daemon(harness)
    try:
        run = wait_until(lambda: (v := query.get_run(1)).state == "succeeded" and v)
    finally:
        stop_daemon(second)
    assert [a.state for a in query.attempts(1, "flaky")] == ["failed", "succeeded"]
    assert run.step("publish").output_preview == "'ok'"


def test_a_scheduled_run_tells_its_steps_the_fire_time_in_utc_as_json_writes_times(harness, service):
    harness.write_job("j.py", """
        @step
        def when(context):
            return context.scheduled_for

        j = job("j", [when], every="1s", timezone="Asia/Kolkata")
    """)
    service()
    run = wait_until(lambda: (runs := query.list_runs(job="j", state="succeeded")) and query.get_run(runs[-1].id))
    stamp = run.step("when").output_preview.strip("'")  # the repr of a str
    assert stamp.endswith("Z") and datetime.fromisoformat(stamp).utcoffset() == timedelta(0)
    assert abs(datetime.fromisoformat(stamp).timestamp() - run.run.scheduled_for.timestamp()) < 0.001


def test_commands_on_another_jobs_folder_than_the_daemons_say_so(harness, tmp_path):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    other = tmp_path / "other_jobs"
    other.mkdir()
    (other / "o.py").write_text('from engine import job, shell\nother = job("other", [shell("a", "true")], '
                                'every="10s")\n')
    daemon = start_daemon(harness)
    try:
        wait_until(lambda: [j.name for j in query.jobs()] == ["j"])
        listing = harness.cli("jobs", env={"STEPLINE_JOBS": str(other)})
        assert "other" in listing.stdout
        assert (f"the engine (pid {daemon.pid}) running this home loads the jobs of {harness.jobs_dir}, not these: "
                "the fires above are not its") in listing.stderr
        ran = harness.cli("run", "other", env={"STEPLINE_JOBS": str(other)})
        assert ran.returncode == 1
        assert ran.stderr.startswith(f"stepline: the engine (pid {daemon.pid}) running this home loads the jobs of "
                                     f"{harness.jobs_dir}, not of {other}: it would run its own 'other'")
        assert query.list_runs(job="other") == []
    finally:
        stop_daemon(daemon)
