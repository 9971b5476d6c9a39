"""The job-file loading contract: every problem with file:line and what to do; no file stops another.

Job files written by `write_job` start with `from engine import job, step, shell` on line 1,
so the first line of each body below is line 2.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine.definition import JobDef
from engine.loader import find_cycle, topological_order
from tests.conftest import HEADER, wait_until

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(autouse=True)
def in_tmp(harness, monkeypatch):
    """Run from the harness root, so problems name files as a user sees them: jobs/j.py."""
    monkeypatch.chdir(harness.root)


def problems(harness) -> list[str]:
    return [str(p) for p in harness.load().problems]


# --- files that do not import -------------------------------------------------------------

def test_syntax_error_names_the_line_of_the_error(harness, write_job):
    write_job("j.py", """\
        a = shell("a", "true")
        j = job("j", [a]
        x = 1
    """)
    assert problems(harness) == [
        "jobs/j.py:3: syntax error: '(' was never closed; fix the file (other job files still load)"]


def test_missing_module_says_to_install_it(harness, write_job):
    write_job("j.py", """\
        import surely_not_installed_pkg
        j = job("j", [shell("a", "true")])
    """)
    assert problems(harness) == [
        "jobs/j.py:2: the file imports 'surely_not_installed_pkg', which is not installed; install the "
        "package that provides it into the Python environment stepline runs in, or fix the import"]


def test_exception_at_import_names_the_deepest_line_in_the_job_file(harness, write_job):
    write_job("_helpers.py", """\
        def explode():
            raise ValueError("no config for nightly")
    """, header=False)
    write_job("j.py", """\
        from _helpers import explode

        def build():
            explode()

        build()
    """)
    assert problems(harness) == [
        "jobs/j.py:5: importing the file failed with ValueError: no config for nightly; "
        "fix the file (other job files still load)"]


def test_system_exit_in_a_job_file_is_a_problem_not_an_exit(harness, write_job):
    write_job("j.py", """\
        import sys
        sys.exit(3)
    """)
    assert problems(harness) == [
        "jobs/j.py:3: importing the file failed with SystemExit: 3; fix the file (other job files still load)"]


# --- files whose import ends or crashes the process importing them --------------------------------------------

def test_os_exit_at_import_is_a_problem_at_its_line_and_the_next_file_loads(harness, write_job):
    write_job("a_exits.py", """\
        import os
        os._exit(0)
    """)
    write_job("b_good.py", 'g = job("g", [shell("a", "true")])\n')
    result = harness.load()
    assert list(result.jobs) == ["g"]
    assert [str(p) for p in result.problems] == [
        "jobs/a_exits.py:3: the file calls os._exit(0) at import, which would end the process that imports it; "
        'move the call into a step, or under `if __name__ == "__main__":`']


def test_a_crash_at_import_names_the_signal_and_the_line_and_the_next_file_loads(harness, write_job):
    # A C extension that segfaults when imported, as a broken build of a native package does.
    write_job("a_crash.py", """\
        import ctypes

        def connect():
            ctypes.string_at(0)

        connect()
    """)
    write_job("b_good.py", 'g = job("g", [shell("a", "true")])\n')
    result = harness.load()
    assert list(result.jobs) == ["g"]
    assert [str(p) for p in result.problems] == [
        "jobs/a_crash.py:5: importing the file crashed the process importing it (SIGSEGV, in a C extension?); "
        "other job files still load: fix the file or the package it imports there, and check it with `python FILE`"]


def test_a_file_killed_at_import_is_reported_as_killed_and_the_next_file_loads(harness, write_job):
    # What the out-of-memory killer does to a file that loads a huge table at import.
    write_job("a_killed.py", """\
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    write_job("b_good.py", 'g = job("g", [shell("a", "true")])\n')
    result = harness.load()
    assert list(result.jobs) == ["g"]
    assert [str(p) for p in result.problems] == [
        "jobs/a_killed.py: importing the file got the process importing it killed (SIGKILL: out of memory?); "
        "other job files still load: fix the file or the package it imports there, and check it with `python FILE`"]


def test_a_file_that_forks_or_starts_processes_at_import_disturbs_no_other_file(harness, write_job):
    # A fork at import (multiprocessing does this) used to leave a second reader answering for the files
    # after it; a process started at import outlived the load and held the caller's pipes open.
    write_job("a_forks.py", """\
        import os
        if os.fork() == 0:
            pass  # the copy goes on importing, as the parent does
        a = job("a", [shell("s", "true")])
    """)
    write_job("b_pool.py", """\
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(2) as pool:
            squares = pool.map(abs, [-1, -2, -3])
        b = job("b", [shell("s", "true")])
    """)
    write_job("c_starts.py", """\
        import subprocess
        subprocess.Popen(["sleep", "600"])
        c = job("c", [shell("s", "true")])
    """)
    write_job("d_path.py", """\
        import os
        os.environ["PATH"] = "/nonexistent"
        d = job("d", [shell("s", "true")])
    """)
    write_job("e_uses_path.py", """\
        import subprocess
        subprocess.run(["true"], check=True)
        e = job("e", [shell("s", "true")])
    """)
    for _ in range(3):  # the fork used to make results differ from one load to the next
        result = harness.load()
        assert [str(p) for p in result.problems] == []
        assert sorted(result.jobs) == ["a", "b", "c", "d", "e"]
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "600"]]


