"""The embedded hub (BusHub + HubBus): routing, liveness, restarts, hostile input, its socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from pipecat_workers import (
    BaseWorker,
    BusConnectionError,
    ConfigurationError,
    Settings,
    WorkerLostData,
    WorkerRunner,
)
from pipecat_workers.bus import (
    BusDataMessage,
    BusHub,
    HubBus,
    JSONMessageSerializer,
    register_message,
)
from pipecat_workers.bus.hub_wire import (
    MAX_PATH,
    OP_HELLO,
    OP_PAYLOAD,
    OP_PROBE,
    OP_PROBED,
    OP_REFUSED,
    OP_SEND,
    OP_WELCOME,
    frame,
    hello,
    read_frame,
)
from tests.bus.outage import Echo, survive_a_restart
from tests.helpers import Recorder, leftover_tasks, running, wait_until

SETTINGS = Settings(heartbeat_interval=0.25, lost_after=3, end_grace=1.0, cancel_timeout=0.5)
ROOT = Path(__file__).resolve().parents[2]


@register_message(name="test.hub.note")
@dataclass(kw_only=True, slots=True)
class Note(BusDataMessage):
    text: str = ""


@pytest.fixture
async def hub(socket_dir: str) -> AsyncIterator[BusHub]:
    async with BusHub(f"{socket_dir}/hub.sock") as hub:
        yield hub


class Raw:
    """A hand-made hub client, to send what HubBus never would (closed after each test)."""

    opened: ClassVar[list[Raw]] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        Raw.opened.append(self)

    @classmethod
    async def open(cls, path: str, channel: str = "", runner: str = "",
                   incarnation: float = 1.0, flags: int = 0) -> Raw:
        reader, writer = await asyncio.open_unix_connection(path)
        raw = cls(reader, writer)
        if channel:
            writer.write(hello(channel, runner, incarnation, flags))
            assert (await raw.recv())[0] == OP_WELCOME
        return raw

    def send(self, op: int, body: bytes) -> None:
        self.writer.write(frame(op, body))

    async def recv(self, timeout: float = 2.0) -> tuple[int, bytes]:
        return await asyncio.wait_for(read_frame(self.reader), timeout)

    async def probe(self, runner: str, request: int = 7) -> bool:
        self.send(OP_PROBE, request.to_bytes(4, "big") + runner.encode())
        op, body = await self.recv()
        assert op == OP_PROBED and body[:4] == request.to_bytes(4, "big")
        return body[4] == 1

    async def closed_by_hub(self, timeout: float = 2.0) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture(autouse=True)
async def _close_raw_clients() -> AsyncIterator[None]:
    yield
    while Raw.opened:
        Raw.opened.pop().close()
    await asyncio.sleep(0)  # let the transports finish closing in this loop


def bound_bus(path: str, channel: str, runner: str, hosts: dict[str, str],
              **kwargs: object) -> tuple[HubBus, Recorder]:
    """A bus bound to ``runner`` that locates workers through ``hosts``, with a recorder
    that sees everything it delivers."""
    bus = HubBus(path, channel=channel, **kwargs)  # type: ignore[arg-type]
    bus.bind(runner, time.time(), hosts.get)
    recorder = Recorder(f"rec-{runner}")
    bus.subscribe(recorder, role="observer")
    return bus, recorder


def notes(recorder: Recorder) -> list[str]:
    return [m.text for m in recorder.of_type(Note)]


# -- routing -------------------------------------------------------------------------------


async def test_a_targeted_message_reaches_only_its_runner(hub: BusHub) -> None:
    hosts = {"wb": "b", "wc": "c", "wz": "z"}  # "z" never connects
    buses = {r: bound_bus(hub.path, "ch", r, hosts) for r in "abc"}
    tap, tapped = bound_bus(hub.path, "ch", "", {}, observe_all=True)
    for bus, _ in (*buses.values(), (tap, tapped)):
        await bus.start()
    try:
        (a, _), (_, rec_b), (_, rec_c) = buses["a"], buses["b"], buses["c"]
        await wait_until(lambda: hub.stats()["clients"] == 4)
        await a.send(Note(source="x", target="wb", text="to b"))
        await a.send(Note(source="x", target="wz", text="to nobody"))
        await a.send(Note(source="x", text="to all"))
        await wait_until(lambda: notes(rec_c) == ["to all"] and len(notes(tapped)) == 3)
        assert notes(rec_b) == ["to b", "to all"]
        assert notes(tapped) == ["to b", "to nobody", "to all"]  # an observer sees it all
        stats = hub.stats()
        assert stats["dropped"]["no_target"] == 1
        assert stats["channels"]["ch"] == {"clients": 4, "runners": ["a", "b", "c"],
                                           "observers": 1}
        assert a.stats()["received"] == {}  # its own broadcast is never echoed back
    finally:
        for bus, _ in (*buses.values(), (tap, tapped)):
            await bus.close()


async def test_channels_are_apart_and_the_newest_incarnation_gets_the_frames(
        hub: BusHub) -> None:
    old = await Raw.open(hub.path, "ch", "r", incarnation=1.0)
    new = await Raw.open(hub.path, "ch", "r", incarnation=2.0)
    other = await Raw.open(hub.path, "other", "r", incarnation=3.0)
    sender = await Raw.open(hub.path, "ch", "s")
    name = b"r"
    sender.send(OP_SEND, len(name).to_bytes(2, "big") + name + b"one")
    assert await new.recv() == (OP_PAYLOAD, b"one")
    new.close()
    await wait_until(lambda: hub.stats()["channels"]["ch"]["clients"] == 2)
    sender.send(OP_SEND, len(name).to_bytes(2, "big") + name + b"two")
    assert await old.recv() == (OP_PAYLOAD, b"two")
    with pytest.raises(TimeoutError):
        await other.recv(timeout=0.1)
    for raw in (old, other, sender):
        raw.close()


async def test_a_big_message_arrives_whole(hub: BusHub) -> None:
    serializer = JSONMessageSerializer(max_size=8 * 1024 * 1024)
    a, _ = bound_bus(hub.path, "big", "a", {}, serializer=serializer)
    b, rec_b = bound_bus(hub.path, "big", "b", {},
                         serializer=JSONMessageSerializer(max_size=8 * 1024 * 1024))
    async with a, b:
        text = "x" * (3 * 1024 * 1024)
        await a.send(Note(source="a", text=text))
        await a.send(Note(source="a", text="after"))
        await wait_until(lambda: len(notes(rec_b)) == 2, timeout=5)
        assert notes(rec_b) == [text, "after"]


# -- liveness ------------------------------------------------------------------------------


async def test_probe_tells_a_connected_runner_from_a_gone_one(hub: BusHub) -> None:
    asker, _ = bound_bus(hub.path, "ch", "asker", {})
    async with asker:
        assert await asker.probe("victim") is False
        victim = await Raw.open(hub.path, "ch", "victim")
        assert await asker.probe("victim") is True
        victim.close()
        await wait_until(lambda: "victim" not in hub.stats()["channels"]["ch"]["runners"])
        assert await asker.probe("victim") is False
    assert await asker.probe("victim") is None  # closed: cannot tell


async def test_probe_is_false_right_after_a_process_is_killed(hub: BusHub) -> None:
    code = ("import socket, sys, time\n"
            "from pipecat_workers.bus.hub_wire import hello\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(sys.argv[1])\n"
            "s.sendall(hello('ch', 'doomed', 1.0))\n"
            "s.recv(16)\n"
            "print('UP', flush=True)\n"
            "time.sleep(60)\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, hub.path, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 15)).strip() == b"UP"
        asker = await Raw.open(hub.path, "ch", "asker")
        assert await asker.probe("doomed") is True
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        while await asker.probe("doomed"):
            await asyncio.sleep(0.005)
        assert time.monotonic() - killed < 0.5
        asker.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


# -- outages -------------------------------------------------------------------------------


async def test_the_bus_survives_a_hub_restart(socket_dir: str) -> None:
    path = f"{socket_dir}/hub.sock"
    loop = asyncio.get_running_loop()
    hubs = [BusHub(path)]
    await hubs[0].start()

    def stop() -> None:  # called from a thread, as the Redis server's restart is
        asyncio.run_coroutine_threadsafe(hubs[-1].stop(), loop).result()

    def start() -> None:  # a new hub on the same path: a restarted supervisor
        hubs.append(BusHub(path))
        asyncio.run_coroutine_threadsafe(hubs[-1].start(), loop).result()

    a = WorkerRunner(name="a", handle_sigint=False, settings=SETTINGS,
                     bus=HubBus(path, channel="restart", publish_timeout=0.5))
    b = WorkerRunner(name="b", handle_sigint=False, settings=SETTINGS,
                     bus=HubBus(path, channel="restart", publish_timeout=0.5))
    try:
        await survive_a_restart(a, b, stop, start)
    finally:
        await hubs[-1].stop()


async def test_an_outage_longer_than_lost_after_loses_no_peer(socket_dir: str) -> None:
    # Both runners hear nothing while the hub is down; neither may take the other for lost.
    path = f"{socket_dir}/hub.sock"
    patient = Settings(heartbeat_interval=0.25, lost_after=12, end_grace=1.0, cancel_timeout=0.5)
    hub = BusHub(path)
    await hub.start()
    bus_a, bus_b = HubBus(path, channel="outage"), HubBus(path, channel="outage")
    a = WorkerRunner(name="a", handle_sigint=False, settings=patient, bus=bus_a)
    b = WorkerRunner(name="b", handle_sigint=False, settings=patient, bus=bus_b)
    lost: list[str] = []

    class Watcher(BaseWorker):
        async def on_worker_lost(self, data: WorkerLostData) -> None:
            lost.append(data.worker_name)

    watcher = Watcher("watcher")
    await a.add_workers(watcher)
    await b.add_workers(Echo("far"))
    try:
        async with running(a), running(b):
            await wait_until(lambda: "far" in a.registry, timeout=5)
            await watcher.watch_workers("far")
            await hub.stop()
            await wait_until(lambda: not bus_a.connected and not bus_b.connected, timeout=5)
            await asyncio.sleep(12 * 0.25 + 0.5)  # longer than lost_after
            hub = BusHub(path)
            await hub.start()
            await wait_until(lambda: bus_a.connected and bus_b.connected, timeout=10)
            await asyncio.sleep(1.0)  # heartbeats flow again
            assert "far" in a.registry
            assert lost == []
    finally:
        await hub.stop()


async def test_sends_wait_for_the_hub_in_order_then_give_up(socket_dir: str) -> None:
    path = f"{socket_dir}/hub.sock"
    hub = BusHub(path)
    await hub.start()
    a, _ = bound_bus(path, "ch", "a", {}, publish_timeout=3.0)
    b, rec_b = bound_bus(path, "ch", "b", {})
    impatient, _ = bound_bus(path, "ch", "c", {}, publish_timeout=0.2)
    async with a, b, impatient:
        await hub.stop()
        await wait_until(lambda: not a.connected and not b.connected)
        sends = [asyncio.ensure_future(a.send(Note(source="a", text=str(i)))) for i in range(5)]
        await asyncio.sleep(0.2)
        assert not any(s.done() for s in sends)  # waiting for the hub, not failed
        await hub.start()
        await asyncio.gather(*sends)
        await wait_until(lambda: len(notes(rec_b)) == 5, timeout=5)
        assert notes(rec_b) == ["0", "1", "2", "3", "4"]
        await hub.stop()
        await wait_until(lambda: not impatient.connected)
        with pytest.raises(BusConnectionError, match="unreachable"):
            await impatient.send(Note(source="c", text="lost"))


async def test_start_fails_clearly_without_a_hub(socket_dir: str) -> None:
    bus = HubBus(f"{socket_dir}/nobody.sock", channel="ch")
    with pytest.raises(BusConnectionError, match="cannot reach the bus hub"):
        await bus.start()
    await bus.close()


async def test_sends_to_a_hub_that_stops_reading_fail_in_bounded_time(socket_dir: str) -> None:
    path = f"{socket_dir}/deaf.sock"
    stuck = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        writer.write(frame(OP_WELCOME, b"\x01"))
        await stuck.wait()  # never reads again
        writer.close()

    server = await asyncio.start_unix_server(deaf, path)
    bus = HubBus(path, channel="ch", publish_timeout=0.3,
                 serializer=JSONMessageSerializer(max_size=4 * 1024 * 1024))
    try:
        await bus.start()
        with pytest.raises(BusConnectionError, match="has not read"):
            for _ in range(100):
                await asyncio.wait_for(bus.send(Note(source="a", text="x" * 1_000_000)), 2)
    finally:
        stuck.set()
        await bus.close()
        server.close()
        await server.wait_closed()


async def test_a_client_that_stops_reading_loses_frames_not_the_hub(socket_dir: str) -> None:
    async with BusHub(f"{socket_dir}/hub.sock", max_backlog=256 * 1024) as hub:
        stuck = await Raw.open(hub.path, "ch", "stuck")
        stuck.writer.transport.pause_reading()
        sender = await Raw.open(hub.path, "ch", "sender")
        listener = await Raw.open(hub.path, "ch", "listener")
        chunk = b"x" * 60_000
        for _ in range(100):
            sender.send(OP_PAYLOAD, chunk)
            assert await listener.recv() == (OP_PAYLOAD, chunk)
        assert hub.stats()["dropped"]["backlog"] > 0


async def test_a_client_that_closes_while_the_hub_writes_to_it_loses_nothing_it_sent(
        socket_dir: str) -> None:
    # A runner that leaves says goodbye and closes while others keep talking, so the hub is
    # writing to it. Closed at once, with the hub's data unread, its socket makes the hub's
    # next write fail, and the hub's stream reports that before the goodbye it had not read
    # yet. A slow hub (one busy process among many) is played here by a server that reads
    # only after a while, and writes all along.
    got: list[bytes] = []
    done = asyncio.Event()

    async def slow_hub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            op, _ = await read_frame(reader)
            assert op == OP_HELLO
            writer.write(frame(OP_WELCOME, bytes([1, 0])))
            for _ in range(40):  # others' traffic, while the client says goodbye and closes
                writer.write(frame(OP_PAYLOAD, b"{}" * 2000))
                await asyncio.sleep(0.005)
            while True:
                op, body = await read_frame(reader)
                got.append(body)
        except (OSError, EOFError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_unix_server(slow_hub, f"{socket_dir}/slow.sock")
    try:
        bus = HubBus(f"{socket_dir}/slow.sock", channel="ch")
        await bus.start()
        await bus.send(Note(source="leaving", text="goodbye"))
        await bus.close()
        await asyncio.wait_for(done.wait(), 5)
        assert any(b"goodbye" in body for body in got), got
    finally:
        server.close()
        await server.wait_closed()


# -- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    b"\x00\x00\x00\x00",  # a frame without an opcode
    struct.pack(">IB", 64 * 1024 * 1024, OP_PAYLOAD),  # larger than MAX_FRAME
    frame(0x7F, b"what"),  # an unknown opcode
    frame(OP_SEND, b"\xff\xff" + b"short"),  # a runner name longer than the frame
    frame(OP_HELLO, hello("ch", "again", 1.0)[5:]),  # hello twice
])
async def test_a_malformed_frame_closes_only_its_connection(
        hub: BusHub, bad: bytes, caplog: pytest.LogCaptureFixture) -> None:
    good_a = await Raw.open(hub.path, "ch", "a")
    good_b = await Raw.open(hub.path, "ch", "b")
    evil = await Raw.open(hub.path, "ch", "evil")
    evil.writer.write(bad)
    assert await evil.closed_by_hub()
    assert hub.stats()["dropped"]["malformed"] == 1
    assert "closing the connection of 'evil'" in caplog.text
    good_a.send(OP_PAYLOAD, b"still here")
    assert await good_b.recv() == (OP_PAYLOAD, b"still here")
    for raw in (good_a, good_b):
        raw.close()


async def test_a_client_must_say_hello_in_a_version_the_hub_speaks(hub: BusHub) -> None:
    silent = await Raw.open(hub.path)
    silent.send(OP_PAYLOAD, b"hi")
    assert await silent.closed_by_hub()
    future = await Raw.open(hub.path)
    future.writer.write(frame(OP_HELLO, struct.pack(">BBdH", 99, 0, 1.0, 2) + b"ch"))
    op, reason = await future.recv()
    assert op == OP_REFUSED and b"version 99" in reason
    assert await future.closed_by_hub()
    assert hub.stats()["clients"] == 0


async def test_forged_payloads_are_dropped_and_counted_and_jobs_still_run(
        hub: BusHub) -> None:
    bus = HubBus(hub.path, channel="forge")
    runner = WorkerRunner(name="victim", bus=bus, handle_sigint=False, settings=SETTINGS)
    client = BaseWorker("client")
    await runner.add_workers(client, Echo("echo"))
    async with running(runner):
        evil = await Raw.open(hub.path, "forge", "evil")
        envelope = {"v": 1, "id": "x-1", "from": "evil", "inc": 1.0, "ts": time.time(),
                    "type": "json.tool", "body": {"source": "evil"}}
        name = b"victim"
        for payload in (b"not json", b"[1,2,3]", json.dumps(envelope).encode()):
            evil.send(OP_PAYLOAD, payload)
        evil.send(OP_SEND, len(name).to_bytes(2, "big") + name + b"{}")
        await wait_until(lambda: sum(bus.stats()["wire_dropped"].values()) == 4, timeout=5)
        assert bus.stats()["wire_dropped"] == {"malformed": 3, "unknown_type": 1}
        async with client.job("echo", name="echo", timeout=2) as j:
            pass
        assert j.response == {"by": "echo"}
        evil.close()


# -- the socket ----------------------------------------------------------------------------


async def test_the_socket_is_private_and_removed_at_stop(socket_dir: str) -> None:
    path = f"{socket_dir}/hub.sock"
    hub = BusHub(path)
    await hub.start()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    await hub.stop()
    await hub.stop()  # idempotent
    assert not os.path.exists(path)


async def test_a_stale_socket_is_replaced_and_a_live_hub_refused(socket_dir: str) -> None:
    path = f"{socket_dir}/hub.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # a socket file nobody listens on: a supervisor killed by SIGKILL
    dead.close()
    async with BusHub(path) as hub:
        assert hub.serving
        with pytest.raises(ConfigurationError, match="already listening"):
            await BusHub(path).start()
        assert (await Raw.open(path, "ch", "r")) is not None  # the first hub still serves
    Path(path).write_text("not a socket")
    with pytest.raises(ConfigurationError, match="not a socket"):
        await BusHub(path).start()
    assert Path(path).read_text() == "not a socket"


def test_a_path_too_long_for_a_unix_socket_is_refused() -> None:
    path = "/tmp/" + "x" * MAX_PATH
    with pytest.raises(ConfigurationError, match="more than"):
        BusHub(path)
    with pytest.raises(ConfigurationError, match="more than"):
        HubBus(path)
    with pytest.raises(ConfigurationError, match="channel"):
        HubBus("/tmp/x.sock", channel="")


async def test_stop_leaves_no_tasks_behind(socket_dir: str) -> None:
    before = asyncio.all_tasks()
    hub = BusHub(f"{socket_dir}/hub.sock")
    await hub.start()
    a, _ = bound_bus(hub.path, "ch", "a", {"wb": "b"})
    b, rec_b = bound_bus(hub.path, "ch", "b", {})
    await a.start()
    await b.start()
    lurker = await Raw.open(hub.path)  # connected, never says hello
    await a.send(Note(source="a", target="wb", text="hi"))
    await wait_until(lambda: notes(rec_b) == ["hi"])
    await hub.stop()  # with clients connected
    await a.close()
    await b.close()
    lurker.close()
    assert await leftover_tasks(before) == set()
    assert hub.stats()["clients"] == 0 and not hub.serving


async def test_stats_count_the_traffic(hub: BusHub) -> None:
    a = await Raw.open(hub.path, "ch", "a")
    b = await Raw.open(hub.path, "ch", "b")
    a.send(OP_PAYLOAD, b"12345")
    await b.recv()
    stats = hub.stats()
    assert stats["frames_in"] == 1 and stats["frames_out"] == 1
    assert stats["bytes_in"] == stats["bytes_out"] == 10
    assert stats["clients"] == 2
    for raw in (a, b):
        raw.close()
