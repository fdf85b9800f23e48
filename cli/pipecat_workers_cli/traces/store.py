"""Reading a project's span files: spans, a trace's tree, the recent traces.

Every worker process writes ``<state dir>/traces/<worker>.jsonl``, one span per line as the
span ends, rotated to ``<worker>.jsonl.1`` (one backup). Files are read from their end
backwards, so the newest spans come first and a query stops as soon as it has its answer;
no more than :data:`MAX_FILE_BYTES` of the end of a file is ever read. Each line is validated
(:func:`~pipecat_workers_cli.traces.records.parse_span`); one that is not a span is skipped
and counted in :class:`ReadStats`. Nothing here raises on what a file holds.

No click or rich here: the commands and the dashboard render what these functions return.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.traces.records import (
    MAX_LINE_BYTES,
    TRACE_ID,
    SpanEvent,
    SpanRecord,
    parse_span,
)

__all__ = [
    "MAX_FILE_BYTES",
    "ReadStats",
    "SpanEvent",
    "SpanNode",
    "SpanRecord",
    "TraceSummary",
    "build_tree",
    "find_trace_of_job",
    "match_traces",
    "parse_span",
    "read_spans",
    "recent_traces",
    "traces_dir",
    "walk",
]

MAX_FILE_BYTES = 16 * 1024 * 1024
"""How much of the end of one file is read at most (a writer rotates at 8 MiB)."""

SUFFIX = ".jsonl"
_BLOCK_SIZE = 64 * 1024
_SCAN = 20_000  # spans read to list the recent traces


@dataclass(slots=True)
class ReadStats:
    """What a read met besides spans; pass one to a reading function to learn it."""

    files: int = 0  # span files read (a file that could not be opened is not counted)
    skipped: int = 0  # lines that are not valid spans
    capped: bool = False  # a file was not read to its start (size cap, or enough spans)


@dataclass(frozen=True, slots=True, eq=False)
class SpanNode:
    """A span in its trace's tree; ``orphan`` if its parent span was not found."""

    span: SpanRecord
    children: list[SpanNode] = field(default_factory=list)  # in start order
    orphan: bool = False


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One trace at a glance, as ``workers trace`` lists them."""

    trace: str
    name: str  # its root span's (the earliest root, if several)
    worker: str  # the worker of that root span
    start: float  # of its earliest span, epoch seconds
    duration: float  # from its earliest start to its latest end
    spans: int
    workers: tuple[str, ...]  # every worker with a span in it, sorted
    status: str  # "error" if any span errored, else its root's status
    errors: int  # spans that errored


def traces_dir(state: StateDir) -> Path:
    """Where a project's workers write their span files."""
    return state.path / "traces"


def read_spans(traces_dir: Path, *, trace: str | None = None, limit: int = 100_000,
               stats: ReadStats | None = None) -> list[SpanRecord]:
    """The newest ``limit`` spans of every file (rotated ones too), oldest first.

    Args:
        traces_dir: The directory of span files; a missing one holds no spans.
        trace: Only the spans of this trace (32 lowercase hex digits).
        limit: How many spans at most; the newest (by end) are kept.
        stats: Filled with what the read met.

    Returns:
        The spans in start order, each once (a span found twice, as during a rotation, is
        kept once).
    """
    stats = stats if stats is not None else ReadStats()
    if trace is not None and not TRACE_ID.fullmatch(trace):
        return []
    needle = trace.encode() if trace is not None else None
    seen: set[tuple[str, str]] = set()
    spans: list[SpanRecord] = []
    with _newest_first(traces_dir, needle, stats) as newest:
        for span in newest:
            if len(spans) >= limit:
                stats.capped = True
                break
            if (trace is None or span.trace == trace) and _first(seen, span):
                spans.append(span)
    spans.reverse()  # written order, which ties of the sort keep
    spans.sort(key=lambda s: (s.start, s.end))
    return spans


