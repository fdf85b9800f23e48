"""What the two ends of a proxy link say to each other, besides the bus messages they carry.

These travel inside the same (signed) envelopes as bus messages, so they are validated the
same way; a proxy handles them itself and never puts them on a bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pipecat_workers.bus.messages import BusSystemMessage
from pipecat_workers.catalogue import register_message
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.validate import MaxLen, Name, Range

MAX_EXPOSED = 1024
"""The most workers one end of a link may expose; a longer list is refused."""

LINK_PROTOCOL = 1

Exposed = Annotated[list[WorkerRegistryEntry], MaxLen(MAX_EXPOSED)]
Seq = Annotated[int, Range(ge=0, le=2**63 - 1)]  # a sequence number (8 bytes on the wire)
Protocol = Annotated[int, Range(ge=1, le=1_000_000)]


@dataclass(kw_only=True, slots=True)
class ProxyLinkMessage(BusSystemMessage):
    """Root of the link's own messages."""


@register_message(name="proxy.hello")
@dataclass(kw_only=True, slots=True)
class ProxyHelloMessage(ProxyLinkMessage):
    """The client's first message on a connection.

    Attributes:
        session: The client's session; the same on every connection until it gives up.
        received: The last sequence number it received from the server in that session.
        workers: The workers it exposes.
        protocol: The link protocol it speaks.
    """

    session: Name
    received: Seq = 0
    workers: Exposed = field(default_factory=list)
    protocol: Protocol = LINK_PROTOCOL


@register_message(name="proxy.welcome")
@dataclass(kw_only=True, slots=True)
class ProxyWelcomeMessage(ProxyLinkMessage):
    """The server's answer to a hello.

    Attributes:
        session: The session, as the client named it.
        resumed: Whether the server still had it (else everything starts afresh).
        received: The last sequence number it received from the client in that session.
        workers: The workers the server exposes.
    """

    session: Name
    resumed: bool = False
    received: Seq = 0
    workers: Exposed = field(default_factory=list)


@register_message(name="proxy.workers")
@dataclass(kw_only=True, slots=True)
class ProxyWorkersMessage(ProxyLinkMessage):
    """The sender's exposed workers changed: here is the whole list again."""

    workers: Exposed = field(default_factory=list)


@register_message(name="proxy.ack")
@dataclass(kw_only=True, slots=True)
class ProxyAckMessage(ProxyLinkMessage):
    """Everything up to ``received`` arrived: the sender may forget it."""

    received: Seq
