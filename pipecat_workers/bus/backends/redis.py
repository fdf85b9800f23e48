"""RedisBus: runners in many processes share a Redis pub/sub channel.

Delivery guarantee: at most once, no persistence. Redis pub/sub stores nothing, so a process
that is disconnected, or not yet subscribed, misses what is published meanwhile; order is kept
per (sender, target) pair while connected. Membership heals what was missed: heartbeats carry
registry digests, so a peer that missed a snapshot asks again, and jobs to a runner that went
silent end with an error.

Topology: broadcasts go to the channel itself (``pipecat:app``); each runner also listens on
its own channel (``pipecat:app:runner:<name>``) so that a targeted message travels only to the
process that hosts its target. Presence lives in the sorted set ``pipecat:app:presence``
(:class:`~pipecat_workers.bus.backends.redis_presence.RedisPresence`), so runners do not
heartbeat through pub/sub. Workers in one process talk without Redis at all, so they keep
talking while Redis is down; the reader reconnects with capped exponential back-off (at most a
second apart), resubscribes and fires ``on_reconnected`` (the runner then re-announces its
workers), and a publish retries for ``publish_timeout`` seconds before raising
:class:`BusConnectionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipecat_workers.bus.backends.redis_presence import RedisPresence
from pipecat_workers.bus.backends.unreachable import REPORT_EVERY, unreachable
from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.bus.network import NetworkBus
from pipecat_workers.bus.presence import Presence
from pipecat_workers.bus.serializer import MessageSerializer
from pipecat_workers.errors import BusConnectionError, ConfigurationError
from pipecat_workers.settings import DEFAULT_SETTINGS
from pipecat_workers.tasks import cancel_and_wait

logger = logging.getLogger("pipecat_workers.bus.redis")

# (channel, payload, future of the sender waiting for it, if any)
_Outgoing = tuple[str, bytes, "asyncio.Future[None] | None"]
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0
_MESSAGE = (b"message", "message")  # a pub/sub reply's kind, raw or decoded


class RedisBus(NetworkBus):
    """A bus on a Redis pub/sub channel.

    Args:
        redis: A ``redis.asyncio.Redis`` client (yours to close), or a ``redis://`` URL (the
            bus then creates and closes its client).
        channel: The channel every runner of one application shares.
        serializer: Encodes messages; defaults to :class:`JSONMessageSerializer`.
        publish_timeout: Seconds a publish keeps retrying while Redis is unreachable.

    Example::

        bus = RedisBus(redis=Redis.from_url("redis://localhost:6379"), channel="pipecat:app")
        runner = WorkerRunner(bus=bus)
    """

    def __init__(
        self, redis: Redis | str | None = None, *, channel: str = "pipecat:bus",
        serializer: MessageSerializer | None = None, publish_timeout: float = 5.0,
        data_queue_size: int = DEFAULT_SETTINGS.data_queue_size,
    ) -> None:
        if redis is None:
            raise ConfigurationError("RedisBus needs a redis.asyncio client or a redis:// URL")
        if not channel:
            raise ConfigurationError("RedisBus needs a non-empty channel name")
        super().__init__(channel=channel, serializer=serializer, data_queue_size=data_queue_size)
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis | None = None if isinstance(redis, str) else redis
        self._publish_timeout = publish_timeout
        self._pubsub: PubSub | None = None
        self._publisher: AbstractConnection | None = None  # ours for the bus's life
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outbox: list[_Outgoing] = []
        self._busy = False  # a publish is in flight: later ones queue behind it
        self._presence: RedisPresence | None = None

    def _runner_channel(self, runner: str) -> str:
        return f"{self._channel}:runner:{runner}"

    def _redis(self) -> Redis:
        if self._client is None:
            assert self._url is not None
            # No socket timeout: it costs a task per command, and pub/sub waits are ours.
            self._client = Redis.from_url(self._url, socket_connect_timeout=2,
                                          socket_timeout=None)
        return self._client

    def _address(self) -> str:
        """The server's URL, for messages (a given client's, rebuilt from its settings)."""
        if self._url is not None:
            return self._url
        kwargs = self._redis().connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}"
        return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    @property
    def presence(self) -> Presence | None:
        """Who is on the channel, from the channel's presence set (once started)."""
        return self._presence

    async def _open(self) -> None:
        try:
            await self._subscribe()
        except _DOWN as exc:
            raise unreachable("Redis", self._address(), exc) from exc
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())
        if self._runner:
            self._presence = RedisPresence(self._redis(), channel=self._channel,
                                           runner=self._runner,
                                           runner_channel=self._runner_channel,
                                           health=self.loops)

    async def _close(self) -> None:
        presence, self._presence = self._presence, None
        if presence is not None:
            await presence.close()
        if self._sender is not None:  # let what was sent before the close leave
            await asyncio.wait({self._sender}, timeout=DEFAULT_SETTINGS.cancel_timeout)
        await cancel_and_wait((self._reader, self._sender), DEFAULT_SETTINGS.cancel_timeout)
        self._reader = self._sender = None
        await self._drop_pubsub()
        publisher, self._publisher = self._publisher, None
        if publisher is not None and self._client is not None:
            with contextlib.suppress(*_DOWN):
                await self._client.connection_pool.release(publisher)
        self._mark_closed()
        if self._url is not None and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _subscribe(self) -> None:
        pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
        try:
            channels = [self._channel]
            if self._runner:
                channels.append(self._runner_channel(self._runner))
            await pubsub.subscribe(*channels)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            raise
        self._pubsub = pubsub
        self._set_connected(True)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_DOWN):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def _read_forever(self) -> None:
        backoff = _BACKOFF_FIRST
        # Refusals repeat at every attempt (a NOPERM, a server that is not Redis): said with
        # their traceback twice a minute, not once per retry.
        refused = RateLimitedLog(logger, every=REPORT_EVERY)
        while True:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                    backoff = _BACKOFF_FIRST
                await self._read(self._pubsub)
            except Exception as exc:  # down, or refused (a NOPERM on resubscribe): again
                if not isinstance(exc, _DOWN):
                    self.loops.failed("reader", exc)
                    refused.warning("Redis reader of '%s' failed: %s", self._channel, exc,
                                    exc_info=exc)
                elif self._pubsub is not None:  # it was connected: say it lost the server
                    logger.warning("Redis reader of '%s' failed: %s", self._channel, exc)
                await self._drop_pubsub()
                self._set_connected(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _read(self, pubsub: PubSub | None) -> None:
        """Read the subscription's connection directly: ``PubSub.listen()`` adds health
        checks, retries and dict building per message, which cost about a quarter of a round
        trip. Reconnection is ours anyway (see ``_read_forever``)."""
        assert pubsub is not None and pubsub.connection is not None
        read = pubsub.connection.read_response
        on_payload = self._on_payload
        while True:
            # math.inf: block without the client's socket timeout, as listen() does.
            reply = await read(timeout=math.inf, push_request=True)
            if isinstance(reply, list) and len(reply) == 3 and reply[0] in _MESSAGE:
                on_payload(reply[2])

    async def probe(self, runner: str) -> bool | None:
        """A runner is connected iff its channel has a subscriber; a killed process's
        connection is closed by its kernel, so this answers well before heartbeats time out."""
        try:
            counts = await self._redis().pubsub_numsub(self._runner_channel(runner))
        except _DOWN:
            return None
        return bool(counts and counts[0][1])

    async def _send_broadcast(self, data: bytes) -> None:
        await self._publish_bytes(self._channel, data)

    async def _send_to_runner(self, runner: str, data: bytes) -> None:
        await self._publish_bytes(self._runner_channel(runner), data)

    async def _publish_bytes(self, channel: str, data: bytes) -> None:
        """Publish in call order, even from concurrent tasks.

        Concurrent publishes on a pooled client may leave on different connections and
        overtake each other; here one sender task drains an outbox in order, pipelining what
        piled up meanwhile into one round trip.
        """
        if not self._busy:
            # Nothing in flight: publish from this task, and hand what queues up meanwhile
            # (sent after this one) to a sender task.
            self._busy = True
            try:
                await self._publish_batch([(channel, data, None)])
            finally:
                if self._outbox:
                    self._sender = asyncio.get_running_loop().create_task(self._flush())
                else:
                    self._busy = False
            return
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, data, sent))
        await asyncio.shield(sent)

    async def _flush(self) -> None:
        try:
            await self._flush_outbox()
        finally:
            self._busy = bool(self._outbox)

    async def _flush_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                await self._publish_batch(batch)
            except Exception as exc:
                for _, _, sent in batch:
                    if sent is not None and not sent.done():
                        sent.set_exception(exc)
                        sent.add_done_callback(_consume)
            else:
                for _, _, sent in batch:
                    if sent is not None and not sent.done():
                        sent.set_result(None)

    async def _publish_batch(self, batch: list[_Outgoing]) -> None:
        """Send PUBLISH commands on one connection of our own, without the client's
        per-command wrappers; pipelined when several are waiting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        delay = _BACKOFF_FIRST
        while True:
            try:
                # The deadline also covers a connection whose server vanished without a word.
                async with asyncio.timeout_at(deadline):
                    await self._send_publishes(batch)
                return
            except _DOWN as exc:
                await self._drop_publisher()
                if loop.time() + delay >= deadline:
                    raise BusConnectionError(
                        f"cannot publish to Redis channel '{self._channel}' for "
                        f"{self._publish_timeout} s: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)


    async def _send_publishes(self, batch: list[_Outgoing]) -> None:
        conn = self._publisher
        if conn is None:
            pool = self._redis().connection_pool
            conn = self._publisher = await pool.get_connection()  # type: ignore[no-untyped-call,unused-ignore]
        if len(batch) == 1:
            await conn.send_command("PUBLISH", batch[0][0], batch[0][1])
        else:
            await conn.send_packed_command(conn.pack_commands(
                [("PUBLISH", channel, data) for channel, data, _ in batch]))
        for _ in batch:
            await conn.read_response()

    async def _drop_publisher(self) -> None:
        """Forget a connection that failed mid-command: its replies can no longer be
        matched to commands. The next publish takes a fresh one."""
        conn, self._publisher = self._publisher, None
        if conn is not None:
            with contextlib.suppress(*_DOWN):
                await conn.disconnect()
            if self._client is not None:
                with contextlib.suppress(*_DOWN):
                    await self._client.connection_pool.release(conn)


def _consume(future: asyncio.Future[None]) -> None:
    future.exception()  # retrieved here if the sender that awaited it was cancelled