def find_trace_of_job(traces_dir: Path, job_id: str, *,
                      stats: ReadStats | None = None) -> str | None:
    """The trace of the newest span about job ``job_id`` (its ``job.id``), if any."""
    if not job_id:
        return None
    needle = json.dumps(job_id)[1:-1].encode()  # as the writer escapes it
    with _newest_first(traces_dir, needle, stats or ReadStats()) as newest:
        for span in newest:
            if span.job_id == job_id:
                return span.trace
    return None


def match_traces(traces_dir: Path, prefix: str, *, stats: ReadStats | None = None) -> set[str]:
    """The trace ids that start with ``prefix`` (lowercase hex), as git matches a short id."""
    prefix = prefix.lower()
    if not prefix or len(prefix) > 32 or not all(c in "0123456789abcdef" for c in prefix):
        return set()
    with _newest_first(traces_dir, prefix.encode(), stats or ReadStats()) as newest:
        return {span.trace for span in newest if span.trace.startswith(prefix)}


def recent_traces(traces_dir: Path, limit: int = 50, *, scan: int = _SCAN,
                  stats: ReadStats | None = None) -> list[TraceSummary]:
    """The ``limit`` traces that started last, newest first.

    Only the newest ``scan`` spans are read: a trace older than those is not listed, and
    one partly older is summed up from the spans read.
    """
    by_trace: dict[str, list[SpanRecord]] = {}
    for span in read_spans(traces_dir, limit=scan, stats=stats):
        by_trace.setdefault(span.trace, []).append(span)
    summaries = [_summary(trace, spans) for trace, spans in by_trace.items()]
    summaries.sort(key=lambda s: s.start, reverse=True)
    return summaries[:limit]


def build_tree(spans: Iterable[SpanRecord]) -> list[SpanNode]:
    """The spans as trees: roots in start order, each node's children in start order.

    A span whose parent is not among ``spans`` is a root, marked orphan (its parent is in
    no file read, or outside the system). A span given twice is kept once. Parents that
    loop (only a forged file can do that) are cut at the loop's earliest span, an orphan.
    """
    first: dict[tuple[str, str], SpanRecord] = {}
    for span in spans:
        first.setdefault((span.trace, span.span), span)

    def parent_key(span: SpanRecord) -> tuple[str, str] | None:
        key = (span.trace, span.parent or "")
        return key if span.parent not in (None, span.span) and key in first else None

    nodes = {key: SpanNode(span, orphan=span.parent is not None and parent_key(span) is None)
             for key, span in first.items()}
    roots: list[SpanNode] = []
    for node in nodes.values():
        above = parent_key(node.span)
        (roots if above is None else nodes[above].children).append(node)
    reached = {id(n) for _, n in walk(roots)}
    for node in sorted((n for n in nodes.values() if id(n) not in reached), key=_start_order):
        if id(node) in reached:
            continue  # in a loop cut already
        above = parent_key(node.span)
        assert above is not None  # only a node with a parent can be out of reach
        siblings = nodes[above].children
        del siblings[next(i for i, n in enumerate(siblings) if n is node)]
        cut = SpanNode(node.span, node.children, orphan=True)
        roots.append(cut)
        reached.update(id(n) for _, n in walk([cut]))
    for _, node in walk(roots):
        node.children.sort(key=_start_order)
    roots.sort(key=_start_order)
    return roots


def walk(roots: Iterable[SpanNode]) -> Iterator[tuple[int, SpanNode]]:
    """Every node under ``roots`` with its depth (0 for a root), depth first, in order.

    Iterative: a chain of spans as deep as a file can make does not exhaust the stack.
    """
    stack = [(0, node) for node in reversed(list(roots))]
    while stack:
        depth, node = stack.pop()
        yield depth, node
        stack.extend((depth + 1, child) for child in reversed(node.children))


def _start_order(node: SpanNode) -> tuple[float, float, str]:
    return node.span.start, node.span.end, node.span.span


def _first(seen: set[tuple[str, str]], span: SpanRecord) -> bool:
    key = (span.trace, span.span)
    if key in seen:
        return False
    seen.add(key)
    return True


