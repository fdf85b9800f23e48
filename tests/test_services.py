"""The test servers are real and usable: Redis, and PostgreSQL with PGMQ (scripts/services.sh).

The drivers are imported inside the fixtures and tests: if one is missing, the server checks in
conftest.py skip (or fail in CI) with a clear message instead of breaking collection.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against the same server) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.mark.redis
async def test_redis_set_get_and_pubsub(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        key = unique("key")
        await client.set(key, b"value", ex=60)
        assert await client.get(key) == b"value"
        await client.delete(key)

        channel = unique("channel")
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            # PUBLISH goes over another connection: wait until the subscription is in place.
            confirmation = await pubsub.get_message(timeout=5)
            assert confirmation is not None and confirmation["type"] == "subscribe"
            assert await client.publish(channel, b"hello") == 1
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None and message["data"] == b"hello"
    finally:
        await client.aclose()


@pytest.fixture
async def conn(postgres_dsn: str) -> AsyncIterator[Any]:
    import asyncpg

    connection = await asyncpg.connect(postgres_dsn)
    yield connection
    await connection.close()


@pytest.fixture
async def queues(conn: Any) -> AsyncIterator[list[str]]:
    """Two fresh unlogged PGMQ queues, dropped afterwards."""
    names = [unique("q") for _ in range(2)]
    for name in names:
        await conn.execute("SELECT pgmq.create_unlogged($1::text)", name)
    yield names
    for name in names:
        await conn.execute("SELECT pgmq.drop_queue($1::text)", name)


async def send(conn: Any, queue: str, message: dict[str, Any]) -> int:
    msg_id: int = await conn.fetchval(
        "SELECT pgmq.send($1::text, $2::jsonb)", queue, json.dumps(message)
    )
    return msg_id


async def read(conn: Any, queue: str) -> list[tuple[int, dict[str, Any]]]:
    rows = await conn.fetch("SELECT msg_id, message FROM pgmq.read($1::text, 30, 10)", queue)
    return [(row["msg_id"], json.loads(row["message"])) for row in rows]


@pytest.mark.postgres
async def test_pgmq_send_and_read(conn: Any, queues: list[str]) -> None:
    queue = queues[0]
    msg_id = await send(conn, queue, {"n": 1})
    assert await read(conn, queue) == [(msg_id, {"n": 1})]
    assert await read(conn, queue) == []  # invisible for 30 s once read


@pytest.mark.postgres
async def test_pgmq_topic_fans_out_to_bound_queues(conn: Any, queues: list[str]) -> None:
    topic = unique("topic")
    for queue in queues:
        await conn.execute("SELECT pgmq.bind_topic($1, $2)", f"{topic}.*", queue)
    sent = await conn.fetchval(
        "SELECT pgmq.send_topic($1, $2::jsonb)", f"{topic}.created", json.dumps({"n": 2})
    )
    assert sent == 2
    for queue in queues:
        assert [message for _, message in await read(conn, queue)] == [{"n": 2}]


@pytest.mark.postgres
async def test_pgmq_notify_insert_wakes_a_listener(
    conn: Any, queues: list[str], postgres_dsn: str
) -> None:
    import asyncpg

    queue = queues[0]
    # notify_queue_listeners() sends on 'pgmq.' || TG_TABLE_NAME || '.' || TG_OP.
    channel = f"pgmq.q_{queue}.INSERT"
    notified: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_notify(_conn: Any, _pid: int, got_channel: str, _payload: str) -> None:
        if not notified.done():
            notified.set_result(got_channel)

    listener = await asyncpg.connect(postgres_dsn)
    try:
        await listener.add_listener(channel, on_notify)
        await conn.execute("SELECT pgmq.enable_notify_insert($1::text, 0)", queue)
        await send(conn, queue, {"n": 3})
        assert await asyncio.wait_for(notified, 5) == channel
    finally:
        await listener.close()
