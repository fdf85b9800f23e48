"""One peer of a proxy: the link to it, the stand-ins for its workers, and what may cross.

A session outlives its connections. When a connection breaks, the stand-ins (see
:mod:`pipecat_workers.proxy.roster`) stay and what
is sent to them waits in the outbox; a new connection resumes the session, the peer's list of
workers is applied again (a worker that restarted meanwhile is replaced, which ends the jobs
sent to the old one), and the outbox is sent on. A session whose link stays down longer than
``link_timeout`` ends: its stand-ins leave, so every job sent through it ends too.

What arrives is checked before anything reaches the bus: binary frames only, within the size
limit, read no faster than the rate limit, in a valid (signed, if there is a secret)
envelope, from a worker the peer exposes, to a worker this side exposes (or a broadcast of a
type both sides forward).
Workers' lifecycle (ending, cancelling) and the bus's own membership never cross.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.bus.messages import (
    BusCancelWorkerMessage,
    BusEndWorkerMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusMessage,
    BusSystemFrameMessage,
)
from pipecat_workers.errors import SerializationError
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.proxy.link import Inbox, Outbox
from pipecat_workers.proxy.messages import (
    ProxyAckMessage,
    ProxyLinkMessage,
    ProxyWorkersMessage,
)
from pipecat_workers.proxy.roster import Roster
from pipecat_workers.proxy.sockets import GOING_AWAY, NORMAL, LinkClosed, LinkSocket
from pipecat_workers.proxy.standin import StandIn
from pipecat_workers.tasks import cancel_and_wait

if TYPE_CHECKING:
    from pipecat_workers.proxy.worker import ProxyWorker

logger = logging.getLogger("pipecat_workers.proxy")

LINK_CHANNEL = "~proxy"  # what envelopes on a link name as their channel: no bus channel's name
_HEADER = 8  # bytes of the sequence number in front of each envelope
_ACK_DELAY = 0.1  # seconds an acknowledgement may wait for more messages to cover

# Why an incoming message was dropped, as counted and (once each) logged.
DROP_REASONS = {
    "text": "a text frame (a link carries binary frames only)",
    "short": "a frame too short to hold a message",
    "oversize": "a frame larger than max_message_size",
    "invalid": "not a valid envelope (malformed, unsigned, forged, stale or of an unknown type)",
    "duplicate": "a message that had already arrived",
    "source": "from a worker the peer does not expose",
    "target": "for a worker this side does not expose",
    "broadcast": "a broadcast of a type this side does not forward",
    "lifecycle": "a worker's end or cancel (a worker's lifecycle stays with its own side)",
}


class Throttle:
    """A token bucket: ``rate`` messages a second, with bursts of up to a second's worth.
    Past it, the reader waits: a peer that sends too fast is slowed down (its own outbox and
    the connection's buffers fill up), and nothing it sent is lost."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._tokens = rate or 0.0
        self._at = time.monotonic()

    def wait(self) -> float:
        """Take a token; how long to wait before the message may be handled (0: now)."""
        rate = self._rate
        if rate is None:
            return 0.0
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._at) * rate) - 1.0
        self._at = now
        return 0.0 if self._tokens >= 0.0 else -self._tokens / rate


