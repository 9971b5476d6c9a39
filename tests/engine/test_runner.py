"""The execution contract of the Engine: data flow, failures, retries, timeouts, cancel, events."""
from __future__ import annotations

import os
import pickle
import random
import signal
import threading
from pathlib import Path

import psutil
import pytest

from engine import query, store
from engine.errors import NotApplicableError, UnknownRunError, UnknownStepError
from engine.plan import StepPlan
from engine.runner import REQUEST_INPUTS_MAX, Engine
from engine.worker import INLINE_OUTPUT_MAX
from tests.conftest import Harness, wait_until

# A crash in one of the engine's threads (log pump, worker reader) fails the test that caused it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


class Background:
    """An engine driving one run on its own thread, so the test can watch the database meanwhile."""

    def __init__(self, harness: Harness, job: str, params: dict[str, str] | None = None,
                 **options: object) -> None:
        result = harness.load()
        assert not result.problems, [str(p) for p in result.problems]
        self.engine = harness.engine(**options)
        self.run_id = self.engine.submit(result.jobs[job], params or {})
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def _drive(self) -> None:
        try:
            self.engine.run_until_done([self.run_id])
        except BaseException as error:  # reported by join()
            self.error = error
        finally:
            self.engine.close()

    def step(self, name: str) -> query.StepView:
        return query.get_run(self.run_id).step(name)

    def join(self) -> query.RunView:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the engine did not finish the run"
        if self.error is not None:
            raise self.error
        return query.get_run(self.run_id)


def _output(harness: Harness, run_id: int, step: str) -> object:
    data = query.step_output(harness.home, run_id, step)
    return None if data is None else pickle.loads(data)


def gone(pid: int, created: float) -> bool:
    """The process is dead (a zombie left for an init that does not reap counts as dead)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() != created or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pids(path: Path, count: int) -> list[tuple[int, float]] | None:
    """`count` pids written one a line to `path`, with their create times, once all are there."""
    try:
        pids = [int(line) for line in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return None
    if len(pids) < count:
        return None
    result = []
    for pid in pids:
        try:
            result.append((pid, psutil.Process(pid).create_time()))
        except psutil.NoSuchProcess:
            result.append((pid, 0.0))
    return result


def log_of(run: query.RunView, step: str, attempt: int = 1) -> bytes:
    views = query.attempts(run.id, step)
    return Path(views[attempt - 1].log_path).read_bytes()


# --- data flow ---------------------------------------------------------------------------------------


def test_python_output_is_passed_to_the_parameter_named_after_the_step(home, write_job):
    write_job("j.py", """
        @step
        def a():
            return {"rows": [1, 2, 3]}

        @step
        def b(a):
            return sum(a["rows"])

        j = job("j", [a, b])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert run.step("b").output_preview == "6"
    assert run.step("b").upstream == ("a",)


