"""The executor: attempt processes, their environment, their trees, and what happens when things die."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine import query
from engine.executor import (AttemptRequest, Executor, Exited, LogClosed, Started, attempt_environment, kill_tree,
                             process_start_time)
from engine.worker import boot_ticks, decode, encode, receive, send_with_fds, start_ticks
from tests.conftest import ROOT, wait_until
from tests.engine.test_runner import Background, gone, read_pids

DOUBLE_FORK_TREE = """trap '' TERM
sleep 300 & echo $! >> {pids}
( trap '' TERM; sleep 300 & echo $! >> {pids} )
bash -c 'trap "" TERM; sleep 300 & echo $! >> {pids}; wait' &
echo $$ >> {pids}
wait
"""

# A crash in one of the engine's threads (log pump, worker reader) fails the test that caused it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def test_kill_tree_ends_a_tree_with_double_forks_that_ignores_sigterm(tmp_path):
    pids = tmp_path / "pids"
    leader = subprocess.Popen(["bash", "-c", DOUBLE_FORK_TREE.format(pids=pids)], start_new_session=True)
    started = wait_until(lambda: read_pids(pids, 4))
    kill_tree(leader.pid, 0.3)
    assert leader.wait(10) == -signal.SIGKILL
    for pid, created in started:
        wait_until(lambda: gone(pid, created), timeout_s=10)


def request(harness, tmp_path: Path, key: int, command: str, **changes: object) -> AttemptRequest:
    job_file = harness.write_job("e.py", f"""
        s = shell("s", {command!r})
        j = job("j", [s])
    """)
    values = dict(
        key=key, job_file=str(job_file), job="j", step="s", kind="shell", command=command, inputs={},
        params={"my-key": "v", "region": "eu"},
        context={"run_id": 7, "job": "j", "step": "s", "attempt": 2, "params": {}, "home": str(tmp_path),
                 "scheduled_for": None},
        env={"EXTRA": "1"}, cwd=str(tmp_path), log_path=str(tmp_path / f"{key}.log"),
        output_path=str(tmp_path / f"{key}.pkl"), result_path=str(tmp_path / f"{key}.json"),
        shell_output_path=str(tmp_path / f"{key}.out"))
    values.update(changes)
    return AttemptRequest(**values)  # type: ignore[arg-type]


def collect(events: queue.SimpleQueue, key: int) -> dict[type, object]:
    """Events of one attempt until it has exited and its log is closed."""
    seen: dict[type, object] = {}
    while Exited not in seen or LogClosed not in seen:
        event = events.get(timeout=30)
        if event.key == key:
            seen[type(event)] = event
    return seen


def test_a_process_start_time_is_the_one_recovery_compares_against():
    # Recovery tells an attempt's process from a later one with the same pid by psutil's start time;
    # the executor records it without psutil's help, so the two must agree to the last digit.
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_start_time(child.pid) == psutil.Process(child.pid).create_time()
        assert process_start_time(os.getpid()) == psutil.Process().create_time()
    finally:
        child.kill()
        child.wait()
    assert process_start_time(child.pid) is None


def test_a_start_time_known_from_the_clock_is_the_one_psutil_reads():
    # The worker stamps a process it makes from the boot clock instead of reading /proc (see worker.start_ticks).
    for _ in range(100):  # a clock tick may pass during the fork; then the worker does not know, and says so
        before = boot_ticks()
        child = subprocess.Popen(["sleep", "30"])
        try:
            ticks = start_ticks(before)
            if ticks is not None:
                assert process_start_time(child.pid, ticks) == psutil.Process(child.pid).create_time()
                return
        finally:
            child.kill()
            child.wait()
    pytest.fail("a clock tick passed during each of 100 process starts")


def test_the_start_times_the_worker_reports_are_the_ones_recovery_compares_against(harness, tmp_path):
    # The worker tells the start time of the processes it makes (spares, shell attempts) from the clock the
    # kernel stamps them with; it must be psutil's, or recovery would take a live attempt for a stranger.
    events: queue.SimpleQueue = queue.SimpleQueue()
    executor = Executor(events.put, kill_grace_s=0.5)
    try:
        [python] = python_requests(harness, tmp_path, 1)
        executor.start(python)  # the first Python attempt makes the worker fork spares
        collect(events, 1)
        for pid in wait_until(lambda: spares_of(executor, 2)):
            [pid_started] = [started for spare, _, started in executor._workers[python.job_file].spares
                             if spare == pid]
            assert pid_started == psutil.Process(pid).create_time()
        executor.start(request(harness, tmp_path, 2, "sleep 300"))
        started = events.get(timeout=30)
        assert isinstance(started, Started) and started.key == 2
        assert started.pid_started == psutil.Process(started.pid).create_time()
        executor.kill(2, 0.5)
        collect(events, 2)
    finally:
        executor.close()


def test_an_attempt_reports_started_exited_and_log_closed(harness, tmp_path):
    events: queue.SimpleQueue = queue.SimpleQueue()
    executor = Executor(events.put, kill_grace_s=0.5)
    try:
        executor.start(request(harness, tmp_path, 1, "echo $STEPLINE_RUN_ID $STEPLINE_ATTEMPT $EXTRA; exit 6"))
        seen = collect(events, 1)
    finally:
        executor.close()
    assert isinstance(seen[Started], Started) and seen[Started].pid > 0
    exited = seen[Exited]
    assert (exited.exit_code, exited.signal, exited.lost) == (6, None, None)
    # Below the engine's own high-water mark, which a vfork + exec child inherits: not known, so not made up.
    assert exited.cpu_s is not None and exited.peak_rss_bytes is None
    assert (tmp_path / "1.log").read_bytes()[25:] == b"7 2 1\n"


def test_a_kill_asked_before_the_process_is_known_still_kills_it(harness, tmp_path):
    events: queue.SimpleQueue = queue.SimpleQueue()
    executor = Executor(events.put, kill_grace_s=0.5)
    try:
        executor.start(request(harness, tmp_path, 1, "sleep 300"))
        executor.kill(1)
        seen = collect(events, 1)
    finally:
        executor.close()
    assert seen[Exited].signal == signal.SIGTERM


def test_the_attempt_environment_carries_identity_params_and_step_env(harness, tmp_path):
    env = attempt_environment(request(harness, tmp_path, 3, "true", env={"EXTRA": "mine", "PATH": "/x"}),
                              base={"PATH": "/usr/bin", "HOME": "/root"})
    assert env["STEPLINE_RUN_ID"] == "7"
    assert env["STEPLINE_ATTEMPT"] == "2"
    assert env["STEPLINE_JOB"] == "j" and env["STEPLINE_STEP"] == "s"
    assert env["STEPLINE_PARAM_MY_KEY"] == "v" and env["STEPLINE_PARAM_REGION"] == "eu"
    assert env["STEPLINE_OUTPUT"] == str(tmp_path / "3.out")
    assert env["EXTRA"] == "mine" and env["PATH"] == "/x" and env["HOME"] == "/root"


def test_a_background_process_left_by_a_finished_step_is_ended(home, write_job, tmp_path):
    pids = tmp_path / "pids"
    write_job("j.py", f"""
        leaves = shell("leaves", "sleep 300 & echo $! > {pids}; echo done")
        j = job("j", [leaves])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    [(pid, created)] = read_pids(pids, 1)
    wait_until(lambda: gone(pid, created), timeout_s=10)