class ProxySession:
    """The state one end keeps about one peer (see the module's doc).

    Args:
        proxy: The proxy worker this session belongs to.
        session_id: The session's id, as the client chose it.
    """

    def __init__(self, proxy: ProxyWorker, session_id: str) -> None:
        self.proxy = proxy
        self.session_id = session_id
        self.peer = "?"  # who the peer is, for logs, once it has said something
        self.peer_name = ""  # the peer proxy's own name
        self.roster = Roster(self)
        self.outbox = Outbox(proxy.limits.buffer_size, proxy.limits.buffer_bytes)
        self.inbox = Inbox()
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.forwarded = 0
        self.received = 0
        self.lost_outgoing = 0  # messages that could not be sent (link down, full, too big)
        self._socket: LinkSocket | None = None
        self._throttle = Throttle(proxy.limits.max_rate)
        self.throttled = 0  # messages that had to wait for the rate limit
        self._snapshot_pending = False
        self._ack_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._warned: set[tuple[str, str]] = set()
        self._loss_log = RateLimitedLog(logger, every=30.0)
        self.ended = False

    # -- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection carries the session now."""
        return self._socket is not None

    @property
    def stand_ins(self) -> dict[str, StandIn]:
        """The stand-ins for the peer's workers, by name."""
        return self.roster.workers

    def stats(self) -> dict[str, Any]:
        """Counters: forwarded and received messages, drops by reason, what waits."""
        return {"session": self.session_id, "peer": self.peer, "connected": self.connected,
                "stand_ins": sorted(self.stand_ins), "forwarded": self.forwarded,
                "received": self.received, "waiting": self.outbox.waiting,
                "unacked": self.outbox.unacked, "lost_outgoing": self.lost_outgoing,
                "throttled": self.throttled,
                "dropped": {k: v for k, v in self.drops.items() if v}}

    # -- sending ------------------------------------------------------------------------------

    async def forward(self, message: BusMessage, stand_in: StandIn) -> None:
        """Send a message addressed to a stand-in across the link."""
        if not self.proxy.may_send(message.source):
            await self.undeliverable(message, stand_in, (
                f"'{message.source}' is not exposed through proxy '{self.proxy.name}' "
                "(see local_worker_name / worker_name), so the answer would have nowhere "
                "to go"), once=message.source)
            return
        if not stand_in.announced:
            # Named in advance, and the peer has not announced it yet: the peer would drop
            # what is sent to it, so it waits here (system frames excepted: they are late).
            if len(stand_in.held) < self.proxy.limits.buffer_size and not isinstance(
                    message, BusSystemFrameMessage):
                stand_in.held.append(message)
            else:
                await self.undeliverable(message, stand_in, self._why_full())
            return
        data = self._encode(message)
        if data is None:
            await self.undeliverable(message, stand_in, "it cannot be encoded",
                                      once=type(message).__name__)
        elif not self.outbox.put(data, stand_in,
                                 realtime=isinstance(message, BusSystemFrameMessage)):
            await self.undeliverable(message, stand_in, self._why_full())

    async def forward_broadcast(self, message: BusMessage) -> None:
        """Send a broadcast across the link (the proxy checked that it may cross)."""
        data = self._encode(message)
        if data is None or not self.outbox.put(
                data, None, realtime=isinstance(message, BusSystemFrameMessage)):
            await self.undeliverable(message, None, self._why_full())

    def exposure_changed(self) -> None:
        """This side's exposed workers changed: the peer gets the new list, in order with
        the messages around it."""
        if not self._snapshot_pending and self.outbox.put(None):
            self._snapshot_pending = True

    def _why_full(self) -> str:
        if not self.outbox.connected:
            return "the link is down"
        limits = self.proxy.limits
        return (f"the link is backed up ({limits.buffer_size} messages or "
                f"{limits.buffer_bytes} bytes waiting)")

    async def undeliverable(self, message: BusMessage, stand_in: StandIn | None, why: str,
                             *, once: str | None = None) -> None:
        """A message that cannot cross: counted and said (once per ``once`` key, else
        rate-limited); a job request is answered with an error at once, so that its job ends
        now rather than at its timeout."""
        self.lost_outgoing += 1
        text = (f"{self.proxy.name}: {type(message).__name__} from '{message.source}' to "
                f"'{message.target or 'everyone'}' cannot cross: {why}")
        if once is not None:
            self.warn_once("lost", once, "%s", text)
        elif not isinstance(message, BusSystemFrameMessage):  # lost audio is no news
            self._loss_log.warning("%s", text)
        if isinstance(message, BusJobRequestMessage) and stand_in is not None:
            await self.proxy.send_bus_message(BusJobResponseMessage(
                source=stand_in.name, target=message.source, job_id=message.job_id,
                status=JobStatus.ERROR, response={"error": f"cannot reach '{stand_in.name}' "
                                                           f"through proxy: {why}"}))

    def refuse_lifecycle(self, message: BusMessage) -> None:
        """A worker here asked a stand-in to end or cancel: that stays on this side."""
        self.warn_once("lifecycle", f"{message.source}>{message.target}",
                        "%s: '%s' asked '%s' (behind proxy '%s') to %s: a worker behind a "
                        "proxy is ended by its own side; not forwarded", self.proxy.name,
                        message.source, message.target, self.proxy.name,
                        "end" if isinstance(message, BusEndWorkerMessage) else "cancel")

    def _encode(self, message: BusMessage) -> bytes | None:
        try:
            return self.proxy.serializer.serialize(
                message, sender=self.proxy.name, incarnation=self.proxy.incarnation,
                channel=LINK_CHANNEL)
        except SerializationError as exc:
            self.warn_once("encode", type(message).__name__, "%s: %s cannot cross the link: %s",
                            self.proxy.name, type(message).__name__, exc)
            return None

    async def send_now(self, socket: LinkSocket, message: ProxyLinkMessage) -> None:
        """Send a link message ahead of the session's traffic (the handshake)."""
        data = self._encode(message)
        if data is not None:
            await socket.send(bytes(_HEADER) + data)

    async def _write(self, socket: LinkSocket) -> None:
        outbox = self.outbox
        while True:
            entry = await outbox.take()
            destination = entry.destination
            if destination is not None and self.stand_ins.get(destination.name) is not destination:
                outbox.skipped(entry)  # its worker was replaced or is gone: not for the new one
                self.lost_outgoing += 1
                continue
            data = entry.data
            if data is None:  # the exposed workers, as they are now
                self._snapshot_pending = False
                data = self._encode(ProxyWorkersMessage(
                    source=self.proxy.name, workers=self.proxy.exposed_entries()))
                if data is None:
                    continue
            try:
                await socket.send(entry.seq.to_bytes(_HEADER, "big") + data)
            except LinkClosed:
                outbox.put_back(entry)
                return
            outbox.sent(entry)
            if entry.seq:
                self.forwarded += 1

    # -- receiving ----------------------------------------------------------------------------

    async def run(self, socket: LinkSocket, peer_received: int | None) -> LinkClosed:
        """Carry the session over ``socket`` until it closes; returns how it closed.

        Args:
            socket: A connection whose handshake is done.
            peer_received: The last message of ours the peer has, or ``None`` if the peer
                started the session afresh.
        """
        self._cancel_expiry()
        self._socket = socket
        self.outbox.resume(peer_received)
        self.exposure_changed()  # whatever the handshake said may have changed since
        writer = asyncio.get_running_loop().create_task(self._write(socket),
                                                        name=f"{self.proxy.name} link writer")
        reader = asyncio.get_running_loop().create_task(self._read(socket),
                                                        name=f"{self.proxy.name} link reader")
        closed = LinkClosed(None, "")
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                closed = reader.result()
            else:
                writer.result()  # a bug in the writer is raised, not hidden
                await socket.close(GOING_AWAY, "link closed")
                closed = await reader
        finally:
            self._socket = None
            self.outbox.disconnected()
            self._snapshot_pending = False
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
            await socket.close(GOING_AWAY, "link closed")
            await cancel_and_wait([writer, reader], self.proxy.settings.cancel_timeout)
        return closed

    async def _read(self, socket: LinkSocket) -> LinkClosed:
        while True:
            try:
                data = await socket.receive()
            except LinkClosed as closed:
                return closed
            try:
                await self.take(data)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must cost one message, never the link
                logger.exception("%s: failed to handle a message from %s", self.proxy.name,
                                 self.peer)

    async def take(self, data: bytes | str) -> None:
        """Check one frame from the peer and act on it."""
        if not isinstance(data, bytes):
            self._drop("text")
            return
        if len(data) <= _HEADER:
            self._drop("short")
            return
        if len(data) > self.proxy.limits.max_message_size + _HEADER:
            self._drop("oversize")
            return
        delay = self._throttle.wait()
        if delay:
            self.throttled += 1
            if self.throttled == 1:
                logger.warning("%s: %s sends more than %g messages a second: slowing it down",
                               self.proxy.name, self.peer, self.proxy.limits.max_rate)
            await asyncio.sleep(delay)
        seq = int.from_bytes(data[:_HEADER], "big")
        if seq and seq <= self.inbox.received:  # sent again after a reconnection: had it
            self._drop("duplicate")
            return
        envelope = self.proxy.serializer.decode(data[_HEADER:], channel=LINK_CHANNEL)
        if envelope is None:
            self._drop("invalid")
            return
        if seq:
            self.inbox.accept(seq)  # only once the envelope proved genuine
            self._schedule_ack()
        message = envelope.message
        if isinstance(message, ProxyLinkMessage):
            await self._on_link_message(message)
            return
        await self._inject(message)

    async def _on_link_message(self, message: ProxyLinkMessage) -> None:
        if isinstance(message, ProxyAckMessage):
            self.outbox.acknowledged(message.received)
        elif isinstance(message, ProxyWorkersMessage):
            await self.roster.apply(message.workers)
        # A hello or welcome past the handshake is ignored: the session is set up already.

    async def _inject(self, message: BusMessage) -> None:
        if message.source not in self.stand_ins:
            self._drop("source", message)
        elif message.target is None:
            if not self.proxy.forwards(type(message)):
                self._drop("broadcast", message)
                return
            self.received += 1
            await self.proxy.bus.send(message)
        elif isinstance(message, (BusEndWorkerMessage, BusCancelWorkerMessage)):
            self._drop("lifecycle", message)
        elif not self.proxy.exposes(message.target):
            self._drop("target", message)
        else:
            self.received += 1
            await self.proxy.bus.send(message)

    def _schedule_ack(self) -> None:
        inbox = self.inbox
        if inbox.ack_due:
            self._send_ack()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(_ACK_DELAY, self._send_ack)

    def _send_ack(self) -> None:
        self._ack_timer = None
        inbox = self.inbox
        if inbox.received <= inbox.acked:
            return
        data = self._encode(ProxyAckMessage(source=self.proxy.name, received=inbox.received))
        if data is not None and self.outbox.put(data, urgent=True):
            inbox.acked = inbox.received

    def _drop(self, reason: str, message: BusMessage | None = None) -> None:
        self.drops[reason] += 1
        if reason == "duplicate":
            return  # what a resumed connection sends again is expected, not news
        what = f" ({type(message).__name__} from '{message.source}' to " \
               f"'{message.target or 'everyone'}')" if message is not None else ""
        self.warn_once("drop", reason, "%s: dropped a message from %s: %s%s (further ones are "
                        "counted in stats())", self.proxy.name, self.peer, DROP_REASONS[reason],
                        what)

    def warn_once(self, kind: str, key: str, text: str, *args: object) -> None:
        if (kind, key) not in self._warned and len(self._warned) < 1024:
            self._warned.add((kind, key))
            logger.warning(text, *args)

    # -- the end ------------------------------------------------------------------------------

    def link_down(self, on_expired: Any) -> None:
        """The connection broke: the session waits ``link_timeout`` for the next one, then
        ``on_expired(self)`` is awaited."""
        if self._expiry is None and not self.ended:
            self._expiry = self.proxy.create_task(self._expire_later(on_expired),
                                                  name=f"{self.proxy.name} link timeout")

    async def _expire_later(self, on_expired: Any) -> None:
        await asyncio.sleep(self.proxy.limits.link_timeout)
        self._expiry = None
        await on_expired(self)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def end(self, why: str) -> None:
        """End the session: its stand-ins leave (ending what was sent to them), what waits
        to be sent is dropped, and an open connection is closed."""
        self.ended = True
        self._cancel_expiry()
        dropped = self.outbox.clear()
        if dropped:
            self.lost_outgoing += dropped
            logger.warning("%s: session with %s ended (%s): %d messages were never sent",
                           self.proxy.name, self.peer, why, dropped)
        self.inbox.reset()
        socket = self._socket
        if socket is not None:
            await socket.close(NORMAL, why[:120])
        await self.roster.remove_all("lost" if why == "link down" else "stopped")
