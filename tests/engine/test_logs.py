"""Attempt logs: every byte a step prints reaches its log file, each line stamped; reads from the end."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from engine import logread, query
from engine.logpump import STAMP_WIDTH

STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")

# A crash in one of the engine's threads (log pump, worker reader) fails the test that caused it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def log_lines(run: query.RunView, step: str, attempt: int = 1) -> list[bytes]:
    path = Path(query.attempts(run.id, step)[attempt - 1].log_path)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def bodies(lines: list[bytes]) -> list[bytes]:
    for line in lines:
        assert STAMP.match(line[:STAMP_WIDTH]), line[:60]
    return [line[STAMP_WIDTH:] for line in lines]


def test_a_flood_of_lines_reaches_the_log_whole_and_in_order(home, write_job):
    write_job("j.py", """
        @step
        def flood():
            for i in range(200_000):
                print(i)

        j = job("j", [flood])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert bodies(log_lines(run, "flood")) == [str(i).encode() for i in range(200_000)]


def test_a_ten_megabyte_line_is_stored_whole(home, write_job):
    write_job("j.py", """
        import sys

        @step
        def wide():
            sys.stdout.write("x" * 10_000_000 + "\\n")
            print("after")

        j = job("j", [wide])
    """)
    run = home.run_now("j")
    assert bodies(log_lines(run, "wide")) == [b"x" * 10_000_000, b"after"]


