"""NetworkBus: the part every cross-process bus shares.

The core (:class:`WorkerBus`) already delivers to the subscribers of this process without
touching the network. A network bus adds the rest: it serializes what must leave the process,
sends a broadcast to every runner on the channel and a targeted message only to the runner
that hosts the target (the registry says which), and decodes what arrives, dropping its own
echoes. Backends implement three primitives: connect/close (``_open``/``_close``),
``_send_broadcast`` and ``_send_to_runner``, and call :meth:`NetworkBus._on_payload` with each
payload they read.

Every envelope names the bus's channel, and a message sent to one runner names that runner's
incarnation too; both are signed with the rest when the serializer has a secret. The rules:

- A signing bus remembers the newest incarnation it has heard from each runner (the ``inc`` of
  the envelopes it verified), up to ``_MAX_RUNNERS``, until the runner is forgotten (lost or
  gone). A bus without a secret binds nothing: anyone could claim any incarnation there.
- A targeted message for a runner the bus has heard from is bound to that runner's
  incarnation (``tinc``). One for a runner it knows by name only (no message of that runner
  has reached this bus yet), one whose target nobody has located, and every broadcast, is not
  bound (``tinc`` 0): a binding is only as good as what the sender has heard.
- A receiving bus drops a bound message whose target is one of its own subscribers when the
  incarnation is not its own (``wrong_incarnation`` in ``stats()["wire_dropped"]``): it was
  meant for another run of a runner, the one this runner replaces under the same name or
  another (a replay, or sent before the restart). Observers still see bound messages for
  subscribers in other processes.
- An unbound message is guarded by the serializer alone: a signing serializer refuses anything
  stamped more than ``max_age`` away, and replays of what it has heard (per sender, of
  anything sent before the first message it heard). A restarted runner has heard nothing of
  what the old one did: from a sender it has not heard yet, only a binding protects it.

A signing bus that drops an unsigned message tells its sender, once, that the channel is
signed: it sends it a signed registry request (which asks for nothing it would not answer
anyone). A process without the secret reads it unchecked and can say so
(:attr:`JSONMessageSerializer.unverified`); ``workers call`` and ``tail`` then fail at once
instead of waiting for answers that never come, even on a channel that is otherwise quiet.
At most ten unsigned messages a second are read for their sender's name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.bus.messages import BusMessage, BusRegistryRequestMessage
from pipecat_workers.bus.serializer import (
    JSONMessageSerializer,
    MessageSerializer,
    looks_signed,
)
from pipecat_workers.errors import ConfigurationError, WorkerStateError
from pipecat_workers.events import EventEmitter
from pipecat_workers.settings import DEFAULT_SETTINGS

logger = logging.getLogger("pipecat_workers.bus")

# Marks the log records that say a bus lost its server, for a tool that reports it otherwise
# (``workers tail`` ends with one line when the embedded bus's supervisor stops).
DISCONNECTED = {"bus_event": "disconnected"}

Locate = Callable[[str], "str | None"]

# Which bus a serializer serves (it keeps one bus's replay memory).
_serializer_owners: weakref.WeakKeyDictionary[MessageSerializer, weakref.ref[NetworkBus]] = (
    weakref.WeakKeyDictionary())

_MAX_RUNNERS = 4096  # runners whose incarnation a bus remembers, to bind messages to them
_TELL_GAP = 0.1  # seconds between two unsigned messages read for the name of their sender
_MAX_TOLD = 1024  # unsigned senders remembered as told (then forgotten all at once)


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
        owner = _serializer_owners.get(self._serializer)
        if owner is not None and owner() is not None:
            # Its replay memory would take the second bus's copy of a broadcast for a replay.
            raise ConfigurationError("this serializer already serves another bus: give each "
                                     "bus a JSONMessageSerializer of its own")
        _serializer_owners[self._serializer] = weakref.ref(self)
        self._runner = ""
        self._incarnation = 0.0
        self._locate: Locate = _nowhere
        self._connected = False
        self._was_connected = False
        self._incarnations: OrderedDict[str, float] = OrderedDict()  # runner -> newest heard
        self._refused: dict[str, int] = {}  # dropped here (not by the serializer), by reason
        self._told: set[str] = set()  # unsigned senders told that this channel is signed
        self._tell_after = 0.0
        self._telling: set[asyncio.Task[None]] = set()
        self._payload_errors = RateLimitedLog(logger)

    @property
    def serializer(self) -> MessageSerializer:
        """What turns this bus's messages into bytes and back."""
        return self._serializer

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
        target = message.target
        if target is not None:
            runner = self._locate(target)
            if runner is not None and runner != self._runner:
                await self._send_to_runner(runner, self._encode(
                    message, self._incarnations.get(runner, 0.0)))
                return
        # A broadcast, or a target nobody has located: every runner receives it and only the
        # one that hosts the target delivers it.
        await self._send_broadcast(self._encode(message, 0.0))

    def _encode(self, message: BusMessage, target_incarnation: float) -> bytes:
        return self._serializer.serialize(
            message, sender=self._runner, incarnation=self._incarnation,
            channel=self._channel, target_incarnation=target_incarnation)

    def _on_payload(self, data: bytes) -> None:
        """Decode one payload from the backend and deliver it; drops its own echoes, and
        messages bound to another incarnation of a subscriber of ours. Never raises: one bad
        payload must cost neither the backend's reader nor the rest of its batch."""
        try:
            self._deliver_payload(data)
        except Exception as exc:
            self.loops.failed("payload", exc)
            self._payload_errors.warning("bus on channel '%s' could not deliver a payload",
                                         self._channel, exc_info=exc)

    def _deliver_payload(self, data: bytes) -> None:
        envelope = self._serializer.decode(data, channel=self._channel)
        if envelope is None:
            if self._serializer.signed and not looks_signed(data):
                self._tell_unsigned(data)
            return
        sender, incarnation = envelope.sender, envelope.incarnation
        if sender == self._runner and incarnation == self._incarnation:
            return
        if sender and self._serializer.signed:
            # Only what is signed binds: on an unsigned channel anyone could make every
            # message to a runner name an incarnation it does not have.
            self._heard(sender, incarnation)
        message = envelope.message
        bound = envelope.target_incarnation
        if bound and bound != self._incarnation and message.target in self._mailboxes:
            self._refuse("wrong_incarnation", message, bound)
            return
        self.deliver(message)

    async def forget_runner(self, runner: str) -> None:
        """A runner that is gone: messages to its name are bound again once it is heard."""
        self._incarnations.pop(runner, None)
        await super().forget_runner(runner)

    def _heard(self, runner: str, incarnation: float) -> None:
        known = self._incarnations.get(runner)
        if known is None:
            if len(self._incarnations) >= _MAX_RUNNERS:
                self._incarnations.popitem(last=False)  # it is bound again once heard again
            self._incarnations[runner] = incarnation
        elif incarnation > known:
            self._incarnations[runner] = incarnation

    def _tell_unsigned(self, data: bytes) -> None:
        """Tell the sender of an unsigned message that this channel is signed (see the module
        docstring); once per sender, and never for a name it cannot have."""
        now = time.monotonic()
        if now < self._tell_after or not self._runner or self._loop is None:
            return
        self._tell_after = now + _TELL_GAP
        try:
            sender = json.loads(data).get("from")
        except Exception:
            return
        if (type(sender) is not str or not 0 < len(sender) <= 1024 or sender == self._runner
                or sender in self._told):
            return
        if len(self._told) >= _MAX_TOLD:
            self._told.clear()
        self._told.add(sender)
        request = BusRegistryRequestMessage(source=self._runner, target=sender,
                                            runner=self._runner)
        task = self._loop.create_task(self._send_to_runner(sender, self._encode(request, 0.0)))
        self._telling.add(task)
        task.add_done_callback(self._told_one)

    def _told_one(self, task: asyncio.Task[None]) -> None:
        self._telling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("could not tell an unsigned sender on '%s' that the channel is "
                         "signed: %s", self._channel, task.exception())

    def _refuse(self, reason: str, message: BusMessage, bound: float) -> None:
        count = self._refused[reason] = self._refused.get(reason, 0) + 1
        if count == 1:
            logger.warning(
                "dropped a %s for '%s' on '%s': it was sent to runner incarnation %r, and "
                "runner '%s' is incarnation %r (a replay, or sent before a restart; further "
                "ones are counted, not logged)", type(message).__name__, message.target,
                self._channel, bound, self._runner, self._incarnation)

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
        dropped = {k: n for k, n in self._serializer.stats().items() if n}
        for reason, n in self._refused.items():
            dropped[reason] = dropped.get(reason, 0) + n
        stats["wire_dropped"] = dropped
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
