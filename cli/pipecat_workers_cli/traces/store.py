"""A minimal reader of span files, to the shared contract's signatures.

Stand-in until the shared reader lands: validates each line, skips what does not fit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipecat_workers_cli.supervisor.statedir import StateDir

_TRACE = re.compile(r"[0-9a-f]{32}")
_SPAN = re.compile(r"[0-9a-f]{16}")
_STATUSES = ("ok", "error", "cancelled")


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time: float
    attrs: Mapping[str, str | int | float | bool]


@dataclass(frozen=True, slots=True)
class SpanRecord:
    trace: str
    span: str
    parent: str | None
    name: str
    kind: str
    worker: str
    start: float
    end: float
    status: str
    error: str | None
    attrs: Mapping[str, str | int | float | bool]
    events: tuple[SpanEvent, ...]

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True, slots=True)
class TraceSummary:
    trace: str
    name: str
    worker: str
    start: float
    duration: float
    spans: int
    workers: tuple[str, ...]
    status: str
    errors: int


@dataclass(slots=True)
class SpanNode:
    span: SpanRecord
    children: list[SpanNode] = field(default_factory=list)
    orphan: bool = False


def traces_dir(state: StateDir) -> Path:
    return state.path / "traces"


def _attrs(value: Any) -> dict[str, str | int | float | bool] | None:
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items()
            if isinstance(k, str) and isinstance(v, str | int | float | bool)}


def _parse(line: str) -> SpanRecord | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    trace, span, parent = data.get("trace"), data.get("span"), data.get("parent")
    if not (isinstance(trace, str) and _TRACE.fullmatch(trace) and isinstance(span, str)
            and _SPAN.fullmatch(span)):
        return None
    if parent is not None and not (isinstance(parent, str) and _SPAN.fullmatch(parent)):
        return None
    start, end = data.get("start"), data.get("end")
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (start, end)):
        return None
    texts = [data.get(k) for k in ("name", "kind", "worker", "status")]
    if not all(isinstance(t, str) for t in texts) or data["status"] not in _STATUSES:
        return None
    attrs = _attrs(data.get("attrs", {}))
    if attrs is None:
        return None
    events = []
    for event in data.get("events") or []:
        if (isinstance(event, dict) and isinstance(event.get("name"), str)
                and isinstance(event.get("time"), int | float)):
            events.append(SpanEvent(event["name"], float(event["time"]),
                                    _attrs(event.get("attrs", {})) or {}))
    error = data.get("error")
    return SpanRecord(trace, span, parent, data["name"], data["kind"], data["worker"],
                      float(start), float(end), data["status"],  # type: ignore[arg-type]
                      error if isinstance(error, str) else None, attrs, tuple(events))


def read_spans(traces_dir: Path, *, trace: str | None = None,
               limit: int = 100_000) -> list[SpanRecord]:
    spans: list[SpanRecord] = []
    try:
        files = sorted(traces_dir.glob("*.jsonl*"))
    except OSError:
        return spans
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                for line in file:
                    if trace is not None and trace not in line:
                        continue
                    record = _parse(line)
                    if record is not None and (trace is None or record.trace == trace):
                        spans.append(record)
                        if len(spans) >= limit:
                            return spans
        except OSError:
            continue
    return spans


def recent_traces(traces_dir: Path, limit: int = 50) -> list[TraceSummary]:
    by_trace: dict[str, list[SpanRecord]] = {}
    for span in read_spans(traces_dir):
        by_trace.setdefault(span.trace, []).append(span)
    summaries = []
    for trace, spans in by_trace.items():
        ids = {s.span for s in spans}
        roots = [s for s in spans if s.parent is None or s.parent not in ids] or spans
        first = min(roots, key=lambda s: s.start)
        errors = sum(1 for s in spans if s.status == "error")
        start = min(s.start for s in spans)
        summaries.append(TraceSummary(trace, first.name, first.worker, start,
                                      max(s.end for s in spans) - start, len(spans),
                                      tuple(sorted({s.worker for s in spans})),
                                      "error" if errors else first.status, errors))
    summaries.sort(key=lambda t: t.start, reverse=True)
    return summaries[:limit]


def build_tree(spans: Iterable[SpanRecord]) -> list[SpanNode]:
    nodes = {s.span: SpanNode(s) for s in spans}
    roots = []
    for node in nodes.values():
        parent = node.span.parent
        if parent is not None and parent in nodes and parent != node.span.span:
            nodes[parent].children.append(node)
        else:
            node.orphan = parent is not None
            roots.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.span.start)
    roots.sort(key=lambda n: n.span.start)
    return roots
