"""One trace follows a request across workers: jobs, groups, hand-offs, logs (one process)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from pipecat_workers import BaseWorker, JobError, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage
from pipecat_workers.tracing import (
    InMemorySpanExporter,
    Span,
    TraceContext,
    TraceLogFilter,
    current_context,
    span,
)
from pipecat_workers.tracing.logs import TAG_PATTERN
from tests.helpers import hosting, running, wait_until


class Seen(BaseWorker):
    """Remembers the trace context each of its jobs ran in; ``relay`` asks ``next``."""

    def __init__(self, name: str, next_worker: str | None = None) -> None:
        super().__init__(name)
        self.contexts: list[TraceContext | None] = []
        self.next_worker = next_worker

    @job("work")
    async def work(self, message: BusJobRequestMessage) -> dict[str, Any]:
        self.contexts.append(current_context())
        if message.payload and message.payload.get("fail"):
            raise RuntimeError("asked to fail")
        if self.next_worker is not None:
            async with self.job(self.next_worker, name="work", timeout=5):
                pass
        return {"by": self.name}

    @job("stream")
    async def stream(self, message: BusJobRequestMessage) -> None:
        await self.send_job_stream_start(message.job_id)
        for i in range(3):
            await self.send_job_stream_data(message.job_id, {"i": i})
        await self.send_job_stream_end(message.job_id)

    @job("hang")
    async def hang(self, message: BusJobRequestMessage) -> None:
        await asyncio.Event().wait()


def _by_kind(spans: list[Span], kind: str) -> list[Span]:
    return [s for s in spans if s.kind == kind]


async def test_a_job_chain_continues_the_callers_trace_without_recording(
        new_bus: Callable[[], Any]) -> None:
    caller, first, second = BaseWorker("caller"), Seen("first", "second"), Seen("second")
    runners = [WorkerRunner(name=f"r{i}", bus=new_bus(), handle_sigint=False) for i in range(3)]
    for runner, worker in zip(runners, (caller, first, second), strict=True):
        await runner.add_workers(worker)
    async with running(runners[0]), running(runners[1]), running(runners[2]):
        await wait_until(lambda: "first" in runners[0].registry
                         and "second" in runners[1].registry, timeout=10)
        with span("conversation"):
            root = current_context()
            async with caller.job("first", name="work", timeout=10):
                pass
    assert root is not None
    # Nothing records: the context is passed on as it came, across every hop.
    assert first.contexts == [root]
    assert second.contexts == [root]


async def test_a_job_sent_outside_any_trace_starts_one_when_spans_are_recorded(
        spans: InMemorySpanExporter) -> None:
    caller, worker = BaseWorker("caller"), Seen("worker")
    async with hosting(caller, worker):
        for _ in range(2):
            async with caller.job("worker", name="work", timeout=5):
                pass
    requests = _by_kind(spans.spans, "job.request")
    assert [r.parent_id for r in requests] == [None, None]  # roots, in two traces
    assert requests[0].context.trace_id != requests[1].context.trace_id
    assert [c.trace_id if c else None for c in worker.contexts] == [
        r.context.trace_id for r in requests]


async def test_nothing_recording_makes_up_no_trace() -> None:
    caller, worker = BaseWorker("caller"), Seen("worker")
    async with hosting(caller, worker):
        async with caller.job("worker", name="work", timeout=5):
            pass
        with span("explicit"):  # asked for: a trace to pass on, even unrecorded
            async with caller.job("worker", name="work", timeout=5):
                pass
    assert worker.contexts[0] is None
    assert worker.contexts[1] is not None


async def test_job_group_spans_have_the_right_parents(
        new_bus: Callable[[], Any], spans: InMemorySpanExporter) -> None:
    caller = BaseWorker("caller")
    members = [Seen(f"m{i}") for i in range(3)]
    runners = [WorkerRunner(name=f"r{i}", bus=new_bus(), handle_sigint=False) for i in range(4)]
    for runner, worker in zip(runners, (caller, *members), strict=True):
        await runner.add_workers(worker)
    async with running(runners[0]), running(runners[1]), running(runners[2]), \
            running(runners[3]):
        await wait_until(lambda: all(f"m{i}" in runners[0].registry for i in range(3)),
                         timeout=10)
        with span("request", worker="caller") as root:
            async with caller.job_group("m0", "m1", "m2", name="work", timeout=10):
                pass
        await wait_until(lambda: len(_by_kind(spans.spans, "job.run")) == 3, timeout=5)
    assert root is not None
    (group,) = _by_kind(spans.spans, "job.group")
    requests = {s.attributes["job.target"]: s for s in _by_kind(spans.spans, "job.request")}
    runs = {s.worker: s for s in _by_kind(spans.spans, "job.run")}
    trace = root.context.trace_id
    assert group.parent_id == root.context.span_id
    assert sorted(requests) == sorted(runs) == ["m0", "m1", "m2"]
    for name, request in requests.items():
        assert request.parent_id == group.context.span_id
        assert runs[name].parent_id == request.context.span_id
        assert runs[name].attributes["job.id"] == group.attributes["group.id"]
        assert request.status == runs[name].status == "ok"
    for member in members:  # the handler ran in its run span
        assert member.contexts == [runs[member.name].context]
    assert {s.context.trace_id for s in spans.spans if s.kind.startswith("job")} == {trace}


async def test_job_outcomes_become_span_statuses(spans: InMemorySpanExporter) -> None:
    caller, worker = BaseWorker("caller"), Seen("worker")
    async with hosting(caller, worker):
        with pytest.raises(JobError, match="asked to fail"):
            async with caller.job("worker", name="work", payload={"fail": True}, timeout=5):
                pass
        async with caller.job("worker", name="stream", timeout=5) as streamed:
            async for _event in streamed:
                pass
        job_id = await caller.request_job("worker", name="hang")
        await wait_until(lambda: job_id in worker.active_jobs, timeout=5)
        await caller.cancel_job_group(job_id, reason="enough")
        await wait_until(lambda: len(_by_kind(spans.spans, "job.run")) == 3, timeout=5)
    failed, stream, hung = _by_kind(spans.spans, "job.run")
    assert failed.status == "error" and "asked to fail" in (failed.error or "")
    assert stream.status == "ok" and stream.attributes["stream.chunks"] == 3
    assert [name for name, _, _ in stream.events] == ["stream.start"]
    assert hung.status == "cancelled" and hung.attributes["job.reason"] == "enough"
    requests = _by_kind(spans.spans, "job.request")
    assert [r.status for r in requests] == ["error", "ok", "cancelled"]


class Agent(BaseWorker):
    """Hands the conversation to ``to`` when asked, as a voice agent's tool would."""

    def __init__(self, name: str, *, active: bool) -> None:
        super().__init__(name, active=active)
        self.sessions: list[TraceContext | None] = []

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.sessions.append(self.trace_context)
        if args and args.get("then"):
            # A task of the worker's own: it runs outside any handled message.
            self.create_task(self._pass_on(args["then"], args.get("after")))

    async def _pass_on(self, to: str, after: str | None) -> None:
        await asyncio.sleep(0.01)
        args = None if after is None else _Args({"then": after})
        await self.activate_worker(to, args=args, deactivate_self=True)


