"""Runners in real OS processes on a network bus: discovery, jobs, crashes, forged input.

Every scenario runs on the embedded hub (a ``BusHub`` in this process, as ``workers up`` hosts
it), on Redis and on PGMQ.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    JobError,
    JobEvent,
    Settings,
    WorkerLostData,
    WorkerRunner,
)
from pipecat_workers.bus import BusHub, HubBus, JSONMessageSerializer, WorkerBus
from tests.helpers import running, wait_until
from tests.procs.control import PeerProcess

SETTINGS = Settings(heartbeat_interval=0.5, lost_after=3, end_grace=2.0, cancel_timeout=0.5)
BACKENDS = [
    "hub",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("pgmq", marks=pytest.mark.postgres),
]


class Watcher(BaseWorker):
    def __init__(self, name: str = "watcher") -> None:
        super().__init__(name)
        self.lost: list[WorkerLostData] = []

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)


class Cluster:
    """This test's runner plus peer processes, all on one fresh channel."""

    def __init__(self, backend: str, url: str, log_dir: Path, stack: AsyncExitStack) -> None:
        self.backend = backend
        self.url = url
        self.channel = f"mp-{uuid.uuid4().hex[:10]}"
        self.log_dir = log_dir
        self.stack = stack

    def bus(self, secret: str | None = None) -> WorkerBus:
        serializer = JSONMessageSerializer(secret=secret) if secret else None
        if self.backend == "hub":
            return HubBus(self.url, channel=self.channel, serializer=serializer)
        if self.backend == "redis":
            from pipecat_workers.bus import RedisBus

            return RedisBus(self.url, channel=self.channel, serializer=serializer)
        from pipecat_workers.bus import PgmqBus

        return PgmqBus(self.url, channel=self.channel, serializer=serializer)

    async def local(self, *workers: BaseWorker, secret: str | None = None) -> WorkerRunner:
        runner = WorkerRunner(name=f"test-{uuid.uuid4().hex[:6]}", bus=self.bus(secret),
                              handle_sigint=False, settings=SETTINGS)
        await runner.add_workers(*workers)
        await self.stack.enter_async_context(running(runner))
        return runner

    async def peer(self, *workers: str, secret: str | None = None,
                   wait: bool = True) -> PeerProcess:
        args = ["--backend", self.backend, "--url", self.url, "--channel", self.channel,
                "--name", f"peer-{uuid.uuid4().hex[:6]}", "--heartbeat", "0.5"]
        if secret:
            args += ["--secret", secret]
        process = await PeerProcess.start(self.log_dir, *args, *workers)
        self.stack.push_async_callback(process.stop)
        if wait:
            await process.ready()
        return process


@pytest.fixture(params=BACKENDS)
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        if request.param == "hub":  # hosted here, as the supervisor hosts it
            directory = tempfile.mkdtemp(prefix="pw-")  # tmp_path is too long for a socket
            stack.callback(shutil.rmtree, directory, ignore_errors=True)
            hub = await stack.enter_async_context(BusHub(f"{directory}/hub.sock"))
            url = hub.path
        else:
            url = request.getfixturevalue(
                "redis_url" if request.param == "redis" else "postgres_dsn")
        yield Cluster(request.param, url, tmp_path, stack)


async def test_discovery_both_ways_and_a_job_across_processes(cluster: Cluster) -> None:
    client = BaseWorker("client")
    runner = await cluster.local(client)
    peer = await cluster.peer("remote")
    await wait_until(lambda: "remote" in runner.registry, timeout=5)
    async with client.job("remote", name="echo", payload={"k": [1, 2]}, timeout=5) as j:
        pass
    assert j.response == {"echo": {"k": [1, 2]}, "by": "remote", "pid": peer.pid}
    # the peer found us too: its workers could only answer a client they know of
    assert runner.stats()["messages"]["received"]["BusJobResponseMessage"] == 1


async def test_newcomers_started_together_are_never_lost(cluster: Cluster) -> None:
    client = BaseWorker("client")
    runner = await cluster.local(client)
    for round_ in range(4):
        names = [f"r{round_}-a", f"r{round_}-b", f"r{round_}-c"]
        peers = [await cluster.peer(name, wait=False) for name in names]
        await asyncio.gather(*(p.ready() for p in peers))
        await wait_until(lambda names=names: all(n in runner.registry for n in names), timeout=3)
        results = await asyncio.gather(*(_echo(client, n) for n in names))
        assert [r["by"] for r in results] == names


async def _echo(client: BaseWorker, name: str) -> dict[str, Any]:
    async with client.job(name, name="echo", payload={}, timeout=5) as j:
        pass
    return j.response


async def test_a_job_to_a_killed_process_ends_within_three_seconds(cluster: Cluster) -> None:
    watcher = Watcher()
    runner = await cluster.local(watcher)
    peer = await cluster.peer("doomed")
    await watcher.watch_workers("doomed")
    ctx = watcher.job("doomed", name="hang")
    await asyncio.wait_for(ctx.__aenter__(), 5)
    first = await asyncio.wait_for(ctx.__anext__(), 5)  # the handler is running
    assert first.type == JobEvent.STREAM_START and first.data == {"pid": peer.pid}
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    peer.kill()
    with pytest.raises(JobError, match="doomed"):
        await asyncio.wait_for(ctx.__aexit__(None, None, None), 10)
    assert loop.time() - killed_at <= 3.0
    assert [(d.worker_name, d.reason) for d in watcher.lost] == [("doomed", "lost")]
    assert "doomed" not in runner.registry


async def test_a_stopped_process_leaves_at_once(cluster: Cluster) -> None:
    watcher = Watcher()
    runner = await cluster.local(watcher)
    peer = await cluster.peer("leaving")
    await watcher.watch_workers("leaving")
    assert await peer.stop() == 0
    await wait_until(lambda: watcher.lost, timeout=2)
    assert [(d.worker_name, d.reason) for d in watcher.lost] in (
        [("leaving", "stopped")], [("leaving", "left")])
    assert "leaving" not in runner.registry


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("process tests use Linux signals")