def test_a_small_output_is_stored_in_the_database_and_a_large_one_in_its_file(home, write_job):
    # Creating a file per step costs more than a small step; outputs up to INLINE_OUTPUT_MAX pickled bytes
    # travel with the result into the database, larger ones keep their file. Either way they reach
    # downstream steps, shell steps included, and read back the same.
    write_job("j.py", f"""
        @step
        def small():
            return "s" * 100

        @step
        def large():
            return "L" * {INLINE_OUTPUT_MAX + 1}

        @step
        def both(small, large):
            return len(small) + len(large)

        text = shell("text", "printf 'x%.0s' $(seq 1 {INLINE_OUTPUT_MAX + 10}) > $STEPLINE_OUTPUT")
        short = shell("short", "echo hello > $STEPLINE_OUTPUT")

        @step
        def lengths(text, short):
            return [len(text), short]

        j = job("j", [small, large, both, text, short, lengths])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded", [s.reason for s in run.steps]
    assert _output(home, run.id, "both") == 100 + INLINE_OUTPUT_MAX + 1
    assert _output(home, run.id, "lengths") == [INLINE_OUTPUT_MAX + 10, "hello"]
    files = {p.name for p in home.home.run_output_dir(run.id).glob("*.pkl")}
    assert files == {"large.pkl", "text.pkl"}
    assert _output(home, run.id, "small") == "s" * 100 and _output(home, run.id, "short") == "hello"


def test_many_inline_inputs_past_one_requests_room_reach_the_steps_by_file(home, write_job):
    # Three steps take the same six outputs of about 16 KiB: more than one request carries inline, so
    # the engine writes some to their files, once, while the other steps may already be reading them.
    count = REQUEST_INPUTS_MAX // (INLINE_OUTPUT_MAX - 100) + 2
    names = ", ".join(f"u{i}" for i in range(count))
    write_job("j.py", "\n".join(f"@step\ndef u{i}():\n    return {i} * 'x' + 'y' * {INLINE_OUTPUT_MAX - 100}\n"
                               for i in range(count)) + "".join(f"""
@step
def sink{k}({names}):
    return [len(v) for v in ({names},)]
""" for k in range(3)) + f"""
j = job("j", [{names}, sink0, sink1, sink2])
""", header=True)
    run = home.run_now("j")
    assert run.state == "succeeded", [s.reason for s in run.steps if s.reason]
    for k in range(3):
        assert _output(home, run.id, f"sink{k}") == [i + INLINE_OUTPUT_MAX - 100 for i in range(count)]
    by_file = {p.name for p in home.home.run_output_dir(run.id).glob("u*.pkl")}
    assert by_file and len(by_file) < count  # the engine wrote the ones past the request's room


def test_a_job_file_whose_import_hangs_in_the_worker_fails_its_steps_with_the_reason(home, write_job, monkeypatch):
    # The engine's own import went through; the worker's waits on something. Its attempts must fail and
    # say why, not stay starting for ever.
    monkeypatch.setenv("STEPLINE_IMPORT_TIMEOUT", "1")
    path = write_job("j.py", """
        import os, sys, time
        if os.path.basename(sys.argv[0]) == "worker.py":
            time.sleep(3600)

        @step
        def a():
            return 1

        j = job("j", [a])
    """)
    run = home.run_now("j")
    assert run.state == "failed"
    assert run.step("a").reason.summary == (
        f"job file {path}: importing the file did not finish within 1s (a loop, or a call that waits, at import "
        "time?); do slow work such as connections and downloads inside a step, not at import")


def test_cwd_is_relative_to_the_job_files_folder_and_a_missing_one_is_said_plainly(home, write_job):
    (home.jobs_dir / "work").mkdir()
    write_job("j.py", """
        import os

        @step(cwd="work")
        def where():
            return os.path.basename(os.getcwd())

        here = shell("here", "basename $PWD > $STEPLINE_OUTPUT", cwd="work")
        missing = shell("missing", "true", cwd="no/such/dir")

        j = job("j", [where, here])
        k = job("k", [missing])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded", [s.reason for s in run.steps]
    assert (_output(home, run.id, "where"), _output(home, run.id, "here")) == ("work", "work")
    failed = home.run_now("k")
    assert failed.step("missing").reason.summary == (
        f"the step's working directory {home.jobs_dir / 'no/such/dir'} does not exist; create it, or fix the "
        "step's cwd= (relative paths start at the job file's folder)")


def test_a_job_file_gone_before_its_step_starts_fails_the_step_saying_so(home, write_job):
    # Deleted between the engine's load and the worker's import: a reason, not a traceback of stepline's.
    path = write_job("j.py", """
        @step
        def a():
            return 1

        j = job("j", [a])
    """)
    engine = home.engine()
    try:
        job_def = home.load().jobs["j"]
        path.unlink()
        run_id = engine.submit(job_def, {})
        engine.run_until_done([run_id])
    finally:
        engine.close()
    step = query.get_run(run_id).step("a")
    assert step.reason.summary == f"job file {path} is gone (moved or deleted); put it back and retry"
    assert step.reason.detail == ""


def test_jobs_made_in_a_loop_and_kept_in_a_list_or_dict_run(home, write_job):
    # The loader finds every job() a file makes, bound to a name or not; the worker that runs their
    # steps must find them too (it once looked at module names only and failed every attempt).
    write_job("j.py", """
        def make(region):
            @step(name=f"extract_{region}")
            def extract():
                return region.upper()
            return job(f"sync_{region}", [extract])

        pipelines = [make(r) for r in ("emea", "apac")]
        by_name = {"us": make("us")}
    """)
    for region in ("emea", "apac", "us"):
        run = home.run_now(f"sync_{region}")
        assert run.state == "succeeded", run.step(f"extract_{region}").reason
        assert run.step(f"extract_{region}").output_preview == repr(region.upper())


def test_after_orders_steps_without_passing_output(home, write_job, tmp_path):
    trace = tmp_path / "trace"
    write_job("j.py", f"""
        first = shell("first", "echo first >> {trace}")
        second = shell("second", "echo second >> {trace}", after=["first"])
        third = shell("third", "echo third >> {trace}", after="second")
        j = job("j", [third, second, first])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert trace.read_text().split() == ["first", "second", "third"]


def test_params_reach_python_steps_as_params_and_shell_steps_as_environment(home, write_job):
    write_job("j.py", """
        @step
        def py(params):
            return params["region"] + "/" + params["day"]

        sh = shell("sh", 'printf "%s-%s" "$STEPLINE_PARAM_REGION" "$STEPLINE_PARAM_MY_KEY" > "$STEPLINE_OUTPUT"')

        j = job("j", [py, sh], params={"region": "eu", "day": "mon", "my-key": "default"})
    """)
    run = home.run_now("j", {"day": "tue", "my-key": "given"})
    assert run.state == "succeeded"
    assert run.step("py").output_preview == "'eu/tue'"
    assert run.step("sh").output_preview == "'eu-given'"
    assert run.run.params == {"region": "eu", "day": "tue", "my-key": "given"}


def test_a_step_or_param_named_with_accents_reaches_bash_under_an_ascii_name(home, write_job):
    # bash names are ASCII: $STEPLINE_IN_ÜBERPRÜFEN would expand $STEPLINE_IN_ and print the rest.
    write_job("j.py", """
        @step(name="überprüfen")
        def check():
            return "geprüft"

        sh = shell("zähle", 'printf "%s|%s" "$STEPLINE_IN_UBERPRUFEN" "$STEPLINE_PARAM_GRO_E" > "$STEPLINE_OUTPUT"',
                   after=["überprüfen"])

        j = job("täglich", [check, sh], params={"größe": "XL"})
    """)
    run = home.run_now("täglich")
    assert run.state == "succeeded", run.step("zähle").reason
    assert run.step("zähle").output_preview == "'geprüft|XL'"


def test_shell_steps_get_upstream_outputs_and_write_their_own(home, write_job):
    write_job("j.py", """
        @step
        def numbers():
            return [1, 2]

        @step
        def name():
            return "ada"

        greet = shell("greet", 'echo "hello $STEPLINE_IN_NAME $STEPLINE_IN_NUMBERS" > "$STEPLINE_OUTPUT"',
                      after=["numbers", "name"])

        @step
        def shout(greet):
            return greet.upper()

        j = job("j", [numbers, name, greet, shout])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert run.step("greet").output_preview == "'hello ada [1, 2]'"
    assert run.step("shout").output_preview == "'HELLO ADA [1, 2]'"


def test_shell_steps_see_every_kind_of_upstream_output_as_text(home, write_job):
    # Plain data is read by the worker itself; an object of the job's own classes only in the
    # attempt's process. Both must reach the shell step the same way.
    write_job("j.py", """
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int

        @step
        def point():
            return Point(3)

        @step
        def table():
            return {"rows": 2, "ok": True, "mean": float("nan"), "max": float("inf")}

        @step
        def nothing():
            return None

        first = shell("first", 'printf "%s" "line one" > "$STEPLINE_OUTPUT"')
        show = shell("show", 'echo "$STEPLINE_IN_POINT|$STEPLINE_IN_TABLE|$STEPLINE_IN_NOTHING|$STEPLINE_IN_FIRST"'
                             ' > "$STEPLINE_OUTPUT"', after=["point", "table", "nothing", "first"])
        plain = shell("plain", 'echo "$STEPLINE_IN_FIRST!" > "$STEPLINE_OUTPUT"', after=["first"])

        j = job("j", [point, table, nothing, first, show, plain])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded", run.reason
    # Other values than text arrive as JSON, a dataclass as its fields; NaN and infinities (which JSON has
    # no word for, and `jq` refuses as written by Python) as null.
    assert run.step("show").output_preview == (
        """'{"x": 3}|{"rows": 2, "ok": true, "mean": null, "max": null}|null|line one'""")
    assert run.step("plain").output_preview == "'line one!'"


def test_an_output_with_a_nul_character_fails_the_shell_step_that_reads_it_saying_why(home, write_job):
    # No environment variable can hold a NUL: this failed with a traceback of stepline's own.
    write_job("j.py", """
        @step
        def raw():
            return b"a\\0b"

        use = shell("use", "echo $STEPLINE_IN_RAW", after=["raw"])
        j = job("j", [raw, use])
    """)
    run = home.run_now("j")
    assert run.step("use").state == "failed"
    assert run.step("use").reason.summary == (
        "output of step 'raw' holds a NUL character, which no environment variable can (STEPLINE_IN_RAW); have "
        "'raw' write its data to a file and return the file's path")


def test_a_shell_step_that_writes_no_output_passes_none_downstream(home, write_job):
    write_job("j.py", """
        quiet = shell("quiet", "true")

        @step
        def after_quiet(quiet):
            return repr(quiet)

        j = job("j", [quiet, after_quiet])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded", run.step("after_quiet").reason
    assert run.step("after_quiet").output_preview == "'None'"


def test_a_dataclass_from_the_job_file_reaches_the_downstream_step(home, write_job):
    write_job("j.py", """
        from dataclasses import dataclass

        @dataclass
        class Batch:
            size: int

        @step
        def make():
            return Batch(3)

        @step
        def use(make):
            return make.size * 2

        j = job("j", [make, use])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded", run.step("use").reason
    assert run.step("use").output_preview == "6"


def test_context_tells_a_step_its_run_and_attempt(home, write_job):
    write_job("j.py", """
        @step(retries=1)
        def where(context):
            if context.attempt == 1:
                raise RuntimeError("first attempt fails")
            return f"{context.run_id}/{context.job}/{context.step}/{context.attempt}"

        j = job("j", [where])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert run.step("where").output_preview == f"'{run.id}/j/where/2'"


def test_every_attempt_is_its_own_process_and_session_with_only_its_own_environment(home, write_job, monkeypatch):
    # Attempts fork from a preloaded worker (some ahead of need): each must still be a new process
    # leading its own session, and see the engine's environment plus its own variables only.
    monkeypatch.setenv("STEPLINE_TEST_ENGINE_VAR", "from the engine")
    monkeypatch.delenv("STEPLINE_TEST_UNSET", raising=False)
    write_job("j.py", """
        import os

        def probe():
            return (os.getpid(), os.getsid(0), os.environ.get("STEPLINE_STEP"), os.environ.get("ONLY_A"),
                    os.environ.get("STEPLINE_TEST_ENGINE_VAR"), "PYTHONPATH" in os.environ)

        @step(env={"ONLY_A": "a"})
        def a():
            return probe()

        @step(after=["a"])
        def b():
            return probe()

        @step(after=["b"])
        def c():
            os.environ["LEAK"] = "c"
            return probe()

        @step(after=["c"])
        def d():
            return probe() + (os.environ.get("LEAK"),)

        j = job("j", [a, b, c, d])
    """)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    run = home.run_now("j")
    assert run.state == "succeeded", run.reason
    seen = {name: _output(home, run.id, name) for name in "abcd"}
    pids = {probe[0] for probe in seen.values()}
    assert len(pids) == 4, seen  # four attempts, four processes
    assert all(probe[0] == probe[1] for probe in seen.values()), seen  # each leads its own session
    assert [probe[2] for probe in seen.values()] == ["a", "b", "c", "d"]
    assert seen["a"][3] == "a" and seen["b"][3] is None  # a step's env= is its own
    assert all(probe[4] == "from the engine" for probe in seen.values())
    assert not any(probe[5] for probe in seen.values())  # the worker's own PYTHONPATH stays its own
    assert seen["d"][6] is None  # what one attempt changes never reaches the next


# --- failures ------------------------------------------------------------------------------------------


def test_an_exception_is_the_reason_with_the_users_traceback(home, write_job):
    path = write_job("j.py", """
        def helper():
            raise ValueError("bad row 7\\nsecond line")

        @step
        def load():
            helper()

        j = job("j", [load])
    """)
    run = home.run_now("j")
    reason = run.step("load").reason
    assert run.state == "failed"
    assert run.step("load").state == "failed"
    assert reason.summary == "ValueError: bad row 7"
    assert str(path) in reason.detail
    assert "in helper" in reason.detail and "in load" in reason.detail
    assert "worker.py" not in reason.detail
    assert reason.detail.rstrip().endswith("second line")
    assert b"ValueError: bad row 7" in log_of(run, "load")


def test_a_shell_step_exit_status_is_the_reason(home, write_job):
    write_job("j.py", """
        a = shell("a", "echo about to fail; exit 3")
        j = job("j", [a])
    """)
    run = home.run_now("j")
    assert run.step("a").state == "failed"
    assert run.step("a").reason.summary == "exit code 3"
    assert "about to fail" in run.step("a").reason.detail
    assert query.attempts(run.id, "a")[0].exit_code == 3


def test_an_attempt_that_ended_on_its_result_gets_its_exit_status_while_the_run_goes_on(home, write_job):
    # A Python step ends on the result its process sends; the exit status, CPU time and peak RSS come
    # with the process's exit, and are written soon after even while a long step keeps the run going.
    write_job("j.py", """
        @step
        def quick():
            return 1

        slow = shell("slow", "sleep 300", after=["quick"])
        j = job("j", [quick, slow])
    """)
    background = Background(home, "j", kill_grace_s=0.5)
    try:
        [attempt] = wait_until(lambda: [a for a in query.attempts(background.run_id, "quick")
                                        if a.exit_code is not None] or None, timeout_s=20)
        assert query.run_summary(background.run_id).state == "running"  # `slow` sleeps: the run goes on
        assert attempt.exit_code == 0 and attempt.cpu_s is not None and attempt.peak_rss_bytes > 0
    finally:
        store.add_command("cancel", run_id=background.run_id)
        background.join()


def test_a_step_killed_by_a_signal_says_which(home, write_job):
    write_job("j.py", """
        import os, signal

        @step
        def py():
            os.kill(os.getpid(), signal.SIGKILL)

        sh = shell("sh", "kill -TERM $$")
        j = job("j", [py, sh])
    """)
    run = home.run_now("j")
    assert run.step("py").reason.summary == "killed by signal 9 (SIGKILL)"
    assert run.step("sh").reason.summary == "killed by signal 15 (SIGTERM)"
    assert query.attempts(run.id, "py")[0].signal == 9


def test_system_exit_zero_succeeds_and_nonzero_fails(home, write_job):
    write_job("j.py", """
        import sys

        @step
        def clean():
            sys.exit(0)

        @step
        def numbered():
            sys.exit(4)

        @step
        def worded():
            sys.exit("no input files")

        @step
        def wrapped():
            sys.exit(256)

        j = job("j", [clean, numbered, worded, wrapped])
    """)
    run = home.run_now("j")
    assert run.step("clean").state == "succeeded"
    assert run.step("numbered").reason.summary == "SystemExit: 4"
    assert query.attempts(run.id, "numbered")[0].exit_code == 4
    assert run.step("worded").reason.summary == "SystemExit: no input files"
    assert "worker.py" not in run.step("worded").reason.detail
    assert run.step("wrapped").state == "failed"
    assert run.step("wrapped").reason.summary == "SystemExit: 256"


@pytest.mark.parametrize("value", ["threading.Lock()", "lambda: 1"])
def test_an_output_that_cannot_be_pickled_fails_the_step(home, write_job, value):
    write_job("j.py", f"""
        import threading

        @step(retries=3)
        def make():
            return {value}

        @step
        def use(make):
            return 1

        j = job("j", [make, use])
    """)
    run = home.run_now("j")
    assert run.step("make").state == "failed"
    assert "output of step 'make' cannot be persisted" in run.step("make").reason.summary
    # What the step returned, not stepline's pickling frames; and no retry: the same code returns the same.
    assert "the step returned" in run.step("make").reason.detail and "worker.py" not in run.step("make").reason.detail
    assert len(query.attempts(run.id, "make")) == 1
    assert run.step("use").state == "upstream_failed"


# --- retries ---------------------------------------------------------------------------------------------


def test_a_step_failing_twice_then_succeeding_uses_three_attempts(home, write_job):
    write_job("j.py", """
        @step(retries=3)
        def flaky(context):
            if context.attempt < 3:
                raise ConnectionError(f"attempt {context.attempt}")
            return "ok"

        j = job("j", [flaky])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert run.step("flaky").attempts == 3
    views = query.attempts(run.id, "flaky")
    assert [a.state for a in views] == ["failed", "failed", "succeeded"]
    assert views[0].reason.summary == "ConnectionError: attempt 1"
    assert run.step("flaky").reason is None


def test_exhausted_retries_fail_the_step_and_its_downstream(home, write_job):
    write_job("j.py", """
        a = shell("a", "exit 5", retries=2)
        b = shell("b", "true", after=["a"])
        c = shell("c", "true", after=["b"])
        d = shell("d", "true")
        j = job("j", [a, b, c, d])
    """)
    run = home.run_now("j")
    assert run.state == "failed"
    assert run.step("a").state == "failed"
    assert run.step("a").attempts == 3
    assert run.step("a").reason.summary == "exit code 5"
    assert run.step("b").state == "upstream_failed"
    assert run.step("c").state == "upstream_failed"
    assert run.step("d").state == "succeeded"
    assert run.run.reason == "step 'a' failed"


def test_a_run_whose_steps_failed_names_them_all(home, write_job):
    write_job("j.py", """
        j = job("j", [shell("load", "exit 1"), shell("check", "exit 2"), shell("notify", "exit 3")])
    """)
    assert home.run_now("j").run.reason == "steps 'load', 'check' and 'notify' failed"


def test_a_retry_delay_shows_as_waiting_for_the_retry(home, write_job):
    write_job("j.py", """
        a = shell("a", "exit 1", retries=3, retry_delay=600)
        b = shell("b", "true", after=["a"])
        j = job("j", [a, b])
    """)
    background = Background(home, "j")
    step = wait_until(lambda: (s := background.step("a")).state == "waiting" and s.waiting_for != "upstream"
                      and s)
    assert step.waiting_for.startswith("retry 1/3 at ")
    assert len(step.waiting_for) == len("retry 1/3 at HH:MM:SS")
    assert step.reason.summary == "exit code 1"
    store.add_command("cancel", run_id=background.run_id)
    run = background.join()
    assert run.state == "cancelled"
    assert run.step("a").state == "cancelled"
    assert run.step("a").waiting_for is None
    assert run.step("b").state == "cancelled"


def _plan(**options: object) -> StepPlan:
    return StepPlan(name="s", kind="shell", upstream=(), **options)  # type: ignore[arg-type]


def test_retry_delays_grow_by_backoff_up_to_the_maximum(home):
    engine = Engine(home.home, rng=random.Random(0))
    try:
        plan = _plan(retry_delay_s=10.0, backoff=2.0, max_retry_delay_s=50.0)
        assert [engine._retry_delay(plan, n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 50.0]
        assert engine._retry_delay(_plan(retry_delay_s=5.0), 3) == 5.0
        # "Retry for ever": 2.0 ** 1100 is past the largest float; the maximum holds, the engine goes on.
        assert engine._retry_delay(plan, 1100) == 50.0
        assert engine._retry_delay(_plan(retry_delay_s=0.0, backoff=2.0), 1100) == 0.0
    finally:
        engine.close()


def test_retry_jitter_adds_up_to_its_fraction_of_the_delay(home):
    engine = Engine(home.home, rng=random.Random(42))
    try:
        plan = _plan(retry_delay_s=10.0, jitter=0.5)
        delays = [engine._retry_delay(plan, 1) for _ in range(50)]
        expected = random.Random(42)
        assert delays == [10.0 * (1 + expected.uniform(0, 0.5)) for _ in range(50)]
        assert all(10.0 <= d <= 15.0 for d in delays)
        assert len(set(delays)) > 1
    finally:
        engine.close()


# --- timeouts and process trees ----------------------------------------------------------------------------


def test_a_step_over_its_timeout_is_killed(home, write_job):
    write_job("j.py", """
        slow = shell("slow", "echo started; sleep 60", timeout=1)
        after = shell("after", "true", after=["slow"])
        j = job("j", [slow, after])
    """)
    run = home.run_now("j", kill_grace_s=0.5)
    assert run.state == "failed"
    assert run.step("slow").state == "failed"
    assert run.step("slow").reason.summary == "timed out after 1s"
    assert "started" in run.step("slow").reason.detail
    assert run.step("after").state == "upstream_failed"


def test_a_step_ignoring_sigterm_is_killed_after_the_grace_period(home, write_job):
    write_job("j.py", """
        import signal, time

        @step(timeout=1)
        def stubborn():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ignoring SIGTERM", flush=True)
            time.sleep(60)

        trapped = shell("trapped", "trap '' TERM; sleep 60", timeout=1)
        j = job("j", [stubborn, trapped])
    """)
    run = home.run_now("j", kill_grace_s=0.5)
    assert run.state == "failed"
    for name in ("stubborn", "trapped"):
        assert run.step(name).reason.summary == "timed out after 1s"
        assert query.attempts(run.id, name)[0].signal == signal.SIGKILL


TREE = """sleep 300 & echo $! >> {pids}
( sleep 300 & echo $! >> {pids} )
bash -c 'sleep 300 & echo $! >> {pids}; wait' &
( setsid sleep 300 & echo $! >> {pids} )
echo $$ >> {pids}
sleep 300
"""
"""A step's tree: a child, an orphaned grandchild, a nested one, and a daemon that left both the tree and
the process group (double fork plus setsid), found by the attempt's STEPLINE_* variables it carries."""
TREE_PIDS = 5


def test_a_timed_out_step_leaves_no_process_of_its_tree(home, write_job, tmp_path):
    pids = tmp_path / "pids"
    write_job("j.py", f"""
        tree = shell("tree", {TREE.format(pids=pids)!r}, timeout=1)
        j = job("j", [tree])
    """)
    background = Background(home, "j", kill_grace_s=0.5)
    started = wait_until(lambda: read_pids(pids, TREE_PIDS))
    run = background.join()
    assert run.step("tree").reason.summary == "timed out after 1s"
    for pid, created in started:
        wait_until(lambda: gone(pid, created), timeout_s=10)


def test_cancel_from_another_connection_ends_the_run_and_its_processes(home, write_job, tmp_path):
    pids = tmp_path / "pids"
    write_job("j.py", f"""
        tree = shell("tree", {TREE.format(pids=pids)!r})
        later = shell("later", "true", after=["tree"])
        j = job("j", [tree, later])
    """)
    background = Background(home, "j", kill_grace_s=0.5)
    started = wait_until(lambda: read_pids(pids, TREE_PIDS))
    command_id = store.add_command("cancel", run_id=background.run_id, payload={"reason": "cancelled by test"})
    run = background.join()
    assert run.state == "cancelled"
    assert run.run.reason == "cancelled by test"
    assert run.step("tree").state == "cancelled"
    assert run.step("tree").reason.summary == "cancelled by test"
    assert run.step("later").state == "cancelled"
    assert query.command(command_id).state == "done"
    for pid, created in started:
        wait_until(lambda: gone(pid, created), timeout_s=10)


def test_cancel_reaches_a_run_of_the_command_line_in_another_process(home, write_job, tmp_path):
    pids = tmp_path / "pids"
    write_job("j.py", f"""
        tree = shell("tree", {TREE.format(pids=pids)!r})
        later = shell("later", "true", after=["tree"])
        j = job("j", [tree, later])
    """)
    process = home.cli_process("run", "j")
    try:
        started = wait_until(lambda: read_pids(pids, TREE_PIDS))
        run_id = query.list_runs(job="j")[0].id
        store.add_command("cancel", run_id=run_id)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, (out, err)
    run = query.get_run(run_id)
    assert run.state == "cancelled"
    assert run.step("tree").state == "cancelled"
    assert run.step("tree").reason.summary == "cancelled by user"
    assert run.step("later").state == "cancelled"
    for pid, created in started:
        wait_until(lambda: gone(pid, created), timeout_s=10)


# --- retry in the same run -----------------------------------------------------------------------------------


def _marker_job(write_job, marker: Path) -> None:
    write_job("j.py", f"""
        import os

        @step
        def a(context):
            return f"from a, attempt {{context.attempt}}"

        @step
        def b(a):
            if not os.path.exists({str(marker)!r}):
                raise FileNotFoundError("marker missing")
            return "b got " + a

        c = shell("c", "true", after=["b"])
        j = job("j", [a, b, c])
    """)


@pytest.mark.parametrize("only", [None, "b"])
def test_retry_reruns_failed_steps_in_the_same_run_with_persisted_outputs(home, write_job, tmp_path, only):
    marker = tmp_path / "marker"
    _marker_job(write_job, marker)
    first = home.run_now("j")
    assert first.state == "failed"
    assert first.step("b").reason.summary == "FileNotFoundError: marker missing"
    assert first.step("c").state == "upstream_failed"
    marker.touch()
    run = home.retry(first.id, only)
    assert run.id == first.id
    assert run.state == "succeeded"
    assert run.step("a").attempts == 1
    assert run.step("b").attempts == 2
    assert run.step("c").attempts == 1
    assert run.step("b").output_preview == "'b got from a, attempt 1'"
    assert [a.state for a in query.attempts(run.id, "b")] == ["failed", "succeeded"]


@pytest.mark.parametrize("damage, said", [
    ("removed", "the output of step 'produce' is missing: its file {path} was removed; start a new run of the job "
                "to make it again"),
    ("truncated", "the output of step 'produce' cannot be read back: its stored copy is damaged (UnpicklingError: "
                  "pickle data was truncated); start a new run of the job to make it again"),
])
def test_a_retry_whose_stored_input_is_gone_or_damaged_fails_saying_so(home, write_job, tmp_path, damage, said):
    # A removed output file reached the step as None (a step that tolerates None then "succeeded" on no
    # data), and a truncated one was blamed on a renamed class.
    flag = tmp_path / "flag"
    write_job("j.py", f"""
        import os

        @step
        def produce():
            return list(range(10_000))  # over 16 KiB: kept in a file of its own

        @step
        def consume(produce):
            if not os.path.exists({str(flag)!r}):
                raise RuntimeError("flag missing")
            return len(produce)

        j = job("j", [produce, consume])
    """)
    first = home.run_now("j")
    assert first.step("consume").state == "failed"
    path = home.home.output_file_str(first.id, "produce")
    if damage == "removed":
        os.remove(path)
    else:
        with open(path, "r+b") as handle:
            handle.truncate(100)
    flag.touch()
    run = home.retry(first.id)
    assert run.step("consume").state == "failed"
    assert run.step("consume").reason.summary == said.format(path=path)


def test_a_step_that_returned_none_reaches_a_retried_step_as_none(home, write_job, tmp_path):
    flag = tmp_path / "flag"
    write_job("j.py", f"""
        import os

        @step
        def nothing():
            return None

        @step
        def use(nothing):
            if not os.path.exists({str(flag)!r}):
                raise RuntimeError("flag missing")
            return repr(nothing)

        j = job("j", [nothing, use])
    """)
    first = home.run_now("j")
    flag.touch()
    assert home.retry(first.id).step("use").output_preview == "'None'"


def test_retry_of_a_succeeded_step_runs_it_and_every_step_after_it_again(home, write_job, tmp_path):
    # Airflow's "clear": the data or code behind a step that succeeded was wrong; it and what used its
    # output run again in the same run, and the steps before it keep theirs.
    marker = tmp_path / "marker"
    marker.touch()
    _marker_job(write_job, marker)
    run = home.run_now("j")
    assert run.state == "succeeded"
    engine = home.engine()
    try:
        with pytest.raises(NotApplicableError, match="no failed, upstream_failed or cancelled steps"):
            engine.retry(run.id)
        assert engine.retry(run.id, "b") == ["b", "c"]
        reset = query.get_run(run.id).step("b")  # nothing of the earlier round reads as current
        assert (reset.state, reset.started_at, reset.has_output, reset.output_preview) == ("pending", None, False, None)
        engine.run_until_done([run.id])
    finally:
        engine.close()
    again = query.get_run(run.id)
    assert again.state == "succeeded"
    assert [again.step(name).attempts for name in ("a", "b", "c")] == [1, 2, 2]
    assert again.step("b").output_preview == "'b got from a, attempt 1'"
    assert [a.state for a in query.attempts(run.id, "b")] == ["succeeded", "succeeded"]


def test_retry_of_a_step_whose_upstream_did_not_succeed_is_refused(home, write_job):
    # Retrying only `c` would leave it waiting for ever on `b`, which failed and is not retried.
    write_job("j.py", """
        @step
        def a():
            return 1

        @step
        def b(a):
            raise ValueError("b broken")

        @step
        def c(b):
            return 1

        j = job("j", [a, b, c])
    """)
    run = home.run_now("j")
    assert (run.step("b").state, run.step("c").state) == ("failed", "upstream_failed")
    engine = home.engine()
    try:
        with pytest.raises(NotApplicableError) as refused:
            engine.retry(run.id, "c")
        assert str(refused.value) == (
            f"step 'c' of run {run.id} waits on 'b', which failed; retry that one (`stepline retry {run.id} b` runs "
            f"'c' after it), or the run from its failure (`stepline retry {run.id}`)")
        assert engine.retry(run.id, "b") == ["b", "c"]
    finally:
        engine.close()


@pytest.mark.parametrize("made, said", [
    ('rm -f "$STEPLINE_OUTPUT"; mkdir "$STEPLINE_OUTPUT"', "the command made it a directory"),
    ('rm -f "$STEPLINE_OUTPUT"; mkfifo "$STEPLINE_OUTPUT"', "the command made it not a regular file"),
], ids=["directory", "fifo"])
def test_a_shell_step_whose_output_path_is_not_a_file_fails_saying_so(home, write_job, made, said):
    # Read as it was, a directory crashed the engine and a FIFO hung it for ever (open waits for a writer).
    write_job("j.py", f"""
        odd = shell("odd", {made!r})
        after = shell("after", "true", after=["odd"])
        j = job("j", [odd, after])
    """)
    run = home.run_now("j")
    assert run.step("odd").state == "failed"
    assert run.step("odd").reason.summary.startswith(f"its output could not be read from $STEPLINE_OUTPUT: {said}")
    assert run.step("after").state == "upstream_failed"


def test_retry_names_unknown_steps_and_runs(home, write_job, tmp_path):
    _marker_job(write_job, tmp_path / "marker")
    run = home.run_now("j")
    engine = home.engine()
    try:
        with pytest.raises(UnknownStepError, match=r"no step 'bb' \(did you mean 'b'\?\); its steps are: a, b, c"):
            engine.retry(run.id, "bb")
        with pytest.raises(UnknownRunError, match="run 999 does not exist"):
            engine.retry(999)
    finally:
        engine.close()


# --- parallelism ----------------------------------------------------------------------------------------------


def test_parallel_one_never_overlaps_independent_steps(home, write_job):
    write_job("j.py", """
        a = shell("a", "sleep 0.2")
        b = shell("b", "sleep 0.2")
        c = shell("c", "sleep 0.2")
        j = job("j", [a, b, c])
    """)
    run = home.run_now("j", parallel=1)
    assert run.state == "succeeded"
    spans = sorted((a.started_at, a.ended_at) for name in "abc" for a in query.attempts(run.id, name))
    for (_, ended), (started, _) in zip(spans, spans[1:]):
        assert ended <= started
    slot_waits = [e for e in query.events_since(0, run_id=run.id)
                  if e.state == "waiting" and e.message == "a free slot (--parallel 1)"]
    assert {e.step for e in slot_waits} == {"b", "c"}


def test_a_step_released_by_its_upstream_says_it_waits_for_a_slot(home, write_job):
    write_job("j.py", """
        root = shell("root", "true")
        x = shell("x", "sleep 60", after=["root"])
        y = shell("y", "true", after=["root"])
        j = job("j", [root, x, y])
    """)
    background = Background(home, "j", parallel=1, kill_grace_s=0.5)
    wait_until(lambda: background.step("x").state == "running")
    assert background.step("y").state == "waiting"
    assert background.step("y").waiting_for == "a free slot (--parallel 1)"
    store.add_command("cancel", run_id=background.run_id)
    assert background.join().state == "cancelled"


def test_parallel_two_runs_two_and_queues_the_rest(home, write_job):
    write_job("j.py", """
        a = shell("a", "sleep 60")
        b = shell("b", "sleep 60")
        c = shell("c", "sleep 60")
        j = job("j", [a, b, c])
    """)
    background = Background(home, "j", parallel=2, kill_grace_s=0.5)
    wait_until(lambda: [background.step(n).state for n in "abc"] == ["running", "running", "waiting"])
    assert background.step("c").waiting_for == "a free slot (--parallel 2)"
    store.add_command("cancel", run_id=background.run_id)
    run = background.join()
    assert [run.step(n).state for n in "abc"] == ["cancelled"] * 3
    assert run.step("c").attempts == 0


# --- events and snapshots ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, expected", [("true", "succeeded"), ("exit 2", "failed")])
def test_every_state_change_is_an_event_and_the_run_state_follows(home, write_job, command, expected):
    write_job("j.py", f"""
        a = shell("a", "true")
        b = shell("b", "{command}", after=["a"], retries=1)
        c = shell("c", "true", after=["b"])
        j = job("j", [a, b, c])
    """)
    run = home.run_now("j")
    assert run.state == expected
    events = query.events_since(0)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    run_events = [e.state for e in events if e.run_id == run.id and e.kind == "run"]
    assert run_events == ["queued", "running", expected]
    for step_view in run.steps:
        step_events = [e.state for e in events if e.run_id == run.id and e.step == step_view.name]
        assert step_events[-1] == step_view.state
    b_events = [e.state for e in events if e.step == "b"]
    if expected == "failed":
        assert b_events == ["waiting", "running", "waiting", "running", "failed"]
        assert [e.state for e in events if e.step == "c"] == ["waiting", "upstream_failed"]
    else:
        assert b_events == ["waiting", "running", "succeeded"]


def test_a_run_keeps_its_job_snapshot_after_the_job_file_changes(home, write_job):
    write_job("j.py", """
        a = shell("a", "true")
        b = shell("b", "exit 1", after=["a"])
        j = job("j", [a, b])
    """)
    run = home.run_now("j")
    write_job("j.py", """
        renamed = shell("renamed", "true")
        j = job("j", [renamed])
    """)
    view = query.get_run(run.id)
    assert [s.name for s in view.plan.steps] == ["a", "b"]
    assert view.plan.step("b").command == "exit 1"
    assert view.plan.step("b").upstream == ("a",)
    assert [s.name for s in view.steps] == ["a", "b"]


def test_a_run_leaves_no_empty_output_folder_and_a_retry_makes_it_again(home, write_job, tmp_path):
    # One folder per run that has a shell step, made in case the step writes $STEPLINE_OUTPUT: a job every
    # minute would leave thousands of empty ones.
    marker = tmp_path / "marker"
    write_job("j.py", f"""
        quiet = shell("quiet", "echo no output")
        j = job("j", [quiet])
        writes = shell("writes", "test -e {marker} && echo 42 > $STEPLINE_OUTPUT")
        k = job("k", [writes])
    """)
    first = home.run_now("j")
    assert first.state == "succeeded" and not home.home.run_output_dir(first.id).exists()
    failed = home.run_now("k")
    assert failed.state == "failed" and not home.home.run_output_dir(failed.id).exists()
    marker.touch()
    again = home.retry(failed.id)
    assert again.state == "succeeded" and again.step("writes").output_preview == "'42'"
    assert home.home.run_output_dir(failed.id).is_dir()
