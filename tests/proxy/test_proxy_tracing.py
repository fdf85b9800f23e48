"""A trace crosses a proxy pair: the job's handler behind the server runs in the caller's
trace, and with spans recorded its run span is a child of the request sent through the
link (the envelope, trace context included, crosses as it is)."""

from __future__ import annotations

from typing import Any

from pipecat_workers import BaseWorker, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage
from pipecat_workers.proxy import WebSocketProxyClient, WebSocketProxyServer
from pipecat_workers.tracing import InMemorySpanExporter, TraceContext, current_context, span
from tests.helpers import running, wait_until


class Traced(BaseWorker):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.contexts: list[TraceContext | None] = []

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        self.contexts.append(current_context())
        return {}


async def test_a_job_through_a_proxy_pair_stays_in_its_trace(
        spans: InMemorySpanExporter) -> None:
    support = Traced("support")
    back = WorkerRunner(name="back", handle_sigint=False)
    server = WebSocketProxyServer("front-door", worker_name=["support"], port=0)
    await back.add_workers(support, server)
    async with running(back):
        front = WorkerRunner(name="front", handle_sigint=False)
        caller = BaseWorker("caller")
        link = WebSocketProxyClient("link", url=f"ws://127.0.0.1:{server.port}/")
        await front.add_workers(caller, link)
        async with running(front):
            await link.wait_connected(10)
            await wait_until(lambda: "support" in front.registry, timeout=10)
            with span("conversation", worker="caller") as root:
                async with caller.job("support", name="echo", payload={}, timeout=10):
                    pass
    assert root is not None
    (request,) = [s for s in spans.spans if s.kind == "job.request"]
    (run,) = [s for s in spans.spans if s.kind == "job.run" and s.worker == "support"]
    assert request.parent_id == root.context.span_id
    assert run.parent_id == request.context.span_id
    assert run.context.trace_id == root.context.trace_id
    assert support.contexts == [run.context]
