"""The job-file API: step(), shell() and job() build plain values and keep bad arguments as problems."""
from __future__ import annotations

import functools

import pytest

from engine import job, shell, step
from engine.definition import JobDef, StepDef, collecting_jobs
from engine.errors import JobDefinitionError

HERE = __file__


def test_step_without_arguments_makes_a_python_step_named_after_the_function():
    @step
    def extract(params, context, limit=5):
        return limit

    assert isinstance(extract, StepDef)
    assert (extract.name, extract.kind, extract.parameters) == ("extract", "python", ("params", "context", "limit"))
    assert extract.required == frozenset({"params", "context"})
    assert extract.problems == ()


def test_step_is_placed_at_its_decorator_line():
    @step(retries=1)
    def extract():
        return 1

    assert (extract.file, extract.line) == (HERE, extract.func.__code__.co_firstlineno)


def test_step_can_be_renamed():
    @step(name="pull")
    def extract():
        return 1

    assert extract.name == "pull"


def test_shell_makes_a_shell_step_placed_at_its_call():
    load = shell("load", "psql -f load.sql", after="transform", pool="warehouse"); line = _line()
    assert (load.kind, load.command, load.after, load.pool) == (
        "shell", "psql -f load.sql", ("transform",), "warehouse")
    assert (load.file, load.line) == (HERE, line)


def test_true_backoff_doubles_and_true_jitter_is_half_the_delay():
    a = shell("a", "true", backoff=True, jitter=True)
    assert (a.backoff, a.jitter) == (2.0, 0.5)


def test_option_defaults_retry_nothing_and_never_time_out():
    a = shell("a", "true")
    assert (a.retries, a.retry_delay_s, a.backoff, a.jitter, a.timeout_s, a.pool, dict(a.env), a.cwd) == (
        0, 0.0, 1.0, 0.0, None, None, {}, None)


def test_bad_options_are_kept_as_problems_and_fall_back_to_defaults():
    a = shell("a", "true", retries=-1, env="A=1", timeout=5)
    assert a.problems == (
        "retries must be a whole number of extra attempts (0 or more), got -1",
        "env must be a dict of NAME: value, got str 'A=1'",
    )
    assert (a.retries, dict(a.env), a.timeout_s) == (0, {}, 5.0)


def test_step_on_something_that_is_not_a_function_raises_with_the_place():
    line = _line() + 2
    with pytest.raises(JobDefinitionError) as caught:
        step(retries=1)(42)
    assert str(caught.value) == f"{HERE}:{line}: @step decorates a function, got 42"


def test_step_misuses_say_how_to_write_it():
    line = _line() + 2
    with pytest.raises(JobDefinitionError) as caught:
        step("fetch_data")
    assert str(caught.value) == (f"{HERE}:{line}: @step decorates a function, got the text 'fetch_data'; to name "
                                 "the step write @step(name='fetch_data')")
    line = _line() + 2
    with pytest.raises(JobDefinitionError) as caught:
        step(step(retries=1)(lambda: 1))
    assert str(caught.value) == (f"{HERE}:{line}: step '<lambda>' is a step already: use @step once, with all its "
                                 "options in it (@step(retries=2, timeout=60))")
    unnamed = step(functools.partial(int, "3")); line = _line()
    assert unnamed.name == f"<step at line {line}>"
    assert unnamed.problems == ("functools.partial(<class 'int'>, '3') has no __name__ to name the step after; give "
                                "it one: step(fn, name='load')",
                                "the parameters of functools.partial(<class 'int'>, '3') cannot be read (a "
                                "builtin?); wrap the call in a def")


def test_a_python_step_can_be_called_as_its_function_and_a_shell_step_says_it_cannot():
    @step(retries=2)
    def total(rows, params=None):
        return sum(rows) + int((params or {}).get("extra", 0))

    assert total([1, 2]) == 3
    assert total([1, 2], params={"extra": "4"}) == 7
    with pytest.raises(TypeError) as caught:
        shell("report", "echo done")()
    assert str(caught.value) == ("'report' is a shell step: it has no Python function to call; stepline runs its "
                                 "command (`stepline run JOB`)")


def test_job_options_that_do_not_exist_and_a_shell_step_without_a_command_are_problems_of_their_own():
    a = shell("a", "true")
    typo = job("typo", [a], schedul="0 6 * * *")
    step_option = job("step_option", [a], retries=2)
    swapped = job([a], "swapped")  # type: ignore[arg-type]
    assert typo.problems == ("there is no job option 'schedul' (did you mean 'schedule'?)",)
    assert step_option.problems == ("there is no job option 'retries' (retries= is an option of each step: "
                                    "@step(retries=...) or shell(..., retries=...))",)
    assert swapped.problems == ("job() needs a name as its first argument, got the list of steps [a]",
                                "steps must be a list of steps, got 'swapped'")
    assert shell("echo hi").problems == ("shell() needs a name and a command: shell('report', 'echo done')",)


def test_params_that_shell_steps_would_read_as_one_variable_are_a_problem():
    clash = job("clash", [shell("a", "true")], params={"a.b": "1", "A_B": "2", "c": "3"})
    assert clash.problems == ("params 'a.b' and 'A_B' both reach shell steps as $STEPLINE_PARAM_A_B, so one would "
                              "hide the other; rename one of them",)


def test_shell_without_a_name_is_a_problem_of_that_step_at_its_place():
    # A problem, not an exception: raised, it stopped every other job of the file from loading.
    unnamed = shell("", "true"); line = _line()
    assert (unnamed.file, unnamed.line) == (HERE, line)
    assert unnamed.problems == ("shell() needs a step name as its first argument, got ''",)


def test_job_without_a_name_is_a_problem_of_that_job_at_its_place():
    unnamed = job(None, []); line = _line()  # type: ignore[arg-type]
    assert (unnamed.file, unnamed.line) == (HERE, line)
    assert unnamed.problems == ("job() needs a name as its first argument, got None",)


def test_job_keeps_steps_in_file_order_and_its_own_place():
    a, b = shell("a", "true"), shell("b", "true")
    j = job("j", [b, a], schedule="@daily", timezone="UTC", params={"day": 1}); line = _line()
    assert j.step_names == ("b", "a")
    assert (j.file, j.line, dict(j.params)) == (HERE, line, {"day": "1"})


def test_job_problems_are_kept_not_raised():
    def plain():
        return 1

    j = job("j", [plain, "x"], schedule="@daily", every="1h", params=[1])  # type: ignore[list-item]
    assert j.problems == (
        "'plain' in its steps is a plain function, not a step (did you forget @step on it?)",
        "'x' in its steps is not a step; list what @step or shell() returned",
        "schedule= (cron) and every= (interval) are both given; keep one of them",
        "params must be a dict of default run parameters, got list",
    )
    assert j.steps == ()


def test_dependencies_are_parameters_naming_steps_then_after():
    @step(after=["c"])
    def b(a, params):
        return a

    a, c = shell("a", "true"), shell("c", "true")
    j = job("j", [a, b, c])
    assert j.dependencies(j.step("b")) == ("a", "c")


def test_collecting_jobs_sees_jobs_made_while_a_file_loads_and_only_then():
    with collecting_jobs(HERE) as made:
        j = job("j", [shell("a", "true")])
    k = job("k", [shell("a", "true")])
    assert made == [j]
    assert isinstance(k, JobDef)


def _line() -> int:
    """The caller's line number."""
    import inspect
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno
