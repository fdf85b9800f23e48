"""The dashboard's view of the span files: the latest traces, and one trace as a tree.

Reading span files is file I/O: the callers run these functions in a thread. Everything in
the files is untrusted; what goes to the page is plain data, and the tree is bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipecat_workers_cli.traces.store import SpanNode, build_tree, read_spans, recent_traces

MAX_SPANS = 5_000  # spans of one trace sent to the page
MAX_DEPTH = 100  # levels of nesting sent (deeper spans are left out, and it says so)
RECENT = 30  # traces listed
SCAN = 5_000  # newest spans read to list them (a few milliseconds' work, not the whole files)


def files_stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the span files: when it has not changed,
    the list of traces has not either."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ()
    stamp = []
    for path in entries:
        try:
            info = path.stat()
        except OSError:
            continue
        stamp.append((path.name, info.st_size, info.st_mtime_ns))
    return tuple(stamp)


def latest(directory: Path, limit: int = RECENT) -> list[dict[str, Any]]:
    """The newest traces first, as the page lists them (not those that only tell a worker's
    start or stop: one per worker and restart, they would push the jobs out of the list)."""
    found = []
    for summary in recent_traces(directory, limit=limit, scan=SCAN, lifecycle=False):
        found.append({"trace": summary.trace, "name": summary.name, "start": summary.start,
                      "duration": max(0.0, summary.duration), "spans": summary.spans,
                      "workers": list(summary.workers), "status": summary.status,
                      "errors": summary.errors})
    return found


def tree(directory: Path, trace: str) -> dict[str, Any]:
    """One trace: its spans as nested nodes (roots in start order), at most
    :data:`MAX_SPANS` of them; ``truncated`` says when some were left out."""
    spans = read_spans(directory, trace=trace, limit=MAX_SPANS + 1)
    truncated = len(spans) > MAX_SPANS
    roots = build_tree(spans[:MAX_SPANS])
    start = min((s.start for s in spans), default=0.0)
    end = max((s.end for s in spans), default=0.0)
    return {"trace": trace, "start": start, "end": end, "truncated": truncated,
            "roots": [_node(root, set(), 0) for root in roots]}


def _node(node: SpanNode, seen: set[str], depth: int) -> dict[str, Any]:
    """One span and its children (a span met twice, in a malformed file, is not repeated)."""
    span = node.span
    seen.add(span.span)
    children = [] if depth >= MAX_DEPTH else [
        _node(child, seen, depth + 1) for child in node.children if child.span.span not in seen]
    return {
        "span": span.span, "name": span.name, "kind": span.kind, "worker": span.worker,
        "start": span.start, "end": span.end, "duration": span.duration,
        "status": span.status, "error": span.error, "orphan": node.orphan,
        "attrs": dict(span.attrs),
        "events": [{"name": e.name, "time": e.time} for e in span.events[:50]],
        "children": children,
        "cut": len(children) < len(node.children),
    }
