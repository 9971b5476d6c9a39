"""The `stepline` command line, run as a real process against a real home."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time

import psutil
import pytest

from engine import query, store
from engine.executor import ENGINE_VARIABLE, WATCHDOG
from engine.home import is_disk_full
from tests.conftest import wait_until

FAILING = """
@step
def extract():
    print("extracting 3 rows")
    return [1, 2, 3]

@step
def check(extract):
    raise ValueError(f"row {extract[0]} is invalid")

report = shell("report", "echo report", after=["check"])
j = job("j", [extract, check, report], schedule="0 6 * * 1-5", timezone="Europe/Berlin")
"""


def test_run_streams_states_and_exits_1_when_the_run_fails(harness):
    harness.write_job("j.py", FAILING)
    result = harness.cli("run", "j")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any("extract" in line and "running" in line for line in lines)
    assert any("check" in line and "failed" in line and "ValueError: row 1 is invalid" in line for line in lines)
    assert any("report" in line and "upstream_failed" in line for line in lines)
    assert "next: stepline logs 1 check   ·   stepline retry 1" in result.stdout


def test_run_exits_0_when_the_run_succeeds_and_params_reach_the_steps(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo day=$STEPLINE_PARAM_DAY")])\n')
    result = harness.cli("run", "j", "-p", "day=2026-11-27", check=True)
    assert "succeeded" in result.stdout
    logs = harness.cli("logs", "1", "a", check=True)
    assert logs.stdout.rstrip().endswith("day=2026-11-27")
    assert logs.stdout[:4].isdigit() and "Z " in logs.stdout  # each line starts with its UTC timestamp


def test_show_json_has_the_documented_shape(harness):
    harness.write_job("j.py", FAILING)
    harness.cli("run", "j")
    document = json.loads(harness.cli("show", "1", "--json", check=True).stdout)
    assert set(document) == {"run", "steps"}
    assert document["run"]["id"] == 1 and document["run"]["state"] == "failed"
    assert document["run"]["reason"] == "step 'check' failed"
    assert [s["name"] for s in document["steps"]] == ["extract", "check", "report"]
    check = document["steps"][1]
    assert check["state"] == "failed" and check["attempt_count"] == 1
    assert check["reason"]["summary"] == "ValueError: row 1 is invalid"
    assert 'raise ValueError(f"row {extract[0]} is invalid")' in check["reason"]["detail"]
    (attempt,) = check["attempts"]
    assert attempt["exit_code"] == 1 and attempt["number"] == 1 and attempt["peak_rss_bytes"] > 0
    assert attempt["started_at"].endswith("Z")
    assert document["steps"][0]["output_preview"] == "[1, 2, 3]"
    assert document["steps"][2]["state"] == "upstream_failed"


def test_runs_json_lists_newest_first_and_filters(harness):
    harness.write_job("j.py", FAILING)
    harness.write_job("ok.py", 'ok = job("ok", [shell("a", "true")])\n')
    harness.cli("run", "j")
    harness.cli("run", "ok", check=True)
    everything = json.loads(harness.cli("runs", "--json", check=True).stdout)["runs"]
    assert [(r["id"], r["job"], r["state"]) for r in everything] == [(2, "ok", "succeeded"), (1, "j", "failed")]
    failed = json.loads(harness.cli("runs", "--status", "failed", "--json", check=True).stdout)["runs"]
    assert [r["id"] for r in failed] == [1]


def test_runs_says_how_many_it_left_out_and_pages_with_before(harness):
    harness.write_job("ok.py", 'ok = job("ok", [shell("a", "true")])\n')
    for _ in range(3):
        harness.cli("run", "ok", check=True)
    page = harness.cli("runs", "--limit", "2", check=True).stdout.splitlines()
    assert [line.split()[0] for line in page[1:3]] == ["3", "2"]
    assert page[3] == "2 of 3 runs; older ones: `stepline runs --before 2` (or --limit N)"
    rest = harness.cli("runs", "--before", "2", check=True).stdout.splitlines()
    assert [line.split()[0] for line in rest[1:]] == ["1"]  # all of them: no line about more
    document = json.loads(harness.cli("runs", "--limit", "2", "--json", check=True).stdout)
    assert ([r["id"] for r in document["runs"]], document["total"], document["next_before"]) == ([3, 2], 3, 2)
    last = json.loads(harness.cli("runs", "--before", "2", "--json", check=True).stdout)
    assert ([r["id"] for r in last["runs"]], last["total"], last["next_before"]) == ([1], 3, None)
    assert harness.cli("runs", "--job", "okk", check=True).stdout.strip() == (
        "no runs match (no job 'okk' is known here; did you mean 'ok'?)")
    assert harness.cli("runs", "--job", "ok", "--status", "failed", check=True).stdout.strip() == "no runs match"


def test_retry_reruns_the_failed_steps_in_the_same_run_reusing_outputs(harness):
    path = harness.write_job("j.py", FAILING)
    harness.cli("run", "j")
    path.write_text(path.read_text().replace('raise ValueError(f"row {extract[0]} is invalid")',
                                             'return sum(extract)'))
    result = harness.cli("retry", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "retrying check, report in run 1" in result.stdout
    run = query.get_run(1)
    assert run.state == "succeeded"
    assert [(s.name, s.attempts) for s in run.steps] == [("extract", 1), ("check", 2), ("report", 1)]
    assert run.step("check").output_preview == "6"


def test_check_of_a_folder_without_job_files_fails(harness):
    # `stepline check` as a CI gate pointed at the wrong folder must not pass.
    result = harness.cli("check")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"no job files in {harness.jobs_dir}: nothing to check; pass --jobs DIR (or set "
                                     "STEPLINE_JOBS) to the folder of your job files")


@pytest.mark.parametrize("value, colored", [("1", False), ("", True)])
def test_no_color_counts_only_when_set_to_something(monkeypatch, value, colored):
    # no-color.org: "when present and not an empty string".
    from cli import render

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("NO_COLOR", value)
    assert render.use_color(Terminal()) is colored  # type: ignore[arg-type]


def test_a_mistyped_param_of_a_job_that_declares_its_params_is_refused(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo $STEPLINE_PARAM_REGION")], params={"region": "emea"})\n'
                              'free = job("free", [shell("a", "echo $STEPLINE_PARAM_ANY")])\n')
    result = harness.cli("run", "j", "-p", "regoin=apac")
    assert result.returncode == 2
    assert result.stderr.strip() == ("stepline: -p regoin: job 'j' has no parameter 'regoin' (did you mean 'region'?); "
                                     "its parameters are region (declared by params= at jobs/j.py:2)")
    assert json.loads(harness.cli("runs", "--json").stdout)["runs"] == []  # nothing ran
    assert harness.cli("run", "j", "-p", "region=apac").returncode == 0
    assert harness.cli("run", "free", "-p", "any=1").returncode == 0  # declares none: takes any key


def test_tables_line_up_by_terminal_cells_with_wide_and_combining_characters():
    # A step named 集計 takes four columns on a terminal, not two; é written as e + a combining accent, one.
    from cli import render

    text = render.table(["step", "state"], [["集計", "succeeded"], ["load", "failed"], ["re\u0301sume\u0301", "ok"]])
    lines = text.splitlines()
    assert lines == ["STEP    STATE", "集計    succeeded", "load    failed", "re\u0301sume\u0301  ok"]
    assert {render.cell_width(line[:line.rindex(" ") + 1]) for line in lines} == {8}


def test_pause_of_a_job_without_a_schedule_says_there_is_nothing_to_pause(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    result = harness.cli("pause", "j")
    assert result.returncode == 1
    assert result.stderr.strip() == "stepline: job 'j' has no schedule to pause; it runs only when triggered"


def test_check_lists_every_problem_and_exits_1(harness, monkeypatch):
    harness.write_job("good.py", 'good = job("good", [shell("a", "true")])\n')
    harness.write_job("bad.py", 'a = shell("a", "true", after=["nope"])\nbad = job("bad", [a])\n')
    harness.write_job("syntax.py", "def broken(:\n", header=False)
    result = harness.cli("check")
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert "jobs/bad.py:2: step 'a' waits on 'nope', which is not a step of job 'bad'" in errors
    assert any(line.startswith("jobs/syntax.py:1: syntax error") for line in errors)
    assert errors[-1].startswith("2 problems in ") and errors[-1].endswith("1 job OK")
    as_json = harness.cli("check", "--json")  # for CI: the same verdict, as one document
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert (document["ok"], document["jobs"]) == (False, ["good"])
    assert {"file": str(harness.jobs_dir / "bad.py"), "line": 2,
            "message": "step 'a' waits on 'nope', which is not a step of job 'bad'"} in document["problems"]
    assert len(document["files"]) == 3


def test_check_survives_a_job_file_that_crashes_or_exits_at_import(harness):
    harness.write_job("a_crash.py", "import ctypes\nctypes.string_at(0)\n", header=False)
    harness.write_job("b_exit.py", "import os\nos._exit(0)\n", header=False)
    harness.write_job("c_good.py", 'good = job("good", [shell("a", "true")])\n')
    result = harness.cli("check")
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert errors[0].startswith("jobs/a_crash.py:2: importing the file crashed the process importing it (SIGSEGV")
    assert errors[1].startswith("jobs/b_exit.py:2: the file calls os._exit(0) at import")
    assert errors[-1].startswith("2 problems in ") and errors[-1].endswith("1 job OK")
    assert [j["name"] for j in json.loads(harness.cli("jobs", "--json").stdout)["jobs"]] == ["good"]


def test_a_command_waiting_on_a_slow_import_names_the_file(harness):
    # Otherwise `stepline run hello` waits up to the import timeout in silence for an unrelated file.
    harness.write_job("good.py", 'hello = job("hello", [shell("a", "true")])\n')
    harness.write_job("slow.py", "import time\ntime.sleep(3600)\n")
    result = harness.cli("run", "hello", env={"STEPLINE_IMPORT_TIMEOUT": "5"})
    assert result.returncode == 0
    assert result.stderr.splitlines()[0] == ("stepline: importing jobs/slow.py is taking long; waiting up to 5s for "
                                             "it (STEPLINE_IMPORT_TIMEOUT)")


def test_jobs_still_lists_the_good_jobs_when_a_file_is_broken(harness):
    harness.write_job("j.py", FAILING)
    harness.write_job("syntax.py", "def broken(:\n", header=False)
    result = harness.cli("jobs")
    assert result.returncode == 0
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("j ")]
    assert "0 6 * * 1-5" in row and ("CET" in row or "CEST" in row) and "(in " in row
    assert "jobs/syntax.py:1: syntax error" in result.stderr
    assert ("no engine runs this home now: the fires above happen only while `stepline daemon` (or `stepline up`) "
            "runs") in result.stderr
    document = json.loads(harness.cli("jobs", "--json").stdout)
    assert [j["name"] for j in document["jobs"]] == ["j"]
    assert document["jobs"][0]["steps"] == ["extract", "check", "report"]
    # JSON names files the same from any working directory: scripts run from cron's $HOME compare them.
    assert document["problems"][0]["file"] == str(harness.jobs_dir / "syntax.py")
    assert document["jobs"][0]["file"] == str(harness.jobs_dir / "j.py")


def test_run_lines_up_the_states_of_long_step_names(harness):
    harness.write_job("j.py", """
        j = job("j", [shell("total_americas_and_more", "true"), shell("b", "true", after=["total_americas_and_more"])])
    """)
    lines = [line for line in harness.cli("run", "j").stdout.splitlines() if line.endswith(("attempt 1", "ms"))
             and " took " not in line]
    assert len(lines) == 4
    assert len({line.index("running") if "running" in line else line.index("succeeded") for line in lines}) == 1


def test_logs_tail_prints_the_last_lines_of_each_log(harness):
    harness.write_job("j.py", """
        j = job("j", [shell("count", "seq 1 5000"), shell("quiet", "true", after=["count"])])
    """)
    harness.cli("run", "j")
    last = harness.cli("logs", "1", "count", "-n", "2").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in last] == ["4999", "5000"]
    both = harness.cli("logs", "1", "--tail", "1").stdout.splitlines()
    assert both[0] == "== count (attempt 1) ==" and both[1].endswith("Z 5000")
    assert both[2:] == ["== quiet (attempt 1) ==", "(no output)"]
    assert len(harness.cli("logs", "1", "count").stdout.splitlines()) == 5000


def test_retry_while_the_job_file_is_broken_is_refused_and_loses_nothing(harness):
    path = harness.write_job("j.py", FAILING)
    harness.cli("run", "j")
    good = path.read_text()
    path.write_text(good + "\ndef broken(:\n")
    refused = harness.cli("retry", "1", "extract")
    assert refused.returncode == 1
    assert refused.stderr.startswith("stepline: job 'j' of run 1 does not load from jobs/j.py now (jobs/j.py:")
    assert refused.stderr.rstrip().endswith("fix the file, then retry: its steps would run the broken file")
    assert query.get_run(1).step("extract").output_preview == "[1, 2, 3]"  # untouched
    path.write_text(good.replace('job("j"', 'job("j_v2"'))  # renamed: the run's job is gone from the file
    renamed = harness.cli("retry", "1", "extract")
    assert renamed.returncode == 1
    assert renamed.stderr.startswith("stepline: job 'j' of run 1 is no longer defined in jobs/j.py (renamed? the "
                                     "file defines 'j_v2')")
    assert query.get_run(1).state == "failed" and query.get_run(1).step("extract").state == "succeeded"
    path.write_text(good)
    assert "retrying extract, check, report in run 1" in harness.cli("retry", "1", "extract").stdout


def test_run_of_a_job_whose_file_is_broken_cites_that_files_problem(harness):
    harness.write_job("aaa_helpers.py", "def broken(:\n", header=False)
    harness.write_job("nightly.py", 'nightly = job("nightly", [shell("a", "true")]\n')  # ) missing
    result = harness.cli("run", "nightly")
    assert result.returncode == 1
    assert result.stderr.startswith("stepline: job 'nightly' cannot run: jobs/nightly.py:"), result.stderr


def test_jobs_shows_each_jobs_description(harness):
    harness.write_job("j.py", """
        a = shell("a", "true")
        described = job("described", [a], description="Load the nightly orders into the warehouse")
        plain = job("plain", [shell("b", "true")])
    """)
    lines = harness.cli("jobs").stdout.splitlines()
    assert lines[0].split() == ["JOB", "STEPS", "SCHEDULE", "NEXT", "FIRE", "LAST", "RUN", "DESCRIPTION"]
    assert lines[1].startswith("described ") and lines[1].endswith("  Load the nightly orders into the warehouse")
    assert lines[2].startswith("plain ") and lines[2].endswith("  -")
    listed = json.loads(harness.cli("jobs", "--json").stdout)["jobs"]
    assert [j["description"] for j in listed] == ["Load the nightly orders into the warehouse", ""]


def test_jobs_in_a_missing_folder_says_the_folder_is_missing_not_to_write_a_job(harness):
    result = harness.cli("--jobs", str(harness.root / "nowhere"), "jobs")
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "nowhere: jobs directory not found; pass --jobs DIR or set STEPLINE_JOBS",  # relative to the current folder
        "1 problem(s) in job files; `stepline check` lists them"]
    harness.jobs_dir.mkdir(exist_ok=True)
    empty = harness.cli("jobs")
    assert empty.stdout.strip() == f"no jobs in {harness.jobs_dir}; write one (see docs/jobs.md) or pass --jobs DIR"


def test_retry_of_a_run_whose_job_file_is_gone_says_so(harness):
    path = harness.write_job("j.py", FAILING)
    harness.cli("run", "j")
    path.rename(harness.root / "j.py.moved")
    result = harness.cli("retry", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"stepline: run 1's job file {path} is gone (moved or deleted); put it back to "
                                     "retry this run, or start a new run of job 'j' from its new file")


def test_unknown_names_get_one_clear_line(harness):
    harness.write_job("j.py", FAILING)
    unknown_job = harness.cli("run", "jj")
    assert unknown_job.returncode == 1
    assert unknown_job.stderr.strip() == (f"stepline: no job 'jj' in {harness.jobs_dir} (did you mean 'j'?); "
                                          "`stepline jobs` lists them")
    unknown_run = harness.cli("show", "42")
    assert unknown_run.returncode == 1
    assert unknown_run.stderr.strip() == "stepline: run 42 does not exist; `stepline runs` lists the runs"
    harness.cli("run", "j")
    unknown_step = harness.cli("logs", "1", "chek")
    assert unknown_step.stderr.strip() == ("stepline: run 1 has no step 'chek' (did you mean 'check'?); "
                                           "its steps are: extract, check, report")


def test_usage_errors_exit_2(harness):
    harness.write_job("j.py", FAILING)
    bad_param = harness.cli("run", "j", "-p", "novalue")
    assert bad_param.returncode == 2
    assert bad_param.stderr.strip() == ("stepline: -p 'novalue': write parameters as key=value, "
                                        "e.g. -p day=2026-11-27")
    assert harness.cli("show", "not-a-number").returncode == 2
    assert harness.cli("frobnicate").returncode == 2


def test_an_unusable_state_directory_is_named_in_one_line(harness, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    result = harness.cli("runs", env={"STEPLINE_HOME": str(blocker)})
    assert result.returncode == 1
    assert result.stderr.strip() == (f"stepline: state directory {blocker} is a file, not a directory; "
                                     "pass --home DIR (or set STEPLINE_HOME) to a directory")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "stepline.db").write_bytes(b"this is not sqlite" * 100)
    result = harness.cli("runs", env={"STEPLINE_HOME": str(corrupt)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"stepline: {corrupt / 'stepline.db'} is not a usable stepline database")


def test_a_database_damaged_past_its_schema_is_a_clear_error(harness):
    # The file opens and its schema reads; the damage shows only when the pages of the runs are read.
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    for _ in range(12):
        harness.cli("run", "j", check=True)
    path = harness.home.database
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = os.path.getsize(path) // 4096
    with open(path, "r+b") as handle:
        handle.seek(4096 * (pages // 2))
        handle.write(b"\xff" * 4096 * (pages - pages // 2))
    result = harness.cli("runs")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (f"stepline: {path} is not a usable stepline database (database disk image is "
                                     "malformed); move it aside and stepline will start a new one")


def test_a_job_file_that_prints_or_changes_directory_at_import_disturbs_no_command(harness):
    # Its print goes to stderr, so --json stays JSON; its chdir moves neither a relative --home nor --jobs.
    harness.write_job("noisy.py", """
        import os
        print("loading noisy.py")
        os.chdir("/")
        j = job("j", [shell("a", "true")])
    """)
    where = ["--home", "relative-home", "--jobs", os.path.relpath(harness.jobs_dir, harness.root)]
    listed = harness.cli(*where, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [entry["name"] for entry in json.loads(listed.stdout)["jobs"]] == ["j"]
    assert "loading noisy.py" in listed.stderr
    ran = harness.cli(*where, "run", "j", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["run"]["state"] == "succeeded"
    assert (harness.root / "relative-home" / "stepline.db").exists()


def test_run_says_when_a_failed_step_is_retried_and_why(harness):
    harness.write_job("j.py", """
        @step(retries=1, retry_delay=0.2)
        def flaky(context):
            if context.attempt == 1:
                raise RuntimeError("fail 1")

        j = job("j", [flaky])
    """)
    result = harness.cli("run", "j")
    assert result.returncode == 0, result.stderr
    assert any(re.search(r"flaky +waiting +retry 1/1 at \d\d:\d\d:\d\d \(last attempt: RuntimeError: fail 1\)$", line)
               for line in result.stdout.splitlines()), result.stdout


def test_show_gives_a_shell_steps_peak_memory_only_when_it_is_known(harness):
    # A shell step's process inherits the engine's own high-water mark of memory (vfork + exec): `echo`
    # must not be shown with the engine's 30-odd MB, while a step that uses more shows what it used.
    harness.write_job("j.py", """
        small = shell("small", "echo hi")
        big = shell("big", "python3 -c 'data = bytearray(b\\"x\\" * 150_000_000)'")
        j = job("j", [small, big])
    """)
    harness.cli("run", "j", check=True)
    shown = json.loads(harness.cli("show", "1", "--json", check=True).stdout)
    peaks = {step["name"]: step["attempts"][0]["peak_rss_bytes"] for step in shown["steps"]}
    assert peaks["small"] is None
    assert peaks["big"] > 150_000_000


@pytest.mark.parametrize("command", ["up", "tui"])
def test_the_console_without_a_terminal_says_it_needs_one(harness, command):
    # A pipe, a cron job or `ssh host stepline up` without -t: escape codes into the pipe, running for ever.
    result = harness.cli(command, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"stepline: `stepline {command}` is a full-screen console and needs a terminal "
                                    "(stdin and stdout); over SSH use `ssh -t`; ")


@pytest.mark.parametrize("given, said", [
    (["-p", "day=1", "-p", "day=2"], "stepline: -p day is given twice; give each parameter once"),
    (["-p", "my-key=1", "-p", "my_key=2"],
     "stepline: -p my-key and -p my_key both reach shell steps as $STEPLINE_PARAM_MY_KEY; give one of them "
     "another name"),
])
def test_run_params_that_would_hide_one_another_are_refused(harness, given, said):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    result = harness.cli("run", "j", *given)
    assert result.returncode == 2 and result.stderr.strip() == said
    assert query.list_runs() == []


def test_logs_of_a_step_that_never_ran_says_so(harness):
    harness.write_job("j.py", FAILING)
    harness.cli("run", "j")
    result = harness.cli("logs", "1", "report")
    assert result.returncode == 1
    assert result.stderr.strip() == ("stepline: step 'report' of run 1 has no log: it never ran, it is upstream "
                                     "failed (upstream step 'check' did not succeed)")
    every = harness.cli("logs", "1", check=True).stdout.splitlines()
    assert every[-1] == "== report (never ran, upstream failed: upstream step 'check' did not succeed) =="


def test_cancel_from_another_terminal_stops_the_run_and_its_processes(harness):
    harness.write_job("j.py", """
        slow = shell("slow", "sleep 300 & echo $! > child.pid; wait")
        after = shell("after", "true", after=["slow"])
        j = job("j", [slow, after])
    """)
    running = harness.cli_process("run", "j")
    wait_until(lambda: (harness.jobs_dir / "child.pid").exists() and (harness.jobs_dir / "child.pid").read_text())
    child = int((harness.jobs_dir / "child.pid").read_text())
    cancelled = harness.cli("cancel", "1")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.splitlines()[-1] == "run 1 cancelled: cancelled by user"
    assert running.wait(timeout=60) == 1
    run = query.get_run(1)
    assert (run.step("slow").state, run.step("slow").reason.summary) == ("cancelled", "cancelled by user")
    assert run.step("after").state == "cancelled"
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    again = harness.cli("cancel", "1")
    assert again.returncode == 1 and again.stderr.strip() == "stepline: run 1 already cancelled; nothing to cancel"


def test_ctrl_c_cancels_the_run_cleanly(harness):
    harness.write_job("j.py", 'j = job("j", [shell("slow", "echo started; sleep 300")])\n')
    running = harness.cli_process("run", "j")
    wait_until(lambda: query.list_runs() and query.get_run(1).step("slow").state == "running")
    running.send_signal(signal.SIGINT)
    assert running.wait(timeout=60) == 130  # as a shell reports Ctrl-C: a wrapper tells an abort from a failure
    run = query.get_run(1)
    assert run.state == "cancelled"
    assert run.step("slow").reason.summary == "interrupted from the terminal"


def test_a_second_ctrl_c_kills_steps_that_ignore_sigterm_and_the_run_still_ends_cancelled(harness):
    harness.write_job("j.py", """
        import os
        import signal
        import time

        @step
        def stubborn():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open("python.pid", "w").write(str(os.getpid()))
            time.sleep(300)

        deaf = shell("deaf", "trap '' TERM; echo $$ > shell.pid; sleep 300 & wait; sleep 300")
        j = job("j", [stubborn, deaf])
    """)
    running = harness.cli_process("run", "j")
    pid_files = [harness.jobs_dir / "python.pid", harness.jobs_dir / "shell.pid"]
    wait_until(lambda: all(f.exists() and f.read_text().strip() for f in pid_files))
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(running.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    running.send_signal(signal.SIGINT)
    # A signal sent before the first one is handled could merge with it: wait for the cancel to begin.
    wait_until(lambda: any(line.startswith("interrupted: cancelling the run") for line in said))
    running.send_signal(signal.SIGINT)
    assert running.wait(timeout=60) == 130
    reader.join(timeout=10)
    assert "interrupted again: killing the run's steps now (SIGKILL)\n" in said
    run = query.get_run(1)
    assert run.state == "cancelled"
    for name in ("stubborn", "deaf"):
        assert (run.step(name).state, run.step(name).reason.summary) == ("cancelled", "interrupted from the terminal")
    for pid_file in pid_files:
        assert not _still_running(int(pid_file.read_text()))


def _still_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _watchdog_of(step_pid: int) -> psutil.Process:
    """The watchdog of the engine that started this step's attempt (see engine/watchdog.py)."""
    token = psutil.Process(step_pid).environ()[ENGINE_VARIABLE]
    [watchdog] = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"]
                  and WATCHDOG in p.info["cmdline"] and token in p.info["cmdline"]]
    return watchdog


