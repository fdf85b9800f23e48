"""Faults on real servers: a process restarted under a new runner name, a ten-second outage of
Redis, PostgreSQL and the hub, forged leaves and forged heartbeats.

The outage tests restart a server of their own (``own_redis``, ``own_postgres``, a hub of the
test's own), so no other test is disturbed; they are the slow ones (about 15 s each).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    Settings,
    WorkerLostData,
    WorkerReadyData,
    WorkerRunner,
    worker_ready,
)
from pipecat_workers.bus import (
    BusHeartbeatMessage,
    BusHub,
    BusRunnerLeaveMessage,
    HubBus,
    WorkerBus,
)
from pipecat_workers.workers.peers import MAX_PEERS
from tests.bus.outage import Echo, ask
from tests.bus.test_pgmq_restart import OwnPostgres, own_postgres  # noqa: F401
from tests.bus.test_redis_bus import OwnRedis, own_redis  # noqa: F401
from tests.helpers import running, wait_until
from tests.procs.cluster import Cluster
from tests.procs.control import PeerProcess

SETTINGS = Settings(heartbeat_interval=0.5, lost_after=3, end_grace=1.0, cancel_timeout=0.5)
OUTAGE = 10.0


class Watcher(BaseWorker):
    """Watches ``b-echo`` with ``@worker_ready`` and records every departure it hears of."""

    def __init__(self, name: str = "watcher") -> None:
        super().__init__(name)
        self.ready: list[tuple[float, str]] = []
        self.lost: list[WorkerLostData] = []

    @worker_ready("b-echo")
    async def on_b_echo(self, data: WorkerReadyData) -> None:
        self.ready.append((asyncio.get_running_loop().time(), data.runner))

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)


# -- a restart under a new runner name -----------------------------------------------------------


async def test_a_process_restarted_under_a_new_runner_name_is_ready_again(
        cluster: Cluster) -> None:
    """systemd, Kubernetes or a plain script bring a crashed process back at once, under a
    new runner name: its worker's name is taken over, and watchers hear of it."""
    watcher = Watcher()
    runner = await cluster.local(watcher)
    old = await cluster.peer("b-echo")
    await wait_until(lambda: len(watcher.ready) == 1, timeout=10)
    loop = asyncio.get_running_loop()
    old.kill()
    new = await cluster.peer("b-echo")  # at once: the old one is not known to be gone yet
    ready_at = loop.time()
    await wait_until(lambda: len(watcher.ready) == 2, timeout=10)
    assert watcher.ready[1][0] - ready_at <= 2.0, watcher.ready[1][0] - ready_at
    assert watcher.ready[1][1] != watcher.ready[0][1]  # the new runner's
    data = runner.registry.get("b-echo")
    assert data is not None and data.runner == watcher.ready[1][1]
    async with watcher.job("b-echo", name="echo", payload={}, timeout=5) as j:
        pass
    assert j.response["pid"] == new.pid


# -- outages ----------------------------------------------------------------------------------


async def ten_second_outage(bus: Callable[[], WorkerBus], stop: Callable[[], None],
                            start: Callable[[], None], peer_args: list[str],
                            log_dir: Path) -> None:
    """Runners ``a`` (a watcher and a client) and ``b`` (``far``) in this process, and a
    runner process hosting ``b-echo``; the server is down for ten seconds, far longer than
    ``lost_after`` intervals (1.5 s). No worker is removed, no process exits, the job in
    flight ends, and everything works again once the server is back."""
    watcher = Watcher()
    a = WorkerRunner(name=f"a-{uuid.uuid4().hex[:4]}", bus=bus(), handle_sigint=False,
                     settings=SETTINGS)
    b = WorkerRunner(name=f"b-{uuid.uuid4().hex[:4]}", bus=bus(), handle_sigint=False,
                     settings=SETTINGS)
    b_watcher = Watcher("b-watcher")
    await a.add_workers(watcher)
    await b.add_workers(Echo("far"), b_watcher)
    peer = await PeerProcess.start(log_dir, *peer_args, "b-echo")
    try:
        await peer.ready()
        async with running(a), running(b):
            await wait_until(lambda: all(n in a.registry for n in ("far", "b-echo"))
                             and "watcher" in b.registry, timeout=10)
            await watcher.watch_workers("far")
            await b_watcher.watch_workers("watcher")
            in_flight = asyncio.ensure_future(ask(watcher, "far", None, "slow"))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(stop)
            await wait_until(lambda: not a.bus.connected, timeout=5)  # type: ignore[attr-defined]
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(start)
            await wait_until(lambda: a.bus.connected and b.bus.connected,  # type: ignore[attr-defined]
                             timeout=10)
            await asyncio.sleep(3 * SETTINGS.lost_after * SETTINGS.heartbeat_interval)
            assert watcher.lost == [] and b_watcher.lost == []
            assert all(n in a.registry for n in ("far", "b-echo"))
            assert "watcher" in b.registry
            assert peer.proc.returncode is None  # nothing exited, nothing to restart
            done, _ = await asyncio.wait({in_flight}, timeout=10)
            assert done, "a job sent before the outage is still waiting"
            error = in_flight.exception()
            assert error is None or "lost" in str(error), error
            assert (await asyncio.wait_for(ask(watcher, "far", 5), 10)) == {"by": "far"}
            echoed = await asyncio.wait_for(
                ask_peer(watcher, "b-echo"), 10)
            assert echoed["pid"] == peer.pid
    finally:
        await peer.stop()


