"""OpenTelemetry: our spans as OpenTelemetry spans, exported however the SDK is configured.

With the bridge on, every span the library makes is also an OpenTelemetry span, and its ids
are OpenTelemetry's: a trace seen in a tracing backend is the one the bus carries. A span
that starts a trace is a child of the OpenTelemetry span current in the code that started it
(an application's own span, say); code that runs while one of ours is current (a job's
handler) can make its own OpenTelemetry spans under ours with :func:`otel_context`.

:func:`configure_opentelemetry` sets the SDK up the standard way when the application has not:
a ``TracerProvider`` whose resource takes ``OTEL_SERVICE_NAME`` (else the name given), and an
OTLP exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
is set. It needs the ``otel`` extra (``pip install 'pipecat-workers[otel]'``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipecat_workers.errors import ConfigurationError
from pipecat_workers.tracing.context import TraceContext, current_trace
from pipecat_workers.tracing.spans import AttributeValue, SpanKind, tracer

if TYPE_CHECKING:
    from pipecat_workers.tracing.spans import Span

_INSTRUMENTATION = "pipecat_workers"


def _api() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigurationError(
            "OpenTelemetry is not installed: pip install 'pipecat-workers[otel]'") from None
    return trace


class OpenTelemetryBridge:
    """Makes each span an OpenTelemetry span of ``tracer_provider`` (the global one if
    ``None``)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        trace = _api()
        self._trace = trace
        self._tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=tracer_provider)
        from opentelemetry.trace import SpanKind as OtelKind
        from opentelemetry.trace import Status, StatusCode

        self._kinds = {"job.request": OtelKind.CLIENT, "job.run": OtelKind.SERVER,
                       "activation": OtelKind.CONSUMER, "handoff": OtelKind.PRODUCER}
        self._internal = OtelKind.INTERNAL
        self._error = Status(StatusCode.ERROR)
        self._status_error = StatusCode.ERROR

    def start(self, name: str, kind: SpanKind, parent: TraceContext | None, worker: str,
              attributes: Mapping[str, AttributeValue] | None,
              ) -> tuple[TraceContext, int | None, Any]:
        """Start the OpenTelemetry span; our context, parent id and the span."""
        trace = self._trace
        if parent is not None:
            remote = trace.SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                       trace_flags=trace.TraceFlags(parent.flags))
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        else:
            context = None  # under the application's current span, if any
        attrs: dict[str, AttributeValue] = {"pipecat_workers.kind": kind}
        if worker:
            attrs["pipecat_workers.worker"] = worker
        if attributes:
            attrs.update(attributes)
        otel_span = self._tracer.start_span(name, context=context,
                                            kind=self._kinds.get(kind, self._internal),
                                            attributes=attrs)
        own = otel_span.get_span_context()
        if not own.is_valid:  # a no-op provider: keep the trace going with our own ids
            ours = parent.child() if parent is not None else TraceContext.new_root()
            return ours, parent.span_id if parent is not None else None, None
        parent_id = getattr(getattr(otel_span, "parent", None), "span_id", None)
        return TraceContext(own.trace_id, own.span_id, int(own.trace_flags) or 1), \
            parent_id, otel_span

    def end(self, span: Span) -> None:
        otel_span = span.otel
        for key, value in span.attributes.items():
            otel_span.set_attribute(key, value)
        for name, at, attrs in span.events:
            otel_span.add_event(name, attributes=attrs, timestamp=int(at * 1e9))
        if span.status == "error":
            otel_span.set_status(self._trace.Status(self._status_error, span.error))
        elif span.status == "cancelled":
            otel_span.set_attribute("pipecat_workers.cancelled", True)
        assert span.end_time is not None
        otel_span.end(end_time=int(span.end_time * 1e9))


def otel_context() -> Any:
    """The OpenTelemetry context of the code running now: our current trace context as the
    parent, for an OpenTelemetry span of the application's own (``tracer.start_span(...,
    context=otel_context())``)."""
    trace = _api()
    ours = current_trace.get()
    if ours is None:
        return None
    remote = trace.SpanContext(ours.trace_id, ours.span_id, is_remote=True,
                               trace_flags=trace.TraceFlags(ours.flags))
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


def configure_opentelemetry(service_name: str | None = None, *,
                            environ: Mapping[str, str] | None = None) -> bool:
    """Bridge our spans to OpenTelemetry, setting up its SDK from the environment if the
    application has not set a tracer provider. Returns whether spans are exported anywhere
    (an OTLP endpoint is set, or the application had its own provider).

    Args:
        service_name: The service name when ``OTEL_SERVICE_NAME`` is not set.
        environ: Where to read the variables (default ``os.environ``).

    Raises:
        ConfigurationError: OpenTelemetry's SDK or its OTLP exporter is not installed.
    """
    env = os.environ if environ is None else environ
    trace = _api()
    provider = trace.get_tracer_provider()
    own = type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")
    if not own:
        endpoint = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        if not endpoint:
            return False
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry's SDK and OTLP exporter "
                "are not installed: pip install 'pipecat-workers[otel]'") from None
        name = env.get("OTEL_SERVICE_NAME") or service_name or "pipecat-workers"
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    tracer.set_opentelemetry(OpenTelemetryBridge(provider))
    return True


def shutdown_opentelemetry() -> None:
    """Flush what the SDK still holds (at the end of a process) and stop bridging."""
    bridge = tracer.opentelemetry
    tracer.set_opentelemetry(None)
    if bridge is None:
        return
    provider = _api().get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


@contextmanager
def background_context(span: Span | None) -> Iterator[None]:
    """For the long-lived tasks a worker starts (a pipeline's): started in the block, they
    belong to no trace of ours (what they send goes in the conversation the worker holds),
    and OpenTelemetry spans made in them (pipecat's) nest under ``span``."""
    token = current_trace.set(None)
    otel_token = None
    if span is not None and span.otel is not None:
        from opentelemetry import context, trace

        otel_token = context.attach(trace.set_span_in_context(span.otel))
    try:
        yield
    finally:
        if otel_token is not None:
            from opentelemetry import context

            context.detach(otel_token)
        current_trace.reset(token)
