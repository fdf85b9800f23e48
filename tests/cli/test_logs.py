"""Per-worker log files: writing and rotation, reading back, merging, following, --since."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pipecat_workers_cli.logs
import pytest
from pipecat_workers_cli.logs import (
    LineSplitter,
    LogRecord,
    LogWriter,
    follow,
    log_path,
    merge,
    parse_line,
    parse_since,
    pump,
    read_records,
)
from pipecat_workers_cli.logs import reader as reader_module
from pipecat_workers_cli.logs.writer import MAX_LINE_BYTES

T0 = datetime(2026, 11, 22, 5, 40, 1, 123456, tzinfo=UTC)
LINE_BYTES = 40  # "2026-11-22T05:40:01.123456Z out line-00\n"
POLL = 0.01


class FakeClock:
    """Each call returns the next time, one second (by default) after the previous one."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(seconds=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        now = self.now
        self.now += self.step
        return now


def writer(logs: Path, worker: str, **kwargs) -> LogWriter:
    kwargs.setdefault("clock", FakeClock())
    return LogWriter(log_path(logs, worker), **kwargs)


def texts(records: list[LogRecord]) -> list[str]:
    return [r.text for r in records]


def lines(first: int, last: int) -> list[str]:
    return [f"line-{i:02d}" for i in range(first, last + 1)]


def write_lines(w: LogWriter, names: list[str]) -> None:
    for name in names:
        w.write("out", name)


async def take(it: AsyncIterator[LogRecord], count: int) -> list[LogRecord]:
    return [await asyncio.wait_for(anext(it), 1.0) for _ in range(count)]


async def rest(it: AsyncIterator[LogRecord], stop: asyncio.Event) -> list[LogRecord]:
    """What the follower still yields once stopped: nothing, if nothing was duplicated."""
    stop.set()
    return [r async for r in it]


# -- writer -----------------------------------------------------------------------------------


def test_write_appends_a_timestamped_line_flushed_at_once(tmp_path):
    w = writer(tmp_path, "greeter")
    record = w.write("out", "hello world")
    assert record == LogRecord(T0, "greeter", "out", "hello world")
    expected = "2026-11-22T05:40:01.123456Z out hello world\n"
    assert (tmp_path / "greeter.log").read_text() == expected  # before close: flushed
    w.write("sup", "")
    w.close()
    w.close()
    assert texts(read_records(tmp_path, "greeter")) == ["hello world", ""]


