"""Jobs across a proxy pair joining two Redis channels.

On each channel the proxy runs on a runner of its own and the workers that use it on another
(two runners on one channel in this process, as two processes would be): a job for a stand-in
goes through Redis to the proxy's runner, which the registry names as the stand-in's host,
then over the WebSocket, then through Redis again on the other channel. Pipeline frames over
the same arrangement are in ``test_proxy_pipeline.py`` (its ``redis`` cases).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from pipecat_workers import BaseWorker, WorkerReadyData
from pipecat_workers.proxy import StandIn, WebSocketProxyClient
from tests.helpers import wait_until
from tests.pipeline.kit import TIMEOUT
from tests.proxy.kit import PATIENCE, Echo, Linked, ask, free_port, redis_channel, stream, within

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


@pytest.fixture
async def linked(redis_url: str) -> AsyncIterator[Linked]:
    async with AsyncExitStack() as stack:
        yield Linked(stack, redis_channel(redis_url), redis_channel(redis_url))


async def test_jobs_cross_both_ways_between_runners_of_two_channels(linked: Linked) -> None:
    caller, front = BaseWorker("caller"), Echo("front")
    desk, support = BaseWorker("desk"), Echo("support")
    await linked.host("b", desk, support)
    await linked.serve(expose=["desk", "support"])
    caller_runner = await linked.host("a", caller, front)
    await linked.connect()
    client = linked.client
    assert client is not None
    client_runner = linked.runner_of(client)
    assert client_runner is not caller_runner
    # The stand-in lives on the client's runner; the caller's runner knows it from Redis.
    assert caller_runner.get_worker("support") is None
    entry = caller_runner.registry.get("support")
    assert entry is not None and entry.runner == client_runner.name
    sent_before = caller_runner.bus.stats()["sent"].get("BusJobRequestMessage", 0)

    assert await within(ask(caller, "support", {"n": 1})) == {"by": "support",
                                                               "payload": {"n": 1}}
    chunks, response = await within(stream(caller, "support", 200), TIMEOUT * 2)
    assert chunks == list(range(200)) and response == {"sent": 200}
    assert caller_runner.bus.stats()["sent"].get("BusJobRequestMessage", 0) >= sent_before + 2
    # ...and the other way: a worker on B asks one on A, on a runner apart from the client.
    assert await within(ask(desk, "front", {"n": 2})) == {"by": "front", "payload": {"n": 2}}
    # Several jobs at once, both ways, each answered once by the right worker.
    answers = await within(asyncio.gather(
        *(ask(caller, "support", {"i": i}) for i in range(10)),
        *(ask(desk, "front", {"i": i}) for i in range(10))), TIMEOUT * 2)
    assert answers == ([{"by": "support", "payload": {"i": i}} for i in range(10)]
                       + [{"by": "front", "payload": {"i": i}} for i in range(10)])
    (session,) = client.proxy_stats()["sessions"]
    assert session["dropped"] == {} and session["lost_outgoing"] == 0


async def test_a_worker_watches_one_behind_the_proxy(linked: Linked) -> None:
    # The registry news crosses: a worker on B, on another runner than the server, hears that
    # a worker on A is ready, and that it is gone when it stops.
    desk = BaseWorker("desk")
    ready: list[str] = []
    lost: list[str] = []

    @desk.event_handler("on_worker_ready")
    async def on_ready(worker: BaseWorker, data: WorkerReadyData) -> None:
        ready.append(data.worker_name)

    @desk.event_handler("on_worker_lost")
    async def on_lost(worker: BaseWorker, data: object) -> None:
        lost.append(getattr(data, "worker_name", "?"))

    await linked.host("b", desk)
    await linked.serve(expose=["desk"])
    front = Echo("front")
    await linked.host("a", front)
    await linked.connect()
    await desk.watch_workers("front")
    await wait_until(lambda: ready == ["front"], timeout=PATIENCE)
    await front.stop()
    await wait_until(lambda: lost == ["front"], timeout=PATIENCE)
    assert all("front" not in r.registry for r in linked.runners["b"])


async def test_a_job_sent_before_the_link_is_up_waits_for_it(linked: Linked) -> None:
    # D25 on a network bus: the stand-in for a worker named in advance exists at once, so a
    # job sent to it from another runner goes through Redis to the client, which keeps it
    # until the server is there.
    port = free_port()
    client = WebSocketProxyClient("link", url=f"ws://127.0.0.1:{port}/",
                                  remote_worker_name="support")
    linked.client = client
    await linked.host("a", client)
    caller = BaseWorker("caller")
    caller_runner = await linked.host("a", caller)
    await wait_until(lambda: "support" in caller_runner.registry, timeout=PATIENCE)
    assert not client.connected
    answer = asyncio.ensure_future(ask(caller, "support", {"early": True},
                                       timeout=PATIENCE * 3))
    try:
        # It went through Redis to the client's runner, where its stand-in holds it.
        stand_in = linked.runner_of(client).get_worker("support")
        assert isinstance(stand_in, StandIn)
        await wait_until(lambda: len(stand_in.held) == 1, timeout=PATIENCE)
        assert not answer.done()
        await linked.host("b", Echo("support"))
        await linked.serve(expose=["support"], port=port)
        await client.wait_connected(PATIENCE)
        assert await within(answer, PATIENCE * 3) == {"by": "support",
                                                       "payload": {"early": True}}
    finally:
        answer.cancel()


async def test_a_client_exposes_no_stand_in_of_another_runner(redis_url: str) -> None:
    # Bus A has two clients on two runners (two processes), each linked to its own server:
    # "all but stand-ins" must leave out the other client's stand-in and the client itself,
    # or bus B1 gets a stand-in for a worker of a third bus, and one for a proxy.
    async with AsyncExitStack() as stack:
        bus_a = redis_channel(redis_url)
        one = Linked(stack, bus_a, redis_channel(redis_url))
        two = Linked(stack, bus_a, redis_channel(redis_url))
        await one.host("b", Echo("support"))
        await one.serve(expose=["support"])
        await two.host("b", Echo("billing"))
        await two.serve(expose=["billing"], name="expose2")
        await one.connect(Echo("front"))
        await two.connect(name="link2")
        await one.known("a", ["billing", "link2"])
        await one.known("b", ["front"])
        assert one.client is not None
        assert one.client.proxy_stats()["exposed"] == ["front"]
        assert not any(n in r.registry for r in one.runners["b"] for n in ("billing", "link2"))
