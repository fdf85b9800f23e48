"""WebSocketProxyServer: expose workers of this bus to clients on other buses.

It serves connections from :class:`~pipecat_workers.proxy.client.WebSocketProxyClient`
workers three ways: listening on its own (``port=``, with the ``websockets`` library), inside an
ASGI application (``await server.serve(websocket)`` from a Starlette or FastAPI WebSocket
route), or for one connection handed over at construction (``websocket=``, the reference's
shape). Each client has a session that survives a reconnection within ``link_timeout``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from pipecat_workers.bus.messages import BusMessage
from pipecat_workers.bus.serializer import MessageSerializer
from pipecat_workers.errors import ConfigurationError, MissingDependencyError
from pipecat_workers.proxy.handshake import HandshakeError, expect
from pipecat_workers.proxy.messages import (
    LINK_PROTOCOL,
    ProxyHelloMessage,
    ProxyWelcomeMessage,
)
from pipecat_workers.proxy.session import ProxySession
from pipecat_workers.proxy.sockets import (
    NORMAL,
    REFUSED,
    TRY_AGAIN,
    UNAUTHORIZED,
    LinkSocket,
    WebsocketsSocket,
    adapt,
)
from pipecat_workers.proxy.worker import TOKEN_ENV, LinkLimits, ProxyWorker, name_set
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.workers.base import BaseWorker, WorkerState

logger = logging.getLogger("pipecat_workers.proxy")

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
# The websockets library logs every connection at INFO; the proxy says what matters itself.
_WEBSOCKETS_LOG = logging.getLogger("pipecat_workers.proxy.websockets")
_WEBSOCKETS_LOG.setLevel(logging.WARNING)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebSocketProxyServer(ProxyWorker):
    """Lets proxy clients on other buses reach workers of this one.

    Args:
        name: The proxy's own name on this bus.
        worker_name: The workers of this bus that clients may reach (a name or a list).
        remote_worker_name: The clients' workers to stand in for; ``None`` for all that
            a client exposes.
        forward_messages: Broadcast types that cross (the client must list them too).
        serializer: Encodes what crosses (signing with ``PIPECAT_WORKERS_SECRET``, if set:
            then only clients with the same secret get in).
        websocket: One accepted WebSocket to serve (the worker stops when that session
            ends); leave it out to serve many (``port=`` or :meth:`serve`).
        host: Where to listen on its own (with ``port``); loopback by default.
        port: Listen on this port (0: any free one, see :attr:`port`).
        path: Only accept connections to this path (listening on its own).
        token: The bearer token clients must send; defaults to
            ``PIPECAT_WORKERS_PROXY_TOKEN``. A server listening beyond loopback needs a
            token or a secret.
        max_sessions: Clients served at once; more are refused.
        limits: Buffering, size, rate and timeout limits of each link.
    """

    EVENTS: ClassVar[frozenset[str]] = BaseWorker.EVENTS | {
        "on_client_connected", "on_client_disconnected"}

    def __init__(
        self, name: str | None = None, *, worker_name: str | Sequence[str],
        remote_worker_name: str | Sequence[str] | None = None,
        forward_messages: Sequence[type[BusMessage]] = (),
        serializer: MessageSerializer | None = None, websocket: Any = None,
        host: str = "127.0.0.1", port: int | None = None, path: str | None = None,
        token: str | None = None, max_sessions: int = 64, limits: LinkLimits | None = None,
    ) -> None:
        exposes = name_set(worker_name, "worker_name")
        super().__init__(name, exposes=exposes,
                         accepts=name_set(remote_worker_name, "remote_worker_name"),
                         forward_messages=forward_messages, serializer=serializer,
                         limits=limits, active=True)
        if port is not None and not (isinstance(port, int) and 0 <= port <= 65535):
            raise ConfigurationError(f"port must be 0-65535, got {port!r}")
        if websocket is not None and port is not None:
            raise ConfigurationError("give websocket= or port=, not both")
        if max_sessions < 1:
            raise ConfigurationError("max_sessions must be at least 1")
        self._token = (os.environ.get(TOKEN_ENV) if token is None else token) or None
        if port is not None and not is_loopback(host) and not (
                self._token or self.serializer.signed):
            raise ConfigurationError(
                f"proxy server '{self._name}' would accept anyone on {host}:{port}: set "
                f"token= (or {TOKEN_ENV}) or a shared secret (PIPECAT_WORKERS_SECRET), or "
                "listen on 127.0.0.1")
        self._host, self._port, self._path = host, port, path
        self._websocket = adapt(websocket) if websocket is not None else None
        self._max_sessions = max_sessions
        self._sessions: dict[str, ProxySession] = {}
        self._sockets: dict[str, LinkSocket] = {}  # session id -> its connection now
        self._listener: Any = None
        self._bound_port: int | None = None
        self._single: asyncio.Task[None] | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port it listens on (once started), or ``None`` if it does not listen."""
        return self._bound_port

    def sessions(self) -> list[ProxySession]:
        return list(self._sessions.values())

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        if not (self._token or self.serializer.signed):
            logger.warning("%s: any client that reaches this proxy gets in (no token, no "
                           "secret)", self._name)
        if self._port is not None:
            await self._listen()
        elif self._websocket is not None:
            self._single = self.create_task(self._serve_single(self._websocket),
                                            name=f"{self._name} connection")

    async def _listen(self) -> None:
        try:
            from websockets.asyncio.server import serve
        except ImportError:
            raise MissingDependencyError("WebSocketProxyServer", "proxy", "websockets") from None
        heartbeat = self.limits.heartbeat
        self._listener = await serve(
            self._on_connection, self._host, self._port, process_request=self._check_request,
            compression=None, max_size=self.limits.max_message_size + 64,
            ping_interval=heartbeat, ping_timeout=heartbeat * 2, logger=_WEBSOCKETS_LOG)
        self._bound_port = next(iter(self._listener.sockets)).getsockname()[1]
        logger.info("%s: listening on ws://%s:%d%s, exposing %s", self._name, self._host,
                    self._bound_port, self._path or "/", ", ".join(sorted(self._exposes or ())))

    async def _close_sessions(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for socket in list(self._sockets.values()):
            await socket.close(1001, "proxy stopped")
        await super()._close_sessions()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self._single is not None:
            await cancel_and_wait([self._single], self._settings.cancel_timeout)

    # -- accepting ----------------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        expected = f"Bearer {self._token}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)

    def _check_request(self, connection: Any, request: Any) -> Any:
        if self._path is not None and request.path.split("?", 1)[0] != self._path:
            return connection.respond(HTTPStatus.NOT_FOUND, "no proxy at this path\n")
        if not self._authorized(request.headers.get("Authorization")):
            logger.warning("%s: refused a client from %s: missing or wrong token", self._name,
                           _address(connection))
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _on_connection(self, connection: Any) -> None:
        await self._serve_socket(WebsocketsSocket(connection, _address(connection)))

    async def serve(self, websocket: Any) -> None:
        """Serve one client connection from an ASGI app, until it closes.

        Call it from a WebSocket route, with the framework's WebSocket (accepted or not:
        a connection without the right token is refused before it is accepted)::

            @app.websocket("/proxy")
            async def proxy(websocket: WebSocket):
                await server.serve(websocket)
        """
        connecting = getattr(getattr(websocket, "client_state", None), "name", "") == "CONNECTING"
        if not self._authorized(_header(websocket, "authorization")):
            logger.warning("%s: refused a client: missing or wrong token", self._name)
            if not (connecting and await _deny(websocket, 401, "missing or wrong token")):
                await adapt(websocket).close(UNAUTHORIZED, "missing or wrong token")
            return
        if connecting:
            await websocket.accept()
        await self._serve_socket(adapt(websocket))

    async def _serve_single(self, socket: LinkSocket) -> None:
        await self._serve_socket(socket)
        await self._stop_if_done()

    async def _stop_if_done(self) -> None:
        """A server made for one connection stops once that session is over (no other
        connection can resume it)."""
        if self._websocket is not None and not self._sessions:
            await self.stop(reason="its connection ended")

    async def _serve_socket(self, socket: LinkSocket) -> None:
        if self.state is not WorkerState.READY:  # its runner does not run (yet, or any more)
            logger.info("%s: a client from %s came while this proxy is %s: asked to retry",
                        self._name, socket.peer, self.state)
            await socket.close(TRY_AGAIN, f"proxy '{self._name}' is not ready")
            return
        try:
            hello = await expect(socket, self.serializer, ProxyHelloMessage,
                                 self.limits.max_message_size)
        except HandshakeError as exc:
            logger.warning("%s: refused a client from %s: %s", self._name, socket.peer, exc)
            await socket.close(exc.code or UNAUTHORIZED, str(exc)[:120])
            return
        if hello.protocol != LINK_PROTOCOL:
            await socket.close(REFUSED, f"link protocol {hello.protocol} is not supported")
            return
        session = self._sessions.get(hello.session)
        resumed = session is not None
        if not resumed:
            await self._end_stale_sessions(hello.source)
        if session is None:
            if len(self._sessions) >= self._max_sessions:
                logger.warning("%s: refused a client from %s: %d sessions already",
                               self._name, socket.peer, self._max_sessions)
                await socket.close(REFUSED, "too many sessions")
                return
            session = self._sessions[hello.session] = ProxySession(self, hello.session)
        previous = self._sockets.get(hello.session)
        if previous is not None:  # the client reconnected before the old one was seen dead
            await previous.close(1001, "replaced by a new connection")
        self._sockets[hello.session] = socket
        session.peer = f"'{hello.source}' from {socket.peer}"
        session.peer_name = hello.source
        await session.roster.apply(hello.workers)
        try:
            await session.send_now(socket, ProxyWelcomeMessage(
                source=self._name, session=session.session_id, resumed=resumed,
                received=session.inbox.received, workers=self.exposed_entries()))
        except Exception as exc:
            logger.warning("%s: lost %s during the handshake: %s", self._name, session.peer, exc)
            self._sockets.pop(hello.session, None)
            session.link_down(self._expired)
            return
        logger.info("%s: %s linked (%s session; stands in for %s)", self._name, session.peer,
                    "resumed" if resumed else "new", ", ".join(sorted(session.stand_ins)) or
                    "no worker")
        self._emit("on_client_connected", session.session_id)
        try:
            closed = await session.run(socket, hello.received if resumed else None)
        finally:
            if self._sockets.get(hello.session) is socket:
                del self._sockets[hello.session]
                if not session.ended:
                    session.link_down(self._expired)
        why = f"{closed.code}: {closed.reason}" if closed.reason else f"code {closed.code}"
        logger.info("%s: %s disconnected (%s)", self._name, session.peer, why)
        self._emit("on_client_disconnected", session.session_id)
        if closed.code == NORMAL and self._sessions.get(session.session_id) is session:
            # A client that closes normally is not coming back: its workers are gone now.
            del self._sessions[session.session_id]
            await session.end("the client left")

    async def _end_stale_sessions(self, peer_name: str) -> None:
        """A client starting a new session has restarted: the sessions it left behind,
        waiting for a connection that will never come, end now (their stand-ins would
        hold the names its new session needs)."""
        for stale in list(self._sessions.values()):
            if stale.peer_name == peer_name and not stale.connected:
                del self._sessions[stale.session_id]
                logger.info("%s: %s started a new session: the old one ends", self._name,
                            stale.peer)
                await stale.end("replaced by a new session")

    async def _expired(self, session: ProxySession) -> None:
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
            logger.info("%s: %s did not come back within %g s: session ended", self._name,
                        session.peer, self.limits.link_timeout)
            await session.end("link down")
            await self._stop_if_done()


async def _deny(websocket: Any, status: int, text: str) -> bool:
    """Refuse an ASGI WebSocket with an HTTP status (so a client can tell a wrong token from
    other refusals), where the framework and server can; False where they cannot."""
    deny = getattr(websocket, "send_denial_response", None)
    if deny is None:
        return False
    try:
        from starlette.responses import PlainTextResponse

        await deny(PlainTextResponse(text + "\n", status_code=status))
    except Exception:  # the server lacks the extension: a close will do
        return False
    return True


def _address(connection: Any) -> str:
    remote = getattr(connection, "remote_address", None)
    return f"{remote[0]}:{remote[1]}" if remote else "a client"


def _header(websocket: Any, name: str) -> str | None:
    headers = getattr(websocket, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get(name)
    except Exception:
        return None
    return value if isinstance(value, str) else None
