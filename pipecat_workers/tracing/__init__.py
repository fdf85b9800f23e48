"""Tracing: one trace id follows a request across workers, processes and buses.

- :mod:`~pipecat_workers.tracing.context`: the W3C trace context every bus message can carry,
  and the context variable that makes what a handler sends inherit it.
- :mod:`~pipecat_workers.tracing.spans`: the spans the library makes (jobs, groups,
  activations, hand-offs, worker lifecycles) once something records them.
- :mod:`~pipecat_workers.tracing.files`: spans to a JSON-lines file (what ``workers up`` does).
- :mod:`~pipecat_workers.tracing.otel`: spans to OpenTelemetry (the ``otel`` extra).
- :mod:`~pipecat_workers.tracing.logs`: log lines tagged with their trace.
"""

from pipecat_workers.tracing.context import (
    TraceContext,
    current_context,
    current_job,
    current_trace,
)
from pipecat_workers.tracing.files import JsonLinesSpanExporter
from pipecat_workers.tracing.logs import TraceLogFilter, trace_tag
from pipecat_workers.tracing.spans import (
    InMemorySpanExporter,
    Span,
    SpanExporter,
    Tracer,
    span,
    tracer,
)

__all__ = [
    "InMemorySpanExporter",
    "JsonLinesSpanExporter",
    "Span",
    "SpanExporter",
    "TraceContext",
    "TraceLogFilter",
    "Tracer",
    "current_context",
    "current_job",
    "current_trace",
    "span",
    "trace_tag",
    "tracer",
]