def test_killing_stepline_run_ends_its_steps_and_their_daemons_at_once(harness):
    # kill -9 (or the OOM killer) gives the engine no chance to end its steps. Its watchdog ends them, with
    # the daemons they started outside their trees, without waiting for a next engine to start.
    harness.write_job("j.py", """
        import os, time

        shelled = shell("shelled", "( setsid sleep 300 & echo $! > shell_daemon.pid ); echo started; sleep 300")

        @step
        def python():
            os.system("( setsid sleep 300 & echo $! > python_daemon.pid )")
            time.sleep(300)

        j = job("j", [shelled, python])
    """)
    killed = harness.cli_process("run", "j", "--parallel", "2")

    def started_steps() -> list[int]:
        attempts = [query.attempts(1, name) for name in ("shelled", "python")] if query.list_runs() else []
        return [a[0].pid for a in attempts if a and a[0].pid]

    def started_daemons() -> list[int]:
        files = [harness.jobs_dir / "shell_daemon.pid", harness.jobs_dir / "python_daemon.pid"]
        return [int(f.read_text()) for f in files if f.exists() and f.read_text().strip()]

    step_pids = wait_until(lambda: len(started_steps()) == 2 and started_steps())
    daemon_pids = wait_until(lambda: len(started_daemons()) == 2 and started_daemons())
    assert all(_still_running(pid) for pid in step_pids + daemon_pids)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    for pid in step_pids + daemon_pids:
        wait_until(lambda: not _still_running(pid))
    assert query.run_summary(1).state == "running"  # the next engine to start closes it


