"""One contract, every bus: what two runners sharing a channel can rely on.

The same tests run on the in-process bus (two runners sharing one ``AsyncQueueBus``), on the
embedded hub (a ``BusHub`` on a Unix socket), on Redis and on PGMQ (each runner with its own bus
on one channel, as separate processes would be). Backends are built lazily, so a run on the
local bus never touches a server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    JobError,
    JobEvent,
    JobStatus,
    Settings,
    WorkerActivationArgs,
    WorkerLostData,
    WorkerRunner,
    job,
)
from pipecat_workers.bus import (
    BusActivateWorkerMessage,
    BusDataMessage,
    BusJobRequestMessage,
    WorkerBus,
    register_message,
)
from tests.helpers import running, wait_until

FAST = Settings(heartbeat_interval=0.2, lost_after=3, end_grace=2.0, cancel_timeout=0.5)


@register_message(name="test.contract.note")
@dataclass(kw_only=True, slots=True)
class Note(BusDataMessage):
    n: int


class Peer(BaseWorker):
    """Answers jobs, streams, records notes and activations."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__(name, active=active)
        self.notes: list[int] = []
        self.activations: list[dict[str, Any] | None] = []
        self.lost: list[WorkerLostData] = []
        self.cancelled = asyncio.Event()

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"echo": message.payload, "by": self.name}

    @job("stream")
    async def stream(self, message: BusJobRequestMessage) -> None:
        await self.send_job_stream_start(message.job_id, {"n": message.payload["n"]})
        for i in range(message.payload["n"]):
            await self.send_job_stream_data(message.job_id, {"i": i})
        await self.send_job_stream_end(message.job_id, {"done": True})

    @job("hang")
    async def hang(self, message: BusJobRequestMessage) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.activations.append(args)

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)

    async def on_bus_message(self, message: Any) -> None:
        await super().on_bus_message(message)
        if isinstance(message, Note):
            self.notes.append(message.n)


MakeRunner = Callable[[str], WorkerRunner]


@pytest.fixture
def make_runner(new_bus: Callable[[], WorkerBus]) -> MakeRunner:
    return lambda name: WorkerRunner(name=name, bus=new_bus(), handle_sigint=False,
                                     settings=FAST)


async def pair(stack: AsyncExitStack, make_runner: MakeRunner, left: list[BaseWorker],
               right: list[BaseWorker]) -> tuple[WorkerRunner, WorkerRunner]:
    """Two running runners, each hosting its workers, that have found each other."""
    a, b = make_runner(f"a-{uuid.uuid4().hex[:6]}"), make_runner(f"b-{uuid.uuid4().hex[:6]}")
    await a.add_workers(*left)
    await b.add_workers(*right)
    await stack.enter_async_context(running(a))
    await stack.enter_async_context(running(b))
    await wait_until(lambda: all(w.name in a.registry for w in right)
                     and all(w.name in b.registry for w in left), timeout=5)
    return a, b


async def test_runners_discover_each_other(make_runner: MakeRunner) -> None:
    async with AsyncExitStack() as stack:
        a, b = await pair(stack, make_runner, [Peer("left")], [Peer("right")])
        assert a.registry.get("right").runner == b.name
        assert b.registry.get("left").runner == a.name


async def test_a_job_runs_across_runners(make_runner: MakeRunner) -> None:
    client = BaseWorker("client")
    async with AsyncExitStack() as stack:
        await pair(stack, make_runner, [client], [Peer("right")])
        async with client.job("right", name="echo", payload={"q": [1, "two"]}, timeout=5) as j:
            pass
        assert j.status is JobStatus.COMPLETED
        assert j.response == {"echo": {"q": [1, "two"]}, "by": "right"}