def test_invalid_utf8_and_binary_bytes_are_stored_unchanged(home, write_job):
    write_job("j.py", r"""
        import os, sys

        @step
        def raw():
            sys.stdout.flush()
            os.write(1, b"caf\xe9 \xff\xfe\x00nul\x80\n")
            os.write(2, b"\x00\x01\x02\x1b[31mred\n")
            print("text \udcff surrogate")

        sh = shell("sh", r"printf 'a\000b\377\n'")
        j = job("j", [raw, sh])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert bodies(log_lines(run, "raw")) == [b"caf\xe9 \xff\xfe\x00nul\x80", b"\x00\x01\x02\x1b[31mred",
                                             b"text \\udcff surrogate"]
    assert bodies(log_lines(run, "sh")) == [b"a\x00b\xff"]


def test_a_line_cut_off_by_a_kill_is_kept(home, write_job):
    write_job("j.py", """
        half = shell("half", "echo whole; printf 'partial line'; sleep 60", timeout=1)

        @step(timeout=1)
        def py_half():
            import sys, time
            sys.stdout.write("python partial")
            sys.stdout.flush()
            time.sleep(60)

        j = job("j", [half, py_half])
    """)
    run = home.run_now("j", kill_grace_s=0.5)
    assert run.step("half").reason.summary == "timed out after 1s"
    assert bodies(log_lines(run, "half")) == [b"whole", b"partial line"]
    assert bodies(log_lines(run, "py_half")) == [b"python partial"]
    assert run.step("half").reason.detail.endswith("partial line")


def test_each_retry_has_its_own_log(home, write_job):
    write_job("j.py", """
        @step(retries=1)
        def twice(context):
            print("attempt", context.attempt)
            if context.attempt == 1:
                raise RuntimeError("again")

        j = job("j", [twice])
    """)
    run = home.run_now("j")
    assert bodies(log_lines(run, "twice", 1))[0] == b"attempt 1"
    assert bodies(log_lines(run, "twice", 2)) == [b"attempt 2"]


def test_an_attempt_that_prints_nothing_leaves_no_log_file_and_reads_as_no_output(home, write_job):
    # A job firing every second would otherwise leave 86,400 empty files a day.
    write_job("j.py", """
        @step
        def quiet():
            return 1

        @step
        def talks(quiet):
            print("got", quiet)

        j = job("j", [quiet, talks])
    """)
    run = home.run_now("j")
    assert run.state == "succeeded"
    assert not os.path.exists(query.attempts(run.id, "quiet")[0].log_path)
    assert bodies(log_lines(run, "talks")) == [b"got 1"]
    shown = home.cli("logs", str(run.id), "quiet", check=True)
    assert shown.stdout == "" and shown.stderr == ""
    every_step = home.cli("logs", str(run.id), check=True).stdout.splitlines()
    assert every_step[:3] == ["== quiet (attempt 1) ==", "(no output)", "== talks (attempt 1) =="]
    assert every_step[3].endswith("Z got 1") and len(every_step) == 4
    assert logread.tail_lines(query.attempts(run.id, "quiet")[0].log_path, 10) == []


# --- reading logs ------------------------------------------------------------------------------------


class CountingFile(io.FileIO):
    read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        CountingFile.read_bytes += len(data)
        return data


def test_tail_lines_reads_the_end_of_a_large_log_only(tmp_path, monkeypatch):
    path = tmp_path / "big.log"
    with open(path, "wb") as handle:
        for block in range(100):
            handle.write(b"".join(b"line %07d %s\n" % (block * 2000 + i, b"y" * 80) for i in range(2000)))
    size = path.stat().st_size
    assert size > 15_000_000
    monkeypatch.setattr(logread, "open", lambda p, mode: CountingFile(p, mode), raising=False)
    CountingFile.read_bytes = 0
    lines = logread.tail_lines(path, 500)
    assert lines == [f"line {n:07d} {'y' * 80}" for n in range(199_500, 200_000)]
    assert CountingFile.read_bytes < 200_000


@pytest.mark.parametrize("count", [1, 3, 10])
def test_tail_lines_of_a_short_file(tmp_path, count):
    path = tmp_path / "short.log"
    path.write_bytes(b"one\ntwo\nthree\n")
    assert logread.tail_lines(path, count) == ["one", "two", "three"][-count:]


def test_tail_lines_keeps_a_last_line_without_newline_and_a_missing_file_is_empty(tmp_path):
    path = tmp_path / "x.log"
    path.write_bytes(b"one\ntwo")
    assert logread.tail_lines(path, 5) == ["one", "two"]
    assert logread.tail_lines(tmp_path / "missing.log", 5) == []


def test_tail_lines_of_a_huge_last_line_shows_its_end(tmp_path):
    path = tmp_path / "wide.log"
    path.write_bytes(b"first\n" + b"z" * 6_000_000 + b"\n")
    lines = logread.tail_lines(path, 5)
    assert len(lines) == 1
    assert lines[0].startswith("z" * logread.MAX_LINE_CHARS)


@pytest.mark.parametrize("count, expected", [(0, []), (1, ["line 199999"]), (3, ["line 199997", "line 199998",
                                                                                 "line 199999"])])
def test_tail_start_finds_where_the_last_lines_begin_across_blocks(tmp_path, count, expected):
    path = tmp_path / "a.log"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(200_000)))  # 2.2 MB: many blocks
    start = logread.tail_start(path, count)
    lines, end = logread.read_from(path, start, max_bytes=1 << 22)
    assert lines == expected and end == path.stat().st_size


def test_tail_start_of_short_files_and_a_last_line_without_newline(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"a\nb\nc")
    assert logread.read_from(path, logread.tail_start(path, 2))[0] == ["b"]  # "c" is not complete yet
    assert logread.tail_start(path, 10) == 0
    assert logread.tail_start(tmp_path / "missing.log", 5) == 0


def test_read_from_returns_complete_lines_and_the_next_offset(tmp_path):
    path = tmp_path / "f.log"
    path.write_bytes(b"a\nb\npar")
    lines, offset = logread.read_from(path, 0)
    assert (lines, offset) == (["a", "b"], 4)
    assert logread.read_from(path, offset) == ([], 4)
    with open(path, "ab") as handle:
        handle.write(b"tial\nc\n")
    lines, offset = logread.read_from(path, offset)
    assert (lines, offset) == (["partial", "c"], path.stat().st_size)
    assert logread.read_from(tmp_path / "missing.log", 7) == ([], 7)


def test_read_from_shows_a_line_longer_than_its_budget_once_cut(tmp_path):
    # A 10 MB line used to come out as ten cut pieces, nine of them without a time stamp.
    path = tmp_path / "wide.log"
    path.write_bytes(b"w" * 3000 + b"\nnext\n")
    lines, offset = logread.read_from(path, 0, max_bytes=1000)
    assert lines == ["w" * 1000 + " … [a line of 3,000 bytes, cut]"]
    assert offset == 3001
    rest, offset = logread.read_from(path, offset, max_bytes=10_000)
    assert rest == ["next"]
    assert offset == path.stat().st_size


def test_read_from_shows_a_long_line_still_being_written(tmp_path):
    path = tmp_path / "growing.log"
    path.write_bytes(b"w" * 3000)
    lines, offset = logread.read_from(path, 0, max_bytes=1000)
    assert lines == ["w" * 1000] and offset == 1000


def test_a_line_redrawn_with_carriage_returns_reads_as_its_last_version(tmp_path):
    # A progress bar (tqdm, curl): shown as a terminal leaves it, not as every version run together.
    path = tmp_path / "progress.log"
    path.write_bytes(b"2026-11-27T03:12:40.123Z \rcopied 10%\rcopied 55%\rcopied 100%\r\n"
                     b"2026-11-27T03:12:41.000Z done\n")
    assert logread.tail_lines(path, 2) == ["2026-11-27T03:12:40.123Z copied 100%", "2026-11-27T03:12:41.000Z done"]


def test_decoded_lines_replace_invalid_bytes_and_control_characters(tmp_path):
    path = tmp_path / "b.log"
    path.write_bytes(b"ok\tcaf\xc3\xa9\nbad \xff\x00 end\n")
    assert logread.tail_lines(path, 2) == ["ok\tcafé", "bad \ufffd\ufffd end"]


def pump_two_attempts(first_log: str, first: bytes, second_log: str, second: bytes) -> list[int]:
    """Pump one output into each log through a real LogPump; the attempt keys it reported closed."""
    import threading

    from engine.logpump import LogPump

    closed: list[int] = []
    done = threading.Event()

    def on_closed(key: int, cut: str | None) -> None:
        closed.append(key)
        if len(closed) == 2:
            done.set()

    pump = LogPump(on_closed)
    try:
        for key, (log, data) in enumerate(((first_log, first), (second_log, second)), start=1):
            read_end, write_end = os.pipe()
            pump.add(read_end, log, key)
            os.write(write_end, data)
            os.close(write_end)
        assert done.wait(30), closed
    finally:
        pump.stop()
    return sorted(closed)


def test_a_log_that_cannot_be_written_ends_its_attempt_and_the_pump_goes_on(tmp_path):
    # /dev/full fails every write with ENOSPC, as a full disk does.
    closed = pump_two_attempts("/dev/full", b"first line\nsecond line\n", str(tmp_path / "good.log"),
                               b"still logged\n")
    assert closed == [1, 2]
    assert (tmp_path / "good.log").read_bytes().endswith(b"Z still logged\n")


def test_a_log_that_cannot_be_created_ends_its_attempt_and_a_missing_folder_is_made(tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    closed = pump_two_attempts(str(tmp_path / "a-file" / "step.1.log"), b"nowhere to go\n",  # a file as folder
                               str(tmp_path / "logs" / "7" / "step.1.log"), b"first line\n")  # a run's first log
    assert closed == [1, 2]
    assert (tmp_path / "logs" / "7" / "step.1.log").read_bytes().endswith(b"Z first line\n")
