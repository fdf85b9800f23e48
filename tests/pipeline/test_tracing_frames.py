"""Bridged frames carry the trace of the conversation they belong to, both ways and across
a hand-off, on every bus kind; pipecat's own OpenTelemetry spans nest under the worker's."""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, StartFrame, TextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_workers.bus.messages import BusFrameMessage
from pipecat_workers.tracing import current_context, span
from tests.helpers import Observer, hosting, wait_until
from tests.pipeline.conftest import Split
from tests.pipeline.kit import TIMEOUT, Helper, Transport

DOWN = FrameDirection.DOWNSTREAM


async def test_frames_travel_in_the_conversations_trace(split: Split) -> None:
    greeter, support = Helper("greeter"), Helper("support")
    acme = Transport()
    await split.host(greeter, support)
    runner = await split.host(acme)
    observer = Observer("frames")
    runner.bus.subscribe(observer, role="observer")
    with span("call"):
        root = current_context()
        await acme.activate_worker("greeter")
    assert root is not None
    await wait_until(lambda: acme.bridge.peer == "greeter", timeout=TIMEOUT)
    await acme.queue_frame(TextFrame("hello"))
    await acme.below.wait_for(lambda r: r.texts(DOWN) == ["HELLO"])
    await greeter.activate_worker("support", deactivate_self=True)
    await wait_until(lambda: acme.bridge.peer == "support", timeout=TIMEOUT)
    await acme.queue_frame(TextFrame("again"))
    await acme.below.wait_for(lambda r: r.texts(DOWN)[-1:] == ["AGAIN"])
    frames = [m for m in observer.of_type(BusFrameMessage) if isinstance(m.frame, TextFrame)]
    directions = {(m.source, m.target) for m in frames}
    assert {("acme", "greeter"), ("greeter", "acme"), ("acme", "support"),
            ("support", "acme")} <= directions
    assert {m.trace.trace_id if m.trace else None for m in frames} == {root.trace_id}
    assert greeter.trace_context is None  # handed off: it holds no conversation now
    assert support.trace_context is not None
    assert support.trace_context.trace_id == root.trace_id


class _OpenTelemetryProbe(FrameProcessor):
    """Starts an OpenTelemetry span at the ``StartFrame`` with no explicit parent, as
    pipecat's ``TurnTraceObserver`` starts its "conversation" span, and one per text frame."""

    def __init__(self, tracer: Any) -> None:
        super().__init__(name="otel-probe")
        self._tracer = tracer

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._tracer.start_span("conversation").end()
        await self.push_frame(frame, direction)


async def test_pipecats_own_spans_nest_under_the_workers_pipeline_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pipecat_workers.pipeline import PipelineWorker
    from pipecat_workers.tracing import tracer
    from pipecat_workers.tracing.otel import OpenTelemetryBridge

    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer.set_opentelemetry(OpenTelemetryBridge(provider))
    try:
        worker = PipelineWorker(Pipeline([_OpenTelemetryProbe(provider.get_tracer("pipecat"))]),
                                name="bot", idle_timeout_secs=None)
        async with hosting(worker):
            await wait_until(lambda: any(s.name == "conversation"
                                         for s in memory.get_finished_spans()), timeout=TIMEOUT)
    finally:
        tracer.set_opentelemetry(None)
    spans = {s.name: s for s in memory.get_finished_spans()}
    pipeline = spans["pipeline bot"]
    conversation = spans["conversation"]
    assert conversation.parent is not None
    assert conversation.parent.span_id == pipeline.context.span_id
    assert conversation.context.trace_id == pipeline.context.trace_id
