"""Reading span files: validation of every line, rotation, bounds, trees and summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.traces import records as records_module
from pipecat_workers_cli.traces import store as store_module
from pipecat_workers_cli.traces.store import (
    ReadStats,
    SpanNode,
    build_tree,
    find_trace_of_job,
    match_traces,
    parse_span,
    read_spans,
    recent_traces,
    traces_dir,
    walk,
)

T0 = 1_765_012_345.0
TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"


def span(trace: str = TRACE_A, span_id: str = "00f067aa0ba902b7", parent: str | None = None,
         *, name: str = "job weather", kind: str = "job.run", worker: str = "greeter",
         start: float = 0.0, end: float = 1.0, status: str = "ok", **extra: Any
         ) -> dict[str, Any]:
    """A span file line as a dict; times are seconds after T0."""
    line: dict[str, Any] = {"trace": trace, "span": span_id, "parent": parent, "name": name,
                            "kind": kind, "worker": worker, "runner": worker, "pid": 1234,
                            "start": T0 + start, "end": T0 + end, "status": status,
                            "attrs": {}, "events": []}
    line.update(extra)
    return line


def sid(n: int) -> str:
    return f"{n:016x}"


def write(path: Path, lines: list[Any]) -> None:
    """Append lines (dicts as JSON, str/bytes as they are) to a span file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            fh.write((line.encode() if isinstance(line, str) else line) + b"\n")


def test_traces_dir_is_in_the_projects_state_directory(tmp_path):
    state = StateDir.of(tmp_path, "demo")
    assert traces_dir(state) == tmp_path / ".workers" / "demo" / "traces"


def test_a_valid_line_reads_back_whole():
    line = span(parent=sid(7), status="error", error="boom",
                attrs={"job.id": "abc-1", "job.name": "weather", "n": 3, "ok": True,
                       "ratio": 0.5},
                events=[{"name": "stream.start", "time": T0 + 0.5, "attrs": {"k": "v"}}])
    record = parse_span(json.dumps(line))
    assert record is not None
    assert (record.trace, record.span, record.parent) == (TRACE_A, "00f067aa0ba902b7", sid(7))
    assert (record.name, record.kind, record.worker) == ("job weather", "job.run", "greeter")
    assert (record.status, record.error, record.duration) == ("error", "boom", 1.0)
    assert record.job_id == "abc-1"
    assert dict(record.attrs) == {"job.id": "abc-1", "job.name": "weather", "n": 3,
                                  "ok": True, "ratio": 0.5}
    assert [(e.name, e.time, dict(e.attrs)) for e in record.events] == [
        ("stream.start", T0 + 0.5, {"k": "v"})]
    assert parse_span(json.dumps(record.to_json())) == record


HOSTILE: list[tuple[str, Any]] = [
    ("not json", "{not json"),
    ("cut short", json.dumps(span())[:40]),
    ("a list", "[1, 2, 3]"),
    ("a string", '"span"'),
    ("null", "null"),
    ("trace too short", span(trace="4bf92f35")),
    ("trace upper case", span(trace=TRACE_A.upper())),
    ("trace all zero", span(trace="0" * 32)),
    ("trace not hex", span(trace="g" * 32)),
    ("trace a number", span(trace=123)),
    ("span too long", span(span_id="00f067aa0ba902b700")),
    ("span all zero", span(span_id="0" * 16)),
    ("parent not hex", span(parent="zzzzzzzzzzzzzzzz")),
    ("parent a number", span(parent=5)),
    ("no name", {k: v for k, v in span().items() if k != "name"}),
    ("empty name", span(name="")),
    ("name too long", span(name="x" * 10_000)),
    ("worker a list", span(worker=["a"])),
    ("kind null", span(kind=None)),
    ("start a string", {**span(), "start": "0"}),
    ("start a bool", {**span(), "start": True}),
    ("end NaN", {**span(), "end": float("nan")}),
    ("end infinite", {**span(), "end": float("inf")}),
    ("ends before it starts", span(start=2.0, end=1.0)),
    ("unknown status", span(status="weird")),
    ("error a number", span(status="error", error=42)),
    ("attrs a list", span(attrs=["job.id"])),
    ("events a dict", span(events={"name": "x"})),
    ("huge number", '{"trace": ' + "9" * 5000 + "}"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000),
    ("not utf-8", b"\xff\xfe" + json.dumps(span()).encode()),
]


