"""PgmqBus: runners in many processes share a channel through PostgreSQL queues (PGMQ).

Delivery guarantee: at least once while the receiving runner runs, with a visibility timeout.
A message is stored in the receiving runner's queue once its send returns (the queue is
unlogged: it survives reconnects and clean server restarts, not a server crash). The reader
deletes a batch only after handing it to this process's mailboxes; if the connection fails
between read and delete, the batch becomes visible again after ``visibility_timeout`` seconds
and is delivered again (a late duplicate, out of order; a signing serializer drops it as a
replay within its ``max_age``). Mailboxes are in memory, so a process that crashes loses what
it had queued locally. A message to a runner that has no queue (not started, stopped, or
dropped as lost) is dropped, and a runner starts with an empty queue: what was sent to its
previous incarnation is discarded. Order is FIFO per (sender, receiving runner), broadcasts and
targeted messages alike, except for a redelivered batch.

Topology: each runner owns one unlogged queue ``pw_<h(channel)>_<h(runner)>`` (64-bit
blake2b digests of the exact strings: channels ``a:b``, ``a/b`` and ``a_b`` never share a queue,
and names stay far below PGMQ's 47 characters), bound with an exact pattern to the channel's
topic ``pw.<h(channel)>``. A broadcast is one ``pgmq.send_topic`` (one round trip and one
transaction for every runner, the sender's own echo included and dropped on read); a targeted
message is one ``pgmq.send`` into the queue of the runner that hosts the target. The reader
holds one pooled connection that LISTENs to its queue's insert notifications
(``pgmq.enable_notify_insert``) and drains with ``pgmq.read`` + ``pgmq.delete`` when woken; it
polls every ``poll_interval`` only as a safety net. When the connection or the queue is lost it
backs off (capped, exponential), reconnects, re-creates and re-binds its queue and fires
``on_reconnected``; a send retries for ``publish_timeout`` seconds, then raises
:class:`BusConnectionError`. A graceful stop unbinds and drops the own queue, and
:meth:`PgmqBus.forget_runner` drops a lost peer's. A database without PGMQ gets it at start
(``CREATE EXTENSION`` if the server has it, else the SQL the ``pgmq`` package ships), under an
advisory lock. Runner names must be unique per channel (a name owns one queue), and anyone who
can bind a queue to the topic in that database can read the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from importlib.resources import files
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from pgmq.async_queue import PGMQueue

from pipecat_workers.bus.network import NetworkBus
from pipecat_workers.bus.serializer import MessageSerializer
from pipecat_workers.errors import (
    BusConnectionError,
    BusError,
    ConfigurationError,
    SerializationError,
)
from pipecat_workers.settings import DEFAULT_SETTINGS

logger = logging.getLogger("pipecat_workers.bus.pgmq")

_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
         asyncpg.exceptions.OperatorInterventionError,
         asyncpg.exceptions.InsufficientResourcesError)
_FAILED = (*_DOWN, asyncpg.PostgresError)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 2.0
_IO_TIMEOUT = 10.0  # bound on every statement and pool acquire
_INSTALL_LOCK = 0x7069706563617400  # advisory lock key that serialises PGMQ installs

_HAS_PGMQ = ("SELECT to_regprocedure('pgmq.send_topic(text,jsonb)') IS NOT NULL AND "
             "to_regprocedure('pgmq.enable_notify_insert(text,integer)') IS NOT NULL")
_READ = "SELECT msg_id, message->>'e' FROM pgmq.read($1, $2, $3)"
_DELETE = "SELECT pgmq.delete($1::text, $2::bigint[])"
_SEND = "SELECT pgmq.send($1, $2::jsonb)"
_SEND_TOPIC = "SELECT pgmq.send_topic($1, $2::jsonb)"
_CREATE = "SELECT pgmq.create_unlogged($1)"
_NOTIFY = "SELECT pgmq.enable_notify_insert($1, 0)"
_BIND = "SELECT pgmq.bind_topic($1, $2)"
_UNBIND = "SELECT pgmq.unbind_topic($1, $2)"
_DROP = "SELECT pgmq.drop_queue($1)"


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class PgmqBus(NetworkBus):
    """A bus on PostgreSQL with PGMQ: one queue per runner, broadcasts through a PGMQ topic.

    Args:
        pgmq: An initialised ``pgmq.async_queue.PGMQueue`` (its asyncpg pool is used, and
            stays yours to close; the reader holds one of its connections, so give it at least
            two), or a ``postgresql://`` DSN (the bus then creates and closes a small pool).
        channel: The channel every runner of one application shares.
        serializer: Encodes messages (to UTF-8 text); defaults to :class:`JSONMessageSerializer`.
        batch_size: Messages read per round trip.
        visibility_timeout: Seconds after which a message read but not deleted is read again.
        poll_interval: Seconds between safety reads when no notification arrives.
        publish_timeout: Seconds a send keeps retrying while PostgreSQL is unreachable.

    Example::

        pgmq = PGMQueue(host="localhost", database="postgres", init_extension=False)
        await pgmq.init()
        runner = WorkerRunner(bus=PgmqBus(pgmq=pgmq, channel="pipecat:app"))
    """

    def __init__(
        self, pgmq: PGMQueue | str | None = None, *, channel: str = "pipecat_bus",
        serializer: MessageSerializer | None = None, batch_size: int = 100,
        visibility_timeout: int = 30, poll_interval: float = 1.0, publish_timeout: float = 5.0,
        data_queue_size: int = DEFAULT_SETTINGS.data_queue_size,
    ) -> None:
        if isinstance(pgmq, str):
            if not pgmq.startswith(("postgresql://", "postgres://")):
                raise ConfigurationError("PgmqBus needs a postgresql:// DSN, got "
                                         f"{pgmq.split('://')[0]!r}")
        elif not isinstance(pgmq, PGMQueue):
            raise ConfigurationError("PgmqBus needs a pgmq.async_queue.PGMQueue or a "
                                     f"postgresql:// DSN, got {type(pgmq).__name__}")
        if not channel:
            raise ConfigurationError("PgmqBus needs a non-empty channel name")
        if batch_size < 1 or visibility_timeout < 1 or not poll_interval > 0 or publish_timeout < 0:
            raise ConfigurationError("batch_size and visibility_timeout must be at least 1, "
                                     "poll_interval positive and publish_timeout not negative")
        super().__init__(channel=channel, serializer=serializer, data_queue_size=data_queue_size)
        self._dsn = pgmq if isinstance(pgmq, str) else None
        self._client = None if isinstance(pgmq, str) else pgmq
        self._batch_size = batch_size
        self._vt = visibility_timeout
        self._poll_interval = poll_interval
        self._publish_timeout = publish_timeout
        self._topic = f"pw.{_digest(channel)}"
        self._queue = ""
        self._pool: Any = None  # asyncpg.Pool while open
        self._conn: Any = None  # the reader's pooled connection (LISTEN, read, delete)
        self._wake: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None

    def queue_name(self, runner: str | None = None) -> str:
        """The PGMQ queue of ``runner`` on this channel (default: this bus's own queue)."""
        if runner is None:
            return self._queue or self.queue_name(self.runner_name)
        return f"pw_{_digest(self._channel)}_{_digest(runner)}"

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["queue"] = self._queue
        return stats

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        # A bus no runner is bound to (a tool) still needs a queue of its own.
        self._queue = self.queue_name(self.runner_name or f"~{os.urandom(6).hex()}")
        self._wake = asyncio.Event()
        try:
            if self._client is not None:
                if self._client.pool is None:
                    raise ConfigurationError("PGMQueue is not initialised: await pgmq.init() "
                                             "before starting the bus")
                self._pool = self._client.pool
            else:
                self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4,
                                                       timeout=_IO_TIMEOUT)
            async with self._pool.acquire(timeout=_IO_TIMEOUT) as conn:
                await _ensure_pgmq(conn)
            await self._connect(fresh=True)
        except BaseException as exc:
            await self._close_pool()
            if isinstance(exc, _DOWN):
                raise BusConnectionError(f"cannot reach PostgreSQL for channel "
                                         f"'{self._channel}': {exc}") from exc
            if isinstance(exc, asyncpg.PostgresError):
                raise BusError(f"cannot set up PGMQ queue '{self._queue}': {exc}") from exc
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def _close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader}, timeout=DEFAULT_SETTINGS.cancel_timeout)
        await self._drop_conn()
        if self._pool is not None:
            try:
                async with self._pool.acquire(timeout=_IO_TIMEOUT) as conn, conn.transaction():
                    await conn.execute(_UNBIND, self._topic, self._queue, timeout=_IO_TIMEOUT)
                    await conn.execute(_DROP, self._queue, timeout=_IO_TIMEOUT)
            except _FAILED as exc:
                logger.warning("could not drop queue '%s' of '%s' (peers drop it once this "
                               "runner counts as lost): %s", self._queue, self._channel, exc)
        await self._close_pool()
        self._mark_closed()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._dsn is not None:  # never close what we did not create
            try:
                await asyncio.wait_for(pool.close(), _IO_TIMEOUT)
            except Exception:
                pool.terminate()

    async def forget_runner(self, runner: str) -> None:
        """Drop the queue of a runner that is gone, so nothing piles up for it. Never raises;
        a runner that was wrongly thought lost re-creates its queue on its next read."""
        if runner == self.runner_name or self._pool is None:
            return
        try:
            await self._pool.execute(_DROP, self.queue_name(runner), timeout=_IO_TIMEOUT)
        except _FAILED as exc:
            logger.debug("could not drop the queue of runner '%s': %s", runner, exc)

    # -- reading --------------------------------------------------------------------------

    async def _connect(self, *, fresh: bool) -> None:
        """Take the reader's connection, set up the queue (emptied if ``fresh``), LISTEN."""
        conn = await self._pool.acquire(timeout=_IO_TIMEOUT)
        try:
            async with conn.transaction():
                if fresh:  # what was sent to a previous incarnation is not for us
                    await conn.execute(_DROP, self._queue, timeout=_IO_TIMEOUT)
                for sql in (_CREATE, _NOTIFY):
                    await conn.execute(sql, self._queue, timeout=_IO_TIMEOUT)
                await conn.execute(_BIND, self._topic, self._queue, timeout=_IO_TIMEOUT)
            await conn.add_listener(f"pgmq.q_{self._queue}.INSERT", self._notified)
            conn.add_termination_listener(self._notified)
        except BaseException:
            await self._release(conn)
            raise
        self._conn = conn
        self._notified()  # drain what arrived before the LISTEN
        self._set_connected(True)

    def _notified(self, *args: object) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.remove_termination_listener(self._notified)
            with contextlib.suppress(*_FAILED, TimeoutError):
                await asyncio.wait_for(conn.remove_listener(
                    f"pgmq.q_{self._queue}.INSERT", self._notified), _IO_TIMEOUT)
            await self._release(conn)

    async def _release(self, conn: Any) -> None:
        try:
            await self._pool.release(conn, timeout=_IO_TIMEOUT)
        except Exception:
            conn.terminate()

    async def _read_forever(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            try:
                if self._conn is None:
                    await self._connect(fresh=False)
                    backoff = _BACKOFF_FIRST
                await self._read(self._conn)
            except _FAILED as exc:  # connection lost, or our queue dropped: set up again
                if self._conn is not None:
                    logger.warning("PGMQ reader of '%s' failed: %s", self._channel, exc)
                await self._drop_conn()
                self._set_connected(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _read(self, conn: Any) -> None:
        wake, queue, batch = self._wake, self._queue, self._batch_size
        assert wake is not None
        while True:
            wake.clear()  # before reading: a notification from here on wakes the next round
            while True:
                rows = await conn.fetch(_READ, queue, self._vt, batch, timeout=_IO_TIMEOUT)
                if not rows:
                    break
                for row in rows:
                    text = row[1]
                    try:
                        self._on_payload(text.encode("utf-8") if text is not None else b"")
                    except Exception:
                        logger.exception("could not deliver a message from '%s'", queue)
                # Ack after local delivery.
                await conn.execute(_DELETE, queue, [row[0] for row in rows],
                                   timeout=_IO_TIMEOUT)
                if len(rows) < batch:
                    break  # anything newer has notified us since wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await wake.wait()

    # -- sending --------------------------------------------------------------------------

    async def _send_broadcast(self, data: bytes) -> None:
        await self._send(_SEND_TOPIC, self._topic, data)

    async def _send_to_runner(self, runner: str, data: bytes) -> None:
        if not await self._send(_SEND, self.queue_name(runner), data):
            logger.debug("runner '%s' has no queue on '%s': message dropped", runner,
                         self._channel)

    async def _send(self, sql: str, key: str, data: bytes) -> bool:
        """Run a send, retrying while the server is down; False if the queue does not exist."""
        try:
            message = '{"e":' + json.dumps(data.decode("utf-8"), ensure_ascii=False) + "}"
        except UnicodeDecodeError:
            raise SerializationError("PgmqBus carries text: the serializer must produce "
                                     "UTF-8") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        delay = _BACKOFF_FIRST
        while True:
            pool = self._pool
            if pool is None:
                raise BusConnectionError(f"PgmqBus on '{self._channel}' is not started")
            try:
                await pool.execute(sql, key, message, timeout=_IO_TIMEOUT)
                return True
            except _DOWN as exc:
                error: Exception = exc
            except asyncpg.PostgresError as exc:
                if sql is _SEND and isinstance(exc, asyncpg.UndefinedTableError):
                    return False
                raise BusError(f"PGMQ refused a message on '{self._channel}': {exc}") from exc
            if loop.time() + delay >= deadline:
                raise BusConnectionError(f"cannot send on PGMQ channel '{self._channel}' for "
                                         f"{self._publish_timeout} s: {error}") from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)


async def _ensure_pgmq(conn: Any) -> None:
    """Install PGMQ if the database has none: ``CREATE EXTENSION`` if the server offers it,
    else the SQL the ``pgmq`` package ships. An advisory lock keeps processes from racing."""
    if await conn.fetchval(_HAS_PGMQ, timeout=_IO_TIMEOUT):
        return
    sql_file = files("pgmq").joinpath("sql", "pgmq.sql")
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _INSTALL_LOCK)
            if await conn.fetchval(_HAS_PGMQ):
                return
            if await conn.fetchval("SELECT to_regnamespace('pgmq') IS NOT NULL"):
                raise BusConnectionError(
                    "the PGMQ in this database has no topics or insert notifications: upgrade "
                    "it (PgmqBus needs PGMQ 1.13, as shipped with the pgmq package >= 1.1.4)")
            installed = False
            if await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name='pgmq')"):
                with contextlib.suppress(asyncpg.PostgresError):
                    async with conn.transaction():  # a savepoint: fall back to the SQL
                        await conn.execute("CREATE EXTENSION IF NOT EXISTS pgmq")
                        installed = True
            if not installed:
                await conn.execute(sql_file.read_text(encoding="utf-8"))
    except _DOWN:
        raise
    except asyncpg.PostgresError as exc:
        raise BusConnectionError(
            f"PGMQ is not installed in this database and this role cannot install it ({exc}); "
            f"install it once as an owner: CREATE EXTENSION pgmq, or psql -f {sql_file}"
        ) from exc
    logger.info("installed PGMQ in the database")