# The engine starts shell steps itself, except one whose upstream output is of the job's own class: only a
# process that imported the job file may unpickle it, so `victim` runs in the worker.
SHELL_VICTIM_IN_THE_WORKER = """
    class Money:
        def __init__(self, cents):
            self.cents = cents

    @step
    def price():
        return Money(5)

    victim = shell("victim", "echo $$ > {pids}; sleep 300", after=["price"])
    j = job("j", [price, victim])
"""

# `victim` runs in a process the worker forked ahead of need, which the engine handed it to directly.
PYTHON_VICTIM_ON_A_SPARE = """
    import os, time

    @step
    def warm():
        return 1

    @step(after=["warm"])
    def victim():
        with open({pids!r}, "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(300)

    j = job("j", [warm, victim])
"""


@pytest.mark.parametrize("body", [SHELL_VICTIM_IN_THE_WORKER, PYTHON_VICTIM_ON_A_SPARE],
                         ids=["shell-in-the-worker", "python-on-a-spare"])
def test_a_step_whose_worker_dies_fails_and_its_process_is_ended(home, write_job, tmp_path, body):
    pids = tmp_path / "pids"
    write_job("j.py", body.format(pids=str(pids)))
    background = Background(home, "j", kill_grace_s=0.5)
    [(pid, created)] = wait_until(lambda: read_pids(pids, 1))
    psutil.Process(pid).parent().kill()
    run = background.join()
    assert run.state == "failed"
    assert run.step("victim").reason.summary == "the worker process running this step died"
    wait_until(lambda: gone(pid, created), timeout_s=10)