@pytest.mark.parametrize(("why", "line"), HOSTILE, ids=[why for why, _ in HOSTILE])
def test_a_hostile_line_is_no_span(why, line):
    text = json.dumps(line) if isinstance(line, dict) else line
    assert parse_span(text) is None


def test_a_line_longer_than_the_limit_is_no_span():
    line = span(attrs={"pad": "x" * records_module.MAX_LINE_BYTES})
    assert parse_span(json.dumps(line)) is None


def test_bad_attributes_and_events_are_dropped_not_the_span():
    line = span(attrs={"good": "yes", "list": [1], "dict": {"a": 1}, "null": None,
                       "": "empty key", "long": "y" * 10_000},
                events=[{"name": "ok", "time": T0}, {"name": 5, "time": T0}, "nope",
                        {"name": "no time"}])
    record = parse_span(json.dumps(line))
    assert record is not None
    assert dict(record.attrs) == {"good": "yes", "long": "y" * records_module.MAX_TEXT}
    assert [e.name for e in record.events] == ["ok"]


def test_missing_attrs_events_and_error_read_as_empty():
    line = {k: v for k, v in span(status="cancelled").items() if k not in ("attrs", "events")}
    record = parse_span(json.dumps(line))
    assert record is not None
    assert (dict(record.attrs), record.events, record.error) == ({}, (), None)


def test_bad_lines_are_skipped_and_counted(tmp_path):
    good = [span(span_id=sid(i), start=i, end=i + 0.5) for i in range(1, 4)]
    write(tmp_path / "greeter.jsonl",
          [good[0], "{broken", "", span(trace="nope"), good[1], b"\xff\x00", good[2], "[]"])
    stats = ReadStats()
    spans = read_spans(tmp_path, stats=stats)
    assert [s.span for s in spans] == [sid(1), sid(2), sid(3)]
    assert (stats.files, stats.skipped, stats.capped) == (1, 4, False)


def test_a_huge_line_is_skipped_without_being_gathered(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "_BLOCK_SIZE", 1024)
    write(tmp_path / "w.jsonl", [span(span_id=sid(1)), b"x" * 300_000, span(span_id=sid(2)),
                                 b"y" * 200_000])
    stats = ReadStats()
    assert [s.span for s in read_spans(tmp_path, stats=stats)] == [sid(1), sid(2)]
    assert stats.skipped == 2


def test_spans_of_every_file_and_its_backup_are_read_oldest_first(tmp_path):
    write(tmp_path / "greeter.jsonl.1", [span(span_id=sid(1), start=0, end=1)])
    write(tmp_path / "greeter.jsonl", [span(span_id=sid(3), start=4, end=5)])
    write(tmp_path / "support.jsonl", [span(span_id=sid(2), worker="support", start=2,
                                            end=3)])
    write(tmp_path / "notes.txt", [span(span_id=sid(9))])
    write(tmp_path / "greeter.jsonl.2", [span(span_id=sid(8))])  # never written by us
    stats = ReadStats()
    assert [s.span for s in read_spans(tmp_path, stats=stats)] == [sid(1), sid(2), sid(3)]
    assert stats.files == 3


def test_a_span_in_both_the_file_and_its_backup_counts_once(tmp_path):
    line = span(span_id=sid(1))
    write(tmp_path / "w.jsonl.1", [line])
    write(tmp_path / "w.jsonl", [line, span(span_id=sid(2))])
    assert [s.span for s in read_spans(tmp_path)] == [sid(1), sid(2)]


