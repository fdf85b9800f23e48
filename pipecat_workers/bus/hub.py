"""BusHub: the embedded ``local`` bus, a Unix-socket hub shared by the processes of one machine.

``workers up`` hosts one hub in the supervisor and every worker process joins it with a
:class:`~pipecat_workers.bus.backends.hub.HubBus`, so a topology needs no Redis or PostgreSQL.
The hub only moves bytes: a broadcast goes to every other connection on its channel, a
targeted payload only to the connection of the runner that hosts its target; it tells its
clients who is on the channel, who joins and who leaves (a killed process's socket closes at
once, so its peers learn at once, with no heartbeats), and a probe says whether a runner is
connected right now. Nothing is stored: the hub lives as long as the supervisor, and what is
in flight when it stops is lost. One hub serves many channels.

The socket is created with mode 0600: any client may speak for any runner on it, so only the
user who runs the supervisor may connect (sign messages with a secret to guard against them).

The wire protocol (version 1) is described in :mod:`pipecat_workers.bus.hub_wire`.

A malformed frame (bad length, unknown opcode, a body that does not parse, anything before
HELLO) closes that client's connection with a warning; the hub and the other clients carry on.
A payload to a runner that is not connected, or to a client whose unsent output exceeds
``max_backlog`` (it stopped reading), is dropped and counted (:meth:`BusHub.stats`). The hub
reads each connection a chunk at a time, routes every frame in the chunk, then writes one
buffer per recipient: one wake-up and one write per batch, not per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Self

from pipecat_workers.bus.hub_wire import (
    FEATURE_PRESENCE,
    FLAG_OBSERVE,
    FLAG_PRESENCE,
    HEAD,
    MAX_HELLO,
    OP_HELLO,
    OP_JOINED,
    OP_LEFT,
    OP_PAYLOAD,
    OP_PRESENT,
    OP_PROBE,
    OP_PROBED,
    OP_REFUSED,
    OP_SEND,
    OP_WELCOME,
    STREAM_LIMIT,
    VERSION,
    ProtocolError,
    check_socket_path,
    clear_stale_socket,
    frame,
    listening_socket,
    names_body,
    parse_hello,
    pump,
    read_frame,
    scan,
)
from pipecat_workers.errors import ConfigurationError
from pipecat_workers.settings import DEFAULT_SETTINGS
from pipecat_workers.tasks import cancel_and_wait

logger = logging.getLogger("pipecat_workers.bus.hub")

_HELLO_TIMEOUT = 5.0
_CLOSE_GRACE = 0.5


class _Client:
    __slots__ = ("writer", "channel", "runner", "incarnation", "observe", "presence", "dropped")

    def __init__(self, writer: asyncio.StreamWriter, channel: _Channel, runner: bytes,
                 incarnation: float, flags: int) -> None:
        self.writer = writer
        self.channel = channel
        self.runner = runner
        self.incarnation = incarnation
        self.observe = bool(flags & FLAG_OBSERVE)
        self.presence = bool(flags & FLAG_PRESENCE)
        self.dropped = 0

    def __repr__(self) -> str:
        who = self.runner.decode() or "an anonymous client"
        return f"'{who}' on channel '{self.channel.name}'"


class _Channel:
    __slots__ = ("name", "members", "runners", "observers", "watchers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[_Client] = []
        self.runners: dict[bytes, _Client] = {}  # runner name -> its newest connection
        self.observers: list[_Client] = []
        self.watchers: list[_Client] = []  # clients told of runners joining and leaving

    def tell(self, op: int, runner: bytes) -> None:
        """A presence change, to every client that asked (never dropped: it is tiny, and a
        client that missed one would be wrong about a runner until it reconnects)."""
        data = frame(op, runner)
        for watcher in self.watchers:
            if not watcher.writer.transport.is_closing():
                watcher.writer.write(data)


class BusHub:
    """The hub of the ``local`` bus: a Unix-socket server that routes frames between clients.

    Args:
        path: Where to create the socket (at most :data:`MAX_PATH` bytes). A stale socket
            file there (nobody listening) is replaced; a live hub there is an error.
        max_backlog: Bytes of unsent output a client may have before frames to it are dropped
            (it stopped reading); keeps one stuck process from growing the hub without bound.

    Example::

        async with BusHub("/tmp/pw-app.sock") as hub:
            bus = HubBus(hub.path, channel="pipecat:app")  # in each worker process

    Raises:
        ConfigurationError: if the path is too long for a Unix socket.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 max_backlog: int = 32 * 1024 * 1024) -> None:
        self._path = check_socket_path(path)
        if max_backlog <= 0:
            raise ConfigurationError(f"max_backlog must be positive, got {max_backlog}")
        self._max_backlog = max_backlog
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of our socket file
        self._channels: dict[str, _Channel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._frames_in = self._bytes_in = self._frames_out = self._bytes_out = 0
        self._dropped = {"no_target": 0, "backlog": 0, "malformed": 0}

    @property
    def path(self) -> str:
        """The socket's path: what every :class:`HubBus` connects to."""
        return self._path

    @property
    def serving(self) -> bool:
        """Whether the hub accepts connections."""
        return self._server is not None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the socket. Idempotent.

        Raises:
            ConfigurationError: if another hub listens there, the path is something other than
                a socket, or the socket cannot be created.
        """
        if self._server is not None:
            return
        await clear_stale_socket(self._path)
        sock = listening_socket(self._path)
        try:
            info = os.stat(self._path)
            self._identity = (info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=STREAM_LIMIT, backlog=128)
        except BaseException:
            sock.close()
            self._unlink()
            raise

    async def stop(self) -> None:
        """Close every connection and the socket, and remove the socket file. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Closed connections end their tasks (the reader sees the end of the stream): what is
        # already buffered still leaves, unless a client will not take it.
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_CLOSE_GRACE)
        for writer in list(self._writers):
            writer.transport.abort()
        await cancel_and_wait(list(self._tasks), DEFAULT_SETTINGS.cancel_timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEFAULT_SETTINGS.cancel_timeout):
                await server.wait_closed()
        self._unlink()
        self._channels.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _unlink(self) -> None:
        """Remove our socket file, unless another hub has replaced it since."""
        identity, self._identity = self._identity, None
        if identity is None:
            return
        with contextlib.suppress(OSError):
            info = os.lstat(self._path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(self._path)

    # -- one connection -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._server is None or task is None:  # accepted while stopping
            writer.transport.abort()
            return
        self._tasks.add(task)
        self._writers.add(writer)
        client: _Client | None = None
        try:
            client = await self._greet(reader, writer)
            if client is not None:
                await pump(reader, self._router(client))
        except ProtocolError as exc:
            self._dropped["malformed"] += 1
            logger.warning("bus hub: closing the connection of %s: %s",
                           client or "a client", exc)
        except (OSError, EOFError, TimeoutError):
            pass  # the client went away, or never said hello
        except Exception:
            logger.exception("bus hub: closing the connection of %s", client or "a client")
        except asyncio.CancelledError:
            if self._server is not None:
                raise
            # Cancelled by stop(), the last resort: end quietly, since asyncio reports a
            # connection task that ends cancelled as an unhandled error.
        finally:
            if client is not None:
                self._leave(client)
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _greet(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> _Client | None:
        async with asyncio.timeout(_HELLO_TIMEOUT):
            op, body = await read_frame(reader, MAX_HELLO)
        if op != OP_HELLO:
            raise ProtocolError("the first frame must be HELLO")
        version, flags, incarnation, channel, runner = parse_hello(body)
        if version != VERSION:
            logger.warning("bus hub: refused a client that speaks protocol version %d", version)
            writer.write(frame(OP_REFUSED, f"protocol version {version} is not supported; "
                                           f"this hub speaks {VERSION}".encode()))
            return None
        client = _Client(writer, self._channels.get(channel) or _Channel(channel), runner,
                         incarnation, flags)
        writer.write(frame(OP_WELCOME, bytes([VERSION, FEATURE_PRESENCE])))
        self._join(client)
        if client.presence:
            writer.write(frame(OP_PRESENT, names_body(list(client.channel.runners))))
        return client

    def _join(self, client: _Client) -> None:
        channel = client.channel
        self._channels.setdefault(channel.name, channel)
        channel.members.append(client)
        if client.observe:
            channel.observers.append(client)
        if client.runner:
            current = channel.runners.get(client.runner)
            if current is None or current.incarnation <= client.incarnation:
                channel.runners[client.runner] = client
            if current is None:
                channel.tell(OP_JOINED, client.runner)
        if client.presence:
            channel.watchers.append(client)

    def _leave(self, client: _Client) -> None:
        channel = client.channel
        channel.members.remove(client)
        if client.observe:
            channel.observers.remove(client)
        if client.presence:
            channel.watchers.remove(client)
        if channel.runners.get(client.runner) is client:
            del channel.runners[client.runner]
            same = [c for c in channel.members if c.runner == client.runner]
            if same:
                channel.runners[client.runner] = max(same, key=lambda c: c.incarnation)
            elif self._server is not None:  # a hub that stops is not news about runners
                channel.tell(OP_LEFT, client.runner)
        if not channel.members and self._channels.get(channel.name) is channel:
            del self._channels[channel.name]

    # -- routing ------------------------------------------------------------------------

    def _router(self, client: _Client) -> Callable[[bytes], int]:
        """What :func:`pump` calls with each chunk from ``client``."""
        def route_chunk(data: bytes) -> int:
            out: defaultdict[_Client, list[Any]] = defaultdict(list)
            view = memoryview(data)

            def on_frame(op: int, data: bytes, start: int, end: int) -> None:
                self._route(client, out, view, op, start, end)

            try:
                used = scan(data, on_frame)
            finally:
                self._flush(out)  # what was routed before a bad frame still leaves
            self._bytes_in += used
            return used

        return route_chunk

    def _route(self, client: _Client, out: defaultdict[_Client, list[Any]], view: memoryview,
               op: int, start: int, end: int) -> None:
        self._frames_in += 1
        if op == OP_PAYLOAD:
            whole = view[start:end]  # forwarded as it is: PAYLOAD means the same both ways
            for peer in client.channel.members:
                if peer is not client:
                    out[peer].append(whole)
        elif op == OP_SEND:
            self._route_send(client, out, view, start + HEAD.size, end)
        elif op == OP_PROBE:
            body = start + HEAD.size
            if end - body < 4:
                raise ProtocolError("PROBE is too short")
            connected = bytes(view[body + 4:end]) in client.channel.runners
            out[client].append(HEAD.pack(6, OP_PROBED) + view[body:body + 4].tobytes()
                               + (b"\x01" if connected else b"\x00"))
        else:
            raise ProtocolError(f"unexpected opcode 0x{op:02x}")

    def _route_send(self, client: _Client, out: defaultdict[_Client, list[Any]],
                    view: memoryview, body: int, end: int) -> None:
        if end - body < 2:
            raise ProtocolError("SEND is too short")
        size = (view[body] << 8) | view[body + 1]
        name_end = body + 2 + size
        if name_end > end:
            raise ProtocolError("SEND names a runner longer than the frame")
        channel = client.channel
        target = channel.runners.get(view[body + 2:name_end].tobytes())
        if target is None:
            self._dropped["no_target"] += 1
            if not channel.observers:
                return
        forwarded = HEAD.pack(end - name_end + 1, OP_PAYLOAD) + view[name_end:end]
        if target is not None:
            out[target].append(forwarded)
        for observer in channel.observers:
            if observer is not client and observer is not target:
                out[observer].append(forwarded)

    def _flush(self, out: defaultdict[_Client, list[Any]]) -> None:
        """One write per recipient for the whole chunk; never waits for a slow reader."""
        for peer, frames in out.items():
            transport = peer.writer.transport
            if transport.is_closing():
                continue
            if transport.get_write_buffer_size() > self._max_backlog:
                self._drop_backlog(peer, len(frames))
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            peer.writer.write(data)
            self._frames_out += len(frames)
            self._bytes_out += len(data)

    def _drop_backlog(self, peer: _Client, count: int) -> None:
        self._dropped["backlog"] += count
        before, peer.dropped = peer.dropped, peer.dropped + count
        if before == 0 or before // 10_000 != peer.dropped // 10_000:
            logger.warning("bus hub: %s is not reading; dropped %d frames to it so far",
                           peer, peer.dropped)

    # -- observability ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Connections per channel, runners per channel, traffic, and what was dropped."""
        channels = {
            name: {"clients": len(ch.members),
                   "runners": sorted(r.decode() for r in ch.runners),
                   "observers": len(ch.observers)}
            for name, ch in sorted(self._channels.items())
        }
        return {
            "path": self._path,
            "serving": self.serving,
            "clients": sum(c["clients"] for c in channels.values()),
            "channels": channels,
            "frames_in": self._frames_in,
            "bytes_in": self._bytes_in,
            "frames_out": self._frames_out,
            "bytes_out": self._bytes_out,
            "dropped": dict(self._dropped),
        }