def test_write_splits_newlines_and_long_text_into_records(tmp_path):
    long = "é€😀x" * (MAX_LINE_BYTES // 5)  # 10 bytes a repeat: about two records
    with writer(tmp_path, "w") as w:
        multi = w.write("sup", "first\r\nsecond\n")
        big = w.write("out", long)
    assert multi.text == "first\r\nsecond"
    records = read_records(tmp_path, "w")
    assert texts(records[:2]) == ["first", "second"]
    pieces = records[2:]
    assert len(pieces) == 2 and all(len(p.text.encode()) <= MAX_LINE_BYTES for p in pieces)
    assert "".join(texts(pieces)) == big.text == long
    assert {r.time for r in pieces} == {big.time}


def test_write_refuses_unknown_stream_and_closed_writer(tmp_path):
    w = writer(tmp_path, "w")
    with pytest.raises(ValueError, match="stream must be one of out, err, sup"):
        w.write("stdout", "x")
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write("out", "x")
    assert not (tmp_path / "w.log").exists()  # nothing was opened


def test_rotation_keeps_sizes_backup_count_and_order(tmp_path):
    with writer(tmp_path, "w", max_bytes=100, backups=2) as w:
        write_lines(w, lines(1, 10))  # two lines a file: five files, three kept
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["w.log", "w.log.1", "w.log.2"]
    assert all(p.stat().st_size == 2 * LINE_BYTES for p in tmp_path.iterdir())
    assert "line-05" in (tmp_path / "w.log.2").read_text()
    assert "line-10" in (tmp_path / "w.log").read_text()
    assert texts(read_records(tmp_path, "w")) == lines(5, 10)


def test_rotation_without_backups_and_reopening(tmp_path):
    with writer(tmp_path, "w", max_bytes=100, backups=0) as w:
        write_lines(w, lines(1, 5))
    assert [p.name for p in tmp_path.iterdir()] == ["w.log"]
    with writer(tmp_path, "w", max_bytes=100, backups=0) as w:  # appends, then rotates
        write_lines(w, lines(6, 6))
    assert texts(read_records(tmp_path, "w")) == lines(5, 6)


# -- reading ----------------------------------------------------------------------------------


@pytest.fixture
def rotated(tmp_path) -> Path:
    """Lines 1-10 of worker ``w``, one second apart, across ``w.log.2``, ``.1`` and ``.log``."""
    with writer(tmp_path, "w", max_bytes=4 * LINE_BYTES, backups=5) as w:
        write_lines(w, lines(1, 10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.log", "w.log.1", "w.log.2"]
    return tmp_path


@pytest.mark.parametrize(
    ("tail", "expected"),
    [(0, []), (1, lines(10, 10)), (3, lines(8, 10)), (6, lines(5, 10)), (50, lines(1, 10))],
)
def test_tail_reads_back_across_rotated_files(rotated, tail, expected):
    assert texts(read_records(rotated, "w", tail=tail)) == expected


def test_tail_reading_backwards_in_small_blocks(rotated, monkeypatch):
    monkeypatch.setattr(reader_module, "_BLOCK_SIZE", 7)  # lines straddle every block
    for tail in range(12):
        expected = lines(1, 10)[-tail:] if tail else []
        assert texts(read_records(rotated, "w", tail=tail)) == expected


def test_since_filters_by_time_then_tail_keeps_the_last(rotated):
    since = T0 + timedelta(seconds=3)  # line-04
    assert texts(read_records(rotated, "w", since=since)) == lines(4, 10)
    assert texts(read_records(rotated, "w", since=since, tail=2)) == lines(9, 10)
    assert read_records(rotated, "w", since=T0 + timedelta(days=1)) == []


def test_reading_during_a_rotation_holds_no_line_twice(tmp_path, monkeypatch):
    w = writer(tmp_path, "w", max_bytes=3 * LINE_BYTES, backups=5)
    write_lines(w, lines(1, 5))  # .1 holds 1-3, .log holds 4-5
    real_rotated_paths = reader_module._rotated_paths

    def rotating_meanwhile(*args):
        write_lines(w, lines(6, 7))  # the file opened as current becomes .1
        return real_rotated_paths(*args)

    monkeypatch.setattr(reader_module, "_rotated_paths", rotating_meanwhile)
    assert texts(read_records(tmp_path, "w")) == lines(1, 6)


def test_a_worker_without_files_has_no_records(tmp_path):
    assert read_records(tmp_path, "nobody") == []
    assert read_records(tmp_path / "missing-dir", "nobody", tail=3) == []


def test_parse_line():
    record = parse_line("w", "2026-11-22T05:40:01.123456Z err boom  spaced \n")
    assert record == LogRecord(T0, "w", "err", "boom  spaced ")
    shifted = parse_line("w", "2026-11-22T06:40:01.123456+01:00 out")
    assert shifted == LogRecord(T0, "w", "out", "")
    assert shifted.time.tzinfo is UTC
    for bad in ["", "garbage", "2026-11-22T05:40:01 out naive time", f"{T0:%Y-%m-%d}Z out x",
                "2026-11-22T05:40:01.123456Z stdout unknown stream"]:
        assert parse_line("w", bad) is None, bad


def test_unparseable_lines_follow_the_record_before_them(tmp_path):
    (tmp_path / "w.log").write_bytes(
        b"orphan before any record\n"
        b"2026-11-22T05:40:01.123456Z err Traceback:\n"
        b"  continued by hand\n"
        b"\n"
        b"\xff not utf-8\n"
    )
    assert read_records(tmp_path, "w") == [
        LogRecord(T0, "w", "err", "Traceback:"),
        LogRecord(T0, "w", "err", "  continued by hand"),
        LogRecord(T0, "w", "err", "\ufffd not utf-8"),
    ]


def test_merge_orders_by_time_ties_by_worker_order():
    def recs(worker: str, *seconds: int) -> list[LogRecord]:
        return [LogRecord(T0 + timedelta(seconds=s), worker, "out", f"{worker}{s}")
                for s in seconds]

    a, b = recs("a", 1, 3, 5), recs("b", 1, 2, 5)
    assert texts(merge([a, b])) == ["a1", "b1", "b2", "a3", "a5", "b5"]
    assert texts(merge([b, a])) == ["b1", "a1", "b2", "a3", "b5", "a5"]
    stepped_back = recs("c", 4, 0)  # a clock that stepped back keeps the file's order
    assert texts(merge([stepped_back, recs("d", 2)])) == ["d2", "c4", "c0"]
    assert merge([]) == []


def test_log_path_refuses_names_that_leave_the_directory(tmp_path):
    assert log_path(tmp_path, "worker.1") == tmp_path / "worker.1.log"
    for bad in ["", ".", "..", "../etc/passwd", "a/b"]:
        with pytest.raises(ValueError, match="worker name"):
            log_path(tmp_path, bad)


# -- following --------------------------------------------------------------------------------


async def test_follow_merges_backlogs_with_tail_per_worker_then_new_lines(tmp_path):
    a = writer(tmp_path, "a", clock=FakeClock(T0, timedelta(seconds=2)))
    b = writer(tmp_path, "b", clock=FakeClock(T0 + timedelta(seconds=1), timedelta(seconds=2)))
    write_lines(a, ["a1", "a2", "a3"])
    write_lines(b, ["b1", "b2", "b3"])
    stop = asyncio.Event()
    async with aclosing(follow(tmp_path, ["a", "b"], tail=2, poll=POLL, stop=stop)) as it:
        assert texts(await take(it, 4)) == ["a2", "b2", "a3", "b3"]
        write_lines(b, ["b4"])
        write_lines(a, ["a4"])
        assert texts(await take(it, 2)) == ["a4", "b4"]  # one round, in time order
        assert await rest(it, stop) == []


async def test_follow_picks_up_a_worker_whose_file_appears_later(tmp_path):
    write_lines(writer(tmp_path, "a"), ["a1"])
    stop = asyncio.Event()
    async with aclosing(follow(tmp_path, ["a", "late"], poll=POLL, stop=stop)) as it:
        assert texts(await take(it, 1)) == ["a1"]
        await asyncio.sleep(3 * POLL)  # polled while the file is missing
        write_lines(writer(tmp_path, "late", clock=FakeClock(T0 + timedelta(hours=1))),
                    ["late1", "late2"])
        assert texts(await take(it, 2)) == ["late1", "late2"]
        assert await rest(it, stop) == []


@pytest.mark.parametrize("burst", [1, 3, 9])  # 9 lines: several rotations between two polls
async def test_follow_survives_rotation_without_loss_or_duplicates(tmp_path, burst):
    w = writer(tmp_path, "w", max_bytes=3 * LINE_BYTES, backups=20)
    write_lines(w, lines(0, 1))
    stop = asyncio.Event()
    received: list[str] = []
    async with aclosing(follow(tmp_path, ["w"], poll=POLL, stop=stop)) as it:
        received += texts(await take(it, 2))
        for start in range(2, 38, burst):
            write_lines(w, lines(start, start + burst - 1))
            received += texts(await take(it, burst))
        assert await rest(it, stop) == []
    assert received == lines(0, 37)


async def test_follow_drains_lines_written_just_before_a_rotation(tmp_path, monkeypatch):
    w = writer(tmp_path, "w", max_bytes=3 * LINE_BYTES, backups=5)
    write_lines(w, lines(1, 1))
    real_stat = os.stat
    pending = [lines(2, 5)]

    def stat_racing_the_writer(path, *args, **kwargs):
        # Between the follower's read and its check for rotation, the worker writes on.
        if pending and Path(path) == log_path(tmp_path, "w"):
            write_lines(w, pending.pop())
        return real_stat(path, *args, **kwargs)

    stop = asyncio.Event()
    async with aclosing(follow(tmp_path, ["w"], poll=POLL, stop=stop)) as it:
        assert texts(await take(it, 1)) == ["line-01"]
        monkeypatch.setattr(reader_module.os, "stat", stat_racing_the_writer)
        assert texts(await take(it, 4)) == lines(2, 5)
        assert await rest(it, stop) == []


async def test_follow_survives_truncation_and_dropped_backups(tmp_path):
    w = writer(tmp_path, "w", max_bytes=3 * LINE_BYTES, backups=0)
    write_lines(w, lines(1, 2))
    stop = asyncio.Event()
    async with aclosing(follow(tmp_path, ["w"], since=T0 + timedelta(seconds=1),
                               poll=POLL, stop=stop)) as it:
        assert texts(await take(it, 1)) == ["line-02"]
        write_lines(w, lines(3, 4))  # rotation with no backup: the file is replaced
        assert texts(await take(it, 2)) == lines(3, 4)
        os.truncate(log_path(tmp_path, "w"), 0)
        write_lines(w, ["again"])
        assert texts(await take(it, 1)) == ["again"]
        assert await rest(it, stop) == []


async def test_follow_waits_for_the_end_of_a_partly_written_line(tmp_path):
    path = log_path(tmp_path, "w")
    path.write_bytes(b"2026-11-22T05:40:01.123456Z out whole\n2026-11-22T05:40:01.123456Z ou")
    stop = asyncio.Event()
    async with aclosing(follow(tmp_path, ["w"], poll=POLL, stop=stop)) as it:
        assert texts(await take(it, 1)) == ["whole"]
        await asyncio.sleep(3 * POLL)
        with path.open("ab") as f:
            f.write(b"t finished\n")
        assert await take(it, 1) == [LogRecord(T0, "w", "out", "finished")]
        assert await rest(it, stop) == []


# -- pump -------------------------------------------------------------------------------------


async def pumped(data: bytes, **kwargs) -> list[bytes]:
    """The lines ``pump`` passes on from a pipe that carries ``data`` in small chunks."""
    reader = asyncio.StreamReader(limit=16)  # far below the lines: no LimitOverrunError
    for start in range(0, len(data), 5):
        reader.feed_data(data[start:start + 5])
    reader.feed_eof()
    got: list[bytes] = []
    await pump(reader, got.append, **kwargs)
    return got


async def test_pump_splits_long_lines_and_flushes_the_last_partial_one():
    data = b"short\n" + b"x" * 100 + b"\n" + b"y" * 32 + b"\n\nno newline"
    assert await pumped(data, max_len=32) == [
        b"short", b"x" * 32, b"x" * 32, b"x" * 32, b"x" * 4, b"y" * 32, b"", b"no newline",
    ]
    assert await pumped(b"z" * 200_000 + b"\n") == [b"z" * MAX_LINE_BYTES] * 3 + [b"z" * 3392]


async def test_pump_into_writer_keeps_lines_of_invalid_utf8(tmp_path):
    with writer(tmp_path, "w") as w:
        await pump(await_reader(b"ok\r\nbad \xc3\x28 \xff\n\xe2\x82"),
                   lambda raw: w.write("out", raw.decode("utf-8", "replace")))
    assert texts(read_records(tmp_path, "w")) == ["ok", "bad \ufffd( \ufffd", "\ufffd"]


def await_reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_line_splitter_never_cuts_inside_a_character(chunk):
    text = "aé€😀" * 20
    data = text.encode()
    got: list[bytes] = []
    splitter = LineSplitter(got.append, max_len=5)
    for start in range(0, len(data), chunk):
        splitter.feed(data[start:start + chunk])
    splitter.flush()
    assert all(len(piece) <= 5 for piece in got)
    assert "".join(piece.decode() for piece in got) == text  # strict decode: whole chars


def test_line_splitter_does_not_invent_an_empty_line_after_a_full_one():
    got: list[bytes] = []
    splitter = LineSplitter(got.append, max_len=4)
    splitter.feed(b"abcd")
    splitter.feed(b"\nef")
    splitter.flush()
    splitter.flush()
    assert got == [b"abcd", b"ef"]


# -- --since ----------------------------------------------------------------------------------


NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


@pytest.fixture
def paris(monkeypatch):
    """Local time is Paris (UTC+1 in November), so naive times have a known meaning."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        (" 1D2H ", NOW - timedelta(hours=26)),
        ("90", NOW - timedelta(seconds=90)),
        ("0.5", NOW - timedelta(seconds=0.5)),
        ("2026-11-22T05:00:00Z", datetime(2026, 11, 22, 5, tzinfo=UTC)),
        ("2026-11-22T05:00:00+02:00", datetime(2026, 11, 22, 3, tzinfo=UTC)),
        ("2026-11-22T05:00:00", datetime(2026, 11, 22, 4, tzinfo=UTC)),
        ("2026-11-22 05:00", datetime(2026, 11, 22, 4, tzinfo=UTC)),
        ("2026-11-22", datetime(2026, 11, 21, 23, tzinfo=UTC)),
    ],
)
def test_parse_since(paris, text, expected):
    result = parse_since(text, NOW)
    assert result == expected
    assert result.tzinfo is UTC


@pytest.mark.parametrize("text", ["yesterdayish", "", "10x", "-5", "1h30", "m", "99999999999d"])
def test_parse_since_errors(text):
    with pytest.raises(ValueError, match=r"^--since: expected a duration like 10m") as info:
        parse_since(text, NOW)
    assert "\n" not in str(info.value)
    assert str(info.value).endswith(f"got {text!r}")


def test_parse_since_message():
    with pytest.raises(ValueError) as info:
        parse_since("yesterdayish", NOW)
    assert str(info.value) == (
        "--since: expected a duration like 10m or a time like 2026-11-22T05:00,"
        " got 'yesterdayish'"
    )


# -- surface ----------------------------------------------------------------------------------


def test_all_is_sorted_and_complete():
    assert pipecat_workers_cli.logs.__all__ == sorted(set(pipecat_workers_cli.logs.__all__))
    assert all(hasattr(pipecat_workers_cli.logs, name) for name in pipecat_workers_cli.logs.__all__)


def test_logs_modules_import_neither_click_nor_rich():
    code = ("import sys, pipecat_workers_cli.logs; "
            "print(sorted({'click', 'rich'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"
