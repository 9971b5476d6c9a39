"""Every sample job loads and does what its docstring says, run by a real engine on a copy of sample_jobs/."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from engine import query
from engine.loader import job_files, load_jobs
from tests.conftest import ROOT, Harness

SAMPLES = ROOT / "sample_jobs"


@pytest.fixture
def samples(tmp_path: Path) -> Harness:
    """A harness whose jobs folder is a copy of sample_jobs/, so runs never write next to the real files."""
    harness = Harness(tmp_path)
    harness.jobs_dir.rmdir()
    shutil.copytree(SAMPLES, harness.jobs_dir, ignore=shutil.ignore_patterns("__pycache__"))
    return harness


def test_every_sample_file_loads_without_problems() -> None:
    result = load_jobs(SAMPLES)
    assert [str(p) for p in result.problems] == []
    assert {"etl_orders", "shell_pipeline", "flaky_api", "validate_invoices", "long_report"} <= set(result.jobs)


def test_every_sample_file_starts_with_a_docstring_line() -> None:
    for path in sorted(SAMPLES.glob("*.py")):
        first = path.read_text().splitlines()[0]
        assert first.startswith('"""') and len(first) > 10, path.name


def test_every_sample_job_file_defines_a_job() -> None:
    result = load_jobs(SAMPLES)
    files = {Path(j.file).name for j in result.jobs.values()}
    assert files == {p.name for p in job_files(SAMPLES)}


def test_etl_orders_loads_the_clean_rows_into_sqlite(samples: Harness) -> None:
    run = samples.run_now("etl_orders")
    assert run.state == "succeeded", [(s.name, s.state, s.reason) for s in run.steps]
    load = run.step("load")
    assert load.has_output
    with sqlite3.connect(samples.home.root / "sample_warehouse.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM orders WHERE run_id = ?", (run.id,)).fetchone()[0]
    assert 0 < rows < 300  # some generated rows are invalid and dropped
    assert f"'rows': {rows}" in (load.output_preview or "")
    assert f"{rows} orders loaded" in (run.step("report").output_preview or "")


def test_etl_orders_declares_the_warehouse_pool_and_a_berlin_daily_schedule() -> None:
    etl = load_jobs(SAMPLES).jobs["etl_orders"]
    assert etl.step("load").pool == "warehouse"
    assert (etl.schedule, etl.timezone) == ("0 6 * * *", "Europe/Berlin")


def test_shell_pipeline_passes_values_from_step_to_step(samples: Harness) -> None:
    run = samples.run_now("shell_pipeline", {"lines": "40"})
    assert run.state == "succeeded", [(s.name, s.state, s.reason) for s in run.steps]
    assert run.step("count").output_preview == "'41'"  # a header line and 40 readings
    archive = Path((run.step("compress").output_preview or "").strip("'"))
    assert archive.name == "readings.csv.gz" and archive.is_file()
    assert len((run.step("checksum").output_preview or "").strip("'")) == 64


def test_flaky_api_recovers_on_its_third_attempt(samples: Harness) -> None:
    run = samples.run_now("flaky_api")
    assert run.state == "succeeded", [(s.name, s.state, s.reason) for s in run.steps]
    assert run.step("call_api").attempts == 3
    assert run.step("plan_requests").attempts == 1


def test_validate_invoices_fails_with_the_data_error_then_a_retry_completes_the_same_run(
        samples: Harness) -> None:
    run = samples.run_now("validate_invoices")
    assert run.state == "failed"
    reason = run.step("validate").reason
    assert reason is not None
    assert reason.summary.startswith("ValueError: 3 invoices have negative totals (ids 17, 42, 99)")
    assert f"stepline retry {run.id}" in reason.summary
    assert run.step("book").state == "upstream_failed"
    assert run.step("notify").state == "upstream_failed"

    retried = samples.retry(run.id)
    assert retried.id == run.id
    assert retried.state == "succeeded", [(s.name, s.state, s.reason) for s in retried.steps]
    assert retried.step("validate").attempts == 2
    assert retried.step("export_invoices").attempts == 1
    assert retried.step("fetch_vat_rates").attempts == 1
    assert retried.step("notify").state == "succeeded"


def test_long_report_prints_progress_lines(samples: Harness) -> None:
    run = samples.run_now("long_report", {"seconds": "1"})
    assert run.state == "succeeded", [(s.name, s.state, s.reason) for s in run.steps]
    log = Path(query.attempts(run.id, "build_report")[0].log_path).read_text()
    assert "[  4/4] 100%" in log
    assert log.count("crunching") == 4


def test_fan_out_merges_the_parallel_region_steps(samples: Harness) -> None:
    run = samples.run_now("fan_out")
    assert run.state == "succeeded", [(s.name, s.state, s.reason) for s in run.steps]
    assert set(run.step("merge").upstream) == {"total_emea", "total_americas", "total_apac"}
    assert set(run.step("split").downstream) == {"total_emea", "total_americas", "total_apac"}
    assert run.step("merge").output_preview is not None


def doc_examples() -> list[str]:
    """The ```python blocks of docs/jobs.md, each a whole job file."""
    text = (ROOT / "docs" / "jobs.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_every_example_in_the_job_file_reference_loads_and_runs(harness: Harness) -> None:
    examples = doc_examples()
    assert len(examples) >= 6
    assert all(e.startswith(("from engine import", "import ")) for e in examples), "a python block is not a job file"
    for number, source in enumerate(examples, 1):
        harness.write_job(f"example_{number}.py", source, header=False)
    result = harness.load()
    assert [str(p) for p in result.problems] == []
    engine = harness.engine()
    try:
        run_ids = [engine.submit(job_def) for job_def in result.jobs.values()]
        engine.run_until_done(run_ids)
    finally:
        engine.close()
    for run_id in run_ids:
        run = query.get_run(run_id)
        assert run.state == "succeeded", (run.run.job, [(s.name, s.state, s.reason) for s in run.steps])
