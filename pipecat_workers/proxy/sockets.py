"""One shape for the WebSocket connections a proxy link runs on.

A link reads and writes whole messages and does not care whose WebSocket carries them: the
``websockets`` library's (the client, and the standalone server) or an ASGI framework's
(Starlette, FastAPI), adapted here to :class:`LinkSocket`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

# Close codes (4000-4999 are the application's own).
NORMAL = 1000
GOING_AWAY = 1001
TRY_AGAIN = 1013  # the server is not ready: come back later
UNAUTHORIZED = 4401
REFUSED = 4403  # authenticated, but what it asked for is not allowed


class LinkClosed(Exception):
    """The connection is closed; ``code`` and ``reason`` say how, when known."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class LinkSocket(Protocol):
    """A connected WebSocket, as a link uses it."""

    @property
    def peer(self) -> str:
        """Who is at the other end, for logs."""
        ...

    async def receive(self) -> bytes | str:
        """The next message; raises :class:`LinkClosed` once the connection is closed."""
        ...

    async def send(self, data: bytes) -> None:
        """Send a binary message; raises :class:`LinkClosed` if the connection is closed."""
        ...

    async def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Close the connection (never raises)."""
        ...


class WebsocketsSocket:
    """A connection of the ``websockets`` library (client or server side)."""

    def __init__(self, connection: Any, peer: str) -> None:
        from websockets.exceptions import ConnectionClosed  # only where websockets is used

        self._connection = connection
        self._peer = peer
        self._closed_error: type[Exception] = ConnectionClosed

    @property
    def peer(self) -> str:
        return self._peer

    async def receive(self) -> bytes | str:
        try:
            data: bytes | str = await self._connection.recv()
        except self._closed_error as closed:
            raise _closed(closed) from None
        return data

    async def send(self, data: bytes) -> None:
        try:
            await self._connection.send(data)
        except self._closed_error as closed:
            raise _closed(closed) from None

    async def close(self, code: int = NORMAL, reason: str = "") -> None:
        with contextlib.suppress(Exception):  # already gone: nothing to close
            await self._connection.close(code, reason)


def _closed(closed: Any) -> LinkClosed:
    frame = closed.rcvd or closed.sent
    if frame is None:
        return LinkClosed(None, "connection lost")
    return LinkClosed(frame.code, frame.reason)


class ASGISocket:
    """An accepted WebSocket of an ASGI framework (``starlette.websockets.WebSocket``, which
    FastAPI re-exports): it has ``receive()``, ``send_bytes()`` and ``close()``."""

    def __init__(self, websocket: Any) -> None:
        self._websocket = websocket
        self._closed: LinkClosed | None = None
        client = getattr(websocket, "client", None)
        self._peer = f"{client[0]}:{client[1]}" if client else "an ASGI client"

    @property
    def peer(self) -> str:
        return self._peer

    async def receive(self) -> bytes | str:
        if self._closed is not None:
            raise self._closed
        try:
            message = await self._websocket.receive()
        except Exception as exc:  # the framework's own "disconnected" errors
            self._closed = LinkClosed(None, str(exc) or type(exc).__name__)
            raise self._closed from None
        if message.get("type") == "websocket.disconnect":
            self._closed = LinkClosed(message.get("code"), message.get("reason") or "")
            raise self._closed
        data = message.get("bytes")
        if data is not None:
            return bytes(data)
        text = message.get("text")
        return text if isinstance(text, str) else ""

    async def send(self, data: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self._websocket.send_bytes(data)
        except Exception as exc:
            self._closed = LinkClosed(None, str(exc) or type(exc).__name__)
            raise self._closed from None

    async def close(self, code: int = NORMAL, reason: str = "") -> None:
        if self._closed is None:
            self._closed = LinkClosed(code, reason)
        with contextlib.suppress(Exception):
            await self._websocket.close(code, reason)


def adapt(websocket: Any) -> LinkSocket:
    """The :class:`LinkSocket` for a framework's WebSocket (already accepted)."""
    if hasattr(websocket, "send_bytes") and hasattr(websocket, "receive"):
        return ASGISocket(websocket)
    if hasattr(websocket, "recv") and hasattr(websocket, "send"):
        remote = getattr(websocket, "remote_address", None)
        peer = f"{remote[0]}:{remote[1]}" if remote else "a client"
        return WebsocketsSocket(websocket, peer)
    raise TypeError(f"not a WebSocket this proxy can use: {type(websocket).__name__} (expected "
                    "a Starlette/FastAPI WebSocket or a websockets connection)")
