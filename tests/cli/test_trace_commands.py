"""``workers trace`` and ``workers logs --trace/--job``, run as the real program on a project
whose span files and logs the test writes (see test_trace_e2e.py for real workers)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cliproj import Cli
from pipecat_workers_cli.logs.reader import LogRecord, follow
from pipecat_workers_cli.render.traces import clean, status_text, tree_rows
from pipecat_workers_cli.traces.lookup import LineSelector, parse_tag
from pipecat_workers_cli.traces.records import parse_span
from pipecat_workers_cli.traces.store import build_tree

T0 = 1_765_012_345.0  # 2025-12-06T09:12:25Z
A = "4bf92f3577b34da6a3ce929d0e0e4736"  # a conversation: jobs J1 and J2
B = "0af7651916cd43dd8448eb211c80319c"  # job J3
C = A[:8] + "00112233445566778899aabb"  # starts as A does
D = "d" * 32  # a worker's start
J1, J2, J3 = "5e1f00aa11bb-1", "5e1f00aa11bb-2", "77aa00cc99dd-1"


def sid(n: int) -> str:
    return f"{n:016x}"


def span(trace: str, n: int, parent: int | None, name: str, kind: str, worker: str,
         start: float, end: float, **extra: Any) -> dict[str, Any]:
    return {"trace": trace, "span": sid(n), "parent": sid(parent) if parent else None,
            "name": name, "kind": kind, "worker": worker, "runner": worker, "pid": 4321,
            "start": T0 + start, "end": T0 + end, "status": "ok", "attrs": {}, "events": [],
            **extra}


SPANS: dict[str, list[dict[str, Any]]] = {  # per file, in end order as a writer has them
    "greeter": [
        span(A, 2, 1, "job weather", "job.request", "greeter", 1, 3,
             attrs={"job.id": J1, "job.name": "weather", "job.target": "support"}),
        span(A, 5, 1, "job lookup", "job.request", "greeter", 3.5, 4,
             attrs={"job.id": J2, "job.name": "lookup", "job.target": "support"}),
        span(A, 1, None, "activation greeter", "activation", "greeter", 0, 5),
    ],
    "support": [
        span(A, 4, 3, "activation support", "activation", "support", 1.5, 1.6),
        span(A, 3, 2, "job weather", "job.run", "support", 1.2, 2.8, status="error",
             error="no forecast for Paris", attrs={"job.id": J1, "job.requester": "greeter"}),
        span(A, 6, 99, "handoff", "handoff", "support", 4.2, 4.4),
    ],
    "echo": [
        span(B, 7, None, "job echo", "job.run", "echo", 10, 11, attrs={"job.id": J3}),
        span(C, 8, None, "activation echo", "activation", "echo", 20, 21),
        span(D, 9, None, "start echo", "worker", "echo", 30, 30.5),
    ],
}


def tag(trace: str, n: int, job: str | None = None) -> str:
    return f"[trace={trace} span={sid(n)}{f' job={job}' if job else ''}]"


LOGS: dict[str, list[tuple[float, str, str]]] = {  # file stem -> (seconds, stream, text)
    "greeter": [
        (0.5, "out", f"INFO app.greeter: conversation started {tag(A, 1)}"),
        (1.1, "out", f"INFO app.greeter: asking support {tag(A, 2, J1)}"),
        (1.9, "out", "an untagged line"),
        (3.6, "out", f"INFO app.greeter: looking up {tag(A, 5, J2)}"),
    ],
    "support": [
        (1.3, "err", f"WARNING app.support: no forecast {tag(A, 3, J1)}"),
        (1.55, "out", f"INFO app.support: activated {tag(A, 4)}"),
        (4.3, "out", f"INFO app.support: handed off {tag(A, 6)}"),
    ],
    "echo": [
        (10.5, "out", f"INFO app.echo: echoing {tag(B, 7, J3)}"),
        (20.5, "out", f"INFO app.echo: other {tag(C, 8)} and more"),  # not a tag: not last
        (20.6, "out", f"INFO app.echo: other {tag(C, 8)}"),
    ],
    "_workers": [
        (1.4, "sup", f"support: job failed {tag(A, 3, J1)}"),
    ],
}


def stamp(seconds: float) -> str:
    at = datetime.fromtimestamp(T0 + seconds, UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds") + "Z"


def write_state(root: Path, extra_span_lines: Sequence[str] = ()) -> Path:
    """A stopped project's state directory with the span files and logs above."""
    state = root / ".workers" / "demo"
    for sub in ("logs", "traces"):
        (state / sub).mkdir(parents=True, mode=0o700)
    for parent in (root / ".workers", state):
        parent.chmod(0o700)
    for worker, lines in SPANS.items():
        text = "".join(json.dumps(line) + "\n" for line in lines)
        if worker == "support":
            text += "".join(line + "\n" for line in extra_span_lines)
        (state / "traces" / f"{worker}.jsonl").write_text(text)
    for stem, records in LOGS.items():
        (state / "logs" / f"{stem}.log").write_text(
            "".join(f"{stamp(t)} {stream} {text}\n" for t, stream, text in records))
    return state


