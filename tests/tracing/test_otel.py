"""Spans as OpenTelemetry spans: same ids as on the bus, exported over OTLP."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter as OtelMemory,
)
from opentelemetry.trace import StatusCode

from pipecat_workers import BaseWorker, JobError, job
from pipecat_workers.bus import BusJobRequestMessage
from pipecat_workers.tracing import InMemorySpanExporter, current_context, tracer
from pipecat_workers.tracing.otel import OpenTelemetryBridge, otel_context
from tests.helpers import hosting, wait_until


@pytest.fixture
def otel() -> Iterator[tuple[TracerProvider, OtelMemory]]:
    provider = TracerProvider()
    memory = OtelMemory()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer.set_opentelemetry(OpenTelemetryBridge(provider))
    try:
        yield provider, memory
    finally:
        tracer.set_opentelemetry(None)
        provider.shutdown()


class Worker(BaseWorker):
    def __init__(self, name: str, provider: TracerProvider) -> None:
        super().__init__(name)
        self.app_tracer = provider.get_tracer("app")

    @job("work")
    async def work(self, message: BusJobRequestMessage) -> dict[str, Any]:
        # The application's own span, under the job's (as pipecat's would be).
        with self.app_tracer.start_as_current_span("app step", context=otel_context()):
            pass
        if message.payload and message.payload.get("fail"):
            raise ValueError("no luck")
        return {}


async def test_our_spans_are_opentelemetry_spans_with_the_same_ids(
        otel: tuple[TracerProvider, OtelMemory], spans: InMemorySpanExporter) -> None:
    provider, memory = otel
    caller, worker = BaseWorker("caller"), Worker("worker", provider)
    async with hosting(caller, worker):
        async with caller.job("worker", name="work", timeout=5):
            pass
        with pytest.raises(JobError):
            async with caller.job("worker", name="work", payload={"fail": True}, timeout=5):
                pass
        await wait_until(lambda: len([s for s in spans.spans if s.kind == "job.run"]) == 2,
                         timeout=5)
    exported = {(s.context.trace_id, s.context.span_id): s for s in memory.get_finished_spans()}
    ours = [s for s in spans.spans if s.kind.startswith("job")]
    for span in ours:  # each of ours is an OpenTelemetry span with the same ids and parent
        twin = exported[(span.context.trace_id, span.context.span_id)]
        assert twin.name == span.name
        assert (twin.parent.span_id if twin.parent else None) == span.parent_id
        assert twin.attributes is not None
        assert twin.attributes["pipecat_workers.worker"] == span.worker
    run_ok, run_failed = [s for s in ours if s.kind == "job.run"]
    assert exported[(run_failed.context.trace_id, run_failed.context.span_id)].status.status_code \
        is StatusCode.ERROR
    app_steps = [s for s in memory.get_finished_spans() if s.name == "app step"]
    assert [s.parent.span_id for s in app_steps if s.parent] == [
        run_ok.context.span_id, run_failed.context.span_id]


async def test_a_root_span_nests_under_the_applications_current_span(
        otel: tuple[TracerProvider, OtelMemory], spans: InMemorySpanExporter) -> None:
    provider, _ = otel
    caller, worker = BaseWorker("caller"), Worker("worker", provider)
    async with hosting(caller, worker):
        with provider.get_tracer("app").start_as_current_span("http request") as outer:
            async with caller.job("worker", name="work", timeout=5):
                seen = current_context()
    (request,) = [s for s in spans.spans if s.kind == "job.request"]
    assert request.parent_id == outer.get_span_context().span_id
    assert request.context.trace_id == outer.get_span_context().trace_id
    assert seen is None  # the block itself is not in one of our spans


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_export_configured_from_the_environment() -> None:
    """A process configured the standard way (OTEL_* variables) sends its spans over
    OTLP/HTTP, as service ``OTEL_SERVICE_NAME`` or the name the program gives."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = textwrap.dedent("""
        import asyncio
        from pipecat_workers import BaseWorker, WorkerRunner, job
        from pipecat_workers.tracing.otel import (configure_opentelemetry,
                                                  shutdown_opentelemetry)

        class W(BaseWorker):
            @job("work")
            async def work(self, message):
                return {}

        async def main():
            assert configure_opentelemetry("demo/worker")
            runner = WorkerRunner(handle_sigint=False)
            caller = BaseWorker("caller")
            await runner.add_workers(caller, W("w"))
            task = asyncio.ensure_future(runner.run())
            await caller.wait_registered()
            async with caller.job("w", name="work", timeout=5):
                pass
            await runner.cancel()
            await task
            shutdown_opentelemetry()

        asyncio.run(main())
    """)
    try:
        for service in (None, "from-env"):
            _Collector.received.clear()
            env = {**os.environ,
                   "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
            env.pop("OTEL_SERVICE_NAME", None)
            if service:
                env["OTEL_SERVICE_NAME"] = service
            subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
            names = set()
            services = set()
            for request in _Collector.received:
                for resource_spans in request.resource_spans:
                    for attribute in resource_spans.resource.attributes:
                        if attribute.key == "service.name":
                            services.add(attribute.value.string_value)
                    for scope in resource_spans.scope_spans:
                        names.update(span.name for span in scope.spans)
            assert services == {service or "demo/worker"}
            assert {"work -> w", "run work"} <= names
    finally:
        server.shutdown()
