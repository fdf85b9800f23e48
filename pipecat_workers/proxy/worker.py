"""What both ends of a proxy share: which workers cross, and the messages that do.

Each end *exposes* workers of its own bus to the other (the peer gets a stand-in for each,
see :mod:`pipecat_workers.proxy.standin`) and accepts stand-ins for the workers the peer
exposes. A message crosses when it is addressed to a stand-in and comes from an exposed
worker; a broadcast crosses only if its type is in ``forward_messages`` on both ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipecat_workers.bus.core import Role
from pipecat_workers.bus.messages import BusLocalMessage, BusMessage, BusWorkerReadyMessage
from pipecat_workers.bus.serializer import JSONMessageSerializer, MessageSerializer
from pipecat_workers.catalogue import type_name
from pipecat_workers.errors import ConfigurationError
from pipecat_workers.proxy.messages import MAX_EXPOSED, ProxyLinkMessage
from pipecat_workers.proxy.standin import StandIn
from pipecat_workers.settings import Settings
from pipecat_workers.types import (
    MAX_JOB_NAMES,
    WorkerLostData,
    WorkerReadyData,
    WorkerRegistryEntry,
)
from pipecat_workers.workers.base import BaseWorker
from pipecat_workers.workers.membership import MEMBERSHIP_MESSAGES

if TYPE_CHECKING:
    from pipecat_workers.proxy.session import ProxySession

logger = logging.getLogger("pipecat_workers.proxy")

TOKEN_ENV = "PIPECAT_WORKERS_PROXY_TOKEN"

# The bus's own bookkeeping: each side keeps its own, and a proxy never carries it.
_MEMBERSHIP = (*MEMBERSHIP_MESSAGES, BusWorkerReadyMessage)


@dataclass(frozen=True, slots=True)
class LinkLimits:
    """How much a proxy link holds and lets through.

    Attributes:
        link_timeout: Seconds a broken link may stay down before its session ends (the
            stand-ins leave, and the jobs sent through them end with an error).
        buffer_size: Messages that may wait to be sent (or to be acknowledged); past it, new
            ones are dropped and counted (a job request is answered with an error).
        buffer_bytes: The same bound in bytes.
        max_message_size: Largest message, in bytes, either way: a larger one is refused
            when sent and dropped when received.
        max_rate: Messages a second one end takes from the other (bursts of a second's
            worth); ``None`` for no limit. A peer that sends faster is slowed down: the end
            reads no faster than this, so nothing is lost.
        heartbeat: Seconds between two pings on an idle connection; one unanswered for twice
            that long counts as a broken link.
    """

    link_timeout: float = 15.0
    buffer_size: int = 10_000
    buffer_bytes: int = 64 * 1024 * 1024
    max_message_size: int = 1024 * 1024
    max_rate: float | None = 20_000.0
    heartbeat: float = 5.0

    def __post_init__(self) -> None:
        if not self.link_timeout > 0 or not self.heartbeat > 0:
            raise ConfigurationError("link_timeout and heartbeat must be positive")
        if self.buffer_size < 1 or self.max_message_size < 1024 or (
                self.buffer_bytes < self.max_message_size):
            raise ConfigurationError("buffer_size must be at least 1, max_message_size at "
                                     "least 1024 bytes, and buffer_bytes at least "
                                     "max_message_size")
        if self.max_rate is not None and not self.max_rate > 0:
            raise ConfigurationError("max_rate must be positive, or None for no limit")


def name_set(value: str | Sequence[str] | None, what: str) -> frozenset[str] | None:
    """A ``worker_name``-style argument as a set of names (``None`` stays ``None``)."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(f"{what} must be a worker name or a list of worker names, "
                                 f"got {value!r}")
    return frozenset(names)


def forward_types(types: Sequence[type[BusMessage]]) -> tuple[type[BusMessage], ...]:
    """Check ``forward_messages``: registered bus messages that may cross as broadcasts."""
    checked = []
    for cls in types:
        if not (isinstance(cls, type) and issubclass(cls, BusMessage)):
            raise ConfigurationError(f"forward_messages: {cls!r} is not a bus message class")
        if issubclass(cls, (BusLocalMessage, ProxyLinkMessage)) or issubclass(cls, _MEMBERSHIP):
            raise ConfigurationError(f"forward_messages: {cls.__name__} never crosses a proxy "
                                     "(it is local, or the bus's own bookkeeping)")
        if type_name(cls) is None:
            raise ConfigurationError(f"forward_messages: {cls.__name__} is not registered "
                                     "(register it with register_message)")
        checked.append(cls)
    return tuple(checked)