@pytest.fixture
def project(tmp_path: Path, clis: Callable[[Path], Cli]) -> Cli:
    write_state(tmp_path)
    return clis(tmp_path)


def shown(stdout: str) -> list[tuple[str, str]]:
    """``workers logs`` lines as (worker, message without its tag)."""
    lines = []
    for line in stdout.splitlines():
        worker, _, text = line.partition(" | ")
        lines.append((worker.strip(), re.sub(r" \[trace=[^\]]*\]", "", text)))
    return lines


def one_line_error(result: Any, *words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- workers trace ------------------------------------------------------------------------


def tree(stdout: str) -> list[list[str]]:
    """The rows of the tree table, cells split on runs of two spaces or more."""
    rows = []
    for row in stdout.splitlines()[2:]:  # after the summary line and the header
        parts = re.split(r"(\s{2,})", row.rstrip())
        while re.fullmatch(r"[│ ]+", parts[0]):  # guides, then the name
            parts[:3] = ["".join(parts[:3])]
        rows.append(parts[::2])
    return rows


def test_trace_by_id_prefix_or_job_draws_the_tree(project):
    whole, short, by_job = project.run_many(("trace", A), ("trace", A[:12].upper()),
                                            ("trace", J1))
    for result in (whole, short, by_job):
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    assert whole.stdout == short.stdout
    first = whole.stdout.splitlines()[0]
    assert first.startswith(f"trace {A}: 6 spans, 2 workers, 5.000s, started ")
    assert by_job.stdout.splitlines()[0].startswith(f"job {J1} in trace {A}: 6 spans")
    assert tree(whole.stdout) == [
        ["activation greeter", "greeter", "+0µs", "5.000s", "ok"],
        ["├─ job weather", "greeter", "+1.000s", "2.000s", "ok"],
        ["│  └─ job weather", "support", "+1.200s", "1.600s", "error: no forecast for Paris"],
        ["│     └─ activation support", "support", "+1.500s", "100.0ms", "ok"],
        ["└─ job lookup", "greeter", "+3.500s", "500.0ms", "ok"],
        ["handoff (parent not found)", "support", "+4.200s", "200.0ms", "ok"],
    ]


def test_trace_json_prints_the_spans_of_the_trace(project):
    result = project.run("trace", J3, "--json")
    assert result.returncode == 0, result.stderr
    spans = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(s["trace"], s["span"], s["attrs"]["job.id"]) for s in spans] == [(B, sid(7), J3)]


def test_trace_lists_recent_traces_newest_first(project):
    table, one, as_json, every = project.run_many(
        ("trace",), ("trace", "-n", "1"), ("trace", "--json"), ("trace", "--all", "--json"))
    assert table.returncode == 0, table.stderr
    rows = [re.split(r"\s{2,}", row.strip()) for row in table.stdout.splitlines()]
    assert rows[0] == ["TRACE", "STARTED", "DURATION", "SPANS", "ROOT", "WORKERS", "STATUS"]
    assert [(r[0], r[2], r[3], r[4], r[5], r[6]) for r in rows[1:]] == [
        (C[:16], "1.000s", "1", "activation echo (echo)", "echo", "ok"),
        (B[:16], "1.000s", "1", "job echo (echo)", "echo", "ok"),
        (A[:16], "5.000s", "6", "activation greeter (greeter)", "greeter, support", "error"),
    ]
    assert len(one.stdout.splitlines()) == 2 and C[:16] in one.stdout
    listed = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(t["trace"], t["spans"], t["status"], t["workers"]) for t in listed] == [
        (C, 1, "ok", ["echo"]), (B, 1, "ok", ["echo"]), (A, 6, "error", ["greeter", "support"])]
    # a worker's start or stop is a trace of its own, listed with --all
    assert [json.loads(line)["trace"] for line in every.stdout.splitlines()] == [D, C, B, A]


