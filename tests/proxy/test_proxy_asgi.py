"""A proxy server inside a real ASGI application: a Starlette WebSocket route that calls
``await server.serve(websocket)``, served by uvicorn on a free loopback port.

Clients reach it the way they would reach a FastAPI deployment: jobs and frames cross, a wrong
token is refused, and a text frame from a client is dropped without costing it the link.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from pipecat.frames.frames import TextFrame
from pipecat.processors.frame_processor import FrameDirection

from pipecat_workers import BaseWorker
from pipecat_workers.bus import BusJobRequestMessage, BusJobResponseMessage, BusMessage
from pipecat_workers.bus.serializer import JSONMessageSerializer
from pipecat_workers.proxy import WebSocketProxyClient, WebSocketProxyServer
from pipecat_workers.proxy.messages import ProxyHelloMessage, ProxyWelcomeMessage
from pipecat_workers.proxy.session import LINK_CHANNEL
from pipecat_workers.types import WorkerRegistryEntry
from tests.helpers import wait_until
from tests.pipeline.kit import TIMEOUT, Helper, Transport
from tests.proxy.kit import PATIENCE, Echo, Linked, ask, shared_local_bus, stream, within

pytestmark = pytest.mark.timeout(90)

TOKEN = "a-token-for-the-tests"
PATH = "/proxy"


@asynccontextmanager
async def asgi_app(server: WebSocketProxyServer) -> AsyncIterator[str]:
    """Serve ``server`` from a Starlette route under uvicorn; yields the route's URL."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def proxy(websocket: WebSocket) -> None:
        await server.serve(websocket)

    app = Starlette(routes=[WebSocketRoute(PATH, proxy)])
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))  # a free port, held until uvicorn serves on it
    port = listening.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    task = asyncio.get_running_loop().create_task(web.serve(sockets=[listening]))
    try:
        await wait_until(lambda: web.started or task.done(), timeout=PATIENCE)
        if task.done():
            task.result()  # uvicorn failed to start: say why
            raise RuntimeError("uvicorn stopped before it started")
        yield f"ws://127.0.0.1:{port}{PATH}"
    finally:
        web.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=PATIENCE)
        if not done:
            web.force_exit = True
            await asyncio.wait({task}, timeout=PATIENCE)
        listening.close()


@pytest.fixture
async def linked() -> AsyncIterator[Linked]:
    async with AsyncExitStack() as stack:
        yield Linked(stack, await shared_local_bus(stack), await shared_local_bus(stack))


async def serve_in_app(linked: Linked, *workers: BaseWorker, **server: Any) -> str:
    """Run ``workers`` and a server exposing them on bus B, served from an ASGI app (stopped
    after the runners); returns the URL."""
    await linked.host("b", *workers)
    proxy = await linked.serve(expose=[w.name for w in workers], port=None, **server)
    return await linked.stack.enter_async_context(asgi_app(proxy))


async def test_a_job_and_frames_cross_through_an_asgi_app(linked: Linked) -> None:
    url = await serve_in_app(linked, Echo("support"), Helper("greeter"))
    caller, acme = BaseWorker("caller"), Transport()
    await linked.host("a", caller, acme)
    await linked.connect(url=url)
    assert await within(ask(caller, "support", {"x": 1})) == {"by": "support",
                                                               "payload": {"x": 1}}
    chunks, response = await within(stream(caller, "support", 50))
    assert chunks == list(range(50)) and response == {"sent": 50}
    await acme.activate_worker("greeter")
    await wait_until(lambda: acme.bridge.peer == "greeter", timeout=TIMEOUT)
    await acme.queue_frame(TextFrame("through the app"))
    await acme.below.wait_for(lambda r: r.texts(FrameDirection.DOWNSTREAM) == [
        "THROUGH THE APP"])


async def test_a_client_with_a_wrong_token_is_refused(
        linked: Linked, caplog: pytest.LogCaptureFixture) -> None:
    import websockets
    from websockets.asyncio.client import connect

    url = await serve_in_app(linked, Echo("support"), token=TOKEN)
    server = linked.server
    assert server is not None
    # A raw client without the right token is refused before the WebSocket is accepted...
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        with pytest.raises(websockets.InvalidStatus):
            async with connect(url, additional_headers=headers, open_timeout=PATIENCE):
                pass
    # ...and a proxy client with a wrong one is refused on every attempt.
    caplog.set_level(logging.WARNING, logger="pipecat_workers.proxy")
    caplog.clear()
    intruder = WebSocketProxyClient("intruder", url=url, token="wrong")
    await linked.host("a", intruder, BaseWorker("mallory"))

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "pipecat_workers.proxy"
                and r.levelno == logging.WARNING and "wrong token" in r.getMessage()]

    await wait_until(lambda: len(refusals()) >= 2, timeout=PATIENCE)  # it tried, and again
    assert not intruder.connected
    assert server.sessions() == []
    assert "mallory" not in linked.runners["b"][0].registry
    assert "support" not in linked.runners["a"][0].registry
    # The right token gets in, and a job crosses.
    caller = BaseWorker("caller")
    await linked.connect(caller, url=url, token=TOKEN)
    assert await within(ask(caller, "support")) == {"by": "support", "payload": None}
    assert len(server.sessions()) == 1 and not intruder.connected