def test_a_run_closed_long_after_its_engine_died_does_not_count_the_time_between(harness):
    # Closed an hour later (the clock below), the run must not say it took an hour: its step's process died
    # with the engine (ended by the watchdog), after its last line of output.
    from engine.recovery import close_abandoned_run

    harness.write_job("j.py", 'j = job("j", [shell("slow", "echo started; sleep 300")])\n')
    killed = harness.cli_process("run", "j")
    step_pid = wait_until(lambda: query.list_runs() and query.attempts(1, "slow")
                          and os.path.exists(query.attempts(1, "slow")[0].log_path) and query.attempts(1, "slow")[0].pid)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    wait_until(lambda: not _still_running(step_pid))
    died_by = time.time()
    close_abandoned_run(1, clock=lambda: died_by + 3600)
    run, attempt = query.get_run(1), query.attempts(1, "slow")[0]
    assert run.state == "failed" and attempt.reason.summary == "engine stopped while running"
    assert attempt.ended_at.timestamp() <= died_by and run.run.ended_at.timestamp() <= died_by


def test_a_run_whose_stepline_run_was_killed_is_closed_by_the_next_run(harness):
    # Without a daemon, every `stepline run` is an engine: the next one closes what a killed one left
    # running, instead of the run showing as running until a daemon happens to start.
    # The step also left a daemon outside its tree and process group. Its engine's watchdog is killed
    # first here (as the OOM killer might), so the daemon and the step outlive their engine: the next
    # engine ends them, by the attempt's variables they carry.
    harness.write_job("j.py", """
        slow = shell("slow", "( setsid sleep 300 & echo $! > daemon.pid ); echo started; sleep 300")
        j = job("j", [slow])
        quick = job("quick", [shell("hi", "echo hi")])
    """)
    killed = harness.cli_process("run", "j")
    wait_until(lambda: query.list_runs() and query.attempts(1, "slow") and query.attempts(1, "slow")[0].pid)
    step_pid = query.attempts(1, "slow")[0].pid
    daemon_pid = int(wait_until(lambda: (harness.jobs_dir / "daemon.pid").exists()
                                and (harness.jobs_dir / "daemon.pid").read_text().strip()))
    daemon = psutil.Process(daemon_pid)
    _watchdog_of(step_pid).kill()
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert query.run_summary(1).state == "running"  # what the killed engine left behind
    assert _still_running(step_pid) and daemon.is_running()
    gone = f"its engine (pid {killed.pid}) is gone; the next engine to start closes the run"
    listed = harness.cli("runs", check=True).stdout.splitlines()
    assert listed[1].split()[:3] == ["1", "j", "running"] and listed[1].endswith(gone)
    assert gone in harness.cli("show", "1", check=True).stdout.splitlines()
    # Its clock stopped with its engine: the duration no longer grows from one listing to the next.
    assert harness.cli("runs", check=True).stdout.splitlines()[1] == listed[1]

    next_run = harness.cli("run", "quick")
    assert next_run.returncode == 0, next_run.stderr
    assert ("closed run 1 of j: the engine that ran it stopped (steps cut short: slow); "
            "`stepline retry 1` runs what failed again") in next_run.stderr
    run = query.get_run(1)
    assert (run.state, run.step("slow").state) == ("failed", "failed")
    assert query.attempts(1, "slow")[0].reason.summary == "engine stopped while running"
    wait_until(lambda: not psutil.pid_exists(step_pid) or psutil.Process(step_pid).status() == psutil.STATUS_ZOMBIE)
    wait_until(lambda: not daemon.is_running() or daemon.status() == psutil.STATUS_ZOMBIE)


