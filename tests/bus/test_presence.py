"""Each backend's presence: the hub's PRESENT/JOINED/LEFT, Redis's sorted set, PostgreSQL's
advisory locks. Runners on them send no heartbeats, find a killed process at once, and a
stalled one only after ``lost_after`` intervals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pipecat_workers import BaseWorker, Settings, WorkerLostData, WorkerRunner
from pipecat_workers.bus import BusHub, HubBus, WorkerBus
from pipecat_workers.bus.hub_wire import (
    FLAG_PRESENCE,
    OP_JOINED,
    OP_LEFT,
    OP_PRESENT,
    OP_WELCOME,
    hello,
    parse_names,
    read_frame,
)
from tests.helpers import running, wait_until

SETTINGS = Settings(heartbeat_interval=0.25, lost_after=3, end_grace=1.0, cancel_timeout=0.5)
WINDOW = SETTINGS.lost_after * SETTINGS.heartbeat_interval
ROOT = Path(__file__).resolve().parents[2]


class Watcher(BaseWorker):
    def __init__(self, name: str = "watcher") -> None:
        super().__init__(name)
        self.lost: list[WorkerLostData] = []

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)


# -- the hub's protocol ------------------------------------------------------------------------


async def _client(path: str, runner: str, flags: int = FLAG_PRESENCE
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(hello("ch", runner, time.time(), flags))
    op, body = await asyncio.wait_for(read_frame(reader), 2)
    assert op == OP_WELCOME
    return reader, writer, body


async def _next(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    return await asyncio.wait_for(read_frame(reader), 2)


async def test_the_hub_says_who_is_present_who_joins_and_who_leaves(socket_dir: str) -> None:
    async with BusHub(f"{socket_dir}/hub.sock") as hub:
        old_a = await _client(hub.path, "a", flags=0)  # an old client: asks for nothing
        reader, writer, welcome = await _client(hub.path, "b")
        assert welcome == bytes([1, 1])  # version 1, presence offered
        op, body = await _next(reader)
        assert op == OP_PRESENT and sorted(parse_names(body)) == ["a", "b"]
        c1 = await _client(hub.path, "c", flags=0)
        assert await _next(reader) == (OP_JOINED, b"c")
        c2 = await _client(hub.path, "c", flags=0)  # a second connection: no news
        c1[1].transport.abort()
        c2[1].transport.abort()
        assert await _next(reader) == (OP_LEFT, b"c")  # once, when the last one closed
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(old_a[0].read(1), 0.1)  # nothing was sent to it
        old_a[1].transport.abort()
        assert await _next(reader) == (OP_LEFT, b"a")
        writer.transport.abort()


async def test_a_hub_that_stops_says_nobody_left(socket_dir: str) -> None:
    hub = BusHub(f"{socket_dir}/hub.sock")
    await hub.start()
    reader, writer, _ = await _client(hub.path, "b")
    await _next(reader)  # PRESENT
    await _client(hub.path, "a")
    assert (await _next(reader))[0] == OP_JOINED
    await hub.stop()
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed, and no LEFT before it
    writer.transport.abort()


# -- runners on each backend ---------------------------------------------------------------------


@pytest.fixture(params=["hub", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("pgmq", marks=pytest.mark.postgres)])
async def make_bus(request: pytest.FixtureRequest, socket_dir: str
                   ) -> AsyncIterator[tuple[str, str, Callable[[], WorkerBus]]]:
    channel = f"pres-{uuid.uuid4().hex[:8]}"
    if request.param == "hub":
        async with BusHub(f"{socket_dir}/hub.sock") as hub:
            yield "hub", hub.path, lambda: HubBus(hub.path, channel=channel)
        return
    if request.param == "redis":
        from pipecat_workers.bus import RedisBus

        url = request.getfixturevalue("redis_url")
        yield "redis", url, lambda: RedisBus(url, channel=channel)
        return
    from pipecat_workers.bus import PgmqBus

    dsn = request.getfixturevalue("postgres_dsn")
    yield "pgmq", dsn, lambda: PgmqBus(dsn, channel=channel)


def _runner(name: str, bus: WorkerBus) -> WorkerRunner:
    return WorkerRunner(name=name, bus=bus, handle_sigint=False, settings=SETTINGS)


async def test_idle_runners_with_a_presence_send_nothing(make_bus: Any) -> None:
    _, _, new_bus = make_bus
    a, b = _runner("a", new_bus()), _runner("b", new_bus())
    await a.add_workers(BaseWorker("wa"))
    await b.add_workers(BaseWorker("wb"))
    async with running(a), running(b):
        await wait_until(lambda: "wb" in a.registry and "wa" in b.registry, timeout=5)
        assert a.stats()["membership"]["presence"] is not None
        await asyncio.sleep(2 * SETTINGS.heartbeat_interval)
        before = a.stats()["messages"]["sent"]
        await asyncio.sleep(8 * SETTINGS.heartbeat_interval)
        assert a.stats()["messages"]["sent"] == before
        assert a.bus.presence is not None and a.bus.presence.is_present("b") is True
        assert set(a.peers) == {"b"} and a.peers["b"].stats is not None


async def test_a_stalled_runner_is_lost_after_the_window_not_before(make_bus: Any) -> None:
    """A runner whose process lives but which stops taking part (its presence stopped) is
    not gone for certain: it is lost after lost_after intervals."""
    kind, _, new_bus = make_bus
    a, b = _runner("a", new_bus()), _runner("b", new_bus())
    watcher = Watcher()
    await a.add_workers(watcher)
    await b.add_workers(BaseWorker("wb"))
    async with running(a), running(b):
        await wait_until(lambda: "wb" in a.registry, timeout=5)
        await watcher.watch_workers("wb")
        if kind == "hub":
            return  # a connected hub client is present: it cannot stall in this sense
        presence = b.bus.presence
        assert presence is not None
        await presence.close()  # type: ignore[attr-defined]
        if kind == "pgmq":  # its reader's lock is what says it is there
            await b.bus._drop_conn()  # type: ignore[attr-defined]
            b.bus._reader.cancel()  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        stalled = loop.time()
        await wait_until(lambda: watcher.lost, timeout=10)
        took = loop.time() - stalled
        assert took <= 2 * WINDOW + 1.5, took
        if kind == "redis":  # still subscribed: not certain, so the window is waited out
            assert took >= WINDOW


async def test_a_killed_process_is_lost_within_two_seconds(make_bus: Any, tmp_path: Path
                                                           ) -> None:
    kind, url, new_bus = make_bus
    a = _runner("a", new_bus())
    watcher = Watcher()
    await a.add_workers(watcher)
    channel = a.bus.channel  # type: ignore[attr-defined]
    peer = await _peer(tmp_path, kind, url, channel, "doomed-runner", "doomed")
    try:
        async with running(a):
            await wait_until(lambda: "doomed" in a.registry, timeout=10)
            await watcher.watch_workers("doomed")
            loop = asyncio.get_running_loop()
            await asyncio.sleep(0.3)
            killed = loop.time()
            os.kill(peer.pid, signal.SIGKILL)
            await wait_until(lambda: watcher.lost, timeout=10)
            assert loop.time() - killed <= 2.5
            assert watcher.lost[0].reason == "lost"
    finally:
        if peer.returncode is None:
            peer.kill()
        await peer.wait()


async def _peer(tmp_path: Path, kind: str, url: str, channel: str, runner: str,
                *workers: str) -> asyncio.subprocess.Process:
    log = (tmp_path / f"{runner}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tests" / "procs" / "peer.py"), "--backend", kind,
        "--url", url, "--channel", channel, "--name", runner, "--heartbeat",
        str(SETTINGS.heartbeat_interval), *workers, stdout=asyncio.subprocess.PIPE,
        stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line.startswith(b"READY"), (tmp_path / f"{runner}.log").read_text()
    return proc


# -- Redis specifics ------------------------------------------------------------------------------


@pytest.mark.redis
async def test_the_redis_presence_set_holds_live_runners_only(redis_url: str) -> None:
    from redis.asyncio import Redis

    from pipecat_workers.bus import RedisBus

    channel = f"pres-{uuid.uuid4().hex[:8]}"
    a = _runner("a", RedisBus(redis_url, channel=channel))
    client = Redis.from_url(redis_url)
    try:
        async with running(a):
            b = _runner("b", RedisBus(redis_url, channel=channel))
            async with running(b):
                await wait_until(lambda: "b" in a.peers, timeout=5)
                members = await client.zrange(f"{channel}:presence", 0, -1)
                assert sorted(members) == [b"a", b"b"]
            # b said goodbye and took its member with it
            assert await client.zscore(f"{channel}:presence", "b") is None
            await wait_until(lambda: "b" not in a.peers, timeout=2)
            # a forged member is not a peer, and forged heartbeats from it do not stay
            await client.zadd(f"{channel}:presence", {"forged": time.time() * 1000 + 1e6})
            await asyncio.sleep(3 * SETTINGS.heartbeat_interval)
            assert "forged" not in a.peers
        assert await client.zscore(f"{channel}:presence", "a") is None
    finally:
        await client.delete(f"{channel}:presence")
        await client.aclose()


async def test_a_payload_that_breaks_delivery_is_counted_and_costs_nothing_else(
        make_bus: Any) -> None:
    _, _, new_bus = make_bus
    a, b = _runner("a", new_bus()), _runner("b", new_bus())
    await b.add_workers(BaseWorker("wb"))
    bus = a.bus
    real = bus._deliver_payload  # type: ignore[attr-defined]
    broken = [True]

    def once(data: bytes) -> None:
        if broken and broken.pop():
            raise RuntimeError("a bug in decoding")
        real(data)

    bus._deliver_payload = once  # type: ignore[attr-defined]
    events: list[str] = []

    async def down(_: object) -> None:
        events.append("down")

    bus.add_event_handler("on_disconnected", down)  # type: ignore[attr-defined]
    async with running(a):
        async with running(b):
            await wait_until(lambda: "wb" in a.registry, timeout=5)
        loops = a.stats()["loops"]
        assert loops["bus.payload"]["failures"] == 1
        assert loops["bus.payload"]["last_error"] == "RuntimeError: a bug in decoding"
        assert events == []  # the connection was kept
