"""NetworkBus: the part every cross-process bus shares.

The core (:class:`WorkerBus`) already delivers to the subscribers of this process without
touching the network. A network bus adds the rest: it serializes what must leave the process,
sends a broadcast to every runner on the channel and a targeted message only to the runner
that hosts the target (the registry says which), and decodes what arrives, dropping its own
echoes. Backends implement three primitives: connect/close (``_open``/``_close``),
``_send_broadcast`` and ``_send_to_runner``, and call :meth:`NetworkBus._on_payload` with each
payload they read.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.messages import BusMessage
from pipecat_workers.bus.serializer import JSONMessageSerializer, MessageSerializer
from pipecat_workers.errors import WorkerStateError
from pipecat_workers.events import EventEmitter
from pipecat_workers.settings import DEFAULT_SETTINGS

logger = logging.getLogger("pipecat_workers.bus")

# Marks the log records that say a bus lost its server, for a tool that reports it otherwise
# (``workers tail`` ends with one line when the embedded bus's supervisor stops).
DISCONNECTED = {"bus_event": "disconnected"}

Locate = Callable[[str], "str | None"]


class NetworkBus(WorkerBus, EventEmitter):
    """A bus whose channel spans processes and machines.

    Events: ``on_disconnected`` and ``on_reconnected`` (handlers get the bus).
    """

    EVENTS: ClassVar[frozenset[str]] = frozenset({"on_disconnected", "on_reconnected"})

    def __init__(
        self, *, channel: str, serializer: MessageSerializer | None = None,
        data_queue_size: int = DEFAULT_SETTINGS.data_queue_size,
    ) -> None:
        super().__init__(data_queue_size=data_queue_size)
        self._channel = channel
        self._serializer = serializer if serializer is not None else JSONMessageSerializer()
        self._runner = ""
        self._incarnation = 0.0
        self._locate: Locate = _nowhere
        self._connected = False
        self._was_connected = False

    @property
    def channel(self) -> str:
        """The channel this bus joins; every runner on it shares one bus."""
        return self._channel

    @property
    def connected(self) -> bool:
        """Whether the backend is reachable right now."""
        return self._connected

    @property
    def runner_name(self) -> str:
        """The runner this bus carries messages for ("" until a runner binds it)."""
        return self._runner

    def bind(self, runner: str, incarnation: float, locate: Locate) -> None:
        """Carry messages for ``runner``: targeted messages for its workers come to it, and
        envelopes carry its name and incarnation. Called by :class:`WorkerRunner`."""
        if self.running and runner != self._runner:
            raise WorkerStateError("bind a network bus to its runner before starting it")
        self._runner = runner
        self._incarnation = incarnation
        self._locate = locate

    # -- the core's hook ------------------------------------------------------------------

    async def _publish(self, message: BusMessage) -> None:
        data = self._serializer.serialize(message, sender=self._runner,
                                          incarnation=self._incarnation)
        target = message.target
        if target is not None:
            runner = self._locate(target)
            if runner is not None and runner != self._runner:
                await self._send_to_runner(runner, data)
                return
        # A broadcast, or a target nobody has located: every runner receives it and only the
        # one that hosts the target delivers it.
        await self._send_broadcast(data)

    def _on_payload(self, data: bytes) -> None:
        """Decode one payload from the backend and deliver it; drops its own echoes."""
        envelope = self._serializer.decode(data)
        if envelope is None:
            return
        if envelope.sender == self._runner and envelope.incarnation == self._incarnation:
            return
        self.deliver(envelope.message)

    def _mark_closed(self) -> None:
        """Closed on purpose: not connected, and nothing to report."""
        self._connected = False

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if connected:
            if self._was_connected:
                logger.warning("bus '%s' reconnected", self._channel)
                self._emit("on_reconnected")
            self._was_connected = True
        else:
            logger.warning("bus '%s' lost its connection; reconnecting", self._channel,
                           extra=DISCONNECTED)
            self._emit("on_disconnected")

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["connected"] = self._connected
        stats["wire_dropped"] = {k: n for k, n in self._serializer.stats().items() if n}
        return stats

    # -- backend primitives ---------------------------------------------------------------

    @abstractmethod
    async def _send_broadcast(self, data: bytes) -> None:
        """Send to every runner on the channel."""

    @abstractmethod
    async def _send_to_runner(self, runner: str, data: bytes) -> None:
        """Send to one runner only."""


def _nowhere(name: str) -> str | None:
    return None
