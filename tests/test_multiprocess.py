"""Runners in real OS processes on a network bus: discovery, jobs, crashes, forged input.

Every scenario runs on the embedded hub (a ``BusHub`` in this process, as ``workers up`` hosts
it), on Redis and on PGMQ.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    JobError,
    JobEvent,
    WorkerLostData,
)
from tests.helpers import wait_until
from tests.procs.cluster import Cluster


class Watcher(BaseWorker):
    def __init__(self, name: str = "watcher") -> None:
        super().__init__(name)
        self.lost: list[WorkerLostData] = []

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)


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