def test_keyboard_interrupt_at_import_is_a_problem_at_its_line(harness, write_job):
    write_job("a.py", """\
        raise KeyboardInterrupt
    """)
    write_job("b.py", 'b = job("b", [shell("s", "true")])\n')
    result = harness.load()
    assert list(result.jobs) == ["b"]
    assert [str(p) for p in result.problems] == [
        "jobs/a.py:2: importing the file raised KeyboardInterrupt; fix the file (other job files still load)"]


def test_a_folder_named_like_a_job_file_is_not_a_job_file(harness, write_job):
    (harness.jobs_dir / "archive.py").mkdir(parents=True)
    write_job("b.py", 'b = job("b", [shell("s", "true")])\n')
    result = harness.load()
    assert list(result.jobs) == ["b"] and result.problems == ()


def test_the_loading_process_never_runs_a_job_file(harness, write_job):
    # What a file does at import (imports, environment, working directory, signal handlers) stays out of
    # the engine, the daemon and the console that load it.
    write_job("a_side_effects.py", """\
        import os, signal
        os.environ["STEPLINE_TEST_IMPORTED"] = "yes"
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.chdir("/")
        a = job("a", [shell("s", "true")])
    """)
    write_job("b_bad.py", 'b = job("b", [shell("s", "true", after=["nope"])])\n')
    before = os.getcwd()
    result = harness.load()
    assert list(result.jobs) == ["a"]
    assert [p.file for p in result.problems] == ["jobs/b_bad.py"]  # named from where stepline started, not "/"
    assert os.getcwd() == before and "STEPLINE_TEST_IMPORTED" not in os.environ
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert not [name for name in sys.modules if name.startswith("stepline_job_")]


def test_a_python_step_comes_back_without_its_function_and_keeps_its_shape(harness, write_job):
    write_job("j.py", """\
        @step(retries=2)
        def extract(params):
            return 1

        @step
        def load(extract):
            return extract

        j = job("j", [extract, load])
    """)
    job_def = harness.load().jobs["j"]
    assert [(s.name, s.kind, s.parameters, s.retries) for s in job_def.steps] == [
        ("extract", "python", ("params",), 2), ("load", "python", ("extract",), 0)]
    with pytest.raises(RuntimeError, match="runs in the preloaded worker"):
        job_def.steps[0].func()


def test_a_broken_file_does_not_stop_a_good_file_from_loading(harness, write_job):
    write_job("a_broken.py", """\
        j = job("broken", [shell("a", "true")]
    """)
    write_job("b_good.py", """\
        j = job("good", [shell("a", "true")])
    """)
    result = harness.load()
    assert list(result.jobs) == ["good"]
    assert [str(p) for p in result.problems] == [
        "jobs/a_broken.py:2: syntax error: '(' was never closed; fix the file (other job files still load)"]


def test_problems_of_every_file_are_all_reported_in_file_order(harness, write_job):
    write_job("a.py", """\
        import surely_not_installed_pkg
    """)
    write_job("b.py", """\
        j = job("b", [shell("x", "true", after=["y"])])
    """)
    write_job("c.py", """\
        j = job("c", [shell("x", "true")], schedule="0 0 * *")
    """)
    write_job("d.py", """\
        j = job("d", [shell("x", "true")])
    """)
    result = harness.load()
    assert list(result.jobs) == ["d"]
    assert [p.file for p in result.problems] == ["jobs/a.py", "jobs/b.py", "jobs/c.py"]


