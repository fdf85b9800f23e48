"""Announcer: what a runner tells the others about itself, and when.

Snapshots of its workers (to everyone when they change, to a runner that asks or that just
appeared), heartbeats (every interval without a presence; with one, only when the counters
or the digest changed), requests for a peer's snapshot, and the exchange after a
reconnection. The rules are in :mod:`pipecat_workers.workers.membership`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.messages import (
    BusHeartbeatMessage,
    BusMessage,
    BusRegistryRequestMessage,
    BusWorkerRegistryMessage,
)
from pipecat_workers.errors import BusError
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import Settings
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.workers.liveness import Liveness
from pipecat_workers.workers.peers import Peer, shared_stats

logger = logging.getLogger("pipecat_workers.membership")


class Announcer(Liveness):
    """The sending half of membership."""

    def __init__(self, *, runner: str, incarnation: float, bus: WorkerBus,
                 registry: WorkerRegistry, settings: Settings,
                 entries: Callable[[], list[WorkerRegistryEntry]],
                 stats: Callable[[], dict[str, Any]], outage_grace: float) -> None:
        super().__init__(runner=runner, bus=bus, registry=registry, settings=settings,
                         outage_grace=outage_grace)
        self._incarnation = incarnation
        self._entries = entries
        self._stats = stats
        self._announce: asyncio.Task[None] | None = None
        self._last_status: dict[str, Any] | None = None  # what the last broadcast carried
        self._announced = ""  # the digest of the last snapshot broadcast

    def local_changed(self) -> None:
        """This runner's workers changed: send one snapshot soon (changes are coalesced)."""
        if self._announce is None or self._announce.done():
            self._announce = asyncio.get_running_loop().create_task(self._send_snapshot())

    def _status_view(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {"jobs": stats.get("jobs"), "workers": stats.get("workers"),
                "loops": stats.get("loops"), "digest": self._registry.digest()}

    async def _send_heartbeat(self) -> None:
        """Heartbeat (no presence): every interval; counters only when they changed."""
        stats = shared_stats(self._stats())
        view = self._status_view(stats)
        changed = view != self._last_status
        self._last_status = view
        await self._send(BusHeartbeatMessage(
            source=self._runner, runner=self._runner, incarnation=self._incarnation,
            digest=self._registry.digest(), interval=self._interval,
            stats=stats if changed else None))

    async def _send_status(self, target: str | None = None) -> None:
        """Counters and digest (with a presence): to everyone when they changed, or to one
        runner that needs them now."""
        stats = shared_stats(self._stats())
        if target is None:
            view = self._status_view(stats)
            if view == self._last_status:
                return
            self._last_status = view
        await self._send(BusHeartbeatMessage(
            source=self._runner, target=target, runner=self._runner,
            incarnation=self._incarnation, digest=self._registry.digest(),
            interval=self._interval, stats=stats))

    async def _send_snapshot(self, target: str | None = None) -> None:
        await asyncio.sleep(0)  # let a burst of local changes settle into one snapshot
        digest = self._registry.digest()
        if target is None:
            self._announced = digest
        await self._send(BusWorkerRegistryMessage(
            source=self._runner, target=target, runner=self._runner,
            workers=self._entries(), incarnation=self._incarnation, digest=digest))

    async def _send(self, message: BusMessage) -> None:
        try:
            await self._bus.send(message)
        except BusError as exc:  # the server is down: peers catch up when it is back
            if isinstance(message, BusWorkerRegistryMessage) and message.target is None:
                self._announced = ""  # send it again
            logger.debug("%s of '%s' not sent: %s", type(message).__name__, self._runner, exc)

    async def _greet(self, name: str, peer: Peer) -> None:
        """A runner we just met may not know us yet: our snapshot, to it. And our counters,
        if it hosts no worker: a tool watching the channel (``workers ps``), which shows
        them; a runner with workers of its own has no use for them, and a newcomer among a
        hundred would get a hundred (it can still ask: a registry request gets both)."""
        peer.greeted = True
        await self._send_snapshot(target=name)
        if not self._registry.workers_of(name):
            await self._send_status(target=name)

    async def _ask(self, name: str, peer: Peer | None, now: float) -> None:
        """Ask ``name`` for its snapshot (at most once per half interval per peer)."""
        if peer is not None:
            if now - peer.asked_at < self._interval / 2:
                return
            peer.asked_at = now
            peer.wanted = False
        await self._send(BusRegistryRequestMessage(
            source=self._runner, target=name, runner=self._runner))

    async def _exchange(self) -> None:
        """After a reconnection: our snapshot to everyone, and everyone's to us."""
        await self._send_snapshot()
        await self._send(BusRegistryRequestMessage(source=self._runner, runner=self._runner))
