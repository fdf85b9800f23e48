"""RedisBus on a real server: hostile input, a server restart, and its own configuration."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pipecat_workers import (
    BaseWorker,
    BusConnectionError,
    ConfigurationError,
    Settings,
    WorkerRunner,
)
from pipecat_workers.bus import BusEndMessage, JSONMessageSerializer
from tests.bus.outage import Echo, survive_a_restart
from tests.helpers import running, wait_until

pytestmark = pytest.mark.redis

SETTINGS = Settings(heartbeat_interval=0.25, lost_after=3, end_grace=1.0, cancel_timeout=0.5)


def redis_bus(url: str, channel: str, **kwargs: object):  # type: ignore[no-untyped-def]
    from pipecat_workers.bus import RedisBus

    return RedisBus(url, channel=channel, **kwargs)  # type: ignore[arg-type]


def publish_raw(url: str, channel: str, payload: bytes) -> None:
    """Inject bytes into the channel the way an attacker or a buggy client would."""
    subprocess.run(["redis-cli", "-u", url, "-x", "PUBLISH", channel], input=payload,
                   check=True, capture_output=True, timeout=10)


async def test_forged_and_malformed_input_is_dropped_and_counted(redis_url: str) -> None:
    channel = f"forge-{uuid.uuid4().hex[:8]}"
    sentinel = "json.tool"  # importable, and not imported by anything here
    assert sentinel not in sys.modules
    bus = redis_bus(redis_url, channel)
    runner = WorkerRunner(name="victim", bus=bus, handle_sigint=False, settings=SETTINGS)
    client = BaseWorker("client")
    await runner.add_workers(client, Echo("echo"))
    async with running(runner):
        envelope = {"v": 1, "id": "x-1", "from": "evil", "inc": 1.0, "ts": time.time(),
                    "type": sentinel, "body": {"source": "evil"}}
        for payload in (b"not json", b"[1,2,3]", b'{"v":1}', json.dumps(envelope).encode(),
                        json.dumps({**envelope, "type": "session.end", "body": {}}).encode()):
            publish_raw(redis_url, channel, payload)
        await wait_until(lambda: sum(bus.stats()["wire_dropped"].values()) == 5, timeout=5)
        assert bus.stats()["wire_dropped"] == {"malformed": 3, "invalid": 1, "unknown_type": 1}
        assert sentinel not in sys.modules
        async with client.job("echo", name="echo", timeout=2) as j:
            pass
        assert j.response == {"by": "echo"}


async def test_with_a_secret_unsigned_messages_are_dropped(redis_url: str) -> None:
    channel = f"signed-{uuid.uuid4().hex[:8]}"
    signed = JSONMessageSerializer(secret="s3cret")
    bus = redis_bus(redis_url, channel, serializer=signed)
    runner = WorkerRunner(name="guarded", bus=bus, handle_sigint=False, settings=SETTINGS)
    await runner.add_workers(BaseWorker("w"))
    async with running(runner) as task:
        unsigned = JSONMessageSerializer(secret="").serialize(
            BusEndMessage(source="intruder", reason="bye"), sender="intruder", incarnation=1.0)
        forged = JSONMessageSerializer(secret="wrong").serialize(
            BusEndMessage(source="intruder"), sender="intruder", incarnation=1.0)
        publish_raw(redis_url, channel, unsigned)
        publish_raw(redis_url, channel, forged)
        await wait_until(lambda: sum(bus.stats()["wire_dropped"].values()) == 2, timeout=5)
        assert bus.stats()["wire_dropped"] == {"unsigned": 1, "forged": 1}
        await asyncio.sleep(0.1)
        assert not task.done()  # the session end was not obeyed


def test_a_bus_needs_a_client_or_url() -> None:
    with pytest.raises(ConfigurationError, match="redis"):
        redis_bus(None, "c")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="channel"):
        redis_bus("redis://127.0.0.1:1", "")


async def test_start_fails_clearly_when_redis_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    bus = redis_bus(f"redis://127.0.0.1:{port}/0", "nowhere")
    with pytest.raises(BusConnectionError, match="cannot reach Redis"):
        await bus.start()
    await bus.close()


# -- a server of the test's own, to restart ---------------------------------------------------


class OwnRedis:
    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path, redis_url: str) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed: run scripts/services.sh start")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def pair_on(own_redis: OwnRedis) -> AsyncIterator[tuple[WorkerRunner, WorkerRunner]]:
    channel = f"restart-{uuid.uuid4().hex[:8]}"
    a = WorkerRunner(name="a", handle_sigint=False, settings=SETTINGS,
                     bus=redis_bus(own_redis.url, channel, publish_timeout=0.5))
    b = WorkerRunner(name="b", handle_sigint=False, settings=SETTINGS,
                     bus=redis_bus(own_redis.url, channel, publish_timeout=0.5))
    yield a, b


async def test_the_bus_survives_a_redis_restart(own_redis: OwnRedis, pair_on) -> None:  # type: ignore[no-untyped-def]
    a, b = pair_on
    await survive_a_restart(a, b, own_redis.stop, own_redis.start)