def test_logs_follow_stops_and_says_so_when_the_runs_engine_is_killed(harness):
    harness.write_job("j.py", 'j = job("j", [shell("slow", "echo started; sleep 300")])\n')
    running = harness.cli_process("run", "j")
    wait_until(lambda: query.list_runs() and query.attempts(1, "slow") and query.attempts(1, "slow")[0].pid)
    follower = harness.cli_process("logs", "1", "--follow")
    wait_until(lambda: os.path.exists(query.attempts(1, "slow")[0].log_path))
    engine_pid = running.pid
    running.send_signal(signal.SIGKILL)
    running.wait(timeout=10)
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 1
    assert out.rstrip().endswith("started")
    assert err.strip() == (f"stepline: the engine running run 1 (pid {engine_pid}) stopped; the next engine to start "
                           "closes the run, and `stepline retry 1` runs it again")


def test_run_goes_on_to_its_end_when_the_reader_of_its_output_goes_away(harness):
    # `stepline run j | head -1`: the run is the point, its lines are a side channel. Dropping them must
    # not kill the engine mid-run (which left the run "running" with its engine gone).
    harness.write_job("j.py", """
        a = shell("a", "sleep 0.5; echo a")
        b = shell("b", "echo b", after=["a"])
        j = job("j", [a, b])
    """)
    process = harness.cli_process("run", "j")
    assert process.stdout is not None and process.stderr is not None
    assert "run 1 running" in process.stdout.readline()
    process.stdout.close()  # as `head -1` does: every later write of the run's lines fails (EPIPE)
    assert process.wait(timeout=60) == 0, process.stderr.read()
    assert process.stderr.read() == ""
    run = query.get_run(1)
    assert run.state == "succeeded" and [s.state for s in run.steps] == ["succeeded", "succeeded"]


