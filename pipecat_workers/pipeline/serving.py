"""The bridge side of a pipeline worker: serving a bridge, and hosting bridges.

A bridged worker is *bound* to one bridge at a time: the bridge of the worker that activated
it (``BusActivateWorkerMessage.bridge_worker``), or the one its predecessor served in a
hand-off. While active it has *joined* that bridge: it takes frames from it only (D18), and
its edges send what reaches them to it only. Nothing else ever enters or leaves, so a frame
never comes back to the worker that sent it (D3) and audio travels only to where it is needed
(D28). A worker whose pipeline holds bridges routes the frames and protocol messages sent to
it to the right one, by tag.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameDirection

from pipecat_workers.bus.messages import BusActivateWorkerMessage, BusFrameMessage, BusMessage
from pipecat_workers.errors import BusError, ConfigurationError, SerializationError
from pipecat_workers.pipeline.drain import DrainProbeFrame
from pipecat_workers.pipeline.edges import direction_of, frame_message, stays_local, type_names
from pipecat_workers.pipeline.messages import (
    BusBridgeFlushMessage,
    BusBridgeJoinMessage,
    BusBridgeLeaveMessage,
    BusBridgeReturnedMessage,
    BusBridgeReturnMessage,
)
from pipecat_workers.pipeline.wire import copy_frame
from pipecat_workers.types import WorkerLostData, WorkerReadyData

if TYPE_CHECKING:
    from pipecat_workers.bus.core import WorkerBus
    from pipecat_workers.pipeline.bridge import BusBridgeProcessor
    from pipecat_workers.pipeline.drain import Drains
    from pipecat_workers.registry import WorkerRegistry
    from pipecat_workers.tracing.context import TraceContext

logger = logging.getLogger("pipecat_workers.pipeline")

Binding = tuple[str, "str | None"]  # (the bridge's worker, its tag)


class BridgeServing:
    """Mixed into :class:`~pipecat_workers.pipeline.worker.PipelineWorker`."""

    if TYPE_CHECKING:  # provided by BaseWorker and PipelineWorker

        @property
        def name(self) -> str: ...

        @property
        def bus(self) -> WorkerBus: ...

        registry: WorkerRegistry
        _active: bool
        _bus: WorkerBus | None

        async def send_bus_message(self, message: BusMessage) -> None: ...

        def _trace_parent(self) -> TraceContext | None: ...

        _drains: Drains

        async def _inject(self, frame: Frame, direction: FrameDirection) -> None: ...

    def _init_serving(self, bridged: tuple[str, ...] | None,
                      exclude: tuple[type[Frame], ...]) -> None:
        self._bridged_tags = bridged
        self._exclude = exclude
        self._binding: Binding | None = None
        self._joined = False
        # Bridges this worker left whose flush has not come yet: frames from them go back.
        self._returning: set[Binding] = set()
        self._bridges: dict[str | None, BusBridgeProcessor] = {}
        self._drops: dict[str, int] = {}
        self._warned: set[type] = set()

    @property
    def bridged(self) -> bool:
        """Whether this worker serves bridges (``bridged`` is not ``None``)."""
        return self._bridged_tags is not None

    @property
    def serving(self) -> Binding | None:
        """The bridge this worker is bound to, as (its worker's name, its tag), or ``None``."""
        return self._binding

    def frame_stats(self) -> dict[str, int]:
        """Frames from the bus that were dropped, by reason."""
        return dict(self._drops)

    # -- hosting bridges ----------------------------------------------------------------

    def _attach_bridge(self, bridge: BusBridgeProcessor) -> None:
        if bridge.tag in self._bridges and self._bridges[bridge.tag] is not bridge:
            raise ConfigurationError(
                f"{self.name}: two bridges with tag {bridge.tag!r} in one pipeline")
        self._bridges[bridge.tag] = bridge

    def _detach_bridge(self, bridge: BusBridgeProcessor) -> None:
        if self._bridges.get(bridge.tag) is bridge:
            del self._bridges[bridge.tag]

    def _bridge_to_pass_on(self) -> Binding | None:
        """The bridge a worker activated by this one should serve."""
        if self._binding is not None:
            return self._binding
        for bridge in self._bridges.values():
            return (bridge.worker_name, bridge.tag)
        return None

    # -- serving a bridge -----------------------------------------------------------------

    async def _bind(self, message: BusActivateWorkerMessage) -> None:
        """Take the bridge an activation names (a worker activated without one keeps the
        bridge it had)."""
        if self._bridged_tags is None or message.bridge_worker is None:
            return
        tag = message.bridge_tag
        if self._bridged_tags and tag not in self._bridged_tags:
            logger.error("%s: activated for bridge %r of '%s', but it serves tags %s only",
                         self.name, tag, message.bridge_worker, list(self._bridged_tags))
            return
        binding = (message.bridge_worker, tag)
        if binding != self._binding:
            await self._leave_bridge()
            await self._unwatch_binding()
            self._binding = binding
            await self.registry.watch(binding[0], self._on_bridge_ready,
                                      on_lost=self._on_bridge_lost)

    async def _join_bridge(self) -> None:
        if self._binding is None or self._joined:
            if self._bridged_tags is not None and self._binding is None:
                logger.warning("%s: active but serving no bridge (activate it from a pipeline "
                               "worker that has a BusBridgeProcessor)", self.name)
            return
        # Joined before the send returns: the bridge may answer with frames at once.
        self._joined = True
        host, tag = self._binding
        try:
            await self.send_bus_message(BusBridgeJoinMessage(
                source=self.name, target=host, bridge=tag,
                exclude_frames=type_names(self._exclude)))
        except BaseException:
            self._joined = False  # the next activation tries again
            raise

    async def _leave_bridge(self) -> None:
        if not self._joined or self._binding is None:
            return
        self._joined = False
        host, tag = self._binding
        self._returning.add((host, tag))
        try:
            await self.send_bus_message(BusBridgeLeaveMessage(
                source=self.name, target=host, bridge=tag))
        except Exception:  # a closed bus: the bridge hears of it through the registry
            logger.debug("%s: could not tell '%s' it left its bridge", self.name, host)

    async def _on_bridge_ready(self, data: WorkerReadyData) -> None:
        """The registry watch on the bridge's worker is for its departure only."""

    async def _on_bridge_lost(self, data: WorkerLostData) -> None:
        if self._binding is not None and data.worker_name == self._binding[0]:
            level = logging.WARNING if data.reason == "lost" else logging.DEBUG
            logger.log(level, "%s: the worker of its bridge, '%s', is gone (%s)", self.name,
                       data.worker_name, data.reason)
            self.registry.unwatch(data.worker_name, self._on_bridge_ready)
            self._binding = None
            self._joined = False
            self._drains.fail_all()
        self._returning = {b for b in self._returning if b[0] != data.worker_name}

    async def _unwatch_binding(self) -> None:
        if self._binding is not None and self._bus is not None:
            self.registry.unwatch(self._binding[0], self._on_bridge_ready)

    async def _stop_serving(self) -> None:
        await self._leave_bridge()
        await self._unwatch_binding()

    # -- frames ----------------------------------------------------------------------------

    async def _publish(self, frame: Frame, direction: FrameDirection) -> bool:
        """Send a frame from an edge to the bridge this worker serves; whether it was sent."""
        if not (self._joined and self._active) or self._binding is None:
            return False
        if stays_local(frame) or (self._exclude and isinstance(frame, self._exclude)):
            return False
        host, tag = self._binding
        return await self._send_frame(self.name, host, frame, direction, tag)

    async def _send_frame(self, source: str, target: str, frame: Frame,
                          direction: FrameDirection, tag: str | None, *,
                          trace: TraceContext | None = None) -> bool:
        """Send a frame to one worker; False if it cannot cross the bus and must stay local
        (it refers to a processor, holds a callable, ...). A worker in this process gets a
        copy, as one in another process would (D30). While the bus is down a frame is lost
        at once (counted), as audio would be, and does not hold the pipeline up; a drain
        probe then stays local, so that no drain waits for it. A worker in this process is
        reached all the same. The frame goes in ``trace`` (a bridge's: its peer's
        conversation), else in this worker's."""
        bus = self.bus
        if not bus.is_local(target) and not getattr(bus, "connected", True):
            if isinstance(frame, DrainProbeFrame):
                return False
            self._count_drop("bus down")
            return True
        try:
            if bus.is_local(target):
                frame = copy_frame(frame)
            message = frame_message(
                source=source, target=target, frame=frame, direction=direction, bridge=tag)
            message.trace = trace or self._trace_parent()
            await bus.send(message)
        except SerializationError as error:
            self._warn_once(type(frame), f"{type(frame).__name__} stays in this pipeline: "
                                         f"{error}")
            return False
        except BusError as error:
            self._count_drop("bus error")
            logger.warning("%s: frames are being lost: %s", self.name, error)
            return not isinstance(frame, DrainProbeFrame)
        return True

    def _warn_once(self, key: type, text: str) -> None:
        if key not in self._warned and len(self._warned) < 256:
            self._warned.add(key)
            logger.warning("%s: %s", self.name, text)

    async def _on_frame_message(self, message: BusFrameMessage) -> None:
        if not isinstance(message.frame, Frame):  # the field is Any on the wire: check it
            self._count_drop("not a frame")
            return
        bridge = self._bridges.get(message.bridge)
        if bridge is not None:
            if bridge.expects(message.source):
                await bridge.receive(message)
                return
            if self._bridged_tags is None and bridge.hold_early(message):
                return  # its join may still be on its way
        if self._bridged_tags is None:
            self._count_drop("not bridged")
        elif not self._joined and (message.source, message.bridge) in self._returning:
            if not isinstance(message.frame, DrainProbeFrame):  # its bridge passes those on
                await self.send_bus_message(BusBridgeReturnMessage(
                    source=self.name, target=message.source, bridge=message.bridge,
                    frame=message.frame, direction=message.direction))
        elif not self._joined:
            self._count_drop("inactive")
        elif self._binding is None or message.source != self._binding[0] \
                or message.bridge != self._binding[1]:
            self._count_drop("not from its bridge")
        elif stays_local(message.frame):
            self._count_drop("lifecycle frame")
        else:
            await self._inject(message.frame, direction_of(message))

    async def _on_bridge_message(self, message: BusMessage) -> bool:
        """Hand the bridge protocol's messages to the bridge they are for (or, for a flush,
        answer it as a former peer); whether the message was one of them."""
        if isinstance(message, BusBridgeFlushMessage):
            self._returning.discard((message.source, message.bridge))
            await self.send_bus_message(BusBridgeReturnedMessage(
                source=self.name, target=message.source, bridge=message.bridge))
            return True
        if isinstance(message, (BusBridgeReturnMessage, BusBridgeReturnedMessage)):
            returns_to = self._bridges.get(message.bridge)
            if returns_to is not None:
                await returns_to.on_returned(message)
            return True
        if not isinstance(message, (BusBridgeJoinMessage, BusBridgeLeaveMessage)):
            return False
        bridge = self._bridges.get(message.bridge)
        joining = isinstance(message, BusBridgeJoinMessage)
        if bridge is None:
            # A leave that arrives after the pipeline took its bridges down is no news.
            logger.log(logging.WARNING if joining else logging.DEBUG,
                       "%s: '%s' wants to %s bridge %r, which this pipeline does not have",
                       self.name, message.source, "join" if joining else "leave",
                       message.bridge)
        elif isinstance(message, BusBridgeJoinMessage):
            await bridge.on_join(message)
        else:
            await bridge.on_leave(message.source)
        return True

    def _count_drop(self, reason: str) -> None:
        count = self._drops.get(reason, 0) + 1
        self._drops[reason] = count
        if count in (1, 100, 10_000):
            logger.info("%s: dropped a frame from the bus (%s; %d so far)", self.name, reason,
                        count)