def test_limit_keeps_the_newest_spans_across_files(tmp_path):
    for worker, offset in (("a", 0), ("b", 0.5)):
        write(tmp_path / f"{worker}.jsonl.1",
              [span(span_id=sid(int(10 * (i + offset))), worker=worker, start=i + offset,
                    end=i + offset + 0.1) for i in range(5)])
        write(tmp_path / f"{worker}.jsonl",
              [span(span_id=sid(int(10 * (i + offset))), worker=worker, start=i + offset,
                    end=i + offset + 0.1) for i in range(5, 10)])
    stats = ReadStats()
    spans = read_spans(tmp_path, limit=4, stats=stats)
    assert [(s.worker, s.start - T0) for s in spans] == [
        ("a", 8.0), ("b", 8.5), ("a", 9.0), ("b", 9.5)]
    assert stats.capped


def test_only_the_end_of_a_big_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_FILE_BYTES", 4096)
    write(tmp_path / "w.jsonl", [span(span_id=sid(i + 1), start=i, end=i + 0.1)
                                 for i in range(200)])
    stats = ReadStats()
    spans = read_spans(tmp_path, stats=stats)
    assert 0 < len(spans) < 200
    assert spans[-1].span == sid(200) and stats.capped
    assert stats.skipped == 0  # the line cut by the cap is not a bad line


def test_the_trace_filter(tmp_path):
    write(tmp_path / "w.jsonl", [span(span_id=sid(1)), span(TRACE_B, sid(2)),
                                 span(span_id=sid(3), attrs={"note": TRACE_B})])
    assert [s.span for s in read_spans(tmp_path, trace=TRACE_B)] == [sid(2)]
    assert read_spans(tmp_path, trace="not a trace") == []


def test_a_missing_directory_holds_no_spans(tmp_path):
    missing = tmp_path / "nowhere"
    assert read_spans(missing) == [] and recent_traces(missing) == []
    assert find_trace_of_job(missing, "x-1") is None and match_traces(missing, "4bf9") == set()


def test_links_and_pipes_are_not_read(tmp_path):
    outside = tmp_path / "outside.jsonl"
    write(outside, [span(span_id=sid(1))])
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "linked.jsonl").symlink_to(outside)
    os.mkfifo(traces / "pipe.jsonl")  # opening it to read must not block
    write(traces / "real.jsonl", [span(span_id=sid(2))])
    assert [s.span for s in read_spans(traces)] == [sid(2)]


def test_find_trace_of_job(tmp_path):
    write(tmp_path / "support.jsonl", [
        span(TRACE_B, sid(1), attrs={"job.id": "a1b2-10"}),
        span(TRACE_A, sid(2), attrs={"job.id": "a1b2-1", "job.name": "weather"}),
        span(TRACE_B, sid(3), attrs={"note": "a1b2-1"}),
    ])
    assert find_trace_of_job(tmp_path, "a1b2-1") == TRACE_A
    assert find_trace_of_job(tmp_path, "a1b2-10") == TRACE_B
    assert find_trace_of_job(tmp_path, "a1b2") is None
    assert find_trace_of_job(tmp_path, "") is None


def test_match_traces_by_prefix(tmp_path):
    other = TRACE_A[:10] + "f" * 22
    write(tmp_path / "w.jsonl", [span(TRACE_A, sid(1)), span(other, sid(2)),
                                 span(TRACE_B, sid(3))])
    assert match_traces(tmp_path, TRACE_A[:8]) == {TRACE_A, other}
    assert match_traces(tmp_path, TRACE_A[:11].upper()) == {TRACE_A}
    assert match_traces(tmp_path, TRACE_B) == {TRACE_B}
    assert match_traces(tmp_path, "xyz") == set() and match_traces(tmp_path, "") == set()


def shape(roots: list[SpanNode]) -> list[tuple[int, str, bool]]:
    return [(depth, node.span.name, node.orphan) for depth, node in walk(roots)]


