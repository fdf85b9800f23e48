"""Membership: how runners on one channel learn about each other's workers, and forget them.

Every runner broadcasts a heartbeat (its incarnation, a digest of its workers, its counters).
A peer that does not know that runner, or sees a digest it has not seen, asks for the full
snapshot; so a snapshot lost in a discovery race is repaired by the next heartbeat. A runner
that stops says so (leave), a worker that stops says so, and a runner silent for
``Settings.lost_after`` intervals is declared lost. A newer incarnation of a runner replaces
the older one's workers. Every ``lost_after`` intervals the runner also asks the peers that
owe its workers an answer for that long whether they still run those jobs (``check_jobs``):
delivery is at most once, and a lost request or answer must not leave a job waiting forever.
Silence heard while this runner's own bus connection is down proves little about the peers,
so up to ``lost_after`` intervals of it are excused; an outage that lasts longer than that
counts as silence again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.messages import (
    BusDuplicateWorkerMessage,
    BusHeartbeatMessage,
    BusMessage,
    BusRegistryRequestMessage,
    BusRunnerLeaveMessage,
    BusWorkerRegistryMessage,
    BusWorkerStoppedMessage,
)
from pipecat_workers.errors import BusError
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import Settings
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.types import WorkerReadyData, WorkerRegistryEntry

logger = logging.getLogger("pipecat_workers.membership")

_LEFT_MEMORY = 1024  # runners whose leave is remembered, to ignore their late messages

_MEMBERSHIP_MESSAGES = (BusDuplicateWorkerMessage, BusHeartbeatMessage, BusWorkerRegistryMessage,
                        BusRegistryRequestMessage, BusRunnerLeaveMessage, BusWorkerStoppedMessage)


@dataclass(slots=True)
class Peer:
    """What a runner knows of another runner on the channel."""

    incarnation: float
    last_seen: float
    interval: float
    digest: str = ""
    stats: dict[str, Any] | None = None
    probed: bool = False


class Membership:
    """The discovery and liveness protocol of one runner."""

    def __init__(
        self, *, runner: str, incarnation: float, bus: WorkerBus, registry: WorkerRegistry,
        settings: Settings, entries: Callable[[], list[WorkerRegistryEntry]],
        stats: Callable[[], dict[str, Any]],
        on_duplicate: Callable[[WorkerRegistryEntry, str], Awaitable[None]],
        check_jobs: Callable[[float], Awaitable[None]],
    ) -> None:
        self._runner = runner
        self._incarnation = incarnation
        self._bus = bus
        self._registry = registry
        self._settings = settings
        self._entries = entries
        self._stats = stats
        self._on_duplicate = on_duplicate
        self._check_jobs = check_jobs
        self._peers: dict[str, Peer] = {}
        self._left: dict[str, float] = {}  # runner -> the incarnation that said it leaves
        self._task: asyncio.Task[None] | None = None
        self._announce: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None  # a round of job checks
        self._down_since: float | None = None  # loop time our own bus connection dropped

    @property
    def peers(self) -> dict[str, Peer]:
        """The other runners heard on the channel, by name."""
        return dict(self._peers)

    async def start(self) -> None:
        """Announce this runner and start heartbeating."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        """Stop heartbeating and tell the peers this runner is leaving (unless the bus is
        down: they will notice the silence, and a goodbye would only wait to fail)."""
        await cancel_and_wait((self._task, self._announce, self._checking),
                              self._settings.cancel_timeout)
        self._task = self._announce = self._checking = None
        if self._down_since is not None:
            logger.debug("runner '%s' leaves without a goodbye: its bus is down", self._runner)
            return
        try:
            await self._bus.send(BusRunnerLeaveMessage(
                source=self._runner, runner=self._runner, incarnation=self._incarnation))
        except Exception:
            logger.warning("could not announce that runner '%s' leaves", self._runner,
                           exc_info=True)

    def local_changed(self) -> None:
        """This runner's workers changed: send one snapshot soon (changes are coalesced)."""
        if self._announce is None or self._announce.done():
            self._announce = asyncio.get_running_loop().create_task(self._send_snapshot())

    def bus_down(self) -> None:
        """This runner's bus connection dropped: the peers' silence from now on is excused."""
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()

    def bus_up(self) -> None:
        """The connection is back: what was excused of each peer's silence stays excused."""
        now = asyncio.get_running_loop().time()
        for peer in self._peers.values():
            peer.last_seen += self._excused(peer, now)
            peer.probed = False
        self._down_since = None

    def _excused(self, peer: Peer, now: float) -> float:
        """How much of a peer's silence fell while our own connection was down, capped at
        its ``lost_after`` window: an outage excuses a peer once, not forever."""
        if self._down_since is None:
            return 0.0
        deaf = now - max(self._down_since, peer.last_seen)
        return max(0.0, min(deaf, self._settings.lost_after * peer.interval))

    # -- sending ----------------------------------------------------------------------

    async def _beat(self) -> None:
        interval = self._settings.heartbeat_interval
        loop = asyncio.get_running_loop()
        window = self._settings.lost_after * interval
        await self._send_snapshot()
        next_beat, next_check = loop.time(), loop.time() + window
        while True:
            if loop.time() >= next_beat:
                next_beat = loop.time() + interval
                await self._send_heartbeat(interval)
            await self._expire()
            if (loop.time() >= next_check and self._down_since is None
                    and (self._checking is None or self._checking.done())):
                # In a task of its own: many checks on a slow bus must not delay a heartbeat.
                next_check = loop.time() + window
                self._checking = loop.create_task(self._run_checks(window))
            # Checked four times per interval, so a silent peer is noticed soon after it is due.
            await asyncio.sleep(interval / 4)

    async def _run_checks(self, window: float) -> None:
        try:
            await self._check_jobs(window)
        except Exception:
            logger.exception("checking the jobs of runner '%s' failed", self._runner)

    async def _send_heartbeat(self, interval: float) -> None:
        try:
            await self._bus.send(BusHeartbeatMessage(
                source=self._runner, runner=self._runner, incarnation=self._incarnation,
                digest=self._registry.digest(), interval=interval, stats=self._stats()))
        except BusError as exc:  # the server is down: keep beating, peers will heal
            logger.debug("heartbeat of '%s' not sent: %s", self._runner, exc)

    async def _send_snapshot(self, target: str | None = None) -> None:
        await asyncio.sleep(0)  # let a burst of local changes settle into one snapshot
        try:
            await self._bus.send(BusWorkerRegistryMessage(
                source=self._runner, target=target, runner=self._runner,
                workers=self._entries(), incarnation=self._incarnation,
                digest=self._registry.digest()))
        except BusError as exc:  # the next heartbeat's digest will ask for it again
            logger.warning("snapshot of '%s' not sent: %s", self._runner, exc)

    async def _expire(self) -> None:
        """Declare lost the peers silent for ``lost_after`` intervals, or sooner if the bus
        can tell that a peer that missed a heartbeat and a half is gone (its process died)."""
        now = asyncio.get_running_loop().time()
        for name, peer in list(self._peers.items()):
            silent = now - peer.last_seen - self._excused(peer, now)
            gone = silent > self._settings.lost_after * peer.interval
            if (not gone and silent > 1.5 * peer.interval and not peer.probed
                    and self._down_since is None):  # a probe needs the connection
                peer.probed = True
                gone = await self._bus.probe(name) is False
            if gone and self._peers.get(name) is peer:
                del self._peers[name]
                logger.warning("runner '%s' is lost: no heartbeat for %.1f s", name,
                               now - peer.last_seen)
                await self._registry.remove_runner(name, reason="lost")
                await self._bus.forget_runner(name)

    # -- receiving ----------------------------------------------------------------------

    async def handle(self, message: BusMessage) -> bool:
        """Apply a membership message from another runner; False if it is not one."""
        if getattr(message, "runner", None) == self._runner and not isinstance(
                message, BusRegistryRequestMessage):
            # About this runner itself (its workers' stop notices, say): the registry
            # already knows, and a worker that stopped may have a successor by now.
            return isinstance(message, _MEMBERSHIP_MESSAGES)
        if isinstance(message, BusHeartbeatMessage):
            await self._on_heartbeat(message)
        elif isinstance(message, BusWorkerRegistryMessage):
            await self._on_snapshot(message)
        elif isinstance(message, BusRegistryRequestMessage):
            if message.target in (None, self._runner):
                await self._send_snapshot(target=message.runner)
        elif isinstance(message, BusRunnerLeaveMessage):
            await self._on_leave(message)
        elif isinstance(message, BusDuplicateWorkerMessage):
            logger.error("runner '%s' reports that its worker '%s' has the name of one of ours",
                         message.runner, message.worker_name)
        elif isinstance(message, BusWorkerStoppedMessage):
            known = self._registry.get(message.source)
            if (known is not None and known.runner == message.runner
                    and known.incarnation <= message.incarnation):
                await self._registry.unregister(message.source, reason="stopped")
        else:
            return False
        return True

    async def _meet(self, runner: str, incarnation: float, interval: float) -> Peer | None:
        """The peer record for a runner, replacing an older incarnation; None if stale."""
        now = asyncio.get_running_loop().time()
        if incarnation <= self._left.get(runner, -1.0):
            return None  # a late message from an incarnation that already left
        peer = self._peers.get(runner)
        if peer is not None and incarnation < peer.incarnation:
            return None  # a message from an incarnation that was already replaced
        if peer is not None and incarnation > peer.incarnation:
            logger.info("runner '%s' restarted; replacing its workers", runner)
            await self._registry.remove_runner(runner, reason="replaced", before=incarnation)
            peer = None
        if peer is None:
            peer = self._peers[runner] = Peer(incarnation, now, interval)
        peer.last_seen = now
        peer.interval = interval
        peer.probed = False
        return peer

    async def _on_heartbeat(self, message: BusHeartbeatMessage) -> None:
        known = message.runner in self._peers
        peer = await self._meet(message.runner, message.incarnation, message.interval)
        if peer is None:
            return
        peer.stats = message.stats
        if message.digest != peer.digest:
            await self._bus.send(BusRegistryRequestMessage(
                source=self._runner, target=message.runner, runner=self._runner))
        if not known:
            self.local_changed()  # a newcomer: make sure it hears about us too

    async def _on_snapshot(self, message: BusWorkerRegistryMessage) -> None:
        existing = self._peers.get(message.runner)
        interval = existing.interval if existing else self._settings.heartbeat_interval
        first_contact = existing is None
        peer = await self._meet(message.runner, message.incarnation, interval)
        if peer is None:
            return
        peer.digest = message.digest
        listed = {entry.name for entry in message.workers}
        for data in self._registry.workers_of(message.runner):
            if data.worker_name not in listed:
                await self._registry.unregister(data.worker_name, reason="stopped")
        for entry in message.workers:
            known = self._registry.get(entry.name)
            if known is not None and known.runner == self._runner:
                await self._on_duplicate(entry, message.runner)
                continue
            await self._registry.register(WorkerReadyData(
                worker_name=entry.name, runner=message.runner,
                incarnation=message.incarnation, parent=entry.parent))
        if first_contact:
            self.local_changed()

    async def _on_leave(self, message: BusRunnerLeaveMessage) -> None:
        peer = self._peers.get(message.runner)
        if peer is not None and message.incarnation < peer.incarnation:
            return
        self._peers.pop(message.runner, None)
        self._left[message.runner] = message.incarnation
        if len(self._left) > _LEFT_MEMORY:
            del self._left[next(iter(self._left))]
        await self._registry.remove_runner(message.runner, reason="left")