class ProxyWorker(BaseWorker):
    """Base of :class:`WebSocketProxyClient` and :class:`WebSocketProxyServer`.

    Args:
        name: The proxy's own name on this bus.
        exposes: The workers of this bus the peer may reach (``None``: all but stand-ins).
        accepts: The peer's workers to stand in for (``None``: all it exposes).
        forward_messages: Broadcast types that cross (session end, say); by default none.
        serializer: Encodes what crosses; a :class:`JSONMessageSerializer` by default, which
            signs with ``PIPECAT_WORKERS_SECRET`` when it is set.
        limits: Buffering, size and rate limits of the link.
        active: Whether it is active at start (a client connects once active).
    """

    RELAYS = True

    def __init__(
        self, name: str | None, *, exposes: frozenset[str] | None,
        accepts: frozenset[str] | None, forward_messages: Sequence[type[BusMessage]],
        serializer: MessageSerializer | None, limits: LinkLimits | None, active: bool,
    ) -> None:
        super().__init__(name, active=active)
        self.limits = limits or LinkLimits()
        self.serializer = serializer or JSONMessageSerializer(
            max_size=self.limits.max_message_size)
        self._exposes = exposes
        self._accepts = accepts
        self._forward = forward_types(forward_messages)
        self._stamps: dict[str, float] = {}  # when each exposed worker arrived, as its id
        self._listening = False

    # -- what crosses -----------------------------------------------------------------------

    @property
    def incarnation(self) -> float:
        """The incarnation of this proxy's runner (what its envelopes carry)."""
        return self.worker_runner.incarnation

    @property
    def settings(self) -> Settings:
        """Timeouts and limits of this proxy's runner."""
        return self._settings

    def sessions(self) -> list[ProxySession]:
        """The peers this proxy has a session with."""
        raise NotImplementedError

    def _bus_role(self) -> Role:
        # Session-wide broadcasts (end, cancel) go to runners only: to forward them the
        # proxy must hear what runners hear.
        return "runner" if any(cls.CONTROL for cls in self._forward) else "worker"

    def _candidate(self, name: str) -> bool:
        if name == self._name or (self._exposes is not None and name not in self._exposes):
            return False
        runner = self._runner
        local = runner.get_worker(name) if runner is not None else None
        if local is not None:
            return not local.RELAYS
        data = self._registry.get(name) if self._registry is not None else None
        return data is None or not data.relay  # a proxy or stand-in on another runner

    def exposes(self, name: str) -> bool:
        """Whether the peer may reach ``name``, a worker on this bus, through this proxy."""
        return self._candidate(name) and self._registry is not None and name in self._registry

    def may_send(self, name: str) -> bool:
        """Whether messages from ``name`` may cross: an exposed worker, or one of this
        process's that is on its way out (its last answers still matter to the peer)."""
        if not self._candidate(name):
            return False
        runner = self._runner
        return (self._registry is not None and name in self._registry) or (
            runner is not None and runner.get_worker(name) is not None)

    def exposed_entries(self) -> list[WorkerRegistryEntry]:
        """The exposed workers, as the peer is told of them."""
        registry = self.registry
        runner = self.worker_runner
        entries = []
        for name in sorted(self._stamps):
            data = registry.get(name)
            if data is None or not self._candidate(name):
                continue
            local = runner.get_worker(name)
            entries.append(WorkerRegistryEntry(
                name=name, active=bool(local and local.active),
                bridged=bool(local and local.bridged), started_at=self._stamps[name],
                jobs=list(data.jobs[:MAX_JOB_NAMES]) if data.jobs is not None else None,
                any_job=data.any_job))
            if len(entries) == MAX_EXPOSED:
                logger.warning("%s: more than %d workers to expose; the rest are not",
                               self._name, MAX_EXPOSED)
                break
        return entries

    def accepts_peer_worker(self, name: str) -> bool:
        """Whether to stand in for the peer's worker ``name``."""
        return name != self._name and (self._accepts is None or name in self._accepts)

    def forwards(self, cls: type[BusMessage]) -> bool:
        """Whether broadcasts of type ``cls`` cross."""
        return issubclass(cls, self._forward) if self._forward else False

    async def reregister(self, stand_in: StandIn) -> None:
        """Tell the registry what a stand-in now says about its worker's jobs."""
        runner = self.worker_runner
        await self.registry.register(WorkerReadyData(
            worker_name=stand_in.name, runner=runner.name, incarnation=runner.incarnation,
            parent=stand_in.parent, jobs=stand_in.job_names[:MAX_JOB_NAMES],
            any_job=stand_in.handles_any_job, relay=True))

    # -- registry news ----------------------------------------------------------------------

    async def _on_arrival(self, data: WorkerReadyData) -> None:
        if self._candidate(data.worker_name):
            self._stamps[data.worker_name] = time.time()
            self._exposure_changed()

    async def _on_departure(self, lost: WorkerLostData) -> None:
        if self._stamps.pop(lost.worker_name, None) is not None:
            self._exposure_changed()

    def _exposure_changed(self) -> None:
        for session in self.sessions():
            session.exposure_changed()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        registry = self.registry
        now = time.time()
        for name in list(registry.local_workers) + list(registry.remote_workers):
            if self._candidate(name):
                self._stamps[name] = now
        registry.add_arrival_listener(self._on_arrival)
        registry.add_departure_listener(self._on_departure)
        self._listening = True
        await super().start()

    async def stop(self, *, reason: str | None = None) -> None:
        if self._listening and self._registry is not None:
            self._listening = False
            self._registry.remove_arrival_listener(self._on_arrival)
            self._registry.remove_departure_listener(self._on_departure)
        await self._close_sessions()
        await super().stop(reason=reason)

    async def _close_sessions(self) -> None:
        """End every session (the stand-ins leave); the subclass closes its connections."""
        for session in self.sessions():
            await session.end("proxy stopped")

    # -- broadcasts ---------------------------------------------------------------------------

    async def on_bus_message(self, message: BusMessage) -> None:
        if (message.target is None and self._forward and isinstance(message, self._forward)
                and self.exposes(message.source)):
            for session in self.sessions():
                await session.forward_broadcast(message)
            return
        await super().on_bus_message(message)

    def proxy_stats(self) -> dict[str, Any]:
        """Per session: whether it is connected, its stand-ins, what crossed, what was
        dropped and why, and what waits to be sent."""
        return {"exposed": sorted(n for n in self._stamps if self.exposes(n)),
                "sessions": [s.stats() for s in self.sessions()]}