def test_a_job_file_broken_after_loading_fails_the_step_with_the_import_error(home, write_job):
    # A shell step needs only its command, which the engine loaded: it runs all the same.
    path = write_job("j.py", """
        @step
        def a():
            return 1

        b = shell("b", "echo fine")
        j = job("j", [a, b])
    """)
    result = home.load()
    path.write_text("def broken(:\n")
    os.utime(path, (1, 1))
    engine = home.engine()
    try:
        run_id = engine.submit(result.jobs["j"])
        engine.run_until_done([run_id])
    finally:
        engine.close()
    step = query.get_run(run_id).step("a")
    assert step.state == "failed"
    assert step.reason.summary.startswith(f"job file {path} failed to import: SyntaxError")
    assert query.get_run(run_id).step("b").state == "succeeded"


@pytest.mark.parametrize("users_setting", [None, "1"])
def test_steps_see_the_engines_environment_not_the_workers_start_up_settings(home, write_job, monkeypatch,
                                                                              users_setting):
    # The worker starts with LD_BIND_NOW (its attempts then bind nothing themselves); a Python step, a shell
    # step and a program either starts see the variable only if the user set it.
    if users_setting is None:
        monkeypatch.delenv("LD_BIND_NOW", raising=False)
    else:
        monkeypatch.setenv("LD_BIND_NOW", users_setting)
    write_job("j.py", """
        import os, subprocess

        @step
        def py():
            child = subprocess.run(["sh", "-c", "echo ${LD_BIND_NOW-unset}"], capture_output=True, text=True)
            return [os.environ.get("LD_BIND_NOW", "unset"), child.stdout.strip()]

        sh = shell("sh", "echo ${LD_BIND_NOW-unset} > $STEPLINE_OUTPUT", after=[py])
        j = job("j", [py, sh])
    """)
    engine = home.engine()
    try:
        run_id = engine.submit(home.load().jobs["j"])
        engine.run_until_done([run_id])
    finally:
        engine.close()
    run = query.get_run(run_id)
    expected = users_setting or "unset"
    assert run.step("py").output_preview == repr([expected, expected])
    assert run.step("sh").output_preview == repr(expected)


def test_a_new_attempt_runs_the_job_files_current_code(home, write_job):
    path = write_job("j.py", """
        @step
        def which():
            return "old"

        j = job("j", [which])
    """)
    engine = home.engine()
    try:
        first = engine.submit(home.load().jobs["j"])
        engine.run_until_done([first])
        write_job("j.py", """
            @step
            def which():
                return "new"

            j = job("j", [which])
        """)
        os.utime(path, (2, 2))
        second = engine.submit(home.load().jobs["j"])
        engine.run_until_done([second])
    finally:
        engine.close()
    assert query.get_run(first).step("which").output_preview == "'old'"
    assert query.get_run(second).step("which").output_preview == "'new'"


def _retry_after_edit(home, write_job, before: str, after: str) -> query.RunView:
    """Run job j of `before`, rewrite the file as `after`, retry the run; the run as it ended."""
    path = write_job("j.py", before)
    engine = home.engine()
    try:
        run_id = engine.submit(home.load().jobs["j"])
        engine.run_until_done([run_id])
        write_job("j.py", after)
        os.utime(path, (2, 2))
        engine.retry(run_id)
        engine.run_until_done([run_id])
    finally:
        engine.close()
    return query.get_run(run_id)


