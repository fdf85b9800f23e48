"""The sending half of a proxy link: numbered messages, kept until the peer has them.

Each end numbers what it sends in a session (1, 2, ...) and keeps it until the peer
acknowledges it; a connection that breaks is resumed from the first number the peer lacks,
so nothing is lost or delivered twice while the session lasts. Real-time messages (input
audio and other system frames) are not numbered: they are sent while connected and dropped
while not, as late audio is worse than none. The outbox is bounded: past ``limit`` waiting
messages (or bytes), new ones are dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Outgoing:
    """One message waiting to be sent, or sent and not yet acknowledged.

    Attributes:
        seq: Its number in the session; 0 for a real-time message, which is never kept.
        data: The encoded envelope; ``None`` for the list of exposed workers, encoded as it
            is when sent.
        destination: What it was sent to (a stand-in), checked when it is finally sent: a
            message for a worker that has since been replaced is not delivered to its
            successor.
    """

    seq: int
    data: bytes | None
    destination: Any = None


class Outbox:
    """What one end has to send in a session, bounded in messages and in bytes."""

    def __init__(self, limit: int, limit_bytes: int) -> None:
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._bytes = 0  # of the numbered messages kept
        self._waiting: deque[Outgoing] = deque()
        self._unacked: deque[Outgoing] = deque()
        self._next_seq = 1
        self._ready = asyncio.Event()
        self.connected = False

    @property
    def waiting(self) -> int:
        """Messages not sent yet."""
        return len(self._waiting)

    @property
    def unacked(self) -> int:
        """Messages sent and not acknowledged."""
        return len(self._unacked)

    def put(self, data: bytes | None, destination: Any = None, *,
            realtime: bool = False, urgent: bool = False) -> bool:
        """Queue a message; False if it was dropped (real-time while disconnected, or the
        outbox is full). ``urgent`` ones (acknowledgements) go ahead of the rest."""
        if realtime or data is None or urgent:
            if not self.connected:
                return False
            entry = Outgoing(0, data, destination)
        else:
            if (len(self._waiting) + len(self._unacked) >= self._limit
                    or self._bytes + len(data) > self._limit_bytes):
                return False
            entry = Outgoing(self._next_seq, data, destination)
            self._next_seq += 1
            self._bytes += len(data)
        if urgent:
            self._waiting.appendleft(entry)
        else:
            self._waiting.append(entry)
        self._ready.set()
        return True

    async def take(self) -> Outgoing:
        """The next message to send (wait for one)."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        return self._waiting.popleft()

    def sent(self, entry: Outgoing) -> None:
        """``entry`` was written to the connection: keep it until acknowledged."""
        if entry.seq:
            self._unacked.append(entry)

    def put_back(self, entry: Outgoing) -> None:
        """``entry`` could not be written (the connection broke): it goes first next time."""
        if entry.seq:
            self._waiting.appendleft(entry)

    def acknowledged(self, received: int) -> None:
        """The peer has everything up to ``received``."""
        unacked = self._unacked
        while unacked and unacked[0].seq <= received:
            self._forget(unacked.popleft())

    def _forget(self, entry: Outgoing) -> None:
        if entry.seq and entry.data is not None:
            self._bytes -= len(entry.data)

    def skipped(self, entry: Outgoing) -> None:
        """``entry`` was taken and will never be sent (its worker is gone)."""
        self._forget(entry)

    def disconnected(self) -> None:
        """The connection is gone: real-time messages and snapshots waiting are dropped
        (a new connection starts with a fresh list of workers)."""
        self.connected = False
        self._waiting = deque(e for e in self._waiting if e.seq)

    def resume(self, received: int | None) -> None:
        """A new connection: resend what the peer lacks (it has everything up to
        ``received``), or, for a session the peer no longer has (``None``), forget what was
        sent, since some of it may have arrived and must not arrive twice."""
        if received is None:
            for entry in self._unacked:
                self._forget(entry)
            self._unacked.clear()
        else:
            self.acknowledged(received)
        self._waiting.extendleft(reversed(self._unacked))
        self._unacked.clear()
        self.connected = True
        if self._waiting:
            self._ready.set()

    def clear(self) -> int:
        """Drop everything (the session ended); returns how many were never sent."""
        dropped = sum(1 for e in self._waiting if e.seq)
        self._waiting.clear()
        self._unacked.clear()
        self._next_seq = 1
        self._bytes = 0
        return dropped


class Inbox:
    """What one end has received in a session: the last number, and when to acknowledge."""

    ACK_EVERY = 64  # messages between two acknowledgements at most

    def __init__(self) -> None:
        self.received = 0
        self.acked = 0

    def accept(self, seq: int) -> bool:
        """Whether a numbered message is new (a resent one that arrived before is not)."""
        if seq <= self.received:
            return False
        self.received = seq
        return True

    @property
    def ack_due(self) -> bool:
        return self.received - self.acked >= self.ACK_EVERY

    def reset(self) -> None:
        self.received = self.acked = 0
