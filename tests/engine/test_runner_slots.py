"""Steps waiting for a free slot: who says so, and how often."""
from __future__ import annotations

import collections

import pytest

from engine import query

# A crash in one of the engine's threads (log pump, worker reader) fails the test that caused it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def _slot_waits(run_id: int, parallel: int) -> collections.Counter[str | None]:
    message = f"a free slot (--parallel {parallel})"
    return collections.Counter(e.step for e in query.events_since(0, run_id=run_id)
                               if e.state == "waiting" and e.message == message)


def test_each_step_released_while_the_slots_are_busy_says_it_waits_for_one_once(home, write_job):
    write_job("j.py", """
        root = shell("root", "true")
        a = shell("a", "true", after=["root"])
        b = shell("b", "true", after=["root"])
        c = shell("c", "true", after=["root"])
        d = shell("d", "true", after=["root"])
        j = job("j", [root, a, b, c, d])
    """)
    run = home.run_now("j", parallel=1)
    assert run.state == "succeeded"
    assert _slot_waits(run.id, 1) == {"b": 1, "c": 1, "d": 1}


def test_a_retried_step_that_finds_the_slots_busy_waits_for_one_again(home, write_job, tmp_path):
    marker = tmp_path / "failed-once"
    write_job("j.py", f"""
        flaky = shell("flaky", "test -e {marker} || {{ touch {marker}; exit 1; }}", retries=1)
        slow = shell("slow", "sleep 0.3")
        j = job("j", [flaky, slow])
    """)
    run = home.run_now("j", parallel=1)
    assert run.state == "succeeded"
    assert run.step("flaky").attempts == 2
    # slow waits while flaky's first attempt runs; flaky's retry comes due while slow runs.
    assert _slot_waits(run.id, 1) == {"slow": 1, "flaky": 1}