def test_a_retry_after_the_class_of_an_output_was_renamed_says_so(home, write_job):
    run = _retry_after_edit(home, write_job, """
        from dataclasses import dataclass

        @dataclass
        class Rec:
            n: int

        @step
        def make():
            return Rec(5)

        @step
        def use(make):
            raise ValueError("not yet")

        j = job("j", [make, use])
    """, """
        from dataclasses import dataclass

        @dataclass
        class Record:
            n: int

        @step
        def make():
            return Record(5)

        @step
        def use(make):
            return make.n

        j = job("j", [make, use])
    """)
    said = run.step("use").reason.summary
    assert said.startswith("the output of step 'make' cannot be read back (AttributeError: Can't get attribute 'Rec' ")
    assert said.endswith("): it holds an object of a class the job file no longer defines where it did (renamed or "
                         "moved?); put the class back, or start a new run of the job")


def test_a_retry_of_a_step_that_now_takes_another_upstream_says_so(home, write_job):
    run = _retry_after_edit(home, write_job, """
        @step
        def a():
            return 1

        @step
        def b():
            raise ValueError("b broken")

        j = job("j", [a, b])
    """, """
        @step
        def a():
            return 1

        @step(retries=2)
        def b(a):
            return a

        j = job("j", [a, b])
    """)
    assert run.step("b").reason.summary == (
        f"step 'b' now takes 'a', which it did not when run {run.id} started (a run keeps the steps and dependencies "
        "it started with); start a new run of the job, or give the parameter a default")
    # Automatic retries could not go otherwise: none is spent (the first failure and this one attempt).
    assert len(query.attempts(run.id, "b")) == 2


def test_a_retry_after_the_job_was_renamed_says_the_job_is_gone(home, write_job):
    run = _retry_after_edit(home, write_job, """
        @step
        def extract():
            raise ValueError("bad data")

        j = job("j", [extract])
    """, """
        @step
        def extract():
            return 1

        j = job("j_v2", [extract])
    """)
    assert run.step("extract").reason.summary.startswith("job 'j' is no longer defined in ")
    assert "(renamed?)" in run.step("extract").reason.summary


def python_requests(harness, tmp_path: Path, count: int) -> list[AttemptRequest]:
    """Requests for attempts 1..count of a Python step (one job file, written once: a rewrite means new code)."""
    job_file = harness.write_job("p.py", """
        import os

        @step
        def s():
            return os.getpid()

        j = job("j", [s])
    """)
    return [dataclasses.replace(request(harness, tmp_path, key, "true"), job_file=str(job_file), job="j", step="s",
                                kind="python", command=None) for key in range(1, count + 1)]


def spares_of(executor: Executor, count: int) -> list[int] | None:
    """The pids of the worker's spare processes, once the executor holds `count` of them."""
    [worker] = executor._workers.values()
    pids = [pid for pid, _, _ in list(worker.spares)]
    return pids if len(pids) >= count else None


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_an_attempt_handed_to_a_dead_spare_process_starts_in_another(harness, tmp_path):
    events: queue.SimpleQueue = queue.SimpleQueue()
    executor = Executor(events.put, kill_grace_s=0.5)
    try:
        first, second = python_requests(harness, tmp_path, 2)
        executor.start(first)  # the first Python attempt makes the worker fork spares
        assert collect(events, 1)[Exited].exit_code == 0
        killed = wait_until(lambda: spares_of(executor, 2))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: all(dead(pid) for pid in killed))  # their sockets are closed
        executor.start(second)
        seen = collect(events, 2)
    finally:
        executor.close()
    assert seen[Started].pid not in killed
    assert (seen[Exited].exit_code, seen[Exited].lost) == (0, None)


