"""WebSocketProxyClient: reach workers on another bus, behind a WebSocketProxyServer.

The client connects once it is active (at start, by default; a second activation changes
nothing), keeps one connection, and reconnects with back-off when it breaks. The server's
exposed workers get stand-ins on this bus, so local workers hand off to them, send them
jobs and frames, and watch them, by name, as if they were here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pipecat_workers.bus.backends.unreachable import safe_url
from pipecat_workers.bus.loops import RateLimitedLog, supervise
from pipecat_workers.bus.messages import BusMessage
from pipecat_workers.bus.serializer import MessageSerializer
from pipecat_workers.errors import ConfigurationError, MissingDependencyError
from pipecat_workers.proxy.handshake import HandshakeError, expect
from pipecat_workers.proxy.messages import ProxyHelloMessage, ProxyWelcomeMessage
from pipecat_workers.proxy.session import ProxySession
from pipecat_workers.proxy.sockets import (
    GOING_AWAY,
    NORMAL,
    TRY_AGAIN,
    LinkSocket,
    WebsocketsSocket,
)
from pipecat_workers.proxy.worker import TOKEN_ENV, LinkLimits, ProxyWorker, name_set
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.workers.base import BaseWorker

logger = logging.getLogger("pipecat_workers.proxy")

_RETRY_FIRST = 0.2


class WebSocketProxyClient(ProxyWorker):
    """Stands in, on this bus, for workers behind a :class:`WebSocketProxyServer`.

    Args:
        name: The proxy's own name on this bus.
        url: The server's WebSocket URL (``ws://`` or ``wss://``).
        remote_worker_name: The server's workers to stand in for: a name or a list, known
            before the first connection (so what is sent to them waits for it); ``None``
            for every worker the server exposes.
        local_worker_name: The workers of this bus the server side may reach: a name or a
            list; ``None`` for all of them. A worker that sends to the other side must be
            exposed, or the answers would have nowhere to go.
        forward_messages: Broadcast types that cross (e.g. ``BusEndMessage``, so that ending
            the session on one side ends it on both); the server must list them too.
        headers: Extra HTTP headers for the WebSocket handshake.
        serializer: Encodes what crosses (signing with ``PIPECAT_WORKERS_SECRET``, if set).
        active: Connect at start; if False, connect when activated.
        token: Sent as ``Authorization: Bearer <token>``; defaults to
            ``PIPECAT_WORKERS_PROXY_TOKEN``.
        limits: Buffering, size, rate and timeout limits of the link.
        reconnect_max: Longest wait, in seconds, between two connection attempts.

    Example::

        proxy = WebSocketProxyClient("support-link", url="wss://support.example/proxy",
                                     remote_worker_name="support", token=TOKEN)
        await runner.add_workers(proxy, Greeter("greeter"))
        # greeter: await self.activate_worker("support", deactivate_self=True)
    """

    EVENTS: ClassVar[frozenset[str]] = BaseWorker.EVENTS | {"on_connected", "on_disconnected"}

    def __init__(
        self, name: str | None = None, *, url: str,
        remote_worker_name: str | Sequence[str] | None = None,
        local_worker_name: str | Sequence[str] | None = None,
        forward_messages: Sequence[type[BusMessage]] = (),
        headers: Mapping[str, str] | None = None, serializer: MessageSerializer | None = None,
        active: bool = True, token: str | None = None, limits: LinkLimits | None = None,
        reconnect_max: float = 10.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"url must be a ws:// or wss:// URL, got {url!r}")
        if not reconnect_max > 0:
            raise ConfigurationError("reconnect_max must be positive")
        super().__init__(name, exposes=name_set(local_worker_name, "local_worker_name"),
                         accepts=name_set(remote_worker_name, "remote_worker_name"),
                         forward_messages=forward_messages, serializer=serializer,
                         limits=limits, active=active)
        self.url = url
        self._headers = dict(headers or {})
        token = os.environ.get(TOKEN_ENV) if token is None else token
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._reconnect_max = reconnect_max
        self._session = ProxySession(self, os.urandom(8).hex())
        self._connector: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._socket: LinkSocket | None = None
        self._attempts = RateLimitedLog(logger, every=30.0)

    # -- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the link to the server is up."""
        return self._connected.is_set()

    @property
    def session(self) -> ProxySession:
        """The session with the server."""
        return self._session

    def sessions(self) -> list[ProxySession]:
        return [self._session]

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up (raises ``TimeoutError`` after ``timeout`` seconds)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        if self._accepts is not None:
            # Named in advance: what is sent to them waits for the link, even before it is up.
            for name in sorted(self._accepts):
                if name not in self._session.stand_ins:
                    await self._session.roster.add(WorkerRegistryEntry(name=name),
                                                     announced=False)
        self._session.link_down(self._expired)

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        """Connect (once: activating a connected client again changes nothing)."""
        await super().on_activated(args)
        if self._connector is None or self._connector.done():
            self._connector = self.create_task(
                supervise(f"{self._name} connect", self._connect_loop, self.bus.loops),
                name=f"{self._name} connect")

    async def _close_sessions(self) -> None:
        socket = self._socket
        if socket is not None:
            await socket.close(NORMAL, "proxy stopped")  # not coming back
        await cancel_and_wait([self._connector], self._settings.cancel_timeout)
        await super()._close_sessions()

    async def _expired(self, session: ProxySession) -> None:
        """The link stayed down for ``link_timeout``: the session ends, and the next
        connection starts a new one."""
        if session is not self._session:
            return
        logger.warning("%s: the link to %s has been down for %g s: the workers behind it are "
                       "gone until it is back", self._name, safe_url(self.url),
                       self.limits.link_timeout)
        await session.end("link down")
        self._session = ProxySession(self, os.urandom(8).hex())

    # -- connecting ---------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        delay = _RETRY_FIRST
        while True:
            was_up = await self._connect_once()
            if was_up:
                delay = _RETRY_FIRST  # the back-off starts afresh
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            if not was_up:
                delay = min(delay * 2, self._reconnect_max)

    async def _connect_once(self) -> bool:
        """One connection, start to end; whether the link came up."""
        try:
            socket = await self._dial()
        except HandshakeError as exc:
            self._attempts.error("%s: %s refused the link: %s", self._name, safe_url(self.url),
                                 exc)
            return False
        except (OSError, TimeoutError) as exc:
            self._attempts.warning("%s: cannot reach the proxy server at %s: %s; retrying",
                                   self._name, safe_url(self.url), exc or type(exc).__name__)
            return False
        session = self._session
        try:
            await session.send_now(socket, ProxyHelloMessage(
                source=self._name, session=session.session_id,
                received=session.inbox.received, workers=self.exposed_entries()))
            welcome = await expect(socket, self.serializer, ProxyWelcomeMessage,
                                   self.limits.max_message_size)
        except Exception as exc:
            await socket.close()
            code = getattr(exc, "code", None)
            if code == TRY_AGAIN:
                self._attempts.warning("%s: the proxy server at %s is not ready yet; retrying",
                                       self._name, safe_url(self.url))
                return False
            self._attempts.error("%s: %s refused the link: %s", self._name, safe_url(self.url),
                                 exc)
            return False
        if session is not self._session:  # it ended (link_timeout) during the handshake
            await socket.close(GOING_AWAY, "session ended")
            return False
        self._attempts.reset()
        session.peer = f"'{welcome.source}' at {safe_url(self.url)}"
        session.peer_name = welcome.source
        if not welcome.resumed:
            session.inbox.reset()
        await session.roster.apply(welcome.workers)
        self._socket = socket
        self._connected.set()
        logger.info("%s: linked to %s (%s session; stands in for %s)", self._name,
                    session.peer, "resumed" if welcome.resumed else "new",
                    ", ".join(sorted(session.stand_ins)) or "no worker yet")
        self._emit("on_connected", session.peer)
        try:
            closed = await session.run(socket, welcome.received if welcome.resumed else None)
        finally:
            self._socket = None
            self._connected.clear()
            if not session.ended:
                session.link_down(self._expired)
        why = f"{closed.code}: {closed.reason}" if closed.reason else f"code {closed.code}"
        logger.warning("%s: the link to %s closed (%s); reconnecting", self._name,
                       session.peer, why)
        self._emit("on_disconnected", why)
        return True

    async def _dial(self) -> LinkSocket:
        try:
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        except ImportError:
            raise MissingDependencyError("WebSocketProxyClient", "proxy", "websockets") from None
        heartbeat = self.limits.heartbeat
        try:
            connection = await connect(
                self.url, additional_headers=self._headers, compression=None,
                max_size=self.limits.max_message_size + 64, open_timeout=10.0,
                ping_interval=heartbeat, ping_timeout=heartbeat * 2)
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = {401: "the server wants a token (token= or PIPECAT_WORKERS_PROXY_TOKEN) "
                         "and this one is missing or wrong",
                    403: "the server refused this client",
                    404: "no proxy at that path"}.get(status, "")
            raise HandshakeError(f"HTTP {status}" + (f": {hint}" if hint else "")) from None
        except InvalidURI as exc:
            raise HandshakeError(f"invalid URL: {exc}") from None
        except InvalidHandshake as exc:
            raise OSError(f"not a WebSocket server ({exc})") from None
        return WebsocketsSocket(connection, safe_url(self.url))