class RawPeer:
    """A client that speaks the link protocol by hand (what a buggy or hostile peer sends)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.serializer = JSONMessageSerializer()
        self.seq = 0
        self.incarnation = time.time()

    def encode(self, message: BusMessage, seq: int) -> bytes:
        return seq.to_bytes(8, "big") + self.serializer.serialize(
            message, sender="raw", incarnation=self.incarnation, channel=LINK_CHANNEL)

    async def send(self, message: BusMessage) -> None:
        self.seq += 1
        await self.connection.send(self.encode(message, self.seq))

    async def hello(self, *workers: str) -> ProxyWelcomeMessage:
        hello = ProxyHelloMessage(source="raw", session=uuid.uuid4().hex,
                                  workers=[WorkerRegistryEntry(name=w, started_at=time.time())
                                           for w in workers])
        await self.connection.send(self.encode(hello, 0))
        welcome = await self.receive()
        assert isinstance(welcome, ProxyWelcomeMessage), welcome
        return welcome

    async def receive(self) -> BusMessage:
        data = await asyncio.wait_for(self.connection.recv(), PATIENCE)
        assert isinstance(data, bytes)
        envelope = self.serializer.decode(data[8:], channel=LINK_CHANNEL)
        assert envelope is not None
        return envelope.message

    async def answer_to(self, job_id: str) -> BusJobResponseMessage:
        """The response to job ``job_id`` (skipping the link's own messages)."""
        while True:
            message = await self.receive()
            if isinstance(message, BusJobResponseMessage) and message.job_id == job_id:
                return message


@asynccontextmanager
async def raw_peer(url: str, **kwargs: Any) -> AsyncIterator[RawPeer]:
    from websockets.asyncio.client import connect

    async with connect(url, open_timeout=PATIENCE, **kwargs) as connection:
        yield RawPeer(connection)


@pytest.mark.parametrize("serving", ["asgi", "standalone"])
async def test_a_text_frame_does_not_kill_the_link(linked: Linked, serving: str) -> None:
    # D23: the reference's server loop died on a text message, leaving the worker deaf.
    if serving == "asgi":
        url = await serve_in_app(linked, Echo("support"))
    else:
        await linked.host("b", Echo("support"))
        await linked.serve(expose=["support"])
        url = linked.url
    server = linked.server
    assert server is not None
    async with raw_peer(url) as peer:
        welcome = await peer.hello("caller")
        assert [w.name for w in welcome.workers] == ["support"]
        await linked.known("b", ["caller"])  # its stand-in
        await peer.connection.send("a text frame")
        await peer.connection.send("{}")
        await peer.send(BusJobRequestMessage(source="caller", target="support", job_id="j-1",
                                             job_name="echo", payload={"after": "text"}))
        answer = await peer.answer_to("j-1")
        assert answer.response == {"by": "support", "payload": {"after": "text"}}
        (session,) = server.sessions()
        assert session.connected and session.drops["text"] == 2
        # ...and again, to show the loop goes on after a text frame between two messages.
        await peer.connection.send("more text")
        await peer.send(BusJobRequestMessage(source="caller", target="support", job_id="j-2",
                                             job_name="echo"))
        assert (await peer.answer_to("j-2")).response == {"by": "support", "payload": None}
        assert session.drops["text"] == 3


async def test_a_client_with_a_wrong_token_is_told_so(
        linked: Linked, caplog: pytest.LogCaptureFixture) -> None:
    url = await serve_in_app(linked, Echo("support"), token=TOKEN)
    caplog.set_level(logging.WARNING, logger="pipecat_workers.proxy")
    intruder = WebSocketProxyClient("intruder", url=url, token="wrong")
    await linked.host("a", intruder)

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "pipecat_workers.proxy"
                and r.levelno == logging.ERROR and r.getMessage().startswith("intruder:")]

    await wait_until(lambda: bool(said()), timeout=PATIENCE)
    assert "token" in said()[0], said()[0]