def test_build_tree_orders_roots_and_children_by_start():
    spans = [
        parse_span(json.dumps(line)) for line in [
            # end order, as a file has them
            span(span_id=sid(3), parent=sid(1), name="run b", start=2, end=3),
            span(span_id=sid(2), parent=sid(1), name="run a", start=1, end=4),
            span(span_id=sid(4), parent=sid(2), name="inner", start=1.5, end=2),
            span(span_id=sid(1), name="request", start=0, end=5),
            span(TRACE_B, sid(9), name="other trace", start=-1, end=0),
        ]
    ]
    assert shape(build_tree(s for s in spans if s is not None)) == [
        (0, "other trace", False),
        (0, "request", False),
        (1, "run a", False),
        (2, "inner", False),
        (1, "run b", False),
    ]


def test_a_span_whose_parent_is_missing_is_an_orphan_root():
    spans = [parse_span(json.dumps(line)) for line in [
        span(span_id=sid(1), name="root", start=0, end=5),
        span(span_id=sid(2), parent=sid(99), name="lost", start=1, end=2),
        span(span_id=sid(3), parent=sid(2), name="under lost", start=1.2, end=1.5),
        # the same id in another trace is not a parent
        span(TRACE_B, sid(4), parent=sid(1), name="other trace", start=3, end=4),
    ]]
    assert shape(build_tree(s for s in spans if s is not None)) == [
        (0, "root", False),
        (0, "lost", True),
        (1, "under lost", False),
        (0, "other trace", True),
    ]


def test_a_span_given_twice_is_one_node_and_loops_are_cut():
    spans = [parse_span(json.dumps(line)) for line in [
        span(span_id=sid(1), name="root"),
        span(span_id=sid(1), name="root again"),
        span(span_id=sid(2), parent=sid(2), name="own parent", start=2, end=9),
        span(span_id=sid(3), parent=sid(4), name="loop a", start=3, end=9),
        span(span_id=sid(4), parent=sid(3), name="loop b", start=4, end=9),
        span(span_id=sid(5), parent=sid(4), name="below the loop", start=5, end=9),
    ]]
    assert shape(build_tree(s for s in spans if s is not None)) == [
        (0, "root", False),
        (0, "own parent", True),
        (0, "loop a", True),
        (1, "loop b", False),
        (2, "below the loop", False),
    ]


def test_a_very_deep_chain_builds_and_walks():
    depth = 5000
    spans = [parse_span(json.dumps(span(span_id=sid(i + 1), parent=sid(i) if i else None,
                                        start=i, end=depth))) for i in range(depth)]
    tree = build_tree(s for s in spans if s is not None)
    assert [d for d, _ in walk(tree)] == list(range(depth))


def test_recent_traces_newest_first_with_their_summary(tmp_path):
    write(tmp_path / "greeter.jsonl", [
        span(TRACE_A, sid(2), parent=sid(1), name="job lookup", kind="job.run", start=1,
             end=2),
        span(TRACE_A, sid(1), name="job weather", kind="job.request", start=0, end=3),
        span(TRACE_B, sid(5), name="activation", kind="activation", start=10, end=10.5,
             status="cancelled"),
    ])
    write(tmp_path / "support.jsonl", [
        span(TRACE_A, sid(3), parent=sid(1), name="job weather", worker="support", start=1,
             end=2.5, status="error", error="no forecast"),
    ])
    first, second = recent_traces(tmp_path)
    assert (first.trace, first.name, first.worker, first.spans, first.status) == (
        TRACE_B, "activation", "greeter", 1, "cancelled")
    assert (second.trace, second.name, second.worker) == (TRACE_A, "job weather", "greeter")
    assert (second.start, second.duration, second.spans) == (T0, 3.0, 3)
    assert (second.workers, second.status, second.errors) == (("greeter", "support"),
                                                              "error", 1)
    assert [t.trace for t in recent_traces(tmp_path, limit=1)] == [TRACE_B]


def test_the_store_imports_neither_click_nor_rich():
    code = ("import sys, pipecat_workers_cli.traces.store; "
            "assert not {'click', 'rich'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True)