class _Args:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return self.data


async def test_a_handoff_chain_is_one_trace(spans: InMemorySpanExporter) -> None:
    greeter, support = Agent("greeter", active=False), Agent("support", active=False)
    starter = BaseWorker("starter")
    async with hosting(starter, greeter, support):
        await starter.activate_worker("greeter", args=_Args({"then": "support",
                                                             "after": "greeter"}))
        await wait_until(lambda: len(greeter.sessions) == 2 and greeter.active, timeout=5)
        await starter.deactivate_worker("greeter")
        await wait_until(lambda: not greeter.active, timeout=5)
    sessions = _by_kind(spans.spans, "activation")
    handoffs = _by_kind(spans.spans, "handoff")
    assert [s.worker for s in sorted(sessions, key=lambda s: s.start)] == [
        "greeter", "support", "greeter"]
    assert len({s.context.trace_id for s in sessions + handoffs}) == 1
    g1, sup, g2 = sorted(sessions, key=lambda s: s.start)
    h1, h2 = sorted(handoffs, key=lambda s: s.start)
    assert g1.parent_id is None  # the starter sent it from outside any trace
    assert (h1.parent_id, sup.parent_id) == (g1.context.span_id, h1.context.span_id)
    assert (h2.parent_id, g2.parent_id) == (sup.context.span_id, h2.context.span_id)
    assert h1.attributes == {"handoff.from": "greeter", "handoff.to": "support"}
    assert sup.attributes["activation.from"] == "greeter"
    # A session lasts while the worker holds the conversation.
    assert g1.end_time is not None and g1.end_time >= h1.start
    assert greeter.sessions == [g1.context, g2.context]


async def test_log_lines_name_their_trace_and_job(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.tracing.worker")

    class Logs(BaseWorker):
        @job("work")
        async def work(self, message: BusJobRequestMessage) -> None:
            logger.warning("working on it")

    caller, worker = BaseWorker("caller"), Logs("worker")
    caplog.handler.addFilter(TraceLogFilter())
    try:
        async with hosting(caller, worker):
            with span("conversation"):
                root = current_context()
                async with caller.job("worker", name="work", timeout=5) as ran:
                    pass
            logger.warning("outside")
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    assert root is not None
    tagged = {r.getMessage(): r.trace_tag for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "tests.tracing.worker"}
    match = TAG_PATTERN.search(tagged["working on it"])
    assert match is not None
    assert match[1] == root.trace_hex and match[3] == ran.job_id
    assert tagged["outside"] == ""
