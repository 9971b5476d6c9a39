"""`stepline prune`: runs that ended long ago go, with their rows, events, logs and outputs; nothing else does."""
from __future__ import annotations

import time

from engine import query, store


def _ended_days_ago(run_id: int, days: float) -> None:
    """Age a finished run, as if it had ended `days` ago (the command reads the real clock)."""
    at = time.time() - days * 86400
    store.Run.update(ended_at=at, started_at=at - 1).where(store.Run.id == run_id).execute()


def test_prune_deletes_old_runs_with_their_files_and_keeps_the_rest(harness):
    harness.write_job("j.py", """
        j = job("j", [shell("a", "echo hi; echo out > $STEPLINE_OUTPUT")])
        k = job("k", [shell("b", "echo ho")])
    """)
    for job in ("j", "j", "j", "k"):
        harness.cli("run", job, check=True)
    for run_id in (1, 2, 4):
        _ended_days_ago(run_id, 40)
    logs, outputs = harness.home.logs, harness.home.outputs
    assert (logs / "1").is_dir() and (outputs / "1").is_dir()

    dry = harness.cli("prune", "--older-than", "30d", "--dry-run", check=True)
    assert dry.stdout.startswith("would delete 2 runs that ended before ")
    assert [r.id for r in query.list_runs()] == [4, 3, 2, 1]

    done = harness.cli("prune", "--older-than", "30d", check=True)
    assert done.stdout.startswith("deleted 2 runs that ended before ") and "of logs and outputs freed" in done.stdout
    # Run 3 is recent; run 4 is the newest (and only) run of k, which `stepline jobs` still shows.
    assert [r.id for r in query.list_runs()] == [4, 3]
    assert not (logs / "1").exists() and not (logs / "2").exists() and not (outputs / "1").exists()
    assert (logs / "3").is_dir() and (logs / "4").is_dir()
    assert query.events_since(0, run_id=1) == [] and query.events_since(0, run_id=3) != []
    assert harness.cli("show", "1").stderr.strip() == "stepline: run 1 does not exist; `stepline runs` lists the runs"
    assert harness.cli("run", "j", check=True) and [r.id for r in query.list_runs()][0] == 5  # ids go on

    again = harness.cli("prune", "--older-than", "30d", check=True)
    assert again.stdout.startswith("no run ended before ") and again.stdout.rstrip().endswith("nothing to delete")


def test_prune_refuses_an_age_it_cannot_read(harness):
    result = harness.cli("prune", "--older-than", "a month")
    assert result.returncode == 2
    assert result.stderr.strip() == ("stepline: --older-than 'a month': write a number and a unit, m, h, d or w "
                                     "(e.g. 30d)")


def test_prune_with_an_age_older_than_any_clock_deletes_what_ended_and_says_so(harness):
    harness.write_job("j.py", 'j = job("j", [shell("a", "true")])\n')
    harness.cli("run", "j", check=True)
    result = harness.cli("prune", "--older-than", "99999999999d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no run ended before 19") and result.stdout.rstrip().endswith("nothing to delete")
