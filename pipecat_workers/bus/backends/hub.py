"""HubBus: runners in the processes of one machine share a channel through a :class:`BusHub`.

The default ``local`` backend of ``workers up``: the supervisor hosts the hub on a Unix socket
and every worker process connects to it, so a topology runs without Redis or PostgreSQL, with
the semantics of the network buses. It needs no driver.

Delivery guarantee: at most once, nothing stored. Order is kept per connection, so per
(sender, target) pair. The hub lives as long as the supervisor; a message sent while the hub
is unreachable waits for it up to ``publish_timeout`` seconds (then the send raises
:class:`BusConnectionError`), and what was in flight when a connection broke is lost.
Membership heals what was missed, as on Redis: heartbeats carry registry digests, and jobs to a
runner that went silent end with an error.

Topology: a broadcast goes to every other connection on the channel (never echoed back), a
targeted message only to the connection of the runner that hosts its target (dropped and
counted by the hub if that runner is not connected). Presence comes from the hub
(:class:`~pipecat_workers.bus.backends.hub_presence.HubPresence`): it says who is connected,
who joins and who leaves, so runners send no heartbeats, and a killed process's peers learn
it the moment its socket closes. :meth:`HubBus.probe` asks the hub whether a runner is
connected. Connecting for the first time, a bus keeps trying a hub that is there but slow
to answer (a supervisor busy starting a hundred processes) for up to 20 s; one that is not
there at all fails at once. When the hub goes away the reader reconnects with capped
exponential back-off, says hello again and fires ``on_reconnected``
(the runner then re-announces its workers). Workers in one process keep talking meanwhile.

Sends are written in call order and coalesced: what is sent during one turn of the event loop
leaves in one write, and a send waits for the socket only when its buffer is above the
transport's high-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque

from pipecat_workers.bus.backends.hub_presence import HubPresence
from pipecat_workers.bus.backends.unreachable import REPORT_EVERY
from pipecat_workers.bus.hub_wire import (
    FEATURE_PRESENCE,
    FLAG_OBSERVE,
    FLAG_PRESENCE,
    HEAD,
    MAX_FRAME,
    OP_JOINED,
    OP_LEFT,
    OP_PAYLOAD,
    OP_PRESENT,
    OP_PROBE,
    OP_PROBED,
    OP_REFUSED,
    OP_SEND,
    OP_WELCOME,
    READ_SIZE,
    STREAM_LIMIT,
    ProtocolError,
    check_socket_path,
    hello,
    parse_names,
    pump,
    read_frame,
    scan,
)
from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.bus.network import DISCONNECTED, NetworkBus
from pipecat_workers.bus.presence import Presence
from pipecat_workers.bus.serializer import MessageSerializer
from pipecat_workers.errors import BusConnectionError, ConfigurationError, MessageTooLargeError
from pipecat_workers.settings import DEFAULT_SETTINGS
from pipecat_workers.tasks import cancel_and_wait

logger = logging.getLogger("pipecat_workers.bus.hub")

_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0
_CONNECT_TIMEOUT = 2.0  # per attempt
# How long a first connection keeps trying a hub that is there but does not answer in time:
# a supervisor starting a hundred worker processes may take seconds to say WELCOME.
_START_PATIENCE = 20.0
_PROBE_TIMEOUT = 1.0
_MAX_PAYLOAD = MAX_FRAME - 1 - 2 - 65535  # room for the largest SEND header
_DOWN = (OSError, EOFError, TimeoutError, ProtocolError)

_Waiting = tuple[bytes, "asyncio.Future[None]"]


class HubBus(NetworkBus):
    """A bus on a channel of a :class:`~pipecat_workers.bus.hub.BusHub`.

    Args:
        path: The hub's Unix socket.
        channel: The channel every runner of one application shares.
        serializer: Encodes messages; defaults to :class:`JSONMessageSerializer`.
        publish_timeout: Seconds a send waits for an unreachable hub before it raises.
        observe_all: Also receive the targeted messages between other runners (for tools
            that show all traffic); their observers see them.

    Example::

        bus = HubBus("/tmp/pw-app.sock", channel="pipecat:app")
        runner = WorkerRunner(bus=bus)
    """

    def __init__(
        self, path: str | os.PathLike[str], *, channel: str = "pipecat:bus",
        serializer: MessageSerializer | None = None, publish_timeout: float = 5.0,
        observe_all: bool = False, data_queue_size: int = DEFAULT_SETTINGS.data_queue_size,
    ) -> None:
        if not channel or len(channel.encode()) > 65535:
            raise ConfigurationError("HubBus needs a channel name of 1 to 65535 bytes")
        if not publish_timeout > 0:
            raise ConfigurationError(f"publish_timeout must be positive, got {publish_timeout}")
        super().__init__(channel=channel, serializer=serializer, data_queue_size=data_queue_size)
        self._path = check_socket_path(path)
        self._publish_timeout = publish_timeout
        self._flags = FLAG_OBSERVE if observe_all else 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._high_water = 0
        self._task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []  # written at the end of this turn of the loop
        self._flush_handle: asyncio.Handle | None = None
        self._waiting: deque[_Waiting] = deque()  # sends waiting for the hub, in order
        self._probes: dict[int, asyncio.Future[bool | None]] = {}
        self._probe_ids = itertools.count(1)
        self._names: dict[str, bytes] = {}  # runner -> its SEND name field
        self._features = 0  # what the hub said it offers in WELCOME
        self._presence = HubPresence()

    @property
    def path(self) -> str:
        """The hub's socket."""
        return self._path

    @property
    def presence(self) -> Presence | None:
        """Who is on the channel, as the hub says (``None`` from a hub too old to say)."""
        if self._runner and self._features & FEATURE_PRESENCE:
            return self._presence
        return None

    # -- connection ---------------------------------------------------------------------

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self._publish_timeout, _START_PATIENCE)
        backoff = _BACKOFF_FIRST
        while True:
            try:
                await self._connect()
                break
            except _DOWN as exc:
                # A hub that is there but slow (busy starting a hundred processes), or whose
                # listen queue is full, is worth waiting for; one that is not there is not.
                busy = isinstance(exc, TimeoutError | BlockingIOError | InterruptedError)
                if not busy or loop.time() + backoff >= deadline:
                    reason = str(exc) or ("no answer within "
                                          f"{_CONNECT_TIMEOUT:g} s" if isinstance(
                                              exc, TimeoutError) else type(exc).__name__)
                    raise BusConnectionError(
                        f"cannot reach the bus hub at {self._path} for channel "
                        f"'{self._channel}': {reason}") from exc
                logger.debug("bus hub at %s is slow to answer (%r); trying again", self._path,
                             exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
        self._task = loop.create_task(self._read_forever())

    async def _close(self) -> None:
        self._flush()  # what was sent before the close still leaves
        await cancel_and_wait((self._task,), DEFAULT_SETTINGS.cancel_timeout)
        self._task = None
        writer, reader = self._writer, self._reader
        if writer is not None:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(DEFAULT_SETTINGS.cancel_timeout):
                    await self._hang_up(writer, reader)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(DEFAULT_SETTINGS.cancel_timeout):
                    await writer.wait_closed()
        self._drop_connection()
        while self._waiting:
            _, sent = self._waiting.popleft()
            if not sent.done():
                sent.set_exception(BusConnectionError(
                    f"bus on channel '{self._channel}' closed before the hub came back"))
        self._mark_closed()

    async def _connect(self) -> None:
        """Open a connection, say hello, and send what waited for the hub, in order."""
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(self._path, limit=STREAM_LIMIT)
            try:
                flags = self._flags | (FLAG_PRESENCE if self._runner else 0)
                writer.write(hello(self._channel, self._runner, self._incarnation, flags))
                op, body = await read_frame(reader)
            except BaseException:
                writer.transport.abort()
                raise
        if op != OP_WELCOME:
            writer.transport.abort()
            why = body.decode(errors="replace") if op == OP_REFUSED else f"opcode 0x{op:02x}"
            raise ProtocolError(f"the hub refused the connection: {why}")
        self._features = body[1] if len(body) > 1 else 0
        while self._waiting:
            data, sent = self._waiting.popleft()
            if not sent.done():  # a sender that gave up is not sent late
                writer.write(data)
                sent.set_result(None)
        self._reader, self._writer = reader, writer
        self._high_water = writer.transport.get_write_buffer_limits()[1]
        self._set_connected(True)

    @staticmethod
    async def _hang_up(writer: asyncio.StreamWriter, reader: asyncio.StreamReader | None
                       ) -> None:
        """Say we are done sending, and wait for the hub to close its side.

        Closing at once could lose our last messages (a goodbye, say): with data of the
        hub's still unread here, the hub's next write to us fails, and the hub's stream then
        reports that error before the bytes it had not read yet. After our end of stream the
        hub reads everything we sent, routes it, and only then closes."""
        if reader is None or not writer.can_write_eof():
            return
        await writer.drain()
        writer.write_eof()
        while await reader.read(READ_SIZE):
            pass  # what the hub still sends us is of no use now

    def _drop_connection(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        self._out = []
        if writer is not None:
            writer.transport.abort()
        for probe in self._probes.values():
            if not probe.done():
                probe.set_result(None)  # cannot tell
        self._presence.disconnected()

    async def _read_forever(self) -> None:
        backoff = _BACKOFF_FIRST
        # A bug repeats at every attempt: its traceback twice a minute, not once per retry.
        broken = RateLimitedLog(logger, every=REPORT_EVERY)
        while True:
            try:
                if self._reader is None:
                    await self._connect()
                    backoff = _BACKOFF_FIRST
                assert self._reader is not None
                await pump(self._reader, self._on_data)
                why = "the hub closed the connection"
            except _DOWN as exc:
                why = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug: log it, and start over on a fresh connection
                self.loops.failed("reader", exc)
                broken.error("bus on channel '%s' failed reading from the hub",
                             self._channel, exc_info=exc)
                why = repr(exc)
            if self._writer is not None:
                logger.warning("bus hub at %s lost on channel '%s': %s", self._path,
                               self._channel, why, extra=DISCONNECTED)
            else:
                logger.debug("bus hub at %s unreachable: %s", self._path, why)
            self._drop_connection()
            self._set_connected(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _on_data(self, data: bytes) -> int:
        return scan(data, self._on_frame)

    def _on_frame(self, op: int, data: bytes, start: int, end: int) -> None:
        if op == OP_PAYLOAD:
            self._on_payload(data[start + HEAD.size:end])
        elif op == OP_JOINED:
            self._presence.joined(data[start + HEAD.size:end].decode(errors="replace"))
        elif op == OP_LEFT:
            self._presence.left(data[start + HEAD.size:end].decode(errors="replace"))
        elif op == OP_PRESENT:
            self._presence.reset(parse_names(data[start + HEAD.size:end]))
        elif op == OP_PROBED and end - start == HEAD.size + 5:
            request = int.from_bytes(data[start + HEAD.size:end - 1], "big")
            probe = self._probes.get(request)
            if probe is not None and not probe.done():
                probe.set_result(data[end - 1] == 1)
        else:
            raise ProtocolError(f"unexpected frame 0x{op:02x} from the hub")

    # -- liveness -----------------------------------------------------------------------

    async def probe(self, runner: str) -> bool | None:
        """Whether ``runner`` is connected to the hub on this channel (``None``: cannot tell,
        the hub is unreachable or slow). A killed process's connection closes at once."""
        if self._writer is None:
            return None
        request = next(self._probe_ids) & 0xFFFFFFFF
        answer: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._probes[request] = answer
        name = runner.encode()
        try:
            self._queue(HEAD.pack(5 + len(name), OP_PROBE) + request.to_bytes(4, "big"), name)
            async with asyncio.timeout(_PROBE_TIMEOUT):
                return await answer
        except TimeoutError:
            return None
        finally:
            del self._probes[request]

    # -- sending ------------------------------------------------------------------------

    async def _send_broadcast(self, data: bytes) -> None:
        self._check_size(data)
        await self._send(HEAD.pack(len(data) + 1, OP_PAYLOAD), data)

    async def _send_to_runner(self, runner: str, data: bytes) -> None:
        self._check_size(data)
        name = self._names.get(runner)
        if name is None:
            if len(self._names) >= 4096:
                self._names.clear()  # runners come and go: keep the cache bounded
            encoded = runner.encode()
            name = self._names[runner] = len(encoded).to_bytes(2, "big") + encoded
        await self._send(HEAD.pack(len(data) + 1 + len(name), OP_SEND) + name, data)

    def _check_size(self, data: bytes) -> None:
        if len(data) > _MAX_PAYLOAD:
            raise MessageTooLargeError(f"a message of {len(data)} bytes is larger than the "
                                       f"{_MAX_PAYLOAD} bytes a hub frame can carry")

    async def _send(self, head: bytes, data: bytes) -> None:
        """Write in call order: queued for this turn's write, or, while the hub is
        unreachable, in line for the next connection."""
        writer = self._writer
        if writer is None or self._waiting or writer.transport.is_closing():
            await self._send_later(head + data)
            return
        self._queue(head, data)
        if writer.transport.get_write_buffer_size() > self._high_water:
            self._flush()
            await self._drain(writer)

    def _queue(self, head: bytes, data: bytes) -> None:
        if self._flush_handle is not None:
            self._out += (head, data)
            return
        # The first send of a turn of the loop leaves at once (latency); the next ones of the
        # same turn are gathered into one write at its end (throughput).
        self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        writer = self._writer
        if writer is not None and not writer.transport.is_closing():
            writer.write(head + data)

    def _flush(self) -> None:
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()  # called before its turn came
        out, self._out = self._out, []
        writer = self._writer
        if out and writer is not None and not writer.transport.is_closing():
            writer.write(b"".join(out))
        # else: the connection broke after these were sent; they are lost (at most once)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout):
                await writer.drain()
        except TimeoutError:
            raise BusConnectionError(
                f"the bus hub at {self._path} has not read for {self._publish_timeout} s "
                f"(channel '{self._channel}')") from None
        except OSError:
            pass  # the connection broke: the reader reconnects; what was in flight is lost

    async def _send_later(self, data: bytes) -> None:
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (data, sent)
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(self._publish_timeout):
                await sent
        except BaseException as exc:
            with contextlib.suppress(ValueError):
                self._waiting.remove(entry)
            if isinstance(exc, TimeoutError):
                raise BusConnectionError(
                    f"cannot send on channel '{self._channel}': the bus hub at {self._path} "
                    f"has been unreachable for {self._publish_timeout} s") from None
            raise