def test_an_attempt_whose_process_dies_before_reading_its_request_fails_instead_of_hanging(harness, tmp_path):
    events: queue.SimpleQueue = queue.SimpleQueue()
    executor = Executor(events.put, kill_grace_s=0.5)
    stopped: list[int] = []
    try:
        first, second = python_requests(harness, tmp_path, 2)
        executor.start(first)
        assert collect(events, 1)[Exited].exit_code == 0
        stopped = wait_until(lambda: spares_of(executor, 2))
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)  # alive, so the request is sent; never read
        executor.start(second)
        started = events.get(timeout=30)
        assert isinstance(started, Started) and started.pid in stopped
        os.kill(started.pid, signal.SIGKILL)
        seen = collect(events, 2)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        executor.close()
    assert (seen[Exited].signal, seen[Exited].lost) == (signal.SIGKILL, None)



def test_spare_processes_unused_for_a_while_are_let_go_and_come_back_with_the_next_python_attempt(harness, tmp_path):
    events: queue.SimpleQueue = queue.SimpleQueue()
    executor = Executor(events.put, kill_grace_s=0.5, spare_idle_s=0.5)
    first, second = python_requests(harness, tmp_path, 2)
    try:
        executor.start(first)
        assert collect(events, 1)[Exited].exit_code == 0
        idle = wait_until(lambda: spares_of(executor, 2))
        wait_until(lambda: spares_of(executor, 0) == [] and all(dead(pid) for pid in idle))
        executor.start(second)
        seen = collect(events, 2)
        assert seen[Exited].exit_code == 0 and seen[Started].pid not in idle
        assert set(wait_until(lambda: spares_of(executor, 2))).isdisjoint(idle)
    finally:
        executor.close()


def test_a_worker_that_learns_of_its_engines_death_by_a_failed_send_still_ends_its_attempts(harness, tmp_path):
    # The engine sends a request and is killed before the worker, stopped meanwhile, reads it: the worker
    # starts the step, then fails to tell anyone (a broken pipe) before it ever reads its socket's end.
    # Both ways of learning that the engine is gone must end the attempts it started, or a step
    # outlives its supervisor unseen.
    job_file = harness.write_job("w.py", 'j = job("j", [shell("s", "true")])\n')
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = subprocess.Popen([sys.executable, "-m", "engine.worker", str(theirs.fileno()), "0", "60", str(job_file)],
                              pass_fds=[theirs.fileno()], env={**os.environ, "PYTHONPATH": str(ROOT)})
    theirs.close()
    marker = f"stepline-test-step-{os.getpid()}-{worker.pid}"
    try:
        assert decode(receive(ours)[0])["op"] == "ready"
        worker.send_signal(signal.SIGSTOP)
        log_read, log_write = os.pipe()
        request = {"op": "start", "id": 1, "job": "j", "step": "s", "kind": "shell",
                   "command": f"exec -a {marker} sleep 300", "inputs": {}, "env_set": {}, "env_unset": [],
                   "cwd": str(tmp_path), "output_path": str(tmp_path / "out" / "s.pkl")}
        send_with_fds(ours, encode(request), [log_write])
        os.close(log_write)
        ours.close()  # the engine dies with its request unread
        worker.send_signal(signal.SIGCONT)
        assert worker.wait(timeout=30) == 0  # it ended its attempts and left, rather than failing on the send
        os.close(log_read)

        def step_processes() -> list[psutil.Process]:
            return [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0] == marker]
        wait_until(lambda: not step_processes())
    finally:
        worker.kill()
        worker.wait(timeout=10)


def test_a_worker_stops_when_asked_even_if_its_job_file_started_a_thread_at_import(harness, write_job):
    # The interpreter's exit waits for such a thread: the worker then ignored the engine's stop, and the
    # engine waited for it (10 s per job file, on every `stepline run`) before killing it.
    write_job("j.py", """
        import threading, time

        def spin():
            while True:
                time.sleep(0.1)

        threading.Thread(target=spin).start()

        @step
        def t1():
            return "ok"

        j = job("j", [t1])
    """)
    result = harness.load()
    engine = harness.engine()
    try:
        run_id = engine.submit(result.jobs["j"], {})
        engine.run_until_done([run_id])
        workers = list(engine._executor._workers.values())
    finally:
        engine.close()
    assert query.get_run(run_id).state == "succeeded"
    assert [worker.process.returncode for worker in workers] == [0]  # exited as asked, not killed