async def test_a_job_group_spans_runners(make_runner: MakeRunner) -> None:
    client = BaseWorker("client")
    async with AsyncExitStack() as stack:
        await pair(stack, make_runner, [client, Peer("near")], [Peer("far1"), Peer("far2")])
        async with client.job_group("near", "far1", "far2", name="echo", payload={},
                                    timeout=5) as g:
            pass
        assert {n: r["by"] for n, r in g.responses.items()} == {
            "near": "near", "far1": "far1", "far2": "far2"}
        assert g.result.ok


async def test_a_stream_arrives_whole_and_in_order(make_runner: MakeRunner) -> None:
    client = BaseWorker("client")
    async with AsyncExitStack() as stack:
        await pair(stack, make_runner, [client], [Peer("right")])
        seen: list[int] = []
        async with client.job("right", name="stream", payload={"n": 300}, timeout=10) as j:
            async for event in j:
                if event.type == JobEvent.STREAM_DATA:
                    seen.append(event.data["i"])
        assert seen == list(range(300))
        assert j.response == {"done": True}


async def test_targeted_messages_keep_their_order(make_runner: MakeRunner) -> None:
    sender, receiver = Peer("sender"), Peer("receiver")
    async with AsyncExitStack() as stack:
        await pair(stack, make_runner, [sender], [receiver])
        for n in range(200):
            await sender.send_bus_message(Note(source="sender", target="receiver", n=n))
        await wait_until(lambda: len(receiver.notes) == 200, timeout=5)
        assert receiver.notes == list(range(200))


async def test_a_broadcast_reaches_every_worker_once(make_runner: MakeRunner) -> None:
    left, right, other = Peer("left"), Peer("right"), Peer("other")
    async with AsyncExitStack() as stack:
        await pair(stack, make_runner, [left], [right, other])
        await left.send_bus_message(Note(source="left", n=7))
        await wait_until(lambda: right.notes and other.notes and left.notes, timeout=5)
        await asyncio.sleep(0.2)  # a duplicate would arrive by now
        assert (left.notes, right.notes, other.notes) == ([7], [7], [7])


async def test_activation_and_hand_off_cross_runners(make_runner: MakeRunner) -> None:
    greeter, support = Peer("greeter", active=False), Peer("support", active=False)
    async with AsyncExitStack() as stack:
        await pair(stack, make_runner, [greeter], [support])
        await support.send_bus_message(  # activated from the other runner
            BusActivateWorkerMessage(source="support", target="greeter"))
        await wait_until(lambda: greeter.active, timeout=5)
        await greeter.activate_worker("support", args=WorkerActivationArgs(metadata={"k": 1}),
                                      deactivate_self=True)
        assert not greeter.active
        await wait_until(lambda: support.active, timeout=5)
        assert support.activations == [{"metadata": {"k": 1}}]


async def test_cancelling_a_job_reaches_the_remote_handler(make_runner: MakeRunner) -> None:
    client, right = BaseWorker("client"), Peer("right")
    async with AsyncExitStack() as stack:
        await pair(stack, make_runner, [client], [right])
        job_id = await client.request_job("right", name="hang")
        await wait_until(lambda: right.active_jobs, timeout=5)
        await client.cancel_job_group(job_id, reason="enough")
        await asyncio.wait_for(right.cancelled.wait(), 5)
        await wait_until(lambda: not right.active_jobs, timeout=5)


async def test_a_runner_that_stops_ends_the_jobs_sent_to_it(make_runner: MakeRunner) -> None:
    client, right = Peer("client"), Peer("right")
    async with AsyncExitStack() as stack:
        a, b = await pair(stack, make_runner, [client], [right])
        await client.watch_workers("right")
        ctx = client.job("right", name="hang")
        await asyncio.wait_for(ctx.__aenter__(), 5)
        await wait_until(lambda: right.active_jobs, timeout=5)
        await b.cancel(reason="shutting down")
        with pytest.raises(JobError, match="right"):
            await asyncio.wait_for(ctx.__aexit__(None, None, None), 5)
        await wait_until(lambda: "right" not in a.registry, timeout=5)
        await wait_until(lambda: any(d.worker_name == "right" for d in client.lost), timeout=5)
