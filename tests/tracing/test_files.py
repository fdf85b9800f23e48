"""Spans to a JSON-lines file: the lines ``workers trace`` and the dashboard read."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

from pipecat_workers.tracing import JsonLinesSpanExporter, TraceContext, Tracer


def _spans_to(path: Path, count: int, **options: object) -> JsonLinesSpanExporter:
    tracer = Tracer()
    exporter = JsonLinesSpanExporter(path, runner="proj/w", **options)  # type: ignore[arg-type]
    tracer.add_exporter(exporter)
    for i in range(count):
        span = tracer.start_span(f"run {i}", "job.run", parent=TraceContext.new_root(),
                                 worker="w", attributes={"job.id": f"j{i}"})
        span.end()
    return exporter


def test_each_span_is_one_line_in_the_span_files_format(tmp_path: Path) -> None:
    path = tmp_path / "traces" / "w.jsonl"
    tracer = Tracer()
    exporter = JsonLinesSpanExporter(path, runner="proj/w")
    tracer.add_exporter(exporter)
    parent = TraceContext.new_root()
    span = tracer.start_span('odd "name"\n', "job.run", parent=parent, worker="wörker",
                             attributes={"n": 1, "x": 0.5, "ok": True})
    span.add_event("stream.start", {"k": "v"})
    span.end("error", "it broke")
    tracer.remove_exporter(exporter)  # flushes
    (line,) = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record == {**span.to_record(), "runner": "proj/w", "pid": os.getpid()}
    assert record["parent"] == parent.span_hex and record["trace"] == parent.trace_hex
    assert record["error"] == "it broke" and record["events"][0]["attrs"] == {"k": "v"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_spans_wait_a_moment_then_are_written_together(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    exporter = _spans_to(path, 3, delay=0.05)
    assert not path.exists()  # not yet: they wait for the batch
    for _ in range(200):
        await asyncio.sleep(0.01)
        if path.exists() and len(path.read_text().splitlines()) == 3:
            break
    assert [json.loads(x)["name"] for x in path.read_text().splitlines()] == [
        "run 0", "run 1", "run 2"]
    exporter.shutdown()


def test_without_an_event_loop_each_span_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    _spans_to(path, 2)
    assert len(path.read_text().splitlines()) == 2


def test_the_file_is_rotated_and_lines_stay_whole(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    exporter = _spans_to(path, 40, max_bytes=4096, delay=0)
    exporter.shutdown()
    rotated = path.with_name("w.jsonl.1")
    assert rotated.exists() and path.stat().st_size <= 4096
    names = [json.loads(x)["name"] for f in (rotated, path) for x in f.read_text().splitlines()]
    assert names[-1] == "run 39" and names == sorted(names, key=lambda n: int(n.split()[1]))


def test_a_file_that_cannot_be_written_stops_spans_not_the_work(tmp_path: Path,
                                                               caplog: object) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    exporter = _spans_to(blocker / "w.jsonl", 3)  # its directory is a file
    exporter.shutdown()
    assert "cannot write spans" in caplog.text  # type: ignore[attr-defined]
    assert caplog.text.count("cannot write spans") == 1  # type: ignore[attr-defined]


def test_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "w.jsonl").symlink_to(target)
    _spans_to(tmp_path / "w.jsonl", 1).shutdown()
    assert target.read_text() == ""


def test_a_long_span_is_written_running_then_ended(tmp_path: Path) -> None:
    """A conversation's session is written when it starts (running) and again when it ends;
    the reader takes the newer line."""
    from pipecat_workers_cli.traces.store import read_spans

    path = tmp_path / "w.jsonl"
    tracer = Tracer()
    exporter = JsonLinesSpanExporter(path, runner="proj/w", delay=0)
    tracer.add_exporter(exporter)
    session = tracer.start_span("session w", "activation", parent=None, worker="w",
                                announce=True)
    (running,) = read_spans(tmp_path)
    assert (running.span, running.status) == (session.context.span_hex, "running")
    session.end()
    (ended,) = read_spans(tmp_path)
    assert (ended.span, ended.status) == (session.context.span_hex, "ok")
    assert [json.loads(x)["status"] for x in path.read_text().splitlines()] == [
        "running", "ok"]


async def test_a_long_span_that_ends_before_its_batch_is_written_once(
        tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    tracer = Tracer()
    exporter = JsonLinesSpanExporter(path, delay=60)
    tracer.add_exporter(exporter)
    span = tracer.start_span("session w", "activation", parent=None, worker="w",
                             announce=True)
    span.end()
    exporter.flush()
    assert [json.loads(x)["status"] for x in path.read_text().splitlines()] == ["ok"]
