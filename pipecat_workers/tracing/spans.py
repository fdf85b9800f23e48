"""Spans: timed, named steps of a trace (a job's request and run, a group, an activation).

The library starts spans at the points the issue of a message makes meaningful; whether they
are recorded is up to the process. :data:`tracer` records only once it has somewhere to put
them: an exporter (:meth:`Tracer.add_exporter`: a JSON-lines file, memory for tests) or
OpenTelemetry (:mod:`pipecat_workers.tracing.otel`). Until then ``tracer.recording`` is False,
no span is made, and messages pass on the trace context they came with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pipecat_workers.tracing.context import TraceContext, current_trace

if TYPE_CHECKING:
    from pipecat_workers.tracing.otel import OpenTelemetryBridge

logger = logging.getLogger("pipecat_workers.tracing")

SpanKind = Literal["job.request", "job.run", "job.group", "activation", "handoff", "worker",
                   "internal"]
SpanStatus = Literal["ok", "error", "cancelled"]
AttributeValue = str | int | float | bool

MAX_EVENTS = 64  # per span: a long stream is counted, not listed
MAX_TEXT = 1000  # characters of an attribute, event name or error kept


class Span:
    """One step of a trace. End it exactly once (:meth:`end`; later calls do nothing)."""

    __slots__ = ("name", "kind", "context", "parent_id", "worker", "start", "end_time",
                 "status", "error", "attributes", "events", "_tracer", "otel")

    RUNNING = "running"
    """What a span file says of a span that has started and not ended (see ``announce``)."""

    def __init__(self, tracer: Tracer, name: str, kind: SpanKind, context: TraceContext,
                 parent_id: int | None, worker: str,
                 attributes: Mapping[str, AttributeValue] | None) -> None:
        self._tracer = tracer
        self.name = name
        self.kind: SpanKind = kind
        self.context = context
        self.parent_id = parent_id
        self.worker = worker
        self.start = time.time()
        self.end_time: float | None = None
        self.status: SpanStatus = "ok"
        self.error: str | None = None
        self.attributes: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        self.events: list[tuple[str, float, dict[str, AttributeValue]]] = []
        self.otel: Any = None  # the OpenTelemetry span, when the bridge is on

    @property
    def ended(self) -> bool:
        return self.end_time is not None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is None:
            self.attributes[key] = _clip(value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None
                  ) -> None:
        """Note a moment in the span (kept up to :data:`MAX_EVENTS`)."""
        if self.end_time is None and len(self.events) < MAX_EVENTS:
            self.events.append((name[:MAX_TEXT], time.time(),
                                {k: _clip(v) for k, v in attributes.items()} if attributes
                                else {}))

    def end(self, status: SpanStatus = "ok", error: str | None = None) -> None:
        """Close the span and hand it to the exporters."""
        if self.end_time is not None:
            return
        self.end_time = time.time()
        self.status = status
        self.error = None if error is None else str(error)[:MAX_TEXT]
        self._tracer._finish(self)

    def to_record(self) -> dict[str, Any]:
        """The span as one JSON-friendly object (the span files' format)."""
        record: dict[str, Any] = {
            "trace": self.context.trace_hex,
            "span": self.context.span_hex,
            "parent": None if self.parent_id is None else f"{self.parent_id:016x}",
            "name": self.name,
            "kind": self.kind,
            "worker": self.worker,
            "start": self.start,
            "end": self.end_time if self.end_time is not None else self.start,
            "status": self.status,
        }
        if self.error is not None:
            record["error"] = self.error
        record["attrs"] = self.attributes
        record["events"] = [{"name": n, "time": t, "attrs": a} for n, t, a in self.events]
        return record

    def __repr__(self) -> str:
        return f"<Span {self.name!r} {self.kind} {self.context.traceparent}>"


def _clip(value: AttributeValue) -> AttributeValue:
    if type(value) is str and len(value) > MAX_TEXT:
        return value[:MAX_TEXT]
    if type(value) not in (str, int, float, bool):
        return str(value)[:MAX_TEXT]
    return value


class SpanExporter(ABC):
    """Receives each span when it ends. ``export`` runs on the event loop: keep it quick."""

    @abstractmethod
    def export(self, span: Span) -> None:
        """Take one ended span."""

    def started(self, span: Span) -> None:
        """A long span began (a conversation's session): an exporter that readers follow
        live may say so now; ``export`` still follows when it ends."""

    def shutdown(self) -> None:
        """Flush and release what the exporter holds; called when it is removed."""


class InMemorySpanExporter(SpanExporter):
    """Keeps the newest ``limit`` ended spans, oldest first: for tests and benchmarks."""

    def __init__(self, limit: int = 100_000) -> None:
        self.spans: deque[Span] = deque(maxlen=limit)

    def export(self, span: Span) -> None:
        self.spans.append(span)

    def clear(self) -> None:
        self.spans.clear()


class Tracer:
    """Makes spans when something records them; otherwise only passes contexts on."""

    def __init__(self) -> None:
        self._exporters: list[SpanExporter] = []
        self._otel: OpenTelemetryBridge | None = None
        self._failed: set[int] = set()
        self.recording = False
        """Whether spans are made: an exporter is set or OpenTelemetry is bridged."""

    def add_exporter(self, exporter: SpanExporter) -> None:
        """Send every span that ends from now on to ``exporter`` too."""
        if exporter not in self._exporters:
            self._exporters.append(exporter)
        self._update()

    def remove_exporter(self, exporter: SpanExporter) -> None:
        """Stop sending spans to ``exporter``, and shut it down."""
        if exporter in self._exporters:
            self._exporters.remove(exporter)
            exporter.shutdown()
        self._update()

    def set_opentelemetry(self, bridge: OpenTelemetryBridge | None) -> None:
        """Make spans as OpenTelemetry spans too (their ids are OpenTelemetry's), or stop."""
        self._otel = bridge
        self._update()

    @property
    def opentelemetry(self) -> OpenTelemetryBridge | None:
        return self._otel

    def _update(self) -> None:
        self.recording = bool(self._exporters) or self._otel is not None

    def start_span(
        self, name: str, kind: SpanKind, *, parent: TraceContext | None, worker: str,
        attributes: Mapping[str, AttributeValue] | None = None, announce: bool = False,
    ) -> Span:
        """A new span, child of ``parent`` (a new trace if ``None``). Callers check
        :attr:`recording` first when they can pass the context on instead. ``announce``
        tells the exporters now (:meth:`SpanExporter.started`), for a span that may last
        long: who holds a conversation is then seen while it does."""
        otel = self._otel
        if otel is not None:
            context, parent_id, otel_span = otel.start(name, kind, parent, worker, attributes)
        else:
            context = parent.child() if parent is not None else TraceContext.new_root()
            parent_id = parent.span_id if parent is not None else None
            otel_span = None
        span = Span(self, name, kind, context, parent_id, worker, attributes)
        span.otel = otel_span
        if announce:
            for exporter in self._exporters:
                self._call(exporter.started, span)
        return span

    def _finish(self, span: Span) -> None:
        if span.otel is not None and self._otel is not None:
            self._otel.end(span)
        for exporter in self._exporters:
            self._call(exporter.export, span)

    def _call(self, method: Callable[[Span], None], span: Span) -> None:
        try:
            method(span)
        except Exception:  # an exporter's failure must not stop the work it traces
            owner = getattr(method, "__self__", method)
            if id(owner) not in self._failed:
                self._failed.add(id(owner))
                logger.exception("span exporter %r failed (further failures are not "
                                 "logged)", owner)


tracer = Tracer()
"""The process's tracer."""


@contextmanager
def span(name: str, *, worker: str = "", kind: SpanKind = "internal",
         attributes: Mapping[str, AttributeValue] | None = None,
         ) -> Iterator[Span | None]:
    """Run a block as a span of the current trace (a new trace if there is none), so that
    what it sends carries that trace: a conversation's root, say. Yields the span, or
    ``None`` when nothing records (the block then still runs in one trace)."""
    parent = current_trace.get()
    if not tracer.recording:
        token = current_trace.set(parent if parent is not None else TraceContext.new_root())
        try:
            yield None
        finally:
            current_trace.reset(token)
        return
    made = tracer.start_span(name, kind, parent=parent, worker=worker, attributes=attributes)
    token = current_trace.set(made.context)
    try:
        yield made
    except asyncio.CancelledError:
        made.end("cancelled")
        raise
    except Exception as exc:
        made.end("error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        current_trace.reset(token)
        made.end()