def test_trace_errors_are_one_line(project, tmp_path, clis):
    unknown, ambiguous, too_short = project.run_many(
        ("trace", "no-such-job"), ("trace", A[:8]), ("trace", A[:6]))
    one_line_error(unknown, "no trace or job 'no-such-job'", "project 'demo'")
    one_line_error(ambiguous, f"{A[:8]!r} starts 2 trace ids", A, C, "more digits")
    one_line_error(too_short, f"no trace or job {A[:6]!r}")
    empty = tmp_path / "empty"
    (empty / ".workers" / "other").mkdir(parents=True)
    nothing = clis(empty).run("trace")
    assert (nothing.returncode, nothing.stdout) == (
        0, "no traces recorded in project 'other' yet\n"), nothing.stderr


def test_names_in_spans_are_shown_as_they_are(tmp_path, clis):
    odd = {**SPANS["support"][0], "span": sid(40), "name": "[bold]x[/] \x1b[2J",
           "worker": "[/]"}
    write_state(tmp_path, [json.dumps(odd)])
    listed, drawn = clis(tmp_path).run_many(("trace", "--all"), ("trace", A))
    for result in (listed, drawn):
        assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "[/]" in listed.stdout and "\x1b" not in listed.stdout
    assert "│     └─ [bold]x[/] \\x1b[2J  [/]" in drawn.stdout, drawn.stdout


def test_trace_skips_bad_lines_and_says_how_many(tmp_path, clis):
    bad = {**SPANS["support"][0], "span": "zz"}
    write_state(tmp_path, [json.dumps(bad)[:50], json.dumps(bad), A * 5000])
    result = clis(tmp_path).run("trace", A)
    assert result.returncode == 0, result.stderr
    assert len(tree(result.stdout)) == 6
    assert result.stderr == "(3 lines of the span files are not spans; skipped)\n"


# -- workers logs --trace / --job ----------------------------------------------------------


CONVERSATION = [
    ("greeter", "INFO app.greeter: conversation started"),
    ("greeter", "INFO app.greeter: asking support"),
    ("support", "WARNING app.support: no forecast"),
    ("workers", "[support: job failed]"),
    ("support", "INFO app.support: activated"),
    ("greeter", "INFO app.greeter: looking up"),
    ("support", "INFO app.support: handed off"),
]
JOB_1 = [CONVERSATION[i] for i in (1, 2, 3, 4)]


def test_logs_of_a_trace_merge_every_worker_in_time_order(project):
    whole, short, one_worker = project.run_many(
        ("logs", "--trace", A), ("logs", "--trace", A[:10]), ("logs", "--trace", A, "support"))
    for result in (whole, short, one_worker):
        assert result.returncode == 0, result.stderr
    assert shown(whole.stdout) == CONVERSATION
    assert short.stdout == whole.stdout
    assert shown(one_worker.stdout) == [w for w in CONVERSATION if w[0] == "support"]


def test_logs_of_a_job_include_the_lines_of_the_spans_under_it(project):
    job, last, since, other = project.run_many(
        ("logs", "--job", J1), ("logs", "--job", J1, "-n", "1"),
        ("logs", "--job", J1, "--since", "2025-12-06T09:12:26.350Z"), ("logs", "--job", J3))
    for result in (job, last, since, other):
        assert result.returncode == 0, result.stderr
    assert shown(job.stdout) == JOB_1
    # -n counts the lines of the job, per worker
    assert shown(last.stdout) == [JOB_1[i] for i in (0, 2, 3)]
    assert shown(since.stdout) == JOB_1[2:]
    assert shown(other.stdout) == [("echo", "INFO app.echo: echoing")]


def test_logs_with_a_job_missing_from_the_spans_uses_the_tags(tmp_path, clis):
    write_state(tmp_path)
    for path in (tmp_path / ".workers" / "demo" / "traces").iterdir():
        path.unlink()
    result = clis(tmp_path).run("logs", "--job", J1)
    assert result.returncode == 0, result.stderr
    assert shown(result.stdout) == [JOB_1[i] for i in (0, 1, 2)]  # not the span under it


