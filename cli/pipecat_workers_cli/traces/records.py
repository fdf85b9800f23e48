"""One line of a span file, validated: what a worker wrote, or nothing.

A span file is written by a worker process, which runs the user's code: a line may be cut
short by a crash, written by hand, or made to hurt whoever reads it (huge, deeply nested,
wrong types). :func:`parse_span` answers a :class:`SpanRecord` only for a line that has
every field of the right type and size, and None for anything else; it never raises.
Fields beyond those are ignored, so a newer writer's lines still read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MAX_LINE_BYTES = 64 * 1024
"""A longer line is skipped unread: no span of ours comes near it."""

MAX_NAME = 2048  # characters of a span's name, kind or worker, of an event's name
MAX_TEXT = 4096  # characters of an error text or a string attribute (longer: cut)
MAX_ATTRS = 64  # attributes of a span or event (more: the first ones are kept)
MAX_EVENTS = 256  # events of a span (more: the first ones are kept)

STATUSES = ("ok", "error", "cancelled", "running")
"""How a span can end; ``running``: it had not ended when its line was written (a long span,
a conversation's session, is written when it starts too: the line written when it ends is
newer, and is the one read)."""

KINDS = ("job.request", "job.run", "job.group", "activation", "handoff", "worker")
"""The kinds written today; others are read too (a newer writer's), shown as they are."""

TRACE_ID = re.compile(r"[0-9a-f]{32}")
SPAN_ID = re.compile(r"[0-9a-f]{16}")

AttrValue = str | int | float | bool
Attrs = Mapping[str, AttrValue]
_NO_ATTRS: Attrs = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """Something that happened during a span (a stream started, a worker became ready)."""

    name: str
    time: float  # epoch seconds
    attrs: Attrs = field(default_factory=lambda: _NO_ATTRS)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One validated line of a span file: a span that ended (or was running, see
    :data:`STATUSES`)."""

    trace: str  # 32 lowercase hex digits
    span: str  # 16 lowercase hex digits
    parent: str | None  # the parent span's id; it may be in another file, or nowhere
    name: str
    kind: str
    worker: str
    start: float  # epoch seconds
    end: float
    status: str  # one of STATUSES
    error: str | None
    attrs: Attrs = field(default_factory=lambda: _NO_ATTRS)
    events: tuple[SpanEvent, ...] = ()

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return self.end - self.start

    @property
    def job_id(self) -> str | None:
        """The job this span is about (its ``job.id`` attribute), if any."""
        value = self.attrs.get("job.id")
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        """The span as a span file holds it (the fields read here)."""
        return {"trace": self.trace, "span": self.span, "parent": self.parent,
                "name": self.name, "kind": self.kind, "worker": self.worker,
                "start": self.start, "end": self.end, "status": self.status,
                "error": self.error, "attrs": dict(self.attrs),
                "events": [{"name": e.name, "time": e.time, "attrs": dict(e.attrs)}
                           for e in self.events]}


class _Invalid(Exception):
    """A line that is not a span of ours (internal: parse_span answers None)."""


def parse_span(line: bytes | str) -> SpanRecord | None:
    """The span on one line of a span file, or None if the line is not a valid span.

    Never raises, whatever the line holds.
    """
    raw = line.encode("utf-8", "replace") if isinstance(line, str) else line
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        data = json.loads(raw)
        return _record(data)
    except (ValueError, RecursionError, _Invalid):
        return None


def _record(data: Any) -> SpanRecord:
    if not isinstance(data, dict):
        raise _Invalid
    start, end = _time(data.get("start")), _time(data.get("end"))
    if end < start:
        raise _Invalid
    status = data.get("status")
    if status not in STATUSES:
        raise _Invalid
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise _Invalid
    parent = data.get("parent")
    return SpanRecord(
        trace=_hex_id(data.get("trace"), TRACE_ID),
        span=_hex_id(data.get("span"), SPAN_ID),
        parent=None if parent is None else _hex_id(parent, SPAN_ID),
        name=_name(data.get("name")),
        kind=_name(data.get("kind")),
        worker=_name(data.get("worker")),
        start=start,
        end=end,
        status=status,
        error=error[:MAX_TEXT] if error else None,
        attrs=_attrs(data.get("attrs")),
        events=_events(data.get("events")),
    )


def _hex_id(value: Any, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or not value.strip("0"):
        raise _Invalid
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise _Invalid
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid
    time = float(value)
    if not math.isfinite(time) or time < 0:
        raise _Invalid
    return time


def _attrs(value: Any) -> Attrs:
    """Attributes of primitive values; an entry of another type is dropped, not the line."""
    if value is None:
        return _NO_ATTRS
    if not isinstance(value, dict):
        raise _Invalid
    kept: dict[str, AttrValue] = {}
    for key, item in value.items():
        if len(kept) >= MAX_ATTRS:
            break
        if not isinstance(key, str) or not key or len(key) > MAX_NAME:
            continue
        if isinstance(item, str):
            kept[key] = item[:MAX_TEXT]
        elif isinstance(item, bool | int) or (isinstance(item, float) and math.isfinite(item)):
            kept[key] = item
    return MappingProxyType(kept) if kept else _NO_ATTRS


def _events(value: Any) -> tuple[SpanEvent, ...]:
    """Events of the right shape; one of another shape is dropped, not the line."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid
    kept: list[SpanEvent] = []
    for item in value[:MAX_EVENTS]:
        if not isinstance(item, dict):
            continue
        try:
            kept.append(SpanEvent(_name(item.get("name")), _time(item.get("time")),
                                  _attrs(item.get("attrs"))))
        except _Invalid:
            continue
    return tuple(kept)