TIMED_OUT = ("importing the file did not finish within 1s (a loop, or a call that waits, at import time?); do "
             "slow work such as connections and downloads inside a step, not at import; the file is not imported "
             "again until it changes (`stepline check` tries it now; STEPLINE_IMPORT_TIMEOUT sets the limit)")


def test_a_file_whose_import_loops_is_stopped_and_reported_at_its_line_and_others_load(harness, write_job,
                                                                                        monkeypatch):
    monkeypatch.setenv("STEPLINE_IMPORT_TIMEOUT", "1")
    write_job("a_good.py", 'g = job("g", [shell("a", "true")])\n')
    write_job("spin.py", """\
        while True: pass
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [f"jobs/spin.py:2: {TIMED_OUT}"]
    assert list(result.jobs) == ["g"]
    assert psutil.Process().children(recursive=True) == []  # its reader was stopped, not left spinning


def test_a_file_blocked_at_import_is_reported_and_not_imported_again_until_it_changes(harness, write_job,
                                                                                       monkeypatch):
    # A call that waits (a connection to a host that does not answer) cannot be stopped from outside; the
    # file is skipped until it changes rather than leaving one more waiting thread per reload.
    monkeypatch.setenv("STEPLINE_IMPORT_TIMEOUT", "1")
    counter = harness.root / "imports.txt"
    path = write_job("wait.py", f"""\
        import time
        with open({str(counter)!r}, "a") as f:
            f.write("x")
        time.sleep(3600)
    """)
    assert problems(harness) == [f"jobs/wait.py:5: {TIMED_OUT}"]
    assert problems(harness) == [f"jobs/wait.py:5: {TIMED_OUT}"]
    assert counter.read_text() == "x"  # imported once
    path.write_text(HEADER + 'w = job("w", [shell("a", "true")])\n')
    result = harness.load()
    assert list(result.jobs) == ["w"] and not result.problems


def test_a_file_with_no_job_says_how_to_add_one_or_mark_it_a_helper(harness, write_job):
    write_job("j.py", """\
        X = 1
    """)
    assert problems(harness) == [
        "jobs/j.py: defines no job; add `name = job(\"name\", [steps])` "
        "or start the file name with _ if it is a helper module"]


def test_files_starting_with_underscore_are_helpers_not_job_files(harness, write_job):
    write_job("_shared.py", "X = 1\n", header=False)
    write_job("j.py", """\
        from _shared import X
        j = job("j", [shell("a", f"echo {X}")])
    """)
    result = harness.load()
    assert result.problems == ()
    assert result.files == ("jobs/j.py",)


def test_missing_jobs_directory_says_how_to_point_at_one(harness, monkeypatch):
    from engine.loader import load_jobs
    result = load_jobs(harness.root / "nowhere")
    assert [str(p) for p in result.problems] == [
        "nowhere: jobs directory not found; pass --jobs DIR or set STEPLINE_JOBS"]
    (harness.root / "etl.py").write_text("")
    assert [str(p) for p in load_jobs(harness.root / "etl.py").problems] == [
        "etl.py: is a file, not the folder of job files; pass --jobs DIR or set STEPLINE_JOBS"]


# --- names --------------------------------------------------------------------------------

def test_duplicate_job_names_across_two_files_point_at_the_first(harness, write_job):
    write_job("a.py", """\
        j = job("nightly", [shell("a", "true")])
    """)
    write_job("b.py", """\

        j = job("nightly", [shell("b", "true")])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [
        "jobs/b.py:3: job 'nightly' is already defined at jobs/a.py:2; rename one of them"]
    assert result.jobs["nightly"].file.endswith("a.py")


def test_duplicate_job_names_within_one_file_are_reported_even_under_one_variable(harness, write_job):
    write_job("j.py", """\
        j = job("nightly", [shell("a", "true")])
        j = job("nightly", [shell("b", "true")])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [
        "jobs/j.py:3: job 'nightly' is already defined at line 2; rename one of them"]
    assert result.jobs["nightly"].step_names == ("a",)


def test_jobs_not_bound_to_a_name_still_load(harness, write_job):
    write_job("j.py", """\
        jobs = [job(f"sync_{region}", [shell("sync", f"echo {region}")]) for region in ("eu", "us")]
    """)
    result = harness.load()
    assert result.problems == ()
    assert list(result.jobs) == ["sync_eu", "sync_us"]


def test_a_job_made_by_a_helper_function_is_placed_where_the_job_file_calls_it(harness, write_job):
    write_job("_factory.py", """\
        from engine import job, shell

        def make(name, schedule):
            return job(name, [shell("a", "true")], schedule=schedule)
    """, header=False)
    write_job("j.py", """\
        from _factory import make

        j = make("j", schedule="each day")
    """)
    assert problems(harness) == [
        "jobs/j.py:4: job 'j': schedule 'each day' has 2 fields; a cron schedule has 5 "
        "(minute hour day-of-month month day-of-week) or is one of @hourly, @daily, @weekly, @monthly, @yearly"]


def test_duplicate_step_names_in_a_job_point_at_both(harness, write_job):
    write_job("j.py", """\
        a = shell("extract", "true")
        b = shell("extract", "false")
        j = job("j", [a, b])
    """)
    assert problems(harness) == [
        "jobs/j.py:3: step 'extract' appears twice in job 'j' (also at jobs/j.py:2); give one of them another name"]


def test_a_step_that_is_not_in_any_job_is_reported(harness, write_job):
    write_job("j.py", """\
        a = shell("a", "true")

        @step
        def forgotten():
            return 1

        j = job("j", [a])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [
        "jobs/j.py:4: step 'forgotten' is not part of any job; add it to a job's list of steps or remove it"]
    assert list(result.jobs) == ["j"]


def test_a_step_used_under_another_name_counts_as_used(harness, write_job):
    write_job("j.py", """\
        base = shell("base", "true")
        j = job("j", [base.with_name("first"), base.with_name("second")])
    """)
    assert problems(harness) == []


def test_a_plain_function_in_a_job_list_hints_at_forgetting_step(harness, write_job):
    write_job("j.py", """\
        def extract():
            return 1

        j = job("nightly", [extract])
        k = job("other", [shell("a", "true")])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [
        "jobs/j.py:5: job 'nightly': 'extract' in its steps is a plain function, not a step "
        "(did you forget @step on it?)"]
    assert list(result.jobs) == ["other"]


def test_a_string_in_a_job_list_says_to_list_steps(harness, write_job):
    write_job("j.py", """\
        j = job("j", ["extract"])
    """)
    assert problems(harness) == [
        "jobs/j.py:2: job 'j': 'extract' in its steps is not a step; list what @step or shell() returned"]


def test_a_job_without_steps_says_to_list_one(harness, write_job):
    write_job("j.py", """\
        j = job("j", [])
    """)
    assert problems(harness) == ["jobs/j.py:2: job 'j' has no steps; list at least one step"]


# --- dependencies -------------------------------------------------------------------------

def test_unknown_dependency_in_after_suggests_the_close_name(harness, write_job):
    write_job("j.py", """\
        extract = shell("extract", "true")
        transform = shell("transform", "true", after=["extract"])
        load = shell("load", "true", after=["transfrom"])
        nightly = job("nightly", [extract, transform, load])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [
        "jobs/j.py:4: step 'load' waits on 'transfrom', which is not a step of job 'nightly' "
        "(did you mean 'transform'?)"]
    assert result.jobs == {}


def test_unknown_dependency_by_parameter_name_suggests_the_close_name(harness, write_job):
    write_job("j.py", """\
        @step
        def extract():
            return [1]

        @step
        def transform(extarct):
            return extarct

        nightly = job("nightly", [extract, transform])
    """)
    assert problems(harness) == [
        "jobs/j.py:6: step 'transform' takes a parameter 'extarct', which is not a step of job 'nightly' "
        "(did you mean 'extract'?); a parameter names an upstream step, or is `params` or `context`, "
        "or has a default"]


def test_parameters_params_context_and_defaults_are_not_dependencies(harness, write_job):
    write_job("j.py", """\
        @step
        def a(params, context, limit=10):
            return limit

        j = job("j", [a])
    """)
    assert problems(harness) == []


def test_a_cycle_of_three_is_printed_with_arrows_in_dependency_order(harness, write_job):
    write_job("j.py", """\
        a = shell("a", "true", after=["c"])
        b = shell("b", "true", after=["a"])
        c = shell("c", "true", after=["b"])
        j = job("j", [a, b, c])
    """)
    assert problems(harness) == [
        "jobs/j.py:2: job 'j' has a cycle: a → b → c → a (each step waits on the one before it); "
        "remove one of these dependencies"]


def test_a_cycle_through_parameters_starts_at_its_first_step_in_the_file(harness, write_job):
    write_job("j.py", """\
        start = shell("start", "true")

        @step
        def b(c):
            return c

        @step
        def c(b):
            return b

        j = job("j", [start, c, b])
    """)
    assert problems(harness) == [
        "jobs/j.py:8: job 'j' has a cycle: c → b → c (each step waits on the one before it); "
        "remove one of these dependencies"]


def test_a_step_waiting_on_itself_says_to_remove_it(harness, write_job):
    write_job("j.py", """\
        a = shell("a", "true", after=["a"])
        j = job("j", [a])
    """)
    assert problems(harness) == ["jobs/j.py:2: step 'a' waits on itself; remove 'a' from its after="]


def test_a_step_with_a_parameter_named_after_itself_is_reported(harness, write_job):
    write_job("j.py", """\
        @step
        def a(a):
            return a

        j = job("j", [a])
    """)
    assert problems(harness) == [
        "jobs/j.py:2: step 'a' takes a parameter named after itself, so it would wait on itself; "
        "rename the parameter or give it a default"]


def test_after_accepts_step_objects_as_well_as_names(harness, write_job):
    write_job("j.py", """\
        a = shell("a", "true")
        b = shell("b", "true", after=[a])
        j = job("j", [a, b])
    """)
    result = harness.load()
    assert result.problems == ()
    assert result.jobs["j"].dependencies(result.jobs["j"].step("b")) == ("a",)


# --- schedules ----------------------------------------------------------------------------

@pytest.mark.parametrize("schedule, message", [
    ("0 6 * *", "schedule '0 6 * *' has 4 fields; a cron schedule has 5 (minute hour day-of-month month "
                "day-of-week) or is one of @hourly, @daily, @weekly, @monthly, @yearly"),
    ("0 25 * * *", "schedule '0 25 * * *': hour 25 is out of range 0-23"),
    ("0 6 * * 8", "schedule '0 6 * * 8': day of week 8 is out of range 0-7 (0 and 7 are Sunday)"),
    ("@sometimes", "schedule '@sometimes' is not a known alias; use one of @hourly, @daily, @weekly, "
                   "@monthly, @yearly or a 5-field cron expression"),
    ("*/0 * * * *", "schedule '*/0 * * * *': the step in '*/0' must be 1 or more"),
    ("0 6 * * 5-1", "schedule '0 6 * * 5-1': the range '5-1' runs backwards; write the smaller value first"),
    ("0 6 * * x", "schedule '0 6 * * x': the day of week field has 'x', which is not a number or a name in 0-7"),
    ("0 0 31 2 *", "schedule '0 0 31 2 *' never fires (no date matches its day and month, such as 31 February); "
                   "fix the day or the month"),
])
def test_a_bad_cron_schedule_says_what_is_wrong_with_it(harness, write_job, schedule, message):
    write_job("j.py", f"""\
        j = job("nightly", [shell("a", "true")], schedule={schedule!r})
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [f"jobs/j.py:2: job 'nightly': {message}"]
    assert result.jobs == {}


def test_a_bad_time_zone_suggests_the_close_name(harness, write_job):
    write_job("j.py", """\
        j = job("nightly", [shell("a", "true")], schedule="0 6 * * *", timezone="Europe/Berln")
    """)
    assert problems(harness) == [
        "jobs/j.py:2: job 'nightly': unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)"]


def test_a_bad_time_zone_and_a_bad_schedule_are_both_reported(harness, write_job):
    write_job("j.py", """\
        j = job("nightly", [shell("a", "true")], schedule="0 6 * * 9", timezone="Mars/Olympus")
    """)
    assert problems(harness) == [
        "jobs/j.py:2: job 'nightly': unknown time zone 'Mars/Olympus' (use an IANA name such as 'Europe/Berlin')",
        "jobs/j.py:2: job 'nightly': schedule '0 6 * * 9': day of week 9 is out of range 0-7 (0 and 7 are Sunday)"]


def test_a_bad_interval_shows_how_to_write_one(harness, write_job):
    write_job("j.py", """\
        j = job("poll", [shell("a", "true")], every="15 minutes")
    """)
    assert problems(harness) == [
        "jobs/j.py:2: job 'poll': every='15 minutes' is not an interval; write a number and a unit, "
        "such as '30s', '15m', '2h' or '1d'"]


def test_schedule_and_every_together_is_a_problem_and_other_jobs_of_the_file_still_load(harness, write_job):
    write_job("j.py", """\
        j = job("both", [shell("a", "true")], schedule="@daily", every="1h")
        k = job("fine", [shell("a", "true")], schedule="@daily")
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [
        "jobs/j.py:2: job 'both': schedule= (cron) and every= (interval) are both given; keep one of them"]
    assert list(result.jobs) == ["fine"]


# --- step options -------------------------------------------------------------------------

def test_step_options_reach_the_definition(harness, write_job):
    write_job("j.py", """\
        @step(retries=3, retry_delay=5, backoff=True, jitter=0.2, timeout=600, pool="warehouse",
              env={"MODE": 1}, cwd="work")
        def extract():
            return 1

        j = job("j", [extract])
    """)
    result = harness.load()
    assert result.problems == ()
    extract = result.jobs["j"].step("extract")
    assert (extract.retries, extract.retry_delay_s, extract.backoff, extract.jitter) == (3, 5.0, 2.0, 0.2)
    assert (extract.timeout_s, extract.pool, dict(extract.env), extract.cwd) == (
        600.0, "warehouse", {"MODE": "1"}, "work")
    assert extract.file.endswith("/jobs/j.py") and extract.line == 2


@pytest.mark.parametrize("option, message", [
    ("retries=-1", "retries must be a whole number of extra attempts (0 or more), got -1"),
    ("retries=1.5", "retries must be a whole number of extra attempts (0 or more), got 1.5"),
    ("retry_delay='5s'", "retry_delay must be a number of seconds (0 or more), got '5s'"),
    ("timeout=0", "timeout must be a number of seconds more than 0 (leave it out for no limit), got 0"),
    ("timeout=-5", "timeout must be a number of seconds more than 0 (leave it out for no limit), got -5"),
    ("jitter=2", "jitter is the fraction of the delay added at random and must be between 0 and 1 "
                 "(True means 0.5), got 2"),
    ("backoff=0.5", "backoff multiplies the delay before each further retry and must be 1 or more "
                    "(True means 2), got 0.5"),
    ("env=['A=1']", "env must be a dict of NAME: value, got list ['A=1']"),
    ("env={'A': 1, 'B': None}", "env 'B' is None; give it a value (numbers become text), or leave the name out"),
    ("pool=''", "pool must be a non-empty name, got ''"),
    ("after=[3]", "after must be a list of step names, got 3 in it"),
    ("retry=2", "there is no option 'retry' (did you mean 'retries'?)"),
    ("retry_delay=float('inf')", "retry_delay must be a number of seconds (0 or more), got inf"),
    ("max_retry_delay=1e308", "max_retry_delay can be at most a year (31622400 seconds), got 1e+308"),
    ("timeout=float('nan')", "timeout must be a number of seconds more than 0 (leave it out for no limit), got nan"),
    ("timeout=10 ** 12", "timeout can be at most a year (31622400 seconds), got 1000000000000"),
    ("backoff=float('inf')", "backoff multiplies the delay before each further retry and must be 1 or more (True "
                             "means 2), got inf"),
])
def test_a_bad_step_option_is_reported_at_the_step(harness, write_job, option, message):
    write_job("j.py", f"""\
        a = shell("a", "true")

        @step({option})
        def extract():
            return 1

        j = job("j", [a, extract])
        k = job("k", [shell("b", "true")])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [f"jobs/j.py:4: step 'extract': {message}"]
    assert list(result.jobs) == ["k"]


@pytest.mark.parametrize("definition, message", [
    ("async def extract():\n            return 1",
     "a step cannot be an async function (its result would be a coroutine, never run); write a plain def that "
     "calls asyncio.run(...)"),
    ("def extract():\n            yield 1",
     "a step cannot be a generator function (it yields, and a generator cannot be kept as an output); return the "
     "values instead, e.g. as a list"),
])
def test_a_step_function_that_cannot_give_a_value_is_reported(harness, write_job, definition, message):
    # Both passed `check` and failed every run: "cannot pickle 'coroutine' object".
    write_job("j.py", f"""\
        a = shell("a", "true")

        @step
        {definition}

        j = job("j", [a, extract])
        k = job("k", [shell("b", "true")])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [f"jobs/j.py:4: step 'extract': {message}"]
    assert list(result.jobs) == ["k"]


@pytest.mark.parametrize("name, given", [("params", "the run parameters"), ("context", "the step's StepContext")])
def test_a_step_named_like_a_reserved_parameter_is_reported(harness, write_job, name, given):
    # A downstream `def use(params)` would get the run parameters, never this step's output.
    write_job("j.py", f"""\
        {name} = shell({name!r}, "true")
        j = job("j", [{name}])
    """)
    assert problems(harness) == [f"jobs/j.py:2: step '{name}': a step cannot be named '{name}': a parameter of that "
                                 f"name receives {given}, not a step's output; rename the step"]


def test_a_step_reused_from_another_job_file_is_not_a_duplicate_job(harness, write_job):
    # b.py imports a.py to reuse its step: a.py's job must load from a.py alone, not once more from b.py.
    write_job("a.py", """\
        @step
        def shared():
            return 1

        ja = job("ja", [shared])
    """)
    write_job("b.py", """\
        from a import shared

        jb = job("jb", [shared, shell("t", "true", after=["shared"])])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == []
    assert sorted(result.jobs) == ["ja", "jb"]
    run = harness.run_now("jb")
    assert run.state == "succeeded" and run.step("shared").output_preview == "1"


def test_two_upstream_steps_a_shell_step_would_read_as_one_variable_are_reported(harness, write_job):
    write_job("j.py", """\
        a1 = shell("a-b", "true")
        a2 = shell("a_b", "true")
        use = shell("use", "echo $STEPLINE_IN_A_B", after=["a-b", "a_b"])
        j = job("j", [a1, a2, use])
    """)
    assert problems(harness) == [
        "jobs/j.py:4: steps 'a-b' and 'a_b' both reach shell step 'use' as $STEPLINE_IN_A_B, so one output would "
        "hide the other; rename one of them"]


def test_a_job_or_step_without_a_name_leaves_the_files_other_jobs_loading(harness, write_job):
    write_job("j.py", """\
        a = job("", [shell("s1", "true")])
        b = job("b", [shell("", "true")])
        good = job("good", [shell("s2", "true")])
    """)
    result = harness.load()
    assert [str(p) for p in result.problems] == [
        "jobs/j.py:2: job '<job at line 2>': job() needs a name as its first argument, got ''",
        "jobs/j.py:3: step '<shell step at line 3>': shell() needs a step name as its first argument, got ''"]
    assert list(result.jobs) == ["good"]


def test_a_name_too_long_for_a_file_name_is_reported_shortened(harness, write_job):
    write_job("j.py", """\
        j = job("j", [shell("é" * 101, "true")])
    """)
    assert problems(harness) == [
        f"jobs/j.py:2: step '{'é' * 28}…{'é' * 28}': the step name 'ééé…ééé' is 202 bytes long; a name can be at "
        "most 200 (it is part of file names in the home)"]


def test_every_bad_option_of_a_shell_step_is_reported(harness, write_job):
    write_job("j.py", """\
        a = shell("a", "true", retries=-1, timeout=0)
        j = job("j", [a])
    """)
    assert problems(harness) == [
        "jobs/j.py:2: step 'a': retries must be a whole number of extra attempts (0 or more), got -1",
        "jobs/j.py:2: step 'a': timeout must be a number of seconds more than 0 (leave it out for no limit), got 0"]


def test_a_bad_step_shared_by_two_jobs_is_reported_once(harness, write_job):
    write_job("j.py", """\
        a = shell("a", "true", retries=-1)
        j = job("j", [a])
        k = job("k", [a])
    """)
    assert problems(harness) == [
        "jobs/j.py:2: step 'a': retries must be a whole number of extra attempts (0 or more), got -1"]


def test_an_empty_shell_command_is_reported(harness, write_job):
    write_job("j.py", """\
        j = job("j", [shell("a", "  ")])
    """)
    assert problems(harness) == ["jobs/j.py:2: step 'a': the command must be a non-empty string, got '  '"]


def test_a_step_or_job_name_that_would_be_a_path_is_reported_and_other_jobs_still_load(harness, write_job):
    # A step's name is part of its log and output file names: "../x" would write outside its run's folder.
    write_job("j.py", """\
        @step(name="../../escape")
        def escape():
            return 1

        fine = job("fine", [shell("zähle", "echo hi")])
        bad = job("nightly/eu", [escape, shell("a\\tb", "echo hi")])
    """)
    def rule(what: str) -> str:
        return (f"cannot be '.' or '..' or contain '/', '\\' or control characters ({what} names are part of file "
                "names in the home); use letters, digits, '_' or '-'")

    assert problems(harness) == [
        f"jobs/j.py:7: job 'nightly/eu': the job name 'nightly/eu' {rule('job')}",
        f"jobs/j.py:2: step '../../escape': the step name '../../escape' {rule('step')}",
        f"jobs/j.py:7: step 'a\tb': the step name 'a\\tb' {rule('step')}"]
    assert list(harness.load().jobs) == ["fine"]


# --- reloading ----------------------------------------------------------------------------

def test_a_file_rewritten_at_once_is_loaded_from_its_new_source(harness, write_job):
    write_job("j.py", 'j = job("aaaa", [shell("a", "true")])\n')
    assert list(harness.load().jobs) == ["aaaa"]
    write_job("j.py", 'j = job("bbbb", [shell("a", "true")])\n')  # same size, same second
    assert list(harness.load().jobs) == ["bbbb"]


# --- graph helpers ------------------------------------------------------------------------

def test_find_cycle_returns_nothing_for_a_dag():
    assert find_cycle({"a": (), "b": ("a",), "c": ("a", "b")}) == []


def test_find_cycle_ignores_unknown_upstream_names():
    assert find_cycle({"a": ("ghost",), "b": ("a",)}) == []


def _job(**after: tuple[str, ...]) -> JobDef:
    from engine.definition import StepDef
    return JobDef(name="j", steps=tuple(StepDef(name=n, command="true", after=a) for n, a in after.items()))


def test_topological_order_keeps_file_order_when_it_is_already_valid():
    assert topological_order(_job(a=(), b=("a",), c=())) == ["a", "b", "c"]


def test_topological_order_moves_a_step_only_as_far_as_its_dependencies_need():
    assert topological_order(_job(load=("transform",), extract=(), transform=("extract",), report=())) == [
        "extract", "transform", "load", "report"]


def test_topological_order_keeps_file_order_for_independent_steps():
    assert topological_order(_job(z=(), y=(), x=())) == ["z", "y", "x"]


def test_a_reader_stuck_in_a_file_ends_when_the_process_loading_dies(harness, write_job):
    # A daemon killed with `kill -9` while a file's import waits must not leave the import waiting for ever.
    write_job("wait.py", """\
        import time
        time.sleep(3600)
    """)
    loading = subprocess.Popen([sys.executable, "-c", "import sys; from engine.loader import load_jobs; "
                                f"load_jobs({str(harness.jobs_dir)!r})"],
                               env={**os.environ, "PYTHONPATH": ROOT}, start_new_session=True)
    try:
        wait_until(lambda: [p for p in psutil.Process(loading.pid).children() if "engine.reader" in p.cmdline()])
        (reader,) = psutil.Process(loading.pid).children()
        loading.kill()
        loading.wait()
        wait_until(lambda: not reader.is_running() or reader.status() == psutil.STATUS_ZOMBIE)
    finally:
        loading.kill()


def test_job_files_named_like_standard_modules_hide_nothing_and_import_in_their_folder(harness, write_job,
                                                                                     tmp_path, monkeypatch):
    # A job file called random.py or csv.py is imported by its path; the other files' `import random` and
    # `import csv` still mean Python's own modules, at load time and in the steps. A file reads a path
    # relative to its folder at import, wherever stepline was started.
    write_job("random.py", 'shadow = job("shadow", [shell("s", "echo hi")])\n')
    write_job("csv.py", 'not_csv = job("not_csv", [shell("s", "echo hi")])\n')
    (harness.jobs_dir / "header.txt").write_text("id,total\n")
    write_job("report.py", """
        import csv
        import io
        import random

        HEADER = open("header.txt").read().strip()

        @step
        def row():
            out = io.StringIO()
            csv.writer(out).writerow([HEADER, random.Random(1).randint(1, 9)])
            return out.getvalue().strip()

        report = job("report", [row])
    """)
    monkeypatch.chdir(tmp_path)
    result = harness.load()
    assert [str(p) for p in result.problems] == []
    assert sorted(result.jobs) == ["not_csv", "report", "shadow"]
    assert harness.run_now("report").step("row").output_preview == "'\"id,total\",3'"