def test_logs_trace_and_job_errors_are_one_line(project):
    both, bad, ambiguous, unknown_job, unknown_trace = project.run_many(
        ("logs", "--trace", A, "--job", J1), ("logs", "--trace", "xyz"),
        ("logs", "--trace", A[:8]), ("logs", "--job", "nobody-1"),
        ("logs", "--trace", "abcdef0123"))
    one_line_error(both, "--trace and --job")
    one_line_error(bad, "--trace: expected a trace id", "'xyz'")
    one_line_error(ambiguous, "starts 2 trace ids")
    one_line_error(unknown_job, "no job 'nobody-1'", "project 'demo'")
    one_line_error(unknown_trace, "no trace 'abcdef0123'")


# -- the pieces ----------------------------------------------------------------------------


def test_parse_tag_only_at_the_end_of_a_line():
    with_job = parse_tag(f"x {tag(A, 1, J1)}")
    assert with_job is not None and (with_job.trace, with_job.span, with_job.job) == (
        A, sid(1), J1)
    found = parse_tag(f"hello {tag(A, 2)}")
    assert found is not None and (found.trace, found.span, found.job) == (A, sid(2), None)
    assert parse_tag(f"{tag(A, 2)} then more") is None
    assert parse_tag(f"[trace={A.upper()} span={sid(2)}]") is None
    assert parse_tag("no tag]") is None


def test_a_job_id_with_spaces_matches_its_tag():
    selector = LineSelector(Path("/nonexistent"), job="my job]1")
    assert selector(record(1, "w", f"INFO x {tag(A, 1, 'my_job_1')}"))
    assert not selector(record(1, "w", f"INFO x {tag(A, 1, 'my')}"))


def record(seconds: float, worker: str, text: str) -> LogRecord:
    return LogRecord(datetime.fromtimestamp(T0 + seconds, UTC), worker, "out", text)


def test_a_job_selector_learns_spans_written_while_it_follows(tmp_path):
    state = write_state(tmp_path)
    traces = state / "traces"
    now = [0.0]
    selector = LineSelector(traces, job="late-1", refresh=1.0, clock=lambda: now[0])
    below = record(1, "support", f"INFO child work {tag(B, 31)}")
    own = record(1, "echo", f"INFO in the job {tag(B, 30, 'late-1')}")
    assert selector(own) and not selector(below)
    with open(traces / "echo.jsonl", "a") as fh:  # the job's spans end, and are written
        for line in (span(B, 31, 30, "activation", "activation", "support", 12, 12.5),
                     span(B, 30, 7, "job late", "job.run", "echo", 11.5, 13,
                          attrs={"job.id": "late-1"})):
            fh.write(json.dumps(line) + "\n")
    assert not selector(below)  # read again only once a second has passed
    now[0] = 1.0
    assert selector(below) and selector.trace == B


async def test_follow_keeps_only_the_chosen_lines_backlog_and_new(tmp_path):
    import asyncio

    state = write_state(tmp_path)
    chosen = LineSelector(state / "traces", job=J1)
    stop = asyncio.Event()
    got: list[str] = []
    async for rec in follow(state / "logs", ["greeter", "support"], tail=1, stop=stop,
                            poll=0.01, keep=chosen):
        got.append(rec.text)
        if len(got) == 2:  # the backlog: the last line of the job of each worker
            with open(state / "logs" / "greeter.log", "a") as fh:
                fh.write(f"{stamp(30)} out not this one\n")
                fh.write(f"{stamp(31)} out INFO again {tag(A, 2, J1)}\n")
        if len(got) == 3:
            stop.set()
    assert [re.sub(r" \[trace=.*\]$", "", t) for t in got] == [
        "INFO app.greeter: asking support", "INFO app.support: activated", "INFO again"]


def test_rendering_escapes_control_characters_and_marks_errors_red():
    assert clean("no \x1b[31mred\x07") == "no \\x1b[31mred\\x07"
    line = span(A, 1, None, "x", "job.run", "w", 0, 1, status="error", error="bad\nthing")
    parsed = parse_span(json.dumps(line))
    assert parsed is not None
    text = status_text(parsed)
    assert text.plain == "error: bad\\nthing"
    assert {str(s.style) for s in text.spans} | {str(text.style)} >= {"red", "bold red"}
    rows = tree_rows(build_tree([parsed]))
    assert [(g, n.span.name) for g, n in rows] == [("", "x")]
