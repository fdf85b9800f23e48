"""Proxy workers over a real WebSocket on loopback: jobs, hand-off, reconnection, security.

Two runners in one process, each on its own bus: the server side exposes workers through a
WebSocketProxyServer, the client side reaches them through a WebSocketProxyClient. The
reference's defects D21-D25 each have a test here (frames and pipelines are in
test_proxy_pipeline.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect

from pipecat_workers import BaseWorker, JobError, WorkerRunner, job
from pipecat_workers.bus.messages import (
    BusEndMessage,
    BusEndWorkerMessage,
    BusJobRequestMessage,
    BusMessage,
)
from pipecat_workers.bus.serializer import JSONMessageSerializer
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.proxy import LinkLimits, WebSocketProxyClient, WebSocketProxyServer
from pipecat_workers.proxy.messages import ProxyHelloMessage, ProxyWelcomeMessage
from pipecat_workers.proxy.session import LINK_CHANNEL
from pipecat_workers.types import WorkerLostData, WorkerReadyData, WorkerRegistryEntry
from tests.helpers import leftover_tasks, running, wait_until
from tests.proxy.relay import Relay

WAIT = 10.0  # seconds any condition may take on a loaded machine


class Support(BaseWorker):
    """The remote worker: jobs of every kind, and a record of what it was sent."""

    def __init__(self, name: str = "support", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.requests: list[BusJobRequestMessage] = []
        self.activations: list[dict[str, Any] | None] = []
        self.release = asyncio.Event()
        self.messages: list[BusMessage] = []

    async def on_bus_message(self, message: BusMessage) -> None:
        self.messages.append(message)
        await super().on_bus_message(message)

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.activations.append(args)

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        self.requests.append(message)
        return {"echo": message.payload, "by": self.name}

    @job("count")
    async def count(self, message: BusJobRequestMessage) -> None:
        self.requests.append(message)
        await self.send_job_stream_start(message.job_id, {"of": 3})
        for i in range(3):
            await self.send_job_update(message.job_id, {"progress": i})
            await self.send_job_stream_data(message.job_id, {"n": i})
        await self.send_job_stream_end(message.job_id, {"done": True})

    @job("hold")
    async def hold(self, message: BusJobRequestMessage) -> dict[str, Any]:
        self.requests.append(message)
        await self.release.wait()
        return {"held": True}


class Caller(BaseWorker):
    """A client-side worker that watches remote workers."""

    def __init__(self, name: str = "caller", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.ready: list[str] = []
        self.lost: list[WorkerLostData] = []

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        self.ready.append(data.worker_name)

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Side:
    """One side of a proxy pair: a runner, running, with its workers."""

    def __init__(self, runner: WorkerRunner, proxy: Any, workers: dict[str, BaseWorker]) -> None:
        self.runner = runner
        self.proxy = proxy
        self.workers = workers


@asynccontextmanager
async def server_side(*, port: int = 0, name: str = "srv", support: Support | None = None,
                      **options: Any) -> AsyncIterator[Side]:
    runner = WorkerRunner(name=name)
    support = support or Support()
    options.setdefault("worker_name", ["support"])
    server = WebSocketProxyServer("front-door", port=port, **options)
    await runner.add_workers(support, server)
    async with running(runner):
        yield Side(runner, server, {"support": support})


@asynccontextmanager
async def client_side(url: str, *, connect_wait: bool = True, name: str = "cli",
                      caller: Caller | None = None, **options: Any) -> AsyncIterator[Side]:
    runner = WorkerRunner(name=name)
    caller = caller or Caller()
    client = WebSocketProxyClient("support-link", url=url, **options)
    await runner.add_workers(caller, client)
    async with running(runner):
        if connect_wait:
            await client.wait_connected(WAIT)
            await wait_until(lambda: "support" in runner.registry, timeout=WAIT)
        yield Side(runner, client, {"caller": caller})


def url_of(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


# -- jobs ------------------------------------------------------------------------------------


async def test_job_crosses_the_proxy_and_its_answer_comes_back() -> None:
    async with server_side() as back, client_side(url_of(back.proxy.port)) as front:
        caller = front.workers["caller"]
        async with caller.job("support", name="echo", payload={"x": 1}, timeout=WAIT) as ctx:
            pass
        assert ctx.status == JobStatus.COMPLETED
        assert ctx.response == {"echo": {"x": 1}, "by": "support"}
        support = back.workers["support"]
        assert [r.source for r in support.requests] == ["caller"]
        # The stand-in carries the remote worker's job names into this side's registry.
        assert front.runner.registry.get("support").jobs == ("count", "echo", "hold")


async def test_streaming_and_updates_cross_in_order() -> None:
    async with server_side() as back, client_side(url_of(back.proxy.port)) as front:
        caller = front.workers["caller"]
        events = []
        async with caller.job("support", name="count", timeout=WAIT) as ctx:
            async for event in ctx:
                events.append((str(event.type), event.data))
        assert events == [
            ("stream_start", {"of": 3}),
            ("update", {"progress": 0}), ("stream_data", {"n": 0}),
            ("update", {"progress": 1}), ("stream_data", {"n": 1}),
            ("update", {"progress": 2}), ("stream_data", {"n": 2}),
            ("stream_end", {"done": True}),
        ]
        assert ctx.response == {"done": True}


async def test_cancelling_a_job_reaches_the_remote_worker() -> None:
    async with server_side() as back, client_side(url_of(back.proxy.port)) as front:
        caller, support = front.workers["caller"], back.workers["support"]
        job_id = await caller.request_job("support", name="hold", timeout=WAIT)
        await wait_until(lambda: support.active_jobs, timeout=WAIT)
        await caller.cancel_job_group(job_id, reason="changed my mind")
        await wait_until(lambda: not support.active_jobs, timeout=WAIT)
        assert job_id not in caller.job_groups


async def test_hand_off_to_a_remote_worker_and_back() -> None:
    class Greeter(Caller):
        async def on_activated(self, args: dict[str, Any] | None) -> None:
            self.ready.append(f"activated:{args}")

    class HandsBack(Support):
        async def on_activated(self, args: dict[str, Any] | None) -> None:
            await super().on_activated(args)
            await self.activate_worker("caller", args=None, deactivate_self=True)

    greeter = Greeter(active=False)
    async with server_side(support=HandsBack(active=False)) as back, \
            client_side(url_of(back.proxy.port), caller=greeter) as front:
        await front.workers["caller"].activate_worker("support")
        support = back.workers["support"]
        await wait_until(lambda: support.activations, timeout=WAIT)
        await wait_until(lambda: "activated:None" in greeter.ready, timeout=WAIT)
        assert support.activations == [None]
        assert not support.active  # it handed the conversation back
        assert greeter.active


async def test_registry_both_ways_each_side_watches_the_other() -> None:
    class Watcher(Support):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []
            self.gone: list[WorkerLostData] = []

        async def on_worker_ready(self, data: WorkerReadyData) -> None:
            self.seen.append(data.worker_name)

        async def on_worker_lost(self, data: WorkerLostData) -> None:
            self.gone.append(data)

    watcher = Watcher()
    async with server_side(support=watcher) as back:
        await watcher.watch_workers("caller")
        async with client_side(url_of(back.proxy.port)) as front:
            await front.workers["caller"].watch_workers("support")
            await wait_until(lambda: "support" in front.workers["caller"].ready, timeout=WAIT)
            await wait_until(lambda: "caller" in watcher.seen, timeout=WAIT)
            assert back.runner.registry.get("caller").runner == "srv"  # stands in here
        # A client that leaves for good takes its workers away from the server side at once.
        await wait_until(lambda: watcher.gone, timeout=WAIT)
        assert watcher.gone[0].worker_name == "caller"
        assert "caller" not in back.runner.registry


async def test_a_worker_that_is_not_exposed_gets_a_clear_error_not_a_hang() -> None:
    async with server_side() as back, \
            client_side(url_of(back.proxy.port), local_worker_name=["someone-else"]) as front:
        with pytest.raises(JobError, match="not exposed through proxy 'support-link'"):
            async with front.workers["caller"].job("support", name="echo", timeout=WAIT):
                pass
        assert back.workers["support"].requests == []


async def test_a_job_too_large_for_the_link_ends_at_once() -> None:
    limits = LinkLimits(max_message_size=4096, buffer_bytes=4096)
    async with server_side() as back, \
            client_side(url_of(back.proxy.port), limits=limits) as front:
        with pytest.raises(JobError, match="cannot be encoded"):
            async with front.workers["caller"].job("support", name="echo",
                                                   payload={"blob": "x" * 10_000}, timeout=WAIT):
                pass
        assert back.workers["support"].requests == []


async def test_a_workers_lifecycle_does_not_cross() -> None:
    async with server_side() as back, client_side(url_of(back.proxy.port)) as front:
        caller = front.workers["caller"]
        await caller.send_bus_message(BusEndWorkerMessage(source="caller", target="support"))
        async with caller.job("support", name="echo", timeout=WAIT) as ctx:
            pass
        assert ctx.status == JobStatus.COMPLETED  # still there
        assert not any(isinstance(m, BusEndWorkerMessage) for m in back.workers["support"].messages)


async def test_session_end_crosses_only_when_both_sides_forward_it() -> None:
    async with server_side() as back:
        async with client_side(url_of(back.proxy.port)) as front:
            await front.workers["caller"].end(reason="user hung up")
            await wait_until(lambda: not front.runner.running, timeout=WAIT)
        # The client left (its stand-in is gone here): anything it forwarded came first.
        await wait_until(lambda: "caller" not in back.runner.registry, timeout=WAIT)
        assert back.runner.running

    forward = (BusEndMessage,)
    async with server_side(forward_messages=forward) as back, \
            client_side(url_of(back.proxy.port), forward_messages=forward) as front:
        await front.workers["caller"].end(reason="user hung up")
        await wait_until(lambda: not back.runner.running, timeout=WAIT)


# -- D21, D22, D25: activation, disconnect events, buffering -------------------------------------


async def test_d21_activating_the_client_twice_keeps_one_connection() -> None:
    async with server_side() as back:
        connections: list[str] = []

        @back.proxy.event_handler("on_client_connected")
        async def counted(proxy: Any, session: str) -> None:
            connections.append(session)

        async with client_side(url_of(back.proxy.port), active=False,
                               connect_wait=False) as front:
            client, caller = front.proxy, front.workers["caller"]
            assert not client.connected
            await caller.activate_worker("support-link")
            await caller.activate_worker("support-link")
            await client.wait_connected(WAIT)
            await caller.activate_worker("support-link")
            await wait_until(lambda: "support" in front.runner.registry, timeout=WAIT)
            async with caller.job("support", name="echo", timeout=WAIT):
                pass
            assert len(connections) == 1
            assert len(back.workers["support"].requests) == 1
            assert back.proxy.proxy_stats()["sessions"][0]["received"] == 1


async def test_d22_disconnect_events_fire_on_both_sides_on_a_clean_close() -> None:
    disconnected: list[str] = []
    client_left: list[str] = []
    async with server_side() as back:

        @back.proxy.event_handler("on_client_disconnected")
        async def left(proxy: Any, session: str) -> None:
            client_left.append(session)

        async with client_side(url_of(back.proxy.port)) as front:

            @front.proxy.event_handler("on_disconnected")
            async def down(proxy: Any, why: str) -> None:
                disconnected.append(why)

            await back.proxy.stop()  # the server closes cleanly
            await wait_until(lambda: disconnected, timeout=WAIT)
            assert not front.proxy.connected
            assert "proxy stopped" in disconnected[0]

    async with server_side() as back:

        @back.proxy.event_handler("on_client_disconnected")
        async def left_again(proxy: Any, session: str) -> None:
            client_left.append(session)

        async with client_side(url_of(back.proxy.port)) as front:
            await front.proxy.stop()
            await wait_until(lambda: client_left, timeout=WAIT)


async def test_d25_messages_wait_for_a_client_that_is_not_connected_yet() -> None:
    port = free_port()
    async with client_side(url_of(port), remote_worker_name="support",
                           connect_wait=False) as front:
        caller, client = front.workers["caller"], front.proxy
        # Named in advance: the stand-in exists before any connection.
        await wait_until(lambda: "support" in front.runner.registry, timeout=WAIT)
        await caller.activate_worker("support", args=None)
        job_id = await caller.request_job("support", name="echo", payload={"early": True},
                                          timeout=30)
        assert not client.connected
        async with server_side(port=port, support=Support(active=False)) as back:
            support = back.workers["support"]
            await wait_until(lambda: support.requests, timeout=WAIT)
            await wait_until(lambda: job_id not in caller.job_groups, timeout=WAIT)
            assert support.activations == [None]
            assert [r.payload for r in support.requests] == [{"early": True}]


async def test_d25_an_inactive_client_keeps_messages_until_activated() -> None:
    async with server_side(support=Support(active=False)) as back, \
            client_side(url_of(back.proxy.port), remote_worker_name="support", active=False,
                        connect_wait=False) as front:
        caller = front.workers["caller"]
        await wait_until(lambda: "support" in front.runner.registry, timeout=WAIT)
        await caller.activate_worker("support")
        await asyncio.sleep(0.2)
        assert back.workers["support"].activations == []
        await caller.activate_worker("support-link")
        await wait_until(lambda: back.workers["support"].activations, timeout=WAIT)


# -- reconnection ---------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", "s3cret"], ids=["unsigned", "signed"])
async def test_a_broken_link_resumes_without_loss_or_duplicates(secret: str) -> None:
    async with server_side(serializer=JSONMessageSerializer(secret=secret)) as back:
        relay = Relay(back.proxy.port)
        await relay.start()
        try:
            async with client_side(url_of(relay.port),
                                   serializer=JSONMessageSerializer(secret=secret)) as front:
                caller, support = front.workers["caller"], back.workers["support"]
                held = await caller.request_job("support", name="hold", timeout=30)
                await wait_until(lambda: support.active_jobs, timeout=WAIT)
                relay.cut()
                await wait_until(lambda: not front.proxy.connected, timeout=WAIT)
                # While the link is down: the answer waits on the server side, a new job on
                # the client side.
                support.release.set()
                await wait_until(lambda: not support.active_jobs, timeout=WAIT)
                sent_during = await caller.request_job("support", name="echo",
                                                       payload={"during": True}, timeout=30)
                await front.proxy.wait_connected(WAIT)
                await wait_until(lambda: held not in caller.job_groups
                                 and sent_during not in caller.job_groups, timeout=WAIT)
                assert [r.payload for r in support.requests] == [None, {"during": True}]
                assert relay.accepted == 2
                session = back.proxy.proxy_stats()["sessions"]
                assert len(session) == 1  # resumed, not a second session
        finally:
            await relay.close()


async def test_a_restarted_server_ends_jobs_in_flight_and_nothing_is_sent_twice() -> None:
    port = free_port()
    first = Support()
    outcome: list[Any] = []
    async with client_side(url_of(port), remote_worker_name="support",
                           connect_wait=False) as front:
        caller = front.workers["caller"]

        async def call_hold() -> None:
            try:
                async with caller.job("support", name="hold", timeout=30) as ctx:
                    pass
                outcome.append(ctx.response)
            except JobError as error:
                outcome.append(error)

        async with server_side(port=port, support=first):
            await front.proxy.wait_connected(WAIT)
            task = asyncio.ensure_future(call_hold())
            await wait_until(lambda: first.active_jobs, timeout=WAIT)
        # The server process is gone (its job with it); a new one comes up on the same port.
        second = Support()
        async with server_side(port=port, support=second, name="srv2"):
            await asyncio.wait_for(task, WAIT)
            assert isinstance(outcome[0], JobError)
            assert "support" in str(outcome[0])
            await front.proxy.wait_connected(WAIT)
            await wait_until(lambda: "support" in front.runner.registry, timeout=WAIT)
            async with caller.job("support", name="echo", payload={"n": 2}, timeout=WAIT) as ctx:
                pass
            assert ctx.response["echo"] == {"n": 2}
            # The new worker got the new job only: the old one was not delivered to it.
            assert [r.job_name for r in second.requests] == ["echo"]
            assert len(first.requests) == 1


async def test_a_link_that_stays_down_ends_the_jobs_sent_through_it() -> None:
    limits = LinkLimits(link_timeout=0.5)
    async with server_side(limits=limits) as back:
        relay = Relay(back.proxy.port)
        await relay.start()
        try:
            async with client_side(url_of(relay.port), limits=limits) as front:
                caller, support = front.workers["caller"], back.workers["support"]
                held = await caller.request_job("support", name="hold")  # no timeout at all
                await wait_until(lambda: support.active_jobs, timeout=WAIT)
                relay.refusing = True
                relay.cut()
                await wait_until(lambda: held not in caller.job_groups, timeout=WAIT)
                await wait_until(lambda: "support" not in front.runner.registry, timeout=WAIT)
                # ... and on the server side, the client's worker is gone as well.
                await wait_until(lambda: "caller" not in back.runner.registry, timeout=WAIT)
                relay.refusing = False
                await front.proxy.wait_connected(WAIT)
                await wait_until(lambda: "support" in front.runner.registry, timeout=WAIT)
                async with caller.job("support", name="echo", timeout=WAIT) as ctx:
                    pass
                assert ctx.status == JobStatus.COMPLETED
        finally:
            await relay.close()


# -- security --------------------------------------------------------------------------------


async def test_a_client_with_a_wrong_token_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async with server_side(token="right") as back:
        connected: list[str] = []

        @back.proxy.event_handler("on_client_connected")
        async def seen(proxy: Any, session: str) -> None:
            connected.append(session)

        with caplog.at_level(logging.ERROR, logger="pipecat_workers.proxy"):
            async with client_side(url_of(back.proxy.port), token="wrong",
                                   connect_wait=False) as front:
                await wait_until(lambda: "HTTP 401" in caplog.text, timeout=WAIT)
                assert not front.proxy.connected
        assert connected == []
        async with client_side(url_of(back.proxy.port), token="right") as front:
            assert front.proxy.connected


async def test_a_client_without_the_shared_secret_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    secret = JSONMessageSerializer(secret="s3cret")
    async with server_side(serializer=secret) as back:
        with caplog.at_level(logging.WARNING, logger="pipecat_workers.proxy"):
            async with client_side(url_of(back.proxy.port), connect_wait=False,
                                   serializer=JSONMessageSerializer(secret="")) as front:
                await wait_until(lambda: "unsigned, or signed with another secret"
                                 in caplog.text, timeout=WAIT)
                assert not front.proxy.connected
        async with client_side(url_of(back.proxy.port),
                               serializer=JSONMessageSerializer(secret="s3cret")) as front, \
                front.workers["caller"].job("support", name="echo", timeout=WAIT) as ctx:
            pass
        assert ctx.status == JobStatus.COMPLETED


class RawClient:
    """A hand-made client: does the handshake itself, then sends whatever a test wants."""

    def __init__(self, port: int, name: str = "raw") -> None:
        self.port = port
        self.name = name
        self.serializer = JSONMessageSerializer(secret="")
        self.seq = 0
        self.connection: Any = None
        self.welcome: ProxyWelcomeMessage | None = None

    async def open(self, exposes: list[str]) -> None:
        # It never reads what the server answers: an unbounded queue keeps the close prompt.
        self.connection = await connect(url_of(self.port), max_queue=None)
        await self.send(ProxyHelloMessage(
            source=self.name, session="raw-session",
            workers=[WorkerRegistryEntry(name=n, started_at=1.0) for n in exposes]),
            numbered=False)
        data = await self.connection.recv()
        welcome = self.serializer.deserialize(data[8:])
        assert isinstance(welcome, ProxyWelcomeMessage)
        self.welcome = welcome

    async def send(self, message: BusMessage, *, numbered: bool = True) -> None:
        if numbered:
            self.seq += 1
        data = self.serializer.serialize(message, sender=self.name, channel=LINK_CHANNEL)
        await self.connection.send((self.seq if numbered else 0).to_bytes(8, "big") + data)

    async def close(self) -> None:
        await self.connection.close()


def echo_request(source: str, target: str, job_id: str) -> BusJobRequestMessage:
    return BusJobRequestMessage(source=source, target=target, job_id=job_id, job_name="echo")


async def test_d23_a_text_frame_is_refused_and_the_link_goes_on() -> None:
    async with server_side() as back:
        raw = RawClient(back.proxy.port)
        await raw.open(exposes=["raw-caller"])
        await wait_until(lambda: "raw-caller" in back.runner.registry, timeout=WAIT)
        await raw.connection.send("hello, this is text")
        await raw.send(echo_request("raw-caller", "support", "j-after-text"))
        support = back.workers["support"]
        await wait_until(lambda: support.requests, timeout=WAIT)
        assert support.requests[0].job_id == "j-after-text"
        assert back.proxy.proxy_stats()["sessions"][0]["dropped"] == {"text": 1}
        await raw.close()


async def test_forged_targets_and_sources_are_dropped() -> None:
    secret_worker = Support("vault")
    async with server_side() as back:
        await back.runner.add_workers(secret_worker)
        raw = RawClient(back.proxy.port)
        await raw.open(exposes=["raw-caller"])
        await wait_until(lambda: "raw-caller" in back.runner.registry, timeout=WAIT)
        await raw.send(echo_request("raw-caller", "vault", "j-forged-target"))
        await raw.send(echo_request("support", "support", "j-forged-source"))
        await raw.send(echo_request("raw-caller", "srv", "j-to-the-runner"))
        await raw.send(echo_request("raw-caller", "support", "j-fine"))
        support = back.workers["support"]
        await wait_until(lambda: support.requests, timeout=WAIT)
        assert [r.job_id for r in support.requests] == ["j-fine"]
        assert secret_worker.requests == []
        dropped = back.proxy.proxy_stats()["sessions"][0]["dropped"]
        assert dropped == {"target": 2, "source": 1}
        await raw.close()


async def test_broadcasts_do_not_cross_unless_configured() -> None:
    async with server_side() as back:
        raw = RawClient(back.proxy.port)
        await raw.open(exposes=["raw-caller"])
        await wait_until(lambda: "raw-caller" in back.runner.registry, timeout=WAIT)
        await raw.send(BusEndMessage(source="raw-caller", reason="forged session end"))
        await raw.send(echo_request("raw-caller", "support", "j-after"))
        await wait_until(lambda: back.workers["support"].requests, timeout=WAIT)
        assert back.runner.running
        assert back.proxy.proxy_stats()["sessions"][0]["dropped"] == {"broadcast": 1}
        await raw.close()


async def test_the_rate_limit_slows_a_flood_down_and_loses_nothing() -> None:
    limits = LinkLimits(max_rate=100.0)
    async with server_side(limits=limits) as back:
        raw = RawClient(back.proxy.port)
        await raw.open(exposes=["raw-caller"])
        await wait_until(lambda: "raw-caller" in back.runner.registry, timeout=WAIT)
        for i in range(150):
            await raw.send(echo_request("raw-caller", "support", f"flood-{i}"))
        support = back.workers["support"]
        await wait_until(lambda: len(support.requests) == 150, timeout=WAIT)
        session = back.proxy.proxy_stats()["sessions"][0]
        assert session["throttled"] > 0 and session["dropped"] == {}
        assert [r.job_id for r in support.requests] == [f"flood-{i}" for i in range(150)]
        await raw.close()


async def test_an_oversized_frame_is_dropped() -> None:
    limits = LinkLimits(max_message_size=2048, buffer_bytes=2048)
    async with server_side(limits=limits) as back:
        raw = RawClient(back.proxy.port)
        await raw.open(exposes=["raw-caller"])
        await raw.connection.send(b"\0" * 8 + b"x" * 2100)
        await raw.send(echo_request("raw-caller", "support", "j-small"))
        await wait_until(lambda: back.workers["support"].requests, timeout=WAIT)
        assert back.proxy.proxy_stats()["sessions"][0]["dropped"] == {"oversize": 1}
        await raw.close()


def test_a_server_beyond_loopback_needs_a_token_or_a_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipecat_workers.errors import ConfigurationError

    monkeypatch.delenv("PIPECAT_WORKERS_PROXY_TOKEN", raising=False)
    monkeypatch.delenv("PIPECAT_WORKERS_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match=r"would accept anyone on 0\.0\.0\.0:8765"):
        WebSocketProxyServer("door", worker_name="support", host="0.0.0.0", port=8765)
    WebSocketProxyServer("door", worker_name="support", host="0.0.0.0", port=8765, token="t")
    WebSocketProxyServer("door", worker_name="support", host="127.0.0.1", port=8765)


@pytest.mark.parametrize("kwargs, error", [
    ({"url": "http://x"}, "url must be a ws:// or wss:// URL"),
    ({"url": "ws://x", "remote_worker_name": ""}, "remote_worker_name must be"),
    ({"url": "ws://x", "forward_messages": [BusJobRequestMessage]}, None),
    ({"url": "ws://x", "forward_messages": [dict]}, "is not a bus message class"),
    ({"url": "ws://x", "forward_messages": [ProxyHelloMessage]}, "never crosses a proxy"),
    ({"url": "ws://x", "limits": "fast"}, None),
])
def test_client_arguments_are_checked(kwargs: dict[str, Any], error: str | None) -> None:
    from pipecat_workers.errors import ConfigurationError

    if kwargs.get("limits") == "fast":
        with pytest.raises(ConfigurationError, match="link_timeout and heartbeat"):
            LinkLimits(link_timeout=0)
        return
    if error is None:
        WebSocketProxyClient("p", **kwargs)
        return
    with pytest.raises(ConfigurationError, match=error):
        WebSocketProxyClient("p", **kwargs)


async def test_a_restarted_client_takes_its_names_back_at_once() -> None:
    async with server_side() as back:
        relay = Relay(back.proxy.port)
        await relay.start()
        try:
            async with client_side(url_of(relay.port)):
                await wait_until(lambda: "caller" in back.runner.registry, timeout=WAIT)
                relay.refusing = True
                relay.cut()  # the client's process dies: no clean close
            relay.refusing = False
            # Its successor (a new session, the same proxy name) gets in and is reachable now,
            # not once the old session times out.
            async with client_side(url_of(relay.port)) as front:
                await wait_until(lambda: len(back.proxy.sessions()) == 1, timeout=WAIT)
                await wait_until(lambda: "caller" in back.runner.registry, timeout=WAIT)
                async with front.workers["caller"].job("support", name="echo", timeout=WAIT):
                    pass
        finally:
            await relay.close()


async def test_no_task_outlives_the_proxies() -> None:
    before = asyncio.all_tasks()
    async with server_side() as back:
        relay = Relay(back.proxy.port)
        await relay.start()
        async with client_side(url_of(relay.port)) as front:
            async with front.workers["caller"].job("support", name="echo", timeout=WAIT):
                pass
            relay.cut()  # a reconnection on the way
            await front.proxy.wait_connected(WAIT)
        await relay.close()
    assert await leftover_tasks(before) == set()


async def test_a_server_for_one_connection_handed_over_by_the_application() -> None:
    """The reference's shape: the application accepts the WebSocket and makes a server proxy
    for it; the proxy stops once that client is gone for good."""
    from websockets.asyncio.server import serve

    runner = WorkerRunner(name="srv")
    support = Support()
    await runner.add_workers(support)
    proxies: list[WebSocketProxyServer] = []

    async def accept(connection: Any) -> None:
        proxy = WebSocketProxyServer(f"door-{len(proxies)}", websocket=connection,
                                     worker_name="support")
        proxies.append(proxy)
        await runner.add_workers(proxy)
        await proxy.wait()  # the connection lives as long as this handler

    async with running(runner), serve(accept, "127.0.0.1", 0) as listener:
        port = next(iter(listener.sockets)).getsockname()[1]
        async with client_side(url_of(port)) as front:
            async with front.workers["caller"].job("support", name="echo", timeout=WAIT) as ctx:
                pass
            assert ctx.response["by"] == "support"
            assert "caller" in runner.registry
        await wait_until(lambda: proxies[0].state == "stopped", timeout=WAIT)
        assert "caller" not in runner.registry


async def test_a_worker_named_in_advance_may_be_announced_late() -> None:
    port = free_port()
    async with client_side(url_of(port), remote_worker_name=["support", "late"],
                           connect_wait=False) as front:
        caller = front.workers["caller"]
        await wait_until(lambda: "late" in front.runner.registry, timeout=WAIT)
        job_id = await caller.request_job("late", name="echo", payload={"n": 1}, timeout=30)
        # The server's side has no 'late' yet when the link comes up: the job keeps waiting.
        async with server_side(port=port, worker_name=["support", "late"]) as back:
            await front.proxy.wait_connected(WAIT)
            await wait_until(lambda: front.proxy.proxy_stats()["sessions"][0]["unacked"] == 0,
                             timeout=WAIT)
            assert job_id in caller.job_groups
            late = Support("late")
            await back.runner.add_workers(late)
            await wait_until(lambda: job_id not in caller.job_groups, timeout=WAIT)
            assert [r.payload for r in late.requests] == [{"n": 1}]


async def test_a_worker_named_in_advance_that_never_comes_ends_what_was_sent_to_it() -> None:
    limits = LinkLimits(link_timeout=0.5)
    async with server_side(limits=limits) as back, \
            client_side(url_of(back.proxy.port), remote_worker_name=["support", "ghost"],
                        limits=limits) as front:
        with pytest.raises(JobError, match="ghost"):
            async with front.workers["caller"].job("ghost", name="echo", timeout=30):
                pass
        assert "ghost" not in front.runner.registry
        assert "support" in front.runner.registry


async def test_a_server_whose_runner_does_not_run_yet_asks_clients_to_retry(
        caplog: pytest.LogCaptureFixture) -> None:
    from websockets.asyncio.server import serve

    door = WebSocketProxyServer("door", worker_name="support")  # on no runner yet

    async def accept(connection: Any) -> None:
        await door.serve(connection)

    async with serve(accept, "127.0.0.1", 0) as listener:
        port = next(iter(listener.sockets)).getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="pipecat_workers.proxy"):
            async with client_side(url_of(port), connect_wait=False) as front:
                await wait_until(lambda: "not ready yet; retrying" in caplog.text,
                                 timeout=WAIT)
                assert not front.proxy.connected
                runner = WorkerRunner(name="srv")
                await runner.add_workers(Support(), door)
                async with running(runner):
                    await front.proxy.wait_connected(WAIT)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
