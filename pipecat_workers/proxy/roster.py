"""The stand-ins of one proxy session: one per worker the peer exposes, kept in step with
the peer's announcements.

A worker the peer announces gets a stand-in; one it no longer lists loses it (the jobs sent to
it end); one that restarted (another ``started_at``) is replaced. A stand-in named in advance
(``remote_worker_name``) exists before the peer says anything: what is sent to it waits, and it
is dropped if the peer has not announced its worker within ``link_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pipecat_workers.errors import ConfigurationError, WorkerStateError
from pipecat_workers.proxy.standin import StandIn
from pipecat_workers.types import WorkerRegistryEntry

if TYPE_CHECKING:
    from pipecat_workers.proxy.session import ProxySession

logger = logging.getLogger("pipecat_workers.proxy")


class Roster:
    """The stand-ins of a session, by name."""

    def __init__(self, session: ProxySession) -> None:
        self._session = session
        self._proxy = session.proxy
        self.workers: dict[str, StandIn] = {}
        self._unannounced: dict[str, asyncio.Task[None]] = {}  # workers named in advance

    async def apply(self, entries: list[WorkerRegistryEntry]) -> None:
        """Make the stand-ins match the peer's list: new workers get one, gone ones lose
        theirs, and one whose worker restarted (another ``started_at``) is replaced."""
        wanted: dict[str, WorkerRegistryEntry] = {}
        for entry in entries:
            if entry.name not in wanted and self._proxy.accepts_peer_worker(entry.name):
                wanted[entry.name] = entry
        for name, stand_in in list(self.workers.items()):
            now = wanted.get(name)
            if now is None:
                if not stand_in.announced:
                    # Named in advance and not announced yet: the peer may not have heard of
                    # it yet either (it runs elsewhere on the peer's bus). Give it time.
                    self._await_announcement(stand_in)
                else:
                    await self._remove(stand_in, "stopped")
            elif not stand_in.announced or stand_in.entry.started_at == now.started_at:
                await self._update(stand_in, now)
                del wanted[name]
            else:
                await self._remove(stand_in, "replaced")
        for entry in wanted.values():
            await self.add(entry)

    def _await_announcement(self, stand_in: StandIn) -> None:
        if stand_in.name not in self._unannounced:
            self._unannounced[stand_in.name] = self._proxy.create_task(
                self._drop_unannounced(stand_in), name=f"{self._proxy.name} waits for "
                                                       f"'{stand_in.name}'")

    async def _drop_unannounced(self, stand_in: StandIn) -> None:
        try:
            await asyncio.sleep(self._proxy.limits.link_timeout)
            if (self.workers.get(stand_in.name) is stand_in
                    and not stand_in.announced and self._session.connected):
                logger.warning("%s: %s does not expose '%s': what was sent to it ends here",
                               self._proxy.name, self._session.peer, stand_in.name)
                await self._remove(stand_in, "stopped")
        finally:
            if self._unannounced.get(stand_in.name) is asyncio.current_task():
                del self._unannounced[stand_in.name]

    async def add(self, entry: WorkerRegistryEntry, *, announced: bool = True) -> None:
        """Put a stand-in for ``entry`` on the bus (once, if its name is free); one that is
        not ``announced`` is named in advance, and what is sent to it waits for its worker."""
        try:
            stand_in = StandIn(entry, self._session, announced=announced)
            self.workers[entry.name] = stand_in
            await self._proxy.worker_runner.add_workers(stand_in)
        except (ConfigurationError, WorkerStateError) as exc:
            self.workers.pop(entry.name, None)
            self._session.warn_once("name", entry.name, "%s: cannot stand in for '%s' of %s: %s",
                            self._proxy.name, entry.name, self._session.peer, exc)

    async def _update(self, stand_in: StandIn, entry: WorkerRegistryEntry) -> None:
        news = (entry.jobs, entry.any_job) != (stand_in.entry.jobs, stand_in.entry.any_job)
        stand_in.entry = entry
        stand_in.announced = True
        if news and stand_in.started_at is not None:
            await self._proxy.reregister(stand_in)
        held, stand_in.held = stand_in.held, []
        for message in held:  # it was announced: what waited for it goes now, in order
            await self._session.forward(message, stand_in)

    async def _remove(self, stand_in: StandIn, why: str) -> None:
        if self.workers.get(stand_in.name) is stand_in:
            del self.workers[stand_in.name]
        stand_in._departure = why
        held, stand_in.held = stand_in.held, []
        for message in held:
            await self._session.undeliverable(message, stand_in, f"'{stand_in.name}' is not there",
                                      once=f"held>{stand_in.name}")
        await stand_in.stop(reason=f"{why} behind proxy '{self._proxy.name}'")

    async def remove_all(self, why: str) -> None:
        """Every stand-in leaves (the session ended, or the proxy stops)."""
        for stand_in in list(self.workers.values()):
            await self._remove(stand_in, why)
