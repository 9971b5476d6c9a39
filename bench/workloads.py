"""The standard workloads: the job file each one runs and the check that proves it ran right.

A workload is a generated job file (written into a fresh jobs folder), the name
of the job to run, the count used for the per-step cost, and a check that reads
the finished run back through engine.query and the home's files. Timing and
targets live in bench/__main__.py; nothing here measures anything.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine import query
from engine.home import Home

HEADER = "from engine import job, step, shell\n\n"
LINE_CHARS = 80
STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
STAMP_WIDTH = 25

Check = Callable[[Home, int, int], dict[str, Any]]
"""(home, run id, size) -> {"ok": bool, "detail": str, ...extra facts}."""


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    """W1 ... W5, or a start-up probe."""
    title: str
    """One line for the table."""
    job: str
    """Job name inside the generated file."""
    source: Callable[[int], str]
    """size -> job file text."""
    units: Callable[[int], int]
    """size -> steps (attempts for W4) the per-step cost divides by (minus one)."""
    check: Check
    size: int
    """Size of the full run."""
    quick_size: int
    """Size of the `--quick` smoke run."""
    kind: str = "python"
    """Which start-up probe to subtract: "python" or "shell"."""


def _steps_succeeded(run: query.RunView, expected: int) -> list[str]:
    problems = []
    if run.state != "succeeded":
        problems.append(f"run {run.id} is {run.state}")
    if len(run.steps) != expected:
        problems.append(f"{len(run.steps)} steps, expected {expected}")
    bad = [f"{s.name}={s.state}" for s in run.steps if s.state != "succeeded"]
    if bad:
        problems.append("not succeeded: " + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    return problems


def _output(home: Home, run_id: int, step: str) -> Any:
    data = query.step_output(home, run_id, step)
    return None if data is None else pickle.loads(data)


def _verdict(problems: list[str], **facts: Any) -> dict[str, Any]:
    return {"ok": not problems, "detail": "; ".join(problems) or "all checks passed", **facts}


# --- W1: fan-out 1 -> N -> 1 ---------------------------------------------------------------------------


def fanout_source(width: int) -> str:
    parts = [HEADER, "@step\ndef root():\n    return 1\n\n"]
    for i in range(width):
        parts.append(f"@step\ndef s{i}(root):\n    return root + {i}\n\n")
    names = ", ".join(f'"s{i}"' for i in range(width))
    parts.append(f"@step(after=[{names}])\ndef sink():\n    return 'done'\n\n")
    listed = ", ".join(["root"] + [f"s{i}" for i in range(width)] + ["sink"])
    parts.append(f"fanout = job(\"w1_fanout\", [{listed}])\n")
    return "".join(parts)


def fanout_check(home: Home, run_id: int, width: int) -> dict[str, Any]:
    run = query.get_run(run_id)
    problems = _steps_succeeded(run, width + 2)
    if not problems:
        wrong = [i for i in range(width) if _output(home, run_id, f"s{i}") != 1 + i]
        if wrong:
            problems.append(f"wrong outputs of s{wrong[0]} and {len(wrong) - 1} more")
        if _output(home, run_id, "sink") != "done":
            problems.append("sink output is not 'done'")
        sink = run.step("sink")
        if set(sink.upstream) != {f"s{i}" for i in range(width)}:
            problems.append(f"sink waits on {len(sink.upstream)} steps, expected {width}")
    return _verdict(problems)


# --- W2: a chain of Python steps passing an int ---------------------------------------------------------


def chain_source(length: int) -> str:
    parts = [HEADER, "@step\ndef c0():\n    return 1\n\n"]
    for i in range(1, length):
        parts.append(f"@step\ndef c{i}(c{i - 1}):\n    return c{i - 1} + 1\n\n")
    listed = ", ".join(f"c{i}" for i in range(length))
    parts.append(f"chain = job(\"w2_chain\", [{listed}])\n")
    return "".join(parts)


def chain_check(home: Home, run_id: int, length: int) -> dict[str, Any]:
    run = query.get_run(run_id)
    problems = _steps_succeeded(run, length)
    final = None
    if not problems:
        final = _output(home, run_id, f"c{length - 1}")
        if final != length:
            problems.append(f"final value {final!r}, expected {length}")
    return _verdict(problems, final_value=final)


# --- W3: a chain of shell steps -------------------------------------------------------------------------


def shell_chain_source(length: int) -> str:
    parts = [HEADER, 'h0 = shell("h0", "echo hi")\n']
    for i in range(1, length):
        parts.append(f'h{i} = shell("h{i}", "echo hi", after=["h{i - 1}"])\n')
    listed = ", ".join(f"h{i}" for i in range(length))
    parts.append(f"\nshell_chain = job(\"w3_shell_chain\", [{listed}])\n")
    return "".join(parts)


def shell_chain_check(home: Home, run_id: int, length: int) -> dict[str, Any]:
    run = query.get_run(run_id)
    problems = _steps_succeeded(run, length)
    if not problems:
        for i in range(length):
            log_path = query.attempts(run_id, f"h{i}")[-1].log_path
            with open(log_path, "rb") as handle:
                lines = handle.read().splitlines()
            if len(lines) != 1 or lines[0][STAMP_WIDTH:] != b"hi" or not STAMP.match(lines[0]):
                problems.append(f"log of h{i} is {lines!r}, expected one stamped 'hi'")
                break
    return _verdict(problems)


# --- W4: a step failing twice, then succeeding ----------------------------------------------------------


def flaky_source(failures: int) -> str:
    return HEADER + (
        f"@step(retries={failures + 1}, retry_delay=0)\n"
        "def flaky(context):\n"
        f"    if context.attempt <= {failures}:\n"
        "        raise RuntimeError(f'planned failure on attempt {context.attempt}')\n"
        "    return context.attempt\n\n"
        "flaky_job = job(\"w4_retries\", [flaky])\n")


def flaky_check(home: Home, run_id: int, failures: int) -> dict[str, Any]:
    run = query.get_run(run_id)
    problems = _steps_succeeded(run, 1)
    attempts = query.attempts(run_id, "flaky")
    states = [a.state for a in attempts]
    expected = ["failed"] * failures + ["succeeded"]
    if states != expected:
        problems.append(f"attempt states {states}, expected {expected}")
    if run.steps and run.step("flaky").attempts != failures + 1:
        problems.append(f"step counts {run.step('flaky').attempts} attempts, expected {failures + 1}")
    return _verdict(problems, attempts=len(attempts))


# --- W5: one step printing many lines -------------------------------------------------------------------

CHATTY_LOOP = (
    "pad = 'x' * {pad}\n"
    "for i in range({lines}):\n"
    "    print(f'{{i:08d}}{{pad}}')\n")


def chatty_source(lines: int) -> str:
    loop = CHATTY_LOOP.format(pad=LINE_CHARS - 8, lines=lines)
    body = "".join("    " + line + "\n" for line in loop.splitlines())
    return HEADER + f"@step\ndef chatty():\n{body}    return {lines}\n\nchatty_job = job(\"w5_log_lines\", [chatty])\n"


def chatty_check(home: Home, run_id: int, lines: int) -> dict[str, Any]:
    run = query.get_run(run_id)
    problems = _steps_succeeded(run, 1)
    attempt = query.attempts(run_id, "chatty")[-1]
    pad = b"x" * (LINE_CHARS - 8)
    counted = unstamped = wrong = 0
    first_wrong = None
    with open(attempt.log_path, "rb") as handle:
        for counted, line in enumerate(handle, start=1):
            if not STAMP.match(line):
                unstamped += 1
            expected = b"%08d" % (counted - 1) + pad + b"\n"
            if line[STAMP_WIDTH:] != expected:
                wrong += 1
                first_wrong = first_wrong or counted
    if counted != lines:
        problems.append(f"log has {counted} lines, expected {lines} ({lines - counted} lost)")
    if unstamped:
        problems.append(f"{unstamped} lines without a timestamp prefix")
    if wrong:
        problems.append(f"{wrong} lines with unexpected text (first at line {first_wrong})")
    duration = attempt.duration_s()
    return _verdict(problems, log_lines=counted, attempt_duration_s=duration, attempt_cpu_s=attempt.cpu_s)


# --- start-up probes: one trivial step ------------------------------------------------------------------


def one_python_source(_: int) -> str:
    return HEADER + "@step\ndef only():\n    return 1\n\none = job(\"startup_python\", [only])\n"


def one_shell_source(_: int) -> str:
    return HEADER + 'only = shell("only", "echo hi")\n\none = job("startup_shell", [only])\n'


def one_check(home: Home, run_id: int, _: int) -> dict[str, Any]:
    return _verdict(_steps_succeeded(query.get_run(run_id), 1))


WORKLOADS = {
    "W1": Workload("W1", "fan-out 1 -> N -> 1 Python steps", "w1_fanout", fanout_source, lambda n: n + 2,
                   fanout_check, size=200, quick_size=20),
    "W2": Workload("W2", "chain of Python steps passing an int", "w2_chain", chain_source, lambda n: n,
                   chain_check, size=100, quick_size=10),
    "W3": Workload("W3", "chain of shell steps `echo hi`", "w3_shell_chain", shell_chain_source, lambda n: n,
                   shell_chain_check, size=50, quick_size=5, kind="shell"),
    "W4": Workload("W4", "fails twice, succeeds on retry 3", "w4_retries", flaky_source, lambda n: n + 1,
                   flaky_check, size=2, quick_size=2),
    "W5": Workload("W5", "one step printing 80-char lines", "w5_log_lines", chatty_source, lambda n: 1,
                   chatty_check, size=200_000, quick_size=20_000),
}

PROBES = {
    "python": Workload("startup-python", "1 trivial Python step", "startup_python", one_python_source,
                       lambda n: 1, one_check, size=1, quick_size=1),
    "shell": Workload("startup-shell", "1 shell step `echo hi`", "startup_shell", one_shell_source,
                      lambda n: 1, one_check, size=1, quick_size=1, kind="shell"),
}


def by_name(name: str) -> Workload:
    if name in WORKLOADS:
        return WORKLOADS[name]
    for probe in PROBES.values():
        if probe.name == name:
            return probe
    raise KeyError(name)
