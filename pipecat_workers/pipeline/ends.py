"""What reaches the top and the bottom of a pipeline worker's pipeline, and what it does.

At the bottom (going down) and the top (going up): drain probes turn around or settle their
drain, ``EndWorkerFrame``/``CancelWorkerFrame``/``StopWorkerFrame`` end or cancel the worker,
``InterruptionWorkerFrame`` interrupts the pipeline, an ``ErrorFrame`` at the top fires
``on_pipeline_error`` (and a fatal one cancels the worker), heartbeats are counted, and the
frame types a user asked about fire ``on_frame_reached_upstream``/``_downstream``.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from pipecat.frames.frames import (
    CancelFrame,
    CancelWorkerFrame,
    EndFrame,
    EndWorkerFrame,
    ErrorFrame,
    Frame,
    HeartbeatFrame,
    InterruptionFrame,
    InterruptionWorkerFrame,
    MetricsFrame,
    StartFrame,
    StopFrame,
    StopWorkerFrame,
)
from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData
from pipecat.processors.frame_processor import FrameDirection

from pipecat_workers.pipeline.drain import DOWN_FIRST, DOWN_LAST, UP, DrainProbeFrame
from pipecat_workers.pipeline.messages import BusDrainDoneMessage
from pipecat_workers.workers.base import WorkerState

if TYPE_CHECKING:
    import asyncio

    from pipecat_workers.bus.messages import BusMessage
    from pipecat_workers.pipeline.drain import Drains
    from pipecat_workers.pipeline.monitors import Heartbeats
    from pipecat_workers.pipeline.runtime import PipelineRuntime

logger = logging.getLogger("pipecat_workers.pipeline")

_WORKER_FRAMES = (EndWorkerFrame, StopWorkerFrame, CancelWorkerFrame, InterruptionWorkerFrame)


class PipelineEnds:
    """Mixed into :class:`~pipecat_workers.pipeline.worker.PipelineWorker`."""

    if TYPE_CHECKING:  # provided by BaseWorker and PipelineWorker

        @property
        def name(self) -> str: ...

        @property
        def state(self) -> WorkerState: ...

        _runtime: PipelineRuntime
        _drains: Drains
        _heartbeats: Heartbeats
        _idle_timeout: float
        _cancel_on_idle: bool
        _emit: Any

        def create_task(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
                        ) -> asyncio.Task[Any]: ...

        async def send_bus_message(self, message: BusMessage) -> None: ...

        async def cancel(self, *, reason: str | None = None) -> None: ...

        async def _end_self(self, reason: str | None) -> None: ...

        @property
        def bridged(self) -> bool: ...

        async def _publish(self, frame: Frame, direction: FrameDirection) -> bool: ...

    _reached_up: tuple[type[Frame], ...] = ()
    _reached_down: tuple[type[Frame], ...] = ()

    def set_reached_upstream_filter(self, types: tuple[type[Frame], ...]) -> None:
        """Fire ``on_frame_reached_upstream`` for frames of these types reaching the top."""
        self._reached_up = tuple(types)

    def set_reached_downstream_filter(self, types: tuple[type[Frame], ...]) -> None:
        """Fire ``on_frame_reached_downstream`` for frames of these types reaching the
        bottom."""
        self._reached_down = tuple(types)

    def add_reached_upstream_filter(self, types: tuple[type[Frame], ...]) -> None:
        """Add to :meth:`set_reached_upstream_filter`."""
        self._reached_up = (*self._reached_up, *types)

    def add_reached_downstream_filter(self, types: tuple[type[Frame], ...]) -> None:
        """Add to :meth:`set_reached_downstream_filter`."""
        self._reached_down = (*self._reached_down, *types)

    async def _at_sink(self, frame: Frame) -> None:
        # A bridged worker's bottom edge: what reaches it going down goes to its bridge too;
        # a drain probe goes one way only, on the bus if it was sent.
        published = self.bridged and await self._publish(frame, FrameDirection.DOWNSTREAM)
        if published and isinstance(frame, DrainProbeFrame):
            return
        if isinstance(frame, DrainProbeFrame):
            await self._probe_at_end(frame)
        elif isinstance(frame, HeartbeatFrame):
            self._heartbeats.arrived()
        elif isinstance(frame, StartFrame):
            self._emit("on_pipeline_started", frame)
        elif isinstance(frame, _WORKER_FRAMES):
            self._on_worker_frame(frame)
        elif isinstance(frame, (EndFrame, StopFrame, CancelFrame)) and not self._stopping():
            # The pipeline ended by itself (a processor pushed the frame): so does the worker.
            self._on_worker_frame(frame)
        if self._reached_down and isinstance(frame, self._reached_down):
            self._emit("on_frame_reached_downstream", frame)

    async def _at_source(self, frame: Frame) -> None:
        # ... and its top edge: what reaches it going up.
        published = self.bridged and await self._publish(frame, FrameDirection.UPSTREAM)
        if published and isinstance(frame, DrainProbeFrame):
            return
        if isinstance(frame, DrainProbeFrame):
            await self._probe_at_end(frame)
        elif isinstance(frame, ErrorFrame):
            self._emit("on_pipeline_error", frame)
            if frame.fatal:
                logger.error("%s: fatal error: %s", self.name, frame.error)
                self._react(self.cancel(reason=f"fatal error: {frame.error}"))
            else:
                logger.warning("%s: %s", self.name, frame)
        elif isinstance(frame, _WORKER_FRAMES):
            self._on_worker_frame(frame)
        if self._reached_up and isinstance(frame, self._reached_up):
            self._emit("on_frame_reached_upstream", frame)

    def _on_worker_frame(self, frame: Frame) -> None:
        # In a task of its own: the caller is a processor's task, which ending the pipeline
        # cancels.
        if isinstance(frame, InterruptionWorkerFrame):
            self._react(self._runtime.queue(InterruptionFrame(), FrameDirection.DOWNSTREAM))
        elif isinstance(frame, (CancelWorkerFrame, CancelFrame)):
            self._react(self.cancel(reason=getattr(frame, "reason", None)))
        else:
            self._react(self._end_self(getattr(frame, "reason", None)))

    async def _probe_at_end(self, probe: DrainProbeFrame) -> None:
        """A probe that reached this pipeline's sink (going down) or source (going up)
        without being sent on: turn it around, or settle its drain."""
        if probe.leg == DOWN_FIRST:
            await self._runtime.queue(probe.next_leg(), FrameDirection.UPSTREAM)
        elif probe.leg == UP:
            await self._runtime.queue(probe.next_leg(), FrameDirection.DOWNSTREAM)
        elif probe.leg == DOWN_LAST:
            if probe.origin == self.name:
                self._drains.done(probe.drain_id)
            else:
                await self.send_bus_message(BusDrainDoneMessage(
                    source=self.name, target=probe.origin, drain_id=probe.drain_id))

    def _stopping(self) -> bool:
        return self._runtime.finishing or self.state is not WorkerState.READY

    def _react(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.create_task(coro, name=f"{self.name} reaction")

    async def _on_frame_timeout(self, frame: Frame) -> None:
        self._emit("on_pipeline_timeout", frame)

    async def _on_idle(self) -> None:
        self._emit("on_idle_timeout")
        if self._cancel_on_idle:
            logger.info("%s: idle for %.0f s: cancelling", self.name, self._idle_timeout)
            await self.cancel(reason="idle timeout")

    async def _on_heartbeat_timeout(self) -> None:
        self._emit("on_heartbeat_timeout")

    async def _queue_heartbeat(self, frame: Frame) -> None:
        if self._runtime.running:
            await self._runtime.queue(frame, FrameDirection.DOWNSTREAM)

    def _initial_metrics(self) -> MetricsFrame:
        data: list[Any] = []
        for processor in self._runtime.pipeline.processors_with_metrics():
            data.append(TTFBMetricsData(processor=processor.name, value=0.0))
            data.append(ProcessingMetricsData(processor=processor.name, value=0.0))
        return MetricsFrame(data=data)
