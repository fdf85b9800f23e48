"""PipelineWorker: a pipecat pipeline that is a worker on the bus.

The pipeline runs while the worker lives: the worker registers once its ``StartFrame`` has gone
through, a graceful end finishes the pipeline with an ``EndFrame`` (queued audio is spoken),
and a cancel with a ``CancelFrame``, which also cuts a draining end short.

A *bridged* worker (``bridged=()`` or a tuple of bridge tags) exchanges frames with the bridge
of another worker's pipeline (:class:`~pipecat_workers.pipeline.bridge.BusBridgeProcessor`):
while active it serves the bridge it was activated for, takes frames from that bridge only,
and sends what reaches its edges back to it. The bridge protocol is described in
:mod:`pipecat_workers.pipeline.messages`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    StopFrame,
    TTSSpeakFrame,
)
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection

from pipecat_workers.bus.messages import (
    BusActivateWorkerMessage,
    BusCancelWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    BusTTSSpeakMessage,
)
from pipecat_workers.errors import ConfigurationError, WorkerStateError
from pipecat_workers.pipeline.drain import Drains
from pipecat_workers.pipeline.ends import PipelineEnds
from pipecat_workers.pipeline.messages import BusDrainDoneMessage
from pipecat_workers.pipeline.monitors import (
    IDLE_TIMEOUT_FRAMES,
    ActivityObserver,
    Heartbeats,
    watch_idle,
)
from pipecat_workers.pipeline.runtime import PipelineParams, PipelineRuntime
from pipecat_workers.pipeline.serving import BridgeServing
from pipecat_workers.tracing.otel import background_context
from pipecat_workers.tracing.spans import Span
from pipecat_workers.types import WorkerActivationArgs
from pipecat_workers.workers.base import BaseWorker, WorkerState

if TYPE_CHECKING:
    from pipecat.clocks.base_clock import BaseClock

logger = logging.getLogger("pipecat_workers.pipeline")

_PIPELINE_EVENTS = frozenset({
    "on_pipeline_started", "on_pipeline_finished", "on_pipeline_timeout", "on_setup_timeout",
    "on_pipeline_error", "on_idle_timeout", "on_heartbeat_timeout",
    "on_frame_reached_upstream", "on_frame_reached_downstream",
})


class PipelineWorker(PipelineEnds, BridgeServing, BaseWorker):
    """A worker that runs a pipecat pipeline.

    Args:
        pipeline: The pipeline (any pipecat ``BasePipeline``, or a single processor).
        name: The worker's name on the bus.
        active: Whether it activates as soon as it starts.
        bridged: ``None``: frames never cross the bus. ``()``: serve any bridge. A tuple of
            tags: serve bridges with those tags only.
        exclude_frames: With ``bridged``, frame types this worker keeps to itself: it never
            sends them, and the bridge it serves lets them pass locally instead (D5).
        params: What the processors are set up with.
        observers: pipecat observers of every frame pushed in the pipeline.
        clock: The pipeline's clock; a system clock by default.
        app_resources: Any object, shared with tools as ``params.app_resources``.
        idle_timeout_secs: Seconds without activity (while active) before ``on_idle_timeout``;
            ``None`` or 0 turns it off.
        idle_timeout_frames: The frame types that count as activity.
        cancel_on_idle_timeout: Cancel this worker when idle.
        cancel_timeout_secs: How long a cancel waits for the pipeline to stop.
        setup_timeout_secs: How long the processors may take to set up.
        start_timeout_secs: How long the ``StartFrame`` may take to get through.
        drain_timeout_secs: How long :meth:`flush_pipeline` waits by default.
    """

    EVENTS: ClassVar[frozenset[str]] = BaseWorker.EVENTS | _PIPELINE_EVENTS

    def __init__(
        self, pipeline: BasePipeline | Any, *, name: str | None = None, active: bool = True,
        bridged: tuple[str, ...] | None = None,
        exclude_frames: tuple[type[Frame], ...] | None = None,
        params: PipelineParams | None = None, observers: Iterable[BaseObserver] | None = None,
        clock: BaseClock | None = None, app_resources: Any = None,
        idle_timeout_secs: float | None = 300.0,
        idle_timeout_frames: tuple[type[Frame], ...] = IDLE_TIMEOUT_FRAMES,
        cancel_on_idle_timeout: bool = True, cancel_timeout_secs: float = 20.0,
        setup_timeout_secs: float = 20.0, start_timeout_secs: float = 20.0,
        drain_timeout_secs: float = 30.0,
    ) -> None:
        super().__init__(name, active=active)
        if bridged is not None and (
                not isinstance(bridged, tuple) or not all(isinstance(t, str) for t in bridged)):
            raise ConfigurationError(
                f"{self.name}: bridged must be None, () or a tuple of bridge tags, got {bridged!r}")
        if exclude_frames and bridged is None:
            raise ConfigurationError(
                f"{self.name}: exclude_frames only applies to a bridged worker")
        self._params = params or PipelineParams()
        self._app_resources = app_resources
        self._idle_timeout = idle_timeout_secs or 0.0
        self._cancel_on_idle = cancel_on_idle_timeout
        self._drain_timeout = drain_timeout_secs
        self._activity = ActivityObserver(idle_timeout_frames)
        self._heartbeats = Heartbeats(self._params.heartbeats_period_secs,
                                      self._params.heartbeats_monitor_secs)
        self._init_serving(bridged, tuple(exclude_frames or ()))
        user_pipeline = pipeline if isinstance(pipeline, BasePipeline) else Pipeline([pipeline])
        self._user_pipeline = user_pipeline
        # The activity observer sees every push: only when an idle timeout needs it. It is
        # called directly (pipecat's proxy would queue every push to a task) unless the user
        # has observers of their own.
        watching = [*(observers or ()), *([self._activity] if self._idle_timeout else [])]
        self._runtime = PipelineRuntime(
            user_pipeline, name=self.name, at_source=self._at_source, at_sink=self._at_sink,
            timeout=self._on_frame_timeout, params=self._params, observers=watching,
            clock=clock, setup_timeout=setup_timeout_secs, start_timeout=start_timeout_secs,
            cancel_timeout=cancel_timeout_secs, inline=not observers)
        self._drains = Drains(self.name)
        self._pending: list[tuple[Frame, FrameDirection]] = []
        self._started_pipeline = False
        self._graceful = False
        self._finishing: asyncio.Future[None] | None = None
        self._pipeline_span: Span | None = None  # while spans are recorded
        self._cancel_requested = False
        self._end_reason: str | None = None

    # -- properties -------------------------------------------------------------------

    @property
    def pipeline(self) -> BasePipeline:
        """The pipeline this worker was given."""
        return self._user_pipeline

    @property
    def params(self) -> PipelineParams:
        """What the processors are set up with."""
        return self._params

    @property
    def app_resources(self) -> Any:
        """The object shared with tools and processors."""
        return self._app_resources

    def has_finished(self) -> bool:
        """Whether the pipeline has finished (or never ran and never will)."""
        return self._runtime.finished

    # -- frames in ----------------------------------------------------------------------

    async def queue_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        """Queue a frame: downstream it enters at the top, upstream at the bottom.

        Frames queued before the pipeline started wait and go in, in order, once it has. An
        ``EndFrame`` ends this worker gracefully, a ``CancelFrame`` cancels it.

        Raises:
            WorkerStateError: once the worker is ending or has ended: the frame would never be
                processed (D14).
        """
        if isinstance(frame, (EndFrame, StopFrame)):
            await self._end_self(getattr(frame, "reason", None))
            return
        if isinstance(frame, CancelFrame):
            await self.cancel(reason=frame.reason)
            return
        if self._runtime.finishing or self.state in (WorkerState.STOPPING, WorkerState.STOPPED):
            raise WorkerStateError(f"worker '{self.name}' is ending: {frame} was not queued")
        if not self._started_pipeline:
            self._pending.append((frame, direction))
            return
        await self._runtime.queue(frame, direction)

    async def queue_frames(
        self, frames: Iterable[Frame] | AsyncIterable[Frame],
        direction: FrameDirection = FrameDirection.DOWNSTREAM,
    ) -> None:
        """Queue several frames, in order."""
        if isinstance(frames, AsyncIterable):
            async for frame in frames:
                await self.queue_frame(frame, direction)
        else:
            for frame in frames:
                await self.queue_frame(frame, direction)

    async def flush_pipeline(self, timeout: float | None = None) -> bool:
        """Wait until every frame queued so far has gone through, including through the
        bridged worker it crossed to and what that caused (see
        :mod:`pipecat_workers.pipeline.drain`).

        Returns:
            Whether it drained; False at once when the pipeline is not running or the
            bridge it serves went away, or after ``timeout`` (``drain_timeout_secs``).
        """
        if not self._runtime.running:
            return False
        probe = self._drains.start()
        try:
            await self._runtime.queue(probe, FrameDirection.DOWNSTREAM)
        except BaseException:
            self._drains.done(probe.drain_id, completed=False)
            raise
        return await self._drains.wait(
            probe, self._drain_timeout if timeout is None else timeout)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Run the pipeline's ``StartFrame`` through, then register (a pipeline worker is
        ready once its pipeline is)."""
        if self.state is not WorkerState.CREATED:
            raise WorkerStateError(f"worker '{self.name}' was already started")
        self._pipeline_span = self._lifecycle_span("pipeline", announce=True)
        try:
            # The pipeline's tasks start in no trace of ours (what they send goes in the
            # conversation this worker holds), under the pipeline's span for OpenTelemetry
            # (pipecat's own spans nest there).
            with background_context(self._pipeline_span):
                await self._runtime.start(self)
        except BaseException as exc:
            self._mark_registered()  # the runner waits for the start: it failed
            if self._pipeline_span is not None:
                self._pipeline_span.end("error", f"{type(exc).__name__}: {exc}")
            raise
        self._started_pipeline = True
        if self._params.enable_metrics and self._params.send_initial_empty_metrics:
            await self._runtime.queue(self._initial_metrics(), FrameDirection.DOWNSTREAM)
        pending, self._pending = self._pending, []
        for frame, direction in pending:
            await self._runtime.queue(frame, direction)
        if self._idle_timeout > 0:
            self.create_task(watch_idle(self._activity, self._idle_timeout,
                                        lambda: self.active, self._on_idle), name="idle")
        if self._params.enable_heartbeats:
            self.create_task(self._heartbeats.push(self._queue_heartbeat,
                                                   self._runtime.clock.get_time))
            self.create_task(self._heartbeats.monitor(self._on_heartbeat_timeout))
        await super().start()

    async def stop(self, *, reason: str | None = None) -> None:
        """Finish the pipeline (gracefully after an end, else by cancelling), then leave."""
        if self.state not in (WorkerState.STOPPING, WorkerState.STOPPED):
            try:
                await self._finish_pipeline(reason)
            finally:
                await self._stop_serving()
        await super().stop(reason=reason)

    async def end(self, *, reason: str | None = None) -> None:
        """Drain, then end the session: every runner on the bus ends its workers."""
        await self.flush_pipeline()
        await super().end(reason=reason)

    async def cancel(self, *, reason: str | None = None) -> None:
        """Cancel this worker now (its pipeline gets a ``CancelFrame``); the session goes on."""
        await self._handle_cancel_worker(BusCancelWorkerMessage(
            source=self.name, target=self.name, reason=reason))

    async def stop_when_done(self) -> None:
        """End this worker once everything queued so far has been processed."""
        await self._end_self(None)

    async def _end_self(self, reason: str | None) -> None:
        await self._handle_end_worker(BusEndWorkerMessage(
            source=self.name, target=self.name, reason=reason))

    async def _end(self, reason: str | None) -> None:
        self._graceful = True
        self._end_reason = reason
        await super()._end(reason)

    async def _handle_cancel_worker(self, message: BusCancelWorkerMessage) -> None:
        self._cancel_requested = True
        if self._runtime.finishing and not self._runtime.finished:
            await self._runtime.cancel(message.reason)  # cuts a draining end short (D13)
        await super()._handle_cancel_worker(message)

    async def _finish_pipeline(self, reason: str | None) -> None:
        # Once: a second stop (the runner's, overlapping a graceful end) waits for the first.
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish_once(reason))
        await asyncio.shield(self._finishing)

    async def _finish_once(self, reason: str | None) -> None:
        try:
            await self._finish_runtime(reason)
        finally:
            if self._pipeline_span is not None:
                self._pipeline_span.end("cancelled" if self._cancel_requested else "ok")

    async def _finish_runtime(self, reason: str | None) -> None:
        runtime = self._runtime
        if runtime.finished:
            return
        if not self._started_pipeline:
            await runtime.cleanup()
            return
        final: Frame
        if self._graceful and not self._cancel_requested:
            final = await runtime.end(EndFrame(reason=self._end_reason))
        else:
            await runtime.cancel(reason)
            final = CancelFrame(reason=reason)
        self._emit("on_pipeline_finished", final)
        self._drains.fail_all()
        await runtime.cleanup()

    # -- activation and hand-off ---------------------------------------------------------

    async def activate_worker(
        self, worker_name: str, *, args: WorkerActivationArgs | None = None,
        deactivate_self: bool = False,
    ) -> None:
        """Activate a worker; with ``deactivate_self``, hand the conversation to it.

        A hand-off first drains this pipeline (what it sent is delivered, and what that
        caused, such as the reply to a function call result), then leaves the bridge, and only
        then activates the target. A bridged target is told which bridge to serve: the one
        this worker serves, or the first bridge in this worker's pipeline.
        """
        if deactivate_self:
            await self.flush_pipeline()
        bridge = self._bridge_to_pass_on()
        with self._traced_activation(worker_name, deactivate_self):
            if deactivate_self and self._active:
                self._active = False
                await self._leave_bridge()
                await self.send_bus_message(BusDeactivateWorkerMessage(
                    source=self.name, target=self.name))
            await self.send_bus_message(BusActivateWorkerMessage(
                source=self.name, target=worker_name, args=args.to_dict() if args else None,
                bridge_worker=bridge[0] if bridge else None,
                bridge_tag=bridge[1] if bridge else None))

    async def _handle_activate(self, message: BusActivateWorkerMessage) -> None:
        await self._bind(message)
        await super()._handle_activate(message)

    async def _maybe_activate(self) -> None:
        if self._pending_activation and self.state is WorkerState.READY:
            await self._join_bridge()
        await super()._maybe_activate()

    async def _handle_deactivate(self, message: BusDeactivateWorkerMessage) -> None:
        # Leave first, so that the bridge keeps what it would send meanwhile for the next
        # worker. A worker that handed off gets its own deactivation (on_deactivated runs
        # then, once) and no second one (a bridge taking over tells its former peer, which
        # may have left on its own).
        handed_off = message.source == self.name  # sent by activate_worker(deactivate_self)
        if not self._active and not self._pending_activation and not handed_off:
            return
        await self._leave_bridge()
        await super()._handle_deactivate(message)

    # -- bus ------------------------------------------------------------------------------

    async def on_bus_message(self, message: BusMessage) -> None:
        """Route frames and the bridge protocol; everything else as a plain worker."""
        if isinstance(message, BusFrameMessage):
            await self._on_frame_message(message)  # never the on_bus_message event
        elif isinstance(message, BusDrainDoneMessage):
            self._drains.done(message.drain_id)
        elif await self._on_bridge_message(message):
            return
        else:
            if isinstance(message, BusTTSSpeakMessage):
                await self._speak(message)
            await super().on_bus_message(message)

    async def _speak(self, message: BusTTSSpeakMessage) -> None:
        # A broadcast is spoken by the pipelines that own an output, not by bridged ones too:
        # once, not once per pipeline in the splice (D8).
        if not self.active or (message.target is None and self.bridged):
            return
        await self.queue_frame(TTSSpeakFrame(text=message.text,
                                             append_to_context=message.append_to_context))

    async def _inject(self, frame: Frame, direction: FrameDirection) -> None:
        """Queue a frame that came from the bus (never raises for a stopped worker)."""
        if self._runtime.finishing or self.state in (WorkerState.STOPPING, WorkerState.STOPPED):
            self._count_drop("worker ending")
            return
        if not self._started_pipeline:
            self._pending.append((frame, direction))
            return
        await self._runtime.queue(frame, direction)
