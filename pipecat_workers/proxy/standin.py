"""A stand-in: a worker on this bus that is really a worker on the other side of a proxy.

It has the remote worker's name, so the bus routes messages for that worker to it (and other
processes on a network bus find it through the registry like any worker); everything sent
to it crosses the link. It does no work of its own: it stops when the remote worker goes
away, when the link stays down, or with its proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipecat_workers.bus.messages import BusCancelWorkerMessage, BusEndWorkerMessage, BusMessage
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.workers.base import BaseWorker

if TYPE_CHECKING:
    from pipecat_workers.proxy.session import ProxySession


class StandIn(BaseWorker):
    """Stands in, on this bus, for a worker that the proxy's peer exposes.

    Args:
        entry: The remote worker as its side announced it (just its name, for a worker
            named in advance).
        session: The link it stands behind.
        announced: Whether the peer announced the worker (False: named in advance).
    """

    STANDS_IN = True
    RELAYS = True

    def __init__(self, entry: WorkerRegistryEntry, session: ProxySession, *,
                 announced: bool = True) -> None:
        super().__init__(entry.name, active=False)
        self.entry = entry
        self.announced = announced  # False while the peer has not said it has this worker
        self.held: list[BusMessage] = []  # sent before its worker was announced
        self._session = session
        self._parent = session.proxy.name

    @property
    def session(self) -> ProxySession:
        """The link this worker's messages cross."""
        return self._session

    @property
    def job_names(self) -> tuple[str, ...]:
        return tuple(self.entry.jobs or ())

    @property
    def handles_any_job(self) -> bool:
        # Not announced yet (or by a peer that does not say): whatever it is asked may work.
        return self.entry.any_job or self.entry.jobs is None

    @property
    def bridged(self) -> bool:
        return self.entry.bridged

    @property
    def active(self) -> bool:
        return self.entry.active

    async def on_bus_message(self, message: BusMessage) -> None:
        """Send what is addressed to the remote worker across the link; a broadcast is the
        proxy's business, and this process's own runner ends or cancels the stand-in only."""
        if message.target != self.name:
            return
        if isinstance(message, (BusEndWorkerMessage, BusCancelWorkerMessage)):
            if message.source in (self._parent, self.worker_runner.name):
                await super().on_bus_message(message)
            else:
                self._session.refuse_lifecycle(message)
            return
        await self._session.forward(message, self)
