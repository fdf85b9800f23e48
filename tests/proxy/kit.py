"""Two buses joined by a proxy pair, for the proxy tests.

Bus A has a :class:`WebSocketProxyClient`, bus B a :class:`WebSocketProxyServer`; each side's
workers run on runners of their own (on a network bus, each runner has its own connection, so
a message to a stand-in on another runner really is routed through the server). Everything
runs for the duration of the test's ``AsyncExitStack``.

Import as ``from tests.proxy.kit import ...``.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Literal

from pipecat_workers import BaseWorker, JobEvent, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage
from pipecat_workers.proxy import WebSocketProxyClient, WebSocketProxyServer
from tests.helpers import running, wait_until
from tests.pipeline.kit import FAST, TIMEOUT

Side = Literal["a", "b"]
MakeBus = Callable[[], Any]

PATIENCE = 10.0  # seconds for a link to come up and its stand-ins to be known everywhere


class Echo(BaseWorker):
    """Answers ``echo`` with its name and the payload, and streams ``count`` chunks."""

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"by": self.name, "payload": message.payload}

    @job("stream")
    async def stream(self, message: BusJobRequestMessage) -> None:
        count = message.payload["count"]
        await self.send_job_stream_start(message.job_id)
        for i in range(count):
            await self.send_job_stream_data(message.job_id, {"i": i})
        await self.send_job_stream_end(message.job_id, {"sent": count})


class Linked:
    """Runners on bus A and bus B, and the proxy pair between them.

    Args:
        stack: Holds the runners (they are cancelled when it closes).
        bus_a: Makes a connection to bus A (called once per runner of A).
        bus_b: The same for bus B.
    """

    def __init__(self, stack: AsyncExitStack, bus_a: MakeBus, bus_b: MakeBus) -> None:
        self.stack = stack
        self._make = {"a": bus_a, "b": bus_b}
        self.runners: dict[Side, list[WorkerRunner]] = {"a": [], "b": []}
        self.names: dict[Side, list[str]] = {"a": [], "b": []}
        self.server: WebSocketProxyServer | None = None
        self.client: WebSocketProxyClient | None = None
        self.connections: list[str] = []  # a session id per connection the server took

    async def host(self, side: Side, *workers: BaseWorker) -> WorkerRunner:
        """Run ``workers`` on a new runner of ``side`` and wait until every runner of that
        side knows every worker of that side."""
        runner = WorkerRunner(name=f"{side}{len(self.runners[side])}-{uuid.uuid4().hex[:6]}",
                              bus=self._make[side](), handle_sigint=False, settings=FAST)
        await runner.add_workers(*workers)
        await self.stack.enter_async_context(running(runner))
        self.runners[side].append(runner)
        self.names[side].extend(w.name for w in workers
                                if not isinstance(w, (WebSocketProxyClient, WebSocketProxyServer)))
        await self.known(side, self.names[side])
        return runner

    async def serve(self, *workers: BaseWorker, expose: Sequence[str],
                    **server: Any) -> WebSocketProxyServer:
        """Run a server exposing ``expose`` (listening on a free loopback port unless
        ``port`` is given) on a new runner of B, with ``workers``."""
        server.setdefault("port", 0)
        server.setdefault("name", "expose")
        self.server = WebSocketProxyServer(worker_name=list(expose), **server)

        @self.server.event_handler("on_client_connected")
        async def on_client_connected(proxy: WebSocketProxyServer, session_id: str) -> None:
            self.connections.append(session_id)

        await self.host("b", self.server, *workers)
        return self.server

    @property
    def url(self) -> str:
        """The URL of the server listening on its own."""
        assert self.server is not None and self.server.port is not None
        return f"ws://127.0.0.1:{self.server.port}/"

    async def connect(self, *workers: BaseWorker, url: str | None = None,
                      **client: Any) -> WebSocketProxyClient:
        """Run a client on a new runner of A, with ``workers``; wait until the link is up
        and each side's workers are known on every runner of the other side."""
        client.setdefault("name", "link")
        self.client = WebSocketProxyClient(url=url or self.url, **client)
        await self.host("a", self.client, *workers)
        await self.client.wait_connected(PATIENCE)
        await self.linked()
        return self.client

    async def linked(self) -> None:
        """Wait until each side's workers are known on every runner of the other side."""
        assert self.server is not None
        exposed = [n for n in self.names["b"] if self.server.exposes(n)]
        await self.known("a", exposed)
        await self.known("b", self.names["a"])

    async def known(self, side: Side, names: Sequence[str]) -> None:
        """Wait until every runner of ``side`` knows every worker in ``names``."""
        runners = self.runners[side]
        try:
            await wait_until(lambda: all(n in r.registry for r in runners for n in names),
                             timeout=PATIENCE)
        except TimeoutError:
            missing = {r.name: [n for n in names if n not in r.registry] for r in runners}
            raise AssertionError(f"workers not known on side {side}: {missing}") from None

    def runner_of(self, worker: BaseWorker) -> WorkerRunner:
        """The runner that hosts ``worker``."""
        for runner in self.runners["a"] + self.runners["b"]:
            if runner.get_worker(worker.name) is worker:
                return runner
        raise LookupError(worker.name)


async def shared_local_bus(stack: AsyncExitStack) -> MakeBus:
    """A local bus that every runner of a side shares (the test owns it)."""
    from pipecat_workers.bus import AsyncQueueBus

    bus = AsyncQueueBus()
    await bus.start()
    stack.push_async_callback(bus.close)
    return lambda: bus


def free_port() -> int:
    """A loopback port that was free a moment ago (for a server started later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def redis_channel(url: str) -> MakeBus:
    """Connections to a fresh channel of the Redis server at ``url``."""
    from pipecat_workers.bus import RedisBus

    channel = f"proxy-{uuid.uuid4().hex[:10]}"
    return lambda: RedisBus(url, channel=channel)


async def ask(caller: BaseWorker, worker: str, payload: dict[str, Any] | None = None, *,
              timeout: float = TIMEOUT) -> dict[str, Any]:
    """The answer of ``worker`` to an ``echo`` job (the job must complete)."""
    async with caller.job(worker, name="echo", payload=payload, timeout=timeout) as ctx:
        pass
    assert ctx.response is not None
    return ctx.response


async def stream(caller: BaseWorker, worker: str, count: int) -> tuple[list[int], Any]:
    """The chunks of a ``stream`` job of ``worker``, in arrival order, and its response."""
    chunks: list[int] = []
    async with caller.job(worker, name="stream", payload={"count": count},
                          timeout=TIMEOUT) as ctx:
        async for event in ctx:
            if event.type == JobEvent.STREAM_DATA:
                chunks.append(event.data["i"])
    return chunks, ctx.response


async def within(awaitable: Any, timeout: float = TIMEOUT) -> Any:
    """Await with a deadline, so that a bug fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, timeout)