async def ask_peer(client: BaseWorker, name: str) -> dict[str, Any]:
    async with client.job(name, name="echo", payload={}, timeout=5) as j:
        pass
    return dict(j.response)


def _peer_args(backend: str, url: str, channel: str) -> list[str]:
    return ["--backend", backend, "--url", url, "--channel", channel,
            "--name", f"peer-{uuid.uuid4().hex[:6]}", "--heartbeat",
            str(SETTINGS.heartbeat_interval)]


@pytest.mark.redis
async def test_a_ten_second_redis_outage_removes_no_worker(
        own_redis: OwnRedis, tmp_path: Path) -> None:  # noqa: F811
    from pipecat_workers.bus import RedisBus

    channel = f"outage-{uuid.uuid4().hex[:8]}"
    await ten_second_outage(lambda: RedisBus(own_redis.url, channel=channel,
                                             publish_timeout=0.5),
                            own_redis.stop, own_redis.start,
                            _peer_args("redis", own_redis.url, channel), tmp_path)


@pytest.mark.postgres
async def test_a_ten_second_postgres_outage_removes_no_worker(
        own_postgres: OwnPostgres, tmp_path: Path) -> None:  # noqa: F811
    from pipecat_workers.bus import PgmqBus

    channel = f"outage-{uuid.uuid4().hex[:8]}"
    await ten_second_outage(lambda: PgmqBus(own_postgres.dsn, channel=channel,
                                            publish_timeout=0.5),
                            own_postgres.stop, own_postgres.start,
                            _peer_args("pgmq", own_postgres.dsn, channel), tmp_path)


async def test_a_ten_second_hub_outage_removes_no_worker(socket_dir: str,
                                                         tmp_path: Path) -> None:
    path = f"{socket_dir}/hub.sock"
    loop = asyncio.get_running_loop()
    hubs = [BusHub(path)]
    await hubs[0].start()

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(hubs[-1].stop(), loop).result()

    def start() -> None:  # a restarted supervisor hosts a new hub on the same path
        hubs.append(BusHub(path))
        asyncio.run_coroutine_threadsafe(hubs[-1].start(), loop).result()

    try:
        await ten_second_outage(lambda: HubBus(path, channel="outage", publish_timeout=0.5),
                                stop, start, _peer_args("hub", path, "outage"), tmp_path)
    finally:
        await hubs[-1].stop()


# -- forgeries ----------------------------------------------------------------------------------


async def _forger(cluster: Cluster, secret: str | None = None) -> WorkerRunner:
    """A runner that sends what it likes (it knows no secret, or the wrong one)."""
    return await cluster.local(secret=secret)


async def test_a_forged_leave_is_harmless(cluster: Cluster) -> None:
    watcher = Watcher()
    runner = await cluster.local(watcher)
    peer = await cluster.peer("b-echo")
    await wait_until(lambda: len(watcher.ready) == 1, timeout=10)
    victim = watcher.ready[0][1]
    forger = await _forger(cluster)
    data = runner.registry.get("b-echo")
    assert data is not None
    await forger.bus.send(BusRunnerLeaveMessage(source=victim, runner=victim,
                                                incarnation=data.incarnation))
    # Without a secret anyone may say anything: the leave is believed for a while, and the
    # runner, alive after all, is welcome again.
    await wait_until(lambda: len(watcher.ready) == 2, timeout=2 + 3 * 0.5 * 3)
    assert runner.registry.get("b-echo") is not None
    assert peer.proc.returncode is None


async def test_a_forged_leave_on_a_signed_channel_is_refused(cluster: Cluster) -> None:
    watcher = Watcher()
    runner = await cluster.local(watcher, secret="s3cret")
    await cluster.peer("b-echo", secret="s3cret")
    await wait_until(lambda: len(watcher.ready) == 1, timeout=10)
    victim = watcher.ready[0][1]
    data = runner.registry.get("b-echo")
    assert data is not None
    forger = await _forger(cluster, secret="wrong")
    await forger.bus.send(BusRunnerLeaveMessage(source=victim, runner=victim,
                                                incarnation=data.incarnation))
    await asyncio.sleep(1.0)
    assert watcher.lost == [] and len(watcher.ready) == 1
    assert runner.registry.get("b-echo") is not None


async def test_twenty_thousand_forged_heartbeats_leave_bounded_state(cluster: Cluster) -> None:
    runner = await cluster.local(BaseWorker("client"))
    forger = await _forger(cluster)
    for chunk in range(0, 20_000, 500):
        await asyncio.gather(*(forger.bus.send(BusHeartbeatMessage(
            source=f"f{i}", runner=f"f{i}", incarnation=1.0, digest="d", interval=60.0))
            for i in range(chunk, chunk + 500)))
    await wait_until(lambda: runner.stats()["messages"]["received"].get(
        "BusHeartbeatMessage", 0) >= 19_000, timeout=60)
    assert len(runner.peers) <= MAX_PEERS
    await wait_until(lambda: not set(runner.peers) - {forger.name}, timeout=10)
    summary = runner.stats()["membership"]
    assert summary["doubtful"] <= 1 and summary["heard"] <= 1
    assert runner.stats()["messages"]["sent"].get("BusRegistryRequestMessage", 0) <= 2


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("process tests use Linux signals")