def _summary(trace: str, spans: list[SpanRecord]) -> TraceSummary:
    ids = {s.span for s in spans}
    roots = [s for s in spans if s.parent is None or s.parent not in ids] or spans
    root = min(roots, key=lambda s: (s.start, s.end))
    start = min(s.start for s in spans)
    errors = sum(1 for s in spans if s.status == "error")
    return TraceSummary(
        trace=trace, name=root.name, worker=root.worker, start=start,
        duration=max(s.end for s in spans) - start, spans=len(spans),
        workers=tuple(sorted({s.worker for s in spans})),
        status="error" if errors else root.status, errors=errors)


# -- files -------------------------------------------------------------------------------


@contextlib.contextmanager
def _newest_first(traces_dir: Path, needle: bytes | None,
                  stats: ReadStats) -> Iterator[Iterator[SpanRecord]]:
    """The spans of every file, newest (by end) first, across files; lines without
    ``needle`` are passed over unparsed. The files are closed on leaving."""
    with ExitStack() as stack:
        streams: list[Iterator[SpanRecord]] = []
        for paths in _span_files(traces_dir):
            files = [(fh, size) for path in paths if (opened := _open(path, stack))
                     for fh, size in [opened]]
            stats.files += len(files)
            streams.append(itertools.chain.from_iterable(
                _spans_backwards(fh, size, needle, stats) for fh, size in files))
        yield heapq.merge(*streams, key=lambda span: span.end, reverse=True)


def _span_files(traces_dir: Path) -> list[list[Path]]:
    """Per writer, its current file then its backup: the order their spans were written,
    newest first."""
    writers: dict[str, list[Path]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(traces_dir):
            if entry.name.endswith(SUFFIX):
                writers.setdefault(entry.name.removesuffix(SUFFIX), []).insert(0, Path(entry))
            elif entry.name.endswith(SUFFIX + ".1"):
                writers.setdefault(entry.name.removesuffix(SUFFIX + ".1"), []).append(
                    Path(entry))
    return [writers[name] for name in sorted(writers)]


def _open(path: Path, stack: ExitStack) -> tuple[BinaryIO, int] | None:
    """``path`` opened for reading if it is a regular file (not a link, not a pipe that
    would block), with its size; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    fh = os.fdopen(fd, "rb")
    stack.callback(fh.close)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return None
    return fh, info.st_size


def _spans_backwards(fh: BinaryIO, size: int, needle: bytes | None,
                     stats: ReadStats) -> Iterator[SpanRecord]:
    for line in _lines_backwards(fh, size, stats):
        if needle is not None and needle not in line:
            continue
        span = parse_span(line)
        if span is None:
            stats.skipped += 1
        else:
            yield span


def _lines_backwards(fh: BinaryIO, size: int, stats: ReadStats) -> Iterator[bytes]:
    """The non-empty lines of the last :data:`MAX_FILE_BYTES` of ``fh``, last first.

    A line longer than :data:`~pipecat_workers_cli.traces.records.MAX_LINE_BYTES` is
    skipped (and counted) as it is read, never gathered whole.
    """
    floor = max(0, size - MAX_FILE_BYTES)
    position, rest, overlong = size, b"", False
    while position > floor:
        step = min(_BLOCK_SIZE, position - floor)
        position -= step
        fh.seek(position)
        block = fh.read(step)
        if len(block) < step:
            return  # truncated under us: what follows was read already, or is gone
        if overlong:
            cut = block.rfind(b"\n")
            if cut < 0:
                continue
            block, overlong, rest = block[:cut], False, b""
            stats.skipped += 1
        lines = (block + rest).split(b"\n")
        rest = lines[0]
        for line in reversed(lines[1:]):
            if line.strip():
                yield line
        if len(rest) > MAX_LINE_BYTES:
            overlong, rest = True, b""
    if floor > 0:
        stats.capped = True  # the rest of the line cut by the cap is left unread
    elif overlong:
        stats.skipped += 1
    elif rest.strip():
        yield rest
