"""PgmqBus against a real PostgreSQL: queues, topics, notifications, drops and reconnects.

Each test uses its own channel (and so its own queues); the server comes from the
``postgres_dsn`` fixture (``PIPECAT_TEST_POSTGRES_DSN``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from pipecat_workers import BaseWorker, JobStatus, Settings, WorkerRunner, job
from pipecat_workers.bus import (
    BusDataMessage,
    BusJobRequestMessage,
    JSONMessageSerializer,
    register_message,
)
from pipecat_workers.errors import BusConnectionError, ConfigurationError
from tests.helpers import Recorder, eventually, running, settle, wait_until

asyncpg = pytest.importorskip("asyncpg")
pgmq_async = pytest.importorskip("pgmq.async_queue")
from pipecat_workers.bus.backends.pgmq import PgmqBus, _lock_key  # noqa: E402

DSN = "postgresql://postgres@127.0.0.1:5439/postgres"  # for tests that never connect
ODD = 'nul\x00 "quote" \\ back é 🎉 \u2028 {"e": 1}'
postgres = pytest.mark.postgres


@register_message(name="test.pgmq.note")
@dataclass(kw_only=True, slots=True)
class Note(BusDataMessage):
    text: str


class Echo(BaseWorker):
    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"echo": message.payload}


@pytest.fixture
def dsn(postgres_dsn: str) -> str:
    return postgres_dsn


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def unique() -> str:
    return f"test:{uuid.uuid4().hex[:10]}"


def bus_for(dsn: str, channel: str, runner: str,
            locate: Callable[[str], str | None] = lambda name: None, **kw: Any) -> PgmqBus:
    bus = PgmqBus(dsn, channel=channel, poll_interval=0.2, **kw)
    bus.bind(runner, time.time(), locate)
    return bus


async def rows(db: Any, queue: str) -> int:
    assert re.fullmatch(r"pw_[0-9a-f]{16}_[0-9a-f]{16}", queue), queue
    return int(await db.fetchval(f"SELECT count(*) FROM pgmq.q_{queue}"))


async def exists(db: Any, queue: str) -> bool:
    return bool(await db.fetchval("SELECT to_regclass($1) IS NOT NULL", f"pgmq.q_{queue}"))


async def inject(db: Any, queue: str, message: str) -> None:
    await db.execute("SELECT pgmq.send($1, $2::jsonb)", queue, message)


def tagged(dsn: str) -> tuple[str, str]:
    """``dsn`` with an application name of its own, so its sessions can be found and killed;
    and that name."""
    app = f"pwt{uuid.uuid4().hex[:10]}"
    parts = urlsplit(dsn)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=f"{query}application_name={app}")), app


async def kill_sessions(db: Any, app: str) -> int:
    return int(await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM "
                                 "pg_stat_activity WHERE application_name = $1", app))


TRY_LOCK = "SELECT pg_try_advisory_lock($1)"


async def take_lock_once_free(db: Any, key: int) -> None:
    """Take an advisory lock the moment it is free (a killed session's ends with it)."""
    deadline = time.monotonic() + 5
    while not await db.fetchval(TRY_LOCK, key):
        assert time.monotonic() < deadline, "the session holding the lock did not end"
        await asyncio.sleep(0.005)


# -- no server needed --------------------------------------------------------------------------


async def test_bad_arguments_are_configuration_errors() -> None:
    for args, kw in [((), {}), (("redis://localhost",), {}), ((object(),), {}),
                     ((DSN,), {"channel": ""}), ((DSN,), {"batch_size": 0}),
                     ((DSN,), {"visibility_timeout": 0}),
                     ((DSN,), {"poll_interval": 0})]:
        with pytest.raises(ConfigurationError):
            PgmqBus(*args, **kw)
    with pytest.raises(ConfigurationError, match="init"):
        await PgmqBus(pgmq_async.PGMQueue(init_extension=False)).start()
    bus = PgmqBus(DSN, channel="c")
    with pytest.raises(BusConnectionError, match="not started"):
        await bus.send(Note(source="w", text="x"))


# -- against PostgreSQL ------------------------------------------------------------------------


@postgres
async def test_two_runners_find_each_other_and_run_a_job_through_postgres(dsn: str) -> None:
    channel, fast = unique(), Settings(heartbeat_interval=0.2, cancel_timeout=0.5)
    client = BaseWorker("client")
    a = WorkerRunner(name="ra", bus=PgmqBus(dsn, channel=channel), handle_sigint=False,
                     settings=fast)
    b = WorkerRunner(name="rb", bus=PgmqBus(dsn, channel=channel), handle_sigint=False,
                     settings=fast)
    await a.add_workers(client)
    await b.add_workers(Echo("server"))
    payload = {"text": ODD, "": [1, 2.5, None], "k": {"nested": True}}
    async with running(a), running(b):
        await wait_until(lambda: "server" in a.registry and "client" in b.registry, timeout=5)
        async with client.job("server", name="echo", payload=payload, timeout=5) as j:
            pass
        assert j.status is JobStatus.COMPLETED
        assert j.response == {"echo": payload}
        assert b.bus.stats()["received"]["BusJobRequestMessage"] == 1


@postgres
async def test_a_broadcast_reaches_the_peer_once_and_the_echo_is_dropped(dsn: str, db: Any) -> None:
    channel = unique()
    a, b = bus_for(dsn, channel, "ra"), bus_for(dsn, channel, "rb")
    wa, wb = Recorder("wa"), Recorder("wb")
    a.subscribe(wa)
    b.subscribe(wb)
    async with a, b:
        await a.send(Note(source="wa", text="hello"))
        await wb.wait_count(1, timeout=5)
        # send_topic wrote into both queues before send returned: once they are empty, the
        # echo in a's own queue was read and dropped
        for bus in (a, b):
            await eventually_empty(db, bus.queue_name())
        await settle(0.3)
        assert [m.text for m in wa.messages] == ["hello"]  # delivered locally, once
        assert [m.text for m in wb.messages] == ["hello"]
        assert a.stats()["received"] == {}
        assert b.stats()["received"] == {"Note": 1}


async def eventually_empty(db: Any, queue: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while await rows(db, queue):
        assert time.monotonic() < deadline, f"queue {queue} not drained"
        await asyncio.sleep(0.02)


@postgres
async def test_a_targeted_message_goes_only_to_the_target_runners_queue(dsn: str, db: Any) -> None:
    channel = unique()
    where = {"wb": "rb", "ghost": "r-ghost"}
    a, b = bus_for(dsn, channel, "ra", where.get), bus_for(dsn, channel, "rb")
    wb = Recorder("wb")
    b.subscribe(wb)
    async with a, b:
        # A third runner's queue with no reader: what reaches it stays there.
        qc = a.queue_name("rc")
        topic = await db.fetchval("SELECT pattern FROM pgmq.topic_bindings WHERE queue_name = $1",
                                  a.queue_name())
        await db.execute("SELECT pgmq.create_unlogged($1)", qc)
        await db.execute("SELECT pgmq.bind_topic($1, $2)", topic, qc)
        try:
            await a.send(Note(source="wa", target="wb", text=ODD))
            await wb.wait_count(1, timeout=5)
            assert wb.messages[0].text == ODD  # exact, NUL and all
            assert await rows(db, qc) == 0
            await a.send(Note(source="wa", target="ghost", text="nobody"))  # no queue: dropped
            await a.send(Note(source="wa", text="everyone"))
            await wb.wait_count(2, timeout=5)
            assert await rows(db, qc) == 1  # the broadcast only
            assert [m.text for m in wb.messages] == [ODD, "everyone"]
        finally:
            await a.forget_runner("rc")
        assert not await exists(db, qc)


@postgres
async def test_sends_from_concurrent_tasks_arrive_in_call_order(dsn: str) -> None:
    channel = unique()
    where = {"wb": "rb", "ghost": "r-ghost"}
    a, b = bus_for(dsn, channel, "ra", where.get), bus_for(dsn, channel, "rb")
    wb = Recorder("wb")
    b.subscribe(wb)
    targets = [None, "wb", "wb", "ghost"] * 50  # broadcasts, targeted, and a runner with no queue
    async with a, b:
        await asyncio.gather(*(a.send(Note(source="wa", target=t, text=str(i)))
                               for i, t in enumerate(targets)))
        expected = [str(i) for i, t in enumerate(targets) if t != "ghost"]
        await wb.wait_count(len(expected), timeout=10)
        assert [m.text for m in wb.messages] == expected


@postgres
async def test_channel_names_never_share_queues(dsn: str, db: Any) -> None:
    prefix = uuid.uuid4().hex[:8]
    channels = [f"{prefix}a:b", f"{prefix}a/b", f"{prefix}a_b"]
    senders = [bus_for(dsn, c, "r") for c in channels]
    receivers = [bus_for(dsn, c, "r2") for c in channels]
    recorders = [Recorder(f"w{i}") for i in range(3)]
    for bus, recorder in zip(receivers, recorders, strict=True):
        bus.subscribe(recorder)
    names = [bus.queue_name() for bus in senders]
    assert len(set(names)) == 3
    assert all(re.fullmatch(r"pw_[0-9a-f]{16}_[0-9a-f]{16}", n) and len(n) <= 47 for n in names)
    async with AsyncExitStack() as stack:
        for bus in (*senders, *receivers):
            await stack.enter_async_context(bus)
        topics = {await db.fetchval("SELECT pattern FROM pgmq.topic_bindings WHERE "
                                    "queue_name = $1", n) for n in names}
        assert len(topics) == 3
        await senders[0].send(Note(source="x", text="only a:b"))
        await recorders[0].wait_count(1, timeout=5)
        await settle(0.3)
        assert [len(r.messages) for r in recorders] == [1, 0, 0]


@postgres
async def test_close_unbinds_and_drops_the_queue(dsn: str, db: Any) -> None:
    bus = bus_for(dsn, unique(), "r")
    queue = bus.queue_name()
    async with bus:
        assert await db.fetchval("SELECT is_unlogged FROM pgmq.meta WHERE queue_name = $1", queue)
        assert await db.fetchval("SELECT count(*) FROM pgmq.topic_bindings WHERE queue_name = $1",
                                 queue) == 1
        assert bus.connected
    assert not bus.connected
    assert not await exists(db, queue)
    assert await db.fetchval("SELECT count(*) FROM pgmq.topic_bindings WHERE queue_name = $1",
                             queue) == 0
    assert await db.fetchval("SELECT count(*) FROM pgmq.meta WHERE queue_name = $1", queue) == 0


@postgres
async def test_a_pgmqueue_client_is_used_and_left_open(dsn: str, db: Any) -> None:
    client = pgmq_async.PGMQueue(conn_string=dsn, init_extension=False, pool_size=3)
    await client.init()
    try:
        channel = unique()
        a, b = PgmqBus(client, channel=channel), bus_for(dsn, channel, "rb")
        a.bind("ra", time.time(), lambda name: None)
        wb = Recorder("wb")
        b.subscribe(wb)
        async with a, b:
            await a.send(Note(source="wa", text="via PGMQueue"))
            await wb.wait_count(1, timeout=5)
        assert await client.pool.fetchval("SELECT 1") == 1
    finally:
        await client.close()


@postgres
async def test_forged_payloads_are_dropped_and_counted(dsn: str, db: Any) -> None:
    channel = unique()
    a, b = bus_for(dsn, channel, "ra"), bus_for(dsn, channel, "rb")
    wb = Recorder("wb")
    b.subscribe(wb)
    async with a, b:
        queue = b.queue_name()
        evil = json.dumps({"v": 1, "id": "x-1", "from": "evil", "inc": 1.0, "ts": time.time(),
                           "type": "os.system", "body": {"source": "x"}})
        for message in ('{"e": "garbage"}', json.dumps({"e": evil}), "[1, 2]", '{"e": 5}'):
            await inject(db, queue, message)
        await a.send(Note(source="wa", text="real"))
        await wb.wait_count(1, timeout=5)
        assert [m.text for m in wb.messages] == ["real"]
        assert b.stats()["wire_dropped"] == {"malformed": 3, "unknown_type": 1}
        await eventually_empty(db, queue)
        assert b.connected


@postgres
async def test_with_a_secret_an_unsigned_message_is_dropped(dsn: str, db: Any) -> None:
    channel = unique()
    a = bus_for(dsn, channel, "ra", serializer=JSONMessageSerializer(secret="s"))
    b = bus_for(dsn, channel, "rb", serializer=JSONMessageSerializer(secret="s"))
    wb = Recorder("wb")
    b.subscribe(wb)
    async with a, b:
        unsigned = JSONMessageSerializer(secret="").serialize(
            Note(source="evil", text="forged"), sender="evil", incarnation=1.0)
        await inject(db, b.queue_name(), json.dumps({"e": unsigned.decode()}))
        await a.send(Note(source="wa", text="signed"))
        await wb.wait_count(1, timeout=5)
        assert [m.text for m in wb.messages] == ["signed"]
        assert b.stats()["wire_dropped"] == {"unsigned": 1}


@postgres
async def test_a_reader_whose_connections_are_killed_reconnects(dsn: str, db: Any) -> None:
    dsn_b, app = tagged(dsn)
    channel = unique()
    a, b = bus_for(dsn, channel, "ra"), bus_for(dsn_b, channel, "rb")
    wb = Recorder("wb")
    b.subscribe(wb)
    events: list[str] = []

    async def on(name: str, bus: Any) -> None:
        events.append(name)

    b.add_event_handler("on_disconnected", lambda bus: on("down", bus))
    b.add_event_handler("on_reconnected", lambda bus: on("up", bus))
    async with a, b:
        await a.send(Note(source="wa", text="before"))
        await wb.wait_count(1, timeout=5)
        assert await kill_sessions(db, app) >= 1
        await a.send(Note(source="wa", text="during"))  # kept in b's queue meanwhile
        await eventually(lambda: events == ["down", "up"], "a disconnect and a reconnect")
        await wb.wait_count(2, timeout=5)
        await a.send(Note(source="wa", text="after"))
        await wb.wait_count(3, timeout=5)
        assert [m.text for m in wb.messages] == ["before", "during", "after"]
        assert b.connected


@postgres
async def test_forget_runner_keeps_the_queue_of_a_runner_that_is_still_alive(dsn: str,
                                                                             db: Any) -> None:
    # A peer declared lost only because it was slow (a starved machine) keeps its queue,
    # and with it whatever was sent to it meanwhile.
    channel = unique()
    a, b = bus_for(dsn, channel, "ra"), bus_for(dsn, channel, "rb")
    wb = Recorder("wb")
    b.subscribe(wb)
    async with a, b:
        await a.forget_runner("ra")  # never its own
        assert await exists(db, a.queue_name())
        await a.forget_runner("rb")
        assert await exists(db, b.queue_name())
        await a.send(Note(source="wa", text="still here"))
        await wb.wait_count(1, timeout=5)
        assert b.connected and b.stats()["connected"]


@postgres
async def test_a_live_runner_whose_queue_is_dropped_recreates_it(dsn: str, db: Any) -> None:
    channel = unique()
    a, b = bus_for(dsn, channel, "ra"), bus_for(dsn, channel, "rb")
    wb = Recorder("wb")
    b.subscribe(wb)
    reconnected = asyncio.Event()

    async def on_reconnected(bus: Any) -> None:
        reconnected.set()

    b.add_event_handler("on_reconnected", on_reconnected)
    async with a, b:
        await db.execute("SELECT pgmq.drop_queue($1)", b.queue_name())
        # b's next safety read finds its queue gone: it sets it up again, as after a reconnect
        await asyncio.wait_for(reconnected.wait(), 5)
        assert await db.fetchval("SELECT count(*) FROM pgmq.topic_bindings WHERE "
                                 "queue_name = $1", b.queue_name()) == 1
        await a.send(Note(source="wa", text="again"))
        await wb.wait_count(1, timeout=5)


@postgres
async def test_a_reconnecting_reader_waits_for_a_probe_to_release_its_lock(dsn: str,
                                                                           db: Any) -> None:
    dsn_b, app = tagged(dsn)
    b = bus_for(dsn_b, unique(), "rb")
    async with b:
        key = _lock_key(b.queue_name())
        assert await db.fetchval(TRY_LOCK, key) is False  # b's reader holds it
        await kill_sessions(db, app)
        # Take b's lock the moment its session ends, as a peer's probe would, and hold it
        # while b's reader reconnects.
        await take_lock_once_free(db, key)
        await asyncio.sleep(0.3)
        await db.execute("SELECT pg_advisory_unlock($1)", key)
        await eventually(lambda: b.connected, "b reconnects")
        # The reader took its lock once the "probe" let go: to its peers, b is alive.
        assert await db.fetchval(TRY_LOCK, key) is False


@postgres
async def test_a_reader_that_could_not_take_its_lock_takes_it_later(dsn: str, db: Any) -> None:
    dsn_b, app = tagged(dsn)
    b = bus_for(dsn_b, unique(), "rb")
    async with b:
        key = _lock_key(b.queue_name())
        await kill_sessions(db, app)
        await take_lock_once_free(db, key)
        # Held past the reader's wait: it goes on without the lock, and reads meanwhile.
        await eventually(lambda: not b.connected, "b notices that its session ended")
        await eventually(lambda: b.connected, "b reconnects without its lock")
        await db.execute("SELECT pg_advisory_unlock($1)", key)
        # Its next safety poll (every 0.2 s here) takes the lock.
        deadline = time.monotonic() + 5
        while await db.fetchval(TRY_LOCK, key):
            await db.execute("SELECT pg_advisory_unlock($1)", key)
            assert time.monotonic() < deadline, "b never took its lock back"
            await asyncio.sleep(0.05)


@postgres
async def test_pgmq_is_installed_into_a_database_without_it(dsn: str, db: Any) -> None:
    name = f"pwt_{uuid.uuid4().hex[:10]}"
    try:
        await db.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("the test role cannot create databases")
    try:
        fresh = urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
        channel = unique()
        buses = [bus_for(fresh, channel, f"r{i}") for i in range(3)]
        async with AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(bus) for bus in buses))
            conn = await asyncpg.connect(fresh)
            try:
                assert await conn.fetchval(
                    "SELECT to_regprocedure('pgmq.send_topic(text,jsonb)') IS NOT NULL")
            finally:
                await conn.close()
    finally:
        await db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