def test_a_listing_piped_into_head_ends_quietly(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "seq 1 50000")])\n')
    harness.cli("run", "j", check=True)
    process = harness.cli_process("logs", "1", "a")
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().endswith("Z 1\n")
    process.stdout.close()
    assert process.wait(timeout=60) == 141  # as a shell reports `cat big | head`: ended by the closed pipe
    assert process.stderr.read() == ""


def _mounted_tmpfs(path, size: str) -> bool:
    """A small tmpfs at `path`, to fill up for real (root only: False where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_is_disk_full_knows_sqlites_full_database_and_a_writes_enospc(tmp_path):
    connection = sqlite3.connect(tmp_path / "tiny.db")
    connection.execute("PRAGMA max_page_count = 2")
    connection.execute("CREATE TABLE t (x BLOB)")
    with pytest.raises(sqlite3.OperationalError) as full:
        for _ in range(10):
            connection.execute("INSERT INTO t VALUES (?)", [b"x" * 4096])
    try:
        raise RuntimeError("cannot rollback - no transaction is active") from full.value
    except RuntimeError as masked:  # as peewee's failed rollback hides it
        assert is_disk_full(masked)
    with pytest.raises(OSError) as no_space:
        with open("/dev/full", "wb") as handle:
            handle.write(b"x")
            handle.flush()
    assert is_disk_full(no_space.value)
    assert not is_disk_full(ValueError("row 1 is invalid"))


def test_a_full_disk_under_the_home_is_said_plainly_not_as_an_internal_error(harness, tmp_path):
    home = tmp_path / "small"
    if not _mounted_tmpfs(home, "3m"):
        pytest.skip("mounting a 3 MB tmpfs needs root; the translation itself is tested above")
    try:
        harness.write_job("j.py", """
            @step
            def chatty():
                for i in range(100000):
                    print("x" * 70, i)

            j = job("j", [chatty])
        """)
        result = harness.cli("--home", str(home), "run", "j")
        assert result.returncode == 1, result.stderr
        assert "internal error" not in result.stderr
        assert result.stderr.strip().endswith(
            f"stepline: the disk holding {home} is full, so what happened could not be recorded; free some "
            "space, then `stepline runs` shows what to retry (the next engine to start closes runs it left "
            "running)")
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_full_disk_never_gets_the_database_called_unusable(harness, tmp_path):
    # Filled after the runs were made, the disk leaves SQLite unable to open even a reader ("disk I/O error"):
    # advice to move the database aside would lose the history of a file that is fine.
    home = tmp_path / "small"
    if not _mounted_tmpfs(home, "3m"):
        pytest.skip("mounting a 3 MB tmpfs needs root; the translation itself is tested above")
    try:
        harness.write_job("j.py", 'j = job("j", [shell("a", "echo hi")])\n')
        assert harness.cli("--home", str(home), "run", "j").returncode == 0
        for name in ("stepline.db-shm", "stepline.db-wal"):
            (home / name).unlink(missing_ok=True)
        pad = home / "pad"
        subprocess.run(["dd", "if=/dev/zero", f"of={pad}", "bs=64k"], capture_output=True)
        listed = harness.cli("--home", str(home), "runs")
        assert listed.returncode == 1
        assert listed.stderr.startswith(f"stepline: the disk holding {home} is full ("), listed.stderr
        assert listed.stderr.rstrip().endswith("free some space and run the command again (the database itself is "
                                               "kept)")
        assert "move it aside" not in listed.stderr
        pad.unlink()
        again = harness.cli("--home", str(home), "runs")
        assert again.returncode == 0 and " j " in again.stdout
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_log_a_full_disk_cut_short_says_so_in_logs_and_show(harness):
    # The logs on a small disk of their own, the database on a roomy one: the step's run goes on and
    # succeeds, and where its log ends, `logs` and `show` say that output was lost, and why.
    logs = harness.home.logs
    logs.mkdir(parents=True, exist_ok=True)
    if not _mounted_tmpfs(logs, "1m"):
        pytest.skip("mounting a 1 MB tmpfs needs root")
    try:
        harness.write_job("j.py", """
            fill = shell("fill", "for i in $(seq 1 30000); do echo 'filler line of about seventy characters' $i; done; "
                                 "echo FINISHED")
            j = job("j", [fill])
        """)
        assert harness.cli("run", "j").returncode == 0
        said = harness.cli("logs", "1", "fill", check=True).stdout.splitlines()
        assert "FINISHED" not in said[-2]
        assert re.fullmatch(r"\[stepline: the log was cut after [\d,]+ bytes: No space left on device; the rest of "
                            r"the step's output was lost\]", said[-1]), said[-1]
        shown = harness.cli("show", "1", check=True).stdout
        assert "log of fill (attempt 1): the log was cut after " in shown
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


def test_a_read_only_home_can_still_be_read(harness, tmp_path):
    # A backup, a read-only mount or another user's home: runs, show, logs and jobs read it as it is;
    # commands that write say why they cannot.
    harness.write_job("j.py", 'j = job("j", [shell("a", "echo hi")])\n')
    harness.cli("run", "j", check=True)
    store.db.close()
    view = tmp_path / "view"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(harness.home.root), str(view)], capture_output=True).returncode:
        pytest.skip("a read-only bind mount needs root")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode:
            pytest.skip("a read-only bind mount needs root")
        where = ["--home", str(view)]
        assert harness.cli(*where, "runs", check=True).stdout.splitlines()[1].split()[:3] == ["1", "j", "succeeded"]
        assert harness.cli(*where, "show", "1", check=True).stdout.startswith("run 1  j  succeeded")
        assert harness.cli(*where, "logs", "1", "a", check=True).stdout.endswith(" hi\n")
        assert harness.cli(*where, "jobs", check=True).stdout.splitlines()[1].startswith("j ")
        refused = harness.cli(*where, "run", "j")
        assert refused.returncode == 1 and f"state directory {view} is read-only" in refused.stderr
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_a_job_file_whose_import_hangs_is_not_imported_again_by_later_commands_until_it_changes(harness):
    # Every cron'd `stepline run` of every other job waited the whole timeout for the same file.
    harness.write_job("good.py", 'good = job("good", [shell("a", "true")])\n')
    hangs = harness.write_job("hangs.py", "import time\nwhile True:\n    time.sleep(1)\n", header=False)
    # The home exists (the harness made it): the file whose import timed out is remembered there.
    first = harness.cli("jobs", env={"STEPLINE_IMPORT_TIMEOUT": "1"})
    assert "jobs/hangs.py:3: importing the file did not finish within 1s" in first.stderr
    later = harness.cli("run", "good", env={"STEPLINE_IMPORT_TIMEOUT": "600"})
    assert later.returncode == 0, later.stderr
    assert "is taking long" not in later.stderr  # not imported: remembered
    listing = harness.cli("jobs", env={"STEPLINE_IMPORT_TIMEOUT": "600"})
    assert "jobs/hangs.py:3: importing the file did not finish within 1s" in listing.stderr
    assert "`stepline check` tries it now" in listing.stderr
    checked = harness.cli("check", env={"STEPLINE_IMPORT_TIMEOUT": "2"})  # check imports it again
    assert "did not finish within 2s" in checked.stderr and checked.returncode == 1
    hangs.write_text('from engine import job, shell\nfixed = job("fixed", [shell("a", "true")])\n')
    fixed = harness.cli("jobs", env={"STEPLINE_IMPORT_TIMEOUT": "600"})
    assert fixed.returncode == 0 and "fixed" in fixed.stdout and "hangs.py" not in fixed.stderr


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf"])
def test_a_bad_import_timeout_is_refused_naming_the_variable(harness, value):
    result = harness.cli("jobs", env={"STEPLINE_IMPORT_TIMEOUT": value})
    assert result.returncode == 2
    assert f"STEPLINE_IMPORT_TIMEOUT must be a number of seconds more than 0, got '{value}'" in result.stderr
