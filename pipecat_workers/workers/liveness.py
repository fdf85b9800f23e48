"""Liveness: which peers are alive, when one counts as lost, and what an outage excuses.

The half of membership that decides about peers, apart from the messages that tell it about
them (:mod:`pipecat_workers.workers.membership`). It keeps the peer book, takes reports from
the backend's presence (as its :class:`~pipecat_workers.bus.presence.PresenceListener`),
and declares lost the peers that are gone. See the membership module for the rules.
"""

from __future__ import annotations

import asyncio
import logging

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.bus.presence import Presence
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import Settings
from pipecat_workers.workers.peers import MAX_PEERS, Book, Peer

logger = logging.getLogger("pipecat_workers.membership")

_News = tuple[bool, bool, float]  # (present, certain, loop time since which it is absent)


class Liveness:
    """Peers, their liveness, and the presence's reports about them."""

    def __init__(self, *, runner: str, bus: WorkerBus, registry: WorkerRegistry,
                 settings: Settings, outage_grace: float) -> None:
        self._runner = runner
        self._bus = bus
        self._registry = registry
        self._settings = settings
        self._interval = settings.heartbeat_interval
        self._window = settings.lost_after * settings.heartbeat_interval
        self.outage_grace = outage_grace  # seconds of our own outage that excuse silence
        self._book = Book()
        self._presence: Presence | None = None
        self._down_since: float | None = None  # loop time our own bus connection dropped
        self._settle_until = 0.0  # until then, no absence counts as certain (we reconnected)
        self._wake: asyncio.Event | None = None
        self._news: dict[str, _News] = {}  # presence reports not applied yet
        # Certain news held back for the mailbox: since when, and the mailbox's mark then.
        self._held: dict[str, tuple[float, int]] = {}
        self._owed: dict[str, None] = {}  # confirmed peers owed a greeting or a request
        self._dropped: dict[str, int] = {}  # membership messages dropped, by reason
        self._quiet = RateLimitedLog(logger)

    @property
    def peers(self) -> dict[str, Peer]:
        """The other runners on the channel, by name (a copy of the table)."""
        if self._presence is not None:
            now = asyncio.get_running_loop().time()
            for peer in self._book.peers.values():
                if peer.confirmed and peer.absent_since is None:
                    peer.last_seen = now  # the presence vouches for it right now
        return dict(self._book.peers)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a runner on the channel that messages can be sent to."""
        return name in self._book.peers or name in self._book.heard

    # -- what the presence reports (PresenceListener) -------------------------------------

    def present(self, runner: str) -> None:
        self._report(runner, (True, False, 0.0))

    def absent(self, runner: str, *, certain: bool, silent_for: float = 0.0) -> None:
        now = asyncio.get_running_loop().time()
        self._report(runner, (False, certain, now - max(0.0, silent_for)))

    def _report(self, runner: str, news: _News) -> None:
        if runner == self._runner or (runner not in self._news
                                      and len(self._news) >= 2 * MAX_PEERS):
            return
        self._news[runner] = news
        if self._wake is not None:
            self._wake.set()

    async def _apply_news(self) -> None:
        news, self._news = self._news, {}
        now = asyncio.get_running_loop().time()
        for runner, (present, certain, since) in news.items():
            peer = self._book.peers.get(runner)
            if runner in self._held and (present or peer is None):
                del self._held[runner]
            if present:
                self._confirm(runner, peer, now)
            elif peer is None:
                self._book.heard.pop(runner, None)
            elif certain and peer.confirmed and self._settled(now):
                first, mark = self._held.setdefault(
                    runner, (now, self._bus.mailbox_mark(self._runner)))
                if not self._bus.taken_up_to(self._runner, mark) and now - first < self._window:
                    # What it said before it went (its leave, say) may still be in our
                    # mailbox, behind other messages on a busy runner: that goes first, and
                    # this news waits until what arrived before it has been taken.
                    self._news.setdefault(runner, (present, certain, since))
                    continue
                del self._held[runner]
                await self._lose(runner, peer, "the bus says it is gone")
            elif peer.absent_since is None:
                peer.absent_since = since
                self._book.doubt(runner)

    def _confirm(self, runner: str, peer: Peer | None, now: float) -> None:
        if peer is None:
            left = self._book.left.get(runner)
            if left is None or now - left[1] >= self._window:
                self._book.hear(runner, now)  # ask for its snapshot if it does not send it
            return
        if not peer.confirmed or not peer.greeted or peer.wanted:
            self._owed[runner] = None
        peer.confirmed = True
        peer.absent_since = None
        peer.last_seen = now
        self._book.trust(runner)

    # -- our own connection ---------------------------------------------------------------

    def bus_down(self) -> None:
        """This runner's bus connection dropped: the peers' silence from now on is excused."""
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()

    def bus_up(self) -> None:
        """The connection is back: what was excused of each peer's silence stays excused."""
        now = asyncio.get_running_loop().time()
        for peer in self._book.peers.values():
            peer.last_seen += self._excused(peer.last_seen, peer.interval, now)
            if peer.absent_since is not None:
                peer.absent_since += self._excused(peer.absent_since, self._interval, now)
            peer.probed = False
        self._down_since = None
        self._settle_until = now + self._window

    def _excused(self, since: float, interval: float, now: float) -> float:
        """How much of a silence that began at ``since`` fell while our own connection was
        down, capped: an outage excuses a peer once, not forever."""
        if self._down_since is None:
            return 0.0
        deaf = now - max(self._down_since, since)
        cap = max(self.outage_grace, self._settings.lost_after * interval)
        return max(0.0, min(deaf, cap))

    def _settled(self, now: float) -> bool:
        """Connected, and long enough that peers had time to reconnect too."""
        return self._down_since is None and now >= self._settle_until

    # -- peers ----------------------------------------------------------------------------

    def _clamp(self, interval: float) -> float:
        """A peer's interval, at most ten times ours: a forged one of hours would keep a
        forged peer for as many."""
        return min(interval, 10 * self._interval)

    async def _meet(self, runner: str, incarnation: float, interval: float) -> Peer | None:
        """The peer record for a runner that sent a message, replacing an older incarnation;
        None if the message is stale (or the book is full)."""
        book = self._book
        now = asyncio.get_running_loop().time()
        left = book.left.get(runner)
        if left is not None and incarnation <= left[0]:
            if now - left[1] < self._window:
                return None  # a late message from an incarnation that just left
            del book.left[runner]  # it says it is alive after all: welcome back
        peer = book.peers.get(runner)
        if peer is not None and incarnation < peer.incarnation:
            return None  # a message from an incarnation that was already replaced
        if peer is not None and incarnation > peer.incarnation:
            logger.info("runner '%s' restarted; replacing its workers", runner)
            await self._registry.remove_runner(runner, reason="replaced", before=incarnation)
            peer.incarnation = incarnation
            peer.digest, peer.stats, peer.greeted = "", None, False
        if peer is None:
            peer = self._admit(runner, incarnation, interval, now)
            if peer is None:
                return None
        if self._presence is None:
            peer.last_seen = now
            peer.probed = False
        peer.interval = self._clamp(interval)
        return peer

    def _admit(self, runner: str, incarnation: float, interval: float, now: float
               ) -> Peer | None:
        book = self._book
        evicted = book.make_room()
        if evicted is None:
            self._quiet.warning("runner '%s' knows %d runners already: ignoring '%s'",
                                self._runner, MAX_PEERS, runner)
            return None
        if evicted:
            self._forget(evicted)
        presence = self._presence
        confirmed = presence is None or presence.is_present(runner) is True
        peer = book.peers[runner] = Peer(incarnation, now, self._clamp(interval),
                                         confirmed=confirmed)
        book.heard.pop(runner, None)
        if not confirmed:
            assert presence is not None
            peer.absent_since = now
            book.doubt(runner)
            presence.watch(runner)
        return peer

    def _forget(self, name: str) -> None:
        if self._presence is not None:
            self._presence.forget(name)

    def _busy(self) -> bool:
        """Whether something is waiting on a timer shorter than an interval."""
        book = self._book
        return bool(book.doubtful or book.heard or book.left or self._owed
                    or (self._presence is None and book.peers))

    def _waiting_news(self) -> bool:
        """Whether news was put back to wait for the mailbox (see ``_apply_news``)."""
        return bool(self._news)

    async def _expire(self, now: float) -> None:
        """Declare lost the peers silent (or absent) for ``lost_after`` intervals, or sooner
        if the bus can tell that a peer that missed a heartbeat and a half is gone."""
        book = self._book
        if self._presence is None:
            names: list[str] = list(book.peers)
        else:
            names = list(book.doubtful)
            for name, (_, at) in list(book.left.items()):
                if now - at >= self._window:  # a leave is not forever: is it still here?
                    del book.left[name]
                    if self._presence.is_present(name):
                        book.hear(name, now - self._interval)
        for name in names:
            peer = book.peers.get(name)
            if peer is None:
                book.doubtful.pop(name, None)
                continue
            since = peer.last_seen if self._presence is None else peer.absent_since
            if since is None:
                book.trust(name)
                continue
            # With a presence, the pace is this runner's own; without, the peer's.
            interval = peer.interval if self._presence is None else self._interval
            silent = now - since - self._excused(since, interval, now)
            gone = silent > self._settings.lost_after * interval
            if (self._presence is None and not gone and silent > 1.5 * peer.interval
                    and not peer.probed and self._settled(now)):  # needs the connection
                peer.probed = True
                gone = await self._bus.probe(name) is False
            if gone:
                await self._lose(name, peer, f"not heard of for {now - since:.1f} s")
        if self._presence is None:
            for name, (_, at) in list(book.left.items()):
                if now - at >= self._window:
                    del book.left[name]

    async def _lose(self, name: str, peer: Peer, why: str) -> None:
        if self._book.peers.get(name) is not peer:
            return
        self._book.remove(name)
        self._owed.pop(name, None)
        self._held.pop(name, None)
        self._forget(name)
        await self._registry.remove_runner(name, reason="lost")
        if peer.confirmed:
            logger.warning("runner '%s' is lost: %s", name, why)
            await self._bus.forget_runner(name)
        else:  # a forgery, or a runner that came and went in a moment: nothing to free
            self._quiet.warning("runner '%s' was never confirmed by the bus: forgotten", name)

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
