"""The first exchange on a new connection: a hello from the client, a welcome back."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from pipecat_workers.bus.serializer import MessageSerializer
from pipecat_workers.proxy.messages import ProxyLinkMessage
from pipecat_workers.proxy.session import LINK_CHANNEL
from pipecat_workers.proxy.sockets import UNAUTHORIZED, LinkClosed, LinkSocket

HANDSHAKE_TIMEOUT = 10.0

M = TypeVar("M", bound=ProxyLinkMessage)


class HandshakeError(Exception):
    """The handshake failed; ``code`` is the close code to send (or that was received)."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.code = code


async def expect(socket: LinkSocket, serializer: MessageSerializer, kind: type[M],
                 max_size: int, timeout: float = HANDSHAKE_TIMEOUT) -> M:
    """The first message on ``socket``, which must be a valid ``kind``.

    Raises:
        HandshakeError: nothing came in time, the connection closed, or what came is not a
            valid ``kind`` (unsigned or forged, with a secret).
    """
    try:
        data = await asyncio.wait_for(socket.receive(), timeout)
    except TimeoutError:
        raise HandshakeError(f"no {kind.__name__} within {timeout:g} s") from None
    except LinkClosed as closed:
        why = f" ({closed.code}: {closed.reason})" if closed.reason else f" ({closed.code})"
        raise HandshakeError(f"the other end closed the connection{why}", closed.code) from None
    if not isinstance(data, bytes) or len(data) <= 8 or len(data) > max_size + 8:
        raise HandshakeError(f"the first frame is not a {kind.__name__}", UNAUTHORIZED)
    envelope = serializer.decode(data[8:], channel=LINK_CHANNEL)
    if envelope is None:
        why = ("unsigned, or signed with another secret" if serializer.signed
               else "not a valid message (is the other end signing with a secret?)")
        raise HandshakeError(f"the first frame was refused: {why}", UNAUTHORIZED)
    if not isinstance(envelope.message, kind):
        raise HandshakeError(f"expected {kind.__name__}, got "
                             f"{type(envelope.message).__name__}", UNAUTHORIZED)
    return envelope.message
