"""PgmqBus: runners in many processes share a channel through PostgreSQL queues (PGMQ).

Delivery guarantee: at least once while the receiving runner runs, with a visibility timeout.
A message is stored in the receiving runner's queue once its send returns (unlogged: it survives
reconnects and clean server restarts, not a server crash). The reader deletes a batch only after
handing it to this process's mailboxes; if the connection fails between read and delete, the
batch is read again after ``visibility_timeout`` seconds (a late duplicate; a signing serializer
drops it as a replay within ``max_age``). Mailboxes are in memory: a process that crashes loses
what it had queued. A message to a runner without a queue (not started, stopped, dropped as
lost) is dropped, and a runner starts with an empty queue. Sends leave a process in call order,
so order is FIFO per (sender, receiving runner), broadcasts and targeted messages alike, except
for a redelivered batch.

Topology: each runner owns an unlogged queue ``pw_<h(channel)>_<h(runner)>`` (64-bit blake2b
digests of the exact strings: channels ``a:b``, ``a/b`` and ``a_b`` never share a queue), bound
with an exact pattern to the channel's topic ``pw.<h(channel)>``. A broadcast is one
``pgmq.send_topic`` (one round trip, one transaction, every queue, the sender's own included:
that echo is dropped on read); a targeted message is one ``pgmq.send`` into the queue of the
runner hosting the target. The reader LISTENs to its queue's insert notifications, drains with
``pgmq.read`` + ``pgmq.delete`` when woken, and polls every ``poll_interval`` only as a safety
net. When its connection or queue is lost it backs off (capped, exponential), reconnects,
re-creates its queue and fires ``on_reconnected``; a send retries for ``publish_timeout``
seconds, then raises :class:`BusConnectionError`. A graceful stop drops the queue, and
:meth:`PgmqBus.forget_runner` drops a lost peer's. Each reader holds an advisory lock named
after its queue, so :meth:`PgmqBus.probe` tells a killed runner (its session, and lock, end with
its socket) from a slow one, and the queue of a slow one is kept; the same locks are the
channel's presence (:class:`~pipecat_workers.bus.backends.pgmq_presence.PgmqPresence`), so
runners do not heartbeat through the queues. A database without PGMQ
gets it at start (``CREATE EXTENSION``, else the SQL the ``pgmq`` package ships) under an
advisory lock. Runner names must be unique per channel; any role that can bind a queue to the
topic can read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import operator
import os
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from pgmq.async_queue import PGMQueue

from pipecat_workers.bus.backends.pgmq_install import ensure_pgmq
from pipecat_workers.bus.backends.pgmq_presence import FREE_LOCKS, PgmqPresence
from pipecat_workers.bus.backends.unreachable import REPORT_EVERY, unreachable
from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.bus.network import NetworkBus
from pipecat_workers.bus.presence import Presence
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
# Refused at login: the server is there, the URL is wrong (no such database, role, password).
_REFUSED = (asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidPasswordError)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0
_IO_TIMEOUT = 10.0  # bound on every statement, connect and pool acquire
# While our own reader is reconnecting, and this long after, a peer's missing lock may only
# mean that its reader has not reconnected yet (a server restart drops every lock).
_PROBE_GRACE = 2 * _BACKOFF_MAX + 1.0
# pgmq.read picks the oldest rows, but UPDATE ... RETURNING gives them in no set order.
_READ = "SELECT msg_id, message->>'e' FROM pgmq.read($1, $2, $3) ORDER BY msg_id"
_DELETE = "SELECT pgmq.delete($1::text, $2::bigint[])"
_SEND = "SELECT pgmq.send($1, $2::jsonb)"
_SEND_TOPIC = "SELECT pgmq.send_topic($1, $2::jsonb)"
_DROP = "SELECT pgmq.drop_queue($1)"
_TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
_UNLOCK = "SELECT pg_advisory_unlock($1)"
# The server ends the reader's session (and frees its lock) within about 30 s of its host
# vanishing, instead of after the system's TCP keepalive default of two hours.
_KEEPALIVE = ("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
              "SET tcp_keepalives_count = 3; SET tcp_user_timeout = 30000")
# If the lock is not free within the timeout the statement fails and the SET is rolled back.
_LOCK = "SET lock_timeout = 1000; SELECT pg_advisory_lock({key}); RESET lock_timeout"
# Simple queries (one round trip, one transaction); names are hex digests, safe inline.
_SETUP = ("SELECT pgmq.create_unlogged('{q}'); SELECT pgmq.enable_notify_insert('{q}', 0); "
          "SELECT pgmq.bind_topic('{t}', '{q}')")
_TEARDOWN = "SELECT pgmq.unbind_topic('{t}', '{q}'); SELECT pgmq.drop_queue('{q}')"

_Item = tuple[str, str, str, "asyncio.Future[bool]"]  # (sql, queue or topic, message, sent)


def _lock_key(queue: str) -> int:
    """A signed 64-bit advisory lock key for a runner's queue."""
    return int.from_bytes(hashlib.blake2b(queue.encode(), digest_size=8).digest(), "big",
                          signed=True)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class PgmqBus(NetworkBus):
    """A bus on PostgreSQL with PGMQ: one queue per runner, broadcasts through a PGMQ topic.

    Args:
        pgmq: An initialised ``pgmq.async_queue.PGMQueue`` (its asyncpg pool is used and stays
            yours to close; the reader holds one of its connections, so give it two or more),
            or a ``postgresql://`` DSN (the bus then opens, and closes, a reader connection and
            a small pool for sending).
        channel: The channel every runner of one application shares.
        serializer: Encodes messages (as UTF-8); defaults to :class:`JSONMessageSerializer`.
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
        if not (isinstance(pgmq, PGMQueue) or (isinstance(pgmq, str)
                and pgmq.startswith(("postgresql://", "postgres://")))):
            got = "another URL" if isinstance(pgmq, str) else type(pgmq).__name__
            raise ConfigurationError("PgmqBus needs a pgmq.async_queue.PGMQueue or a "
                                     f"postgresql:// DSN, got {got}")
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
        self._reader_since = float("-inf")  # loop time the reader last reconnected
        self._conn: Any = None  # the reader's connection (LISTEN, read, delete)
        self._locked = False  # the reader's session holds our queue's advisory lock
        self._wake: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._outbox: list[_Item] = []  # sends waiting for the lock, in call order
        self._presence: PgmqPresence | None = None

    def queue_name(self, runner: str | None = None) -> str:
        """The PGMQ queue of ``runner`` on this channel (default: this bus's own queue)."""
        if runner is None:
            return self._queue or self.queue_name(self.runner_name)
        return f"pw_{_digest(self._channel)}_{_digest(runner)}"

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["queue"] = self._queue
        return stats

    @property
    def presence(self) -> Presence | None:
        """Who is on the channel, from the readers' advisory locks (once started)."""
        return self._presence

    def _can_tell(self) -> bool:
        """Whether a free lock means anything now: not while our own reader is down or has
        just reconnected (maybe the server restarted and the peers are reconnecting too)."""
        return self._pool is not None and self.connected and (
            asyncio.get_running_loop().time() - self._reader_since >= _PROBE_GRACE)

    async def _free_locks(self, keys: list[int]) -> set[int] | None:
        """Which of these advisory lock keys nobody holds (``None``: cannot tell now)."""
        if not self._can_tell():
            return None
        try:
            async with self._pool.acquire(timeout=_IO_TIMEOUT) as conn:
                rows = await conn.fetch(FREE_LOCKS, keys, timeout=_IO_TIMEOUT)
        except _FAILED:
            return None
        return {row[0] for row in rows}

    async def probe(self, runner: str) -> bool | None:
        """A runner is alive iff its reader holds its advisory lock (see ``_connect``)."""
        if runner == self.runner_name or not self._can_tell():
            return None
        key = _lock_key(self.queue_name(runner))
        try:
            async with self._pool.acquire(timeout=_IO_TIMEOUT) as conn:
                taken = await conn.fetchval(_TRY_LOCK, key, timeout=_IO_TIMEOUT)
                if taken:
                    await conn.execute(_UNLOCK, key, timeout=_IO_TIMEOUT)
        except _FAILED:
            return None
        return not taken

    async def forget_runner(self, runner: str) -> None:
        """Drop the queue of a runner that is gone, so nothing piles up for it. Never raises;
        a runner that was wrongly thought lost re-creates its queue on its next read."""
        if runner == self.runner_name or self._pool is None:
            return
        queue = self.queue_name(runner)
        key = _lock_key(queue)
        try:
            async with self._pool.acquire(timeout=_IO_TIMEOUT) as conn:
                # Only if its reader's lock is free: a runner that is merely slow (a blocked
                # loop, a starved machine) keeps its queue and catches up when it is back.
                if not await conn.fetchval(_TRY_LOCK, key, timeout=_IO_TIMEOUT):
                    return
                try:
                    await conn.execute(_DROP, queue, timeout=_IO_TIMEOUT)
                finally:
                    await conn.execute(_UNLOCK, key, timeout=_IO_TIMEOUT)
        except _FAILED as exc:
            logger.debug("could not drop the queue of runner '%s': %s", runner, exc)

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        # A bus no runner is bound to (a tool) still needs a queue of its own.
        self._queue = self.queue_name(self.runner_name or f"~{os.urandom(6).hex()}")
        self._wake = asyncio.Event()
        try:
            if self._client is None:
                self._pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=4,
                                                       timeout=_IO_TIMEOUT)
            elif self._client.pool is None:
                raise ConfigurationError("await pgmq.init() before starting the bus")
            elif self._client.pool.get_max_size() < 2:
                raise ConfigurationError("PgmqBus needs a PGMQueue with pool_size >= 2")
            else:
                self._pool = self._client.pool
            async with self._pool.acquire(timeout=_IO_TIMEOUT) as conn:
                await ensure_pgmq(conn, _DOWN, _FAILED, _IO_TIMEOUT)
            await self._connect(fresh=True)
        except BaseException as exc:
            await self._close_pool()
            if isinstance(exc, (*_DOWN, *_REFUSED)):
                raise unreachable("PostgreSQL", self._address(), exc) from exc
            if isinstance(exc, _FAILED):
                raise BusConnectionError(f"cannot set up PGMQ queue '{self._queue}' for "
                                         f"channel '{self._channel}': {exc}") from exc
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())
        if self.runner_name:
            self._presence = PgmqPresence(self._free_locks,
                                          lambda runner: _lock_key(self.queue_name(runner)),
                                          runner=self.runner_name, health=self.loops)

    def _address(self) -> str:
        """The server's DSN, for messages (a given client's, rebuilt from its settings)."""
        if self._dsn is not None:
            return self._dsn
        client = self._client
        return (f"postgresql://{getattr(client, 'host', '?')}:{getattr(client, 'port', '?')}/"
                f"{getattr(client, 'database', '?')}")

    async def _close(self) -> None:
        presence, self._presence = self._presence, None
        if presence is not None:
            await presence.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader}, timeout=DEFAULT_SETTINGS.cancel_timeout)
        await self._drop_conn()
        if self._pool is not None:
            try:
                await self._pool.execute(_TEARDOWN.format(q=self._queue, t=self._topic),
                                         timeout=_IO_TIMEOUT)
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

    # -- reading --------------------------------------------------------------------------

    async def _connect(self, *, fresh: bool) -> None:
        """Take the reader's connection, set up the queue (emptied if ``fresh``), LISTEN."""
        if self._dsn is not None:  # a connection of its own, outside the senders' pool
            conn = await asyncpg.connect(self._dsn, timeout=_IO_TIMEOUT)
        else:
            conn = await self._pool.acquire(timeout=_IO_TIMEOUT)
        try:
            await conn.execute(_KEEPALIVE, timeout=_IO_TIMEOUT)
            await self._lock_queue(conn)
            setup = _SETUP.format(q=self._queue, t=self._topic)
            if fresh:  # what was sent to a previous incarnation is not for us
                setup = f"SELECT pgmq.drop_queue('{self._queue}'); {setup}"
            await conn.execute(setup, timeout=_IO_TIMEOUT)
            await conn.add_listener(f"pgmq.q_{self._queue}.INSERT", self._notified)
            conn.add_termination_listener(self._notified)
        except BaseException:
            await self._release(conn)
            raise
        self._conn = conn
        self._notified()  # drain what arrived before the LISTEN
        if self._was_connected:  # a reconnection: see _PROBE_GRACE
            self._reader_since = asyncio.get_running_loop().time()
        self._set_connected(True)

    async def _lock_queue(self, conn: Any) -> None:
        """Take the advisory lock named after our queue, held while this reader lives: a peer
        probing for us finds it taken; a killed process's session ends with its socket, and the
        lock with it. A peer's probe holds it for a moment, hence the short wait."""
        self._locked = False
        try:
            await conn.execute(_LOCK.format(key=_lock_key(self._queue)), timeout=_IO_TIMEOUT)
        except asyncpg.LockNotAvailableError:
            logger.warning("another session holds the lock of queue '%s' on '%s' (an earlier "
                           "run of runner '%s'?); trying again at every read", self._queue,
                           self._channel, self.runner_name)
            return
        self._locked = True

    async def _retake_lock(self, conn: Any) -> None:
        self._locked = bool(await conn.fetchval(_TRY_LOCK, _lock_key(self._queue),
                                                timeout=_IO_TIMEOUT))
        if self._locked:
            logger.info("the reader of '%s' holds the lock of its queue again", self._channel)

    def _notified(self, *args: object) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A pooled connection that closed was handed back already and refuses every call.
            with contextlib.suppress(*_FAILED):
                conn.remove_termination_listener(self._notified)
                await asyncio.wait_for(conn.remove_listener(
                    f"pgmq.q_{self._queue}.INSERT", self._notified), _IO_TIMEOUT)
            await self._release(conn)

    async def _release(self, conn: Any) -> None:
        try:
            if self._dsn is not None:
                await conn.close(timeout=_IO_TIMEOUT)
            else:
                await self._pool.release(conn, timeout=_IO_TIMEOUT)
        except Exception:
            conn.terminate()

    async def _read_forever(self) -> None:
        backoff = _BACKOFF_FIRST
        # A bug repeats at every attempt: its traceback twice a minute, not once per retry.
        broken = RateLimitedLog(logger, every=REPORT_EVERY)
        while True:
            try:
                if self._conn is None:
                    await self._connect(fresh=False)
                    backoff = _BACKOFF_FIRST
                await self._read(self._conn)
            except Exception as exc:  # connection lost, or our queue dropped: set up again
                if not isinstance(exc, _FAILED):
                    self.loops.failed("reader", exc)
                    broken.warning("PGMQ reader of '%s' failed: %s", self._channel, exc,
                                   exc_info=exc)
                elif self._conn is not None:
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
                    self._on_payload(row[1].encode("utf-8") if row[1] is not None else b"")
                # Ack after local delivery.
                await conn.execute(_DELETE, queue, [row[0] for row in rows],
                                   timeout=_IO_TIMEOUT)
                if len(rows) < batch:
                    break  # anything newer has notified us since wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await wake.wait()
            if not self._locked:
                await self._retake_lock(conn)

    # -- sending --------------------------------------------------------------------------

    async def _send_broadcast(self, data: bytes) -> None:
        await self._send(_SEND_TOPIC, self._topic, data)

    async def _send_to_runner(self, runner: str, data: bytes) -> None:
        if not await self._send(_SEND, self.queue_name(runner), data):
            logger.debug("runner '%s' has no queue on '%s': message dropped", runner,
                         self._channel)

    async def _send(self, sql: str, key: str, data: bytes) -> bool:
        """Send in call order, even from concurrent tasks: the task holding the lock sends all
        that was queued meanwhile, consecutive sends of one kind pipelined in one round trip.
        False if the target queue does not exist."""
        try:
            message = '{"e":' + json.dumps(data.decode("utf-8"), ensure_ascii=False) + "}"
        except UnicodeDecodeError:
            raise SerializationError("PgmqBus carries text: the serializer must produce "
                                     "UTF-8") from None
        if self._pool is None:
            raise BusConnectionError(f"PgmqBus on '{self._channel}' is not started")
        sent: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        sent.add_done_callback(_consume)  # a sender cancelled meanwhile never reads it
        self._outbox.append((sql, key, message, sent))
        async with self._send_lock:
            batch, self._outbox = self._outbox, []
            try:
                while batch:
                    n = next((i for i, it in enumerate(batch) if it[0] is not batch[0][0]),
                             len(batch))
                    await self._send_group(batch[:n])
                    del batch[:n]
            except asyncio.CancelledError:
                self._outbox[:0] = [it for it in batch if not it[3].done()]  # for the next
                raise
            except Exception as exc:
                for item in batch:
                    if not item[3].done():
                        item[3].set_exception(exc)
        return sent.result()

    async def _send_group(self, group: list[_Item]) -> None:
        sql, loop = group[0][0], asyncio.get_running_loop()
        deadline, delay = loop.time() + self._publish_timeout, _BACKOFF_FIRST
        while True:
            if self._pool is None:
                raise BusConnectionError(f"PgmqBus on '{self._channel}' is closed")
            try:
                if len(group) == 1:
                    await self._pool.execute(sql, *group[0][1:3], timeout=_IO_TIMEOUT)
                else:  # pipelined, and atomic
                    # Each insert locks its queue's notify row until the commit. pgmq.send_topic
                    # takes those rows in queue-name order; so do we, or concurrent fan-outs
                    # and batches deadlock. A stable sort keeps each queue's messages in order.
                    args = [item[1:3] for item in group]
                    if sql is _SEND:
                        args.sort(key=operator.itemgetter(0))
                    await self._pool.executemany(sql, args, timeout=_IO_TIMEOUT)
                for item in group:
                    item[3].set_result(True)
                return
            except _DOWN as exc:
                error: Exception = exc
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                # Should not happen (see above), but if it does Postgres rolled this batch
                # back, so sending it again is safe.
                error = exc
            except asyncpg.UndefinedTableError as exc:
                if sql is _SEND_TOPIC:
                    # A bound queue was dropped under the fan-out (a peer leaving): the batch
                    # was rolled back, and the binding is gone now, so send it again.
                    error = exc
                elif len(group) == 1:
                    group[0][3].set_result(False)
                    return
                else:
                    for item in group:  # find the queue that is missing
                        await self._send_group([item])
                    return
            except asyncpg.PostgresError as exc:
                raise BusError(f"PGMQ refused a message on '{self._channel}': {exc}") from exc
            if loop.time() + delay >= deadline:
                raise BusConnectionError(f"cannot send on PGMQ channel '{self._channel}' for "
                                         f"{self._publish_timeout} s: {error}") from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)


def _consume(future: asyncio.Future[bool]) -> None:
    if not future.cancelled():
        future.exception()
