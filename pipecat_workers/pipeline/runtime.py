"""Running one pipecat pipeline for a worker: set up, start, end or cancel, clean up.

The worker's pipeline is wrapped between a source, which sees the frames that reach the top
going up, and a sink, which sees the frames that reach the bottom going down. A pipeline is
*started* once its ``StartFrame`` reaches the sink and *finished* once an ``EndFrame``,
``StopFrame`` or ``CancelFrame`` does. Ending lets every queued frame through first (queued
audio is spoken); cancelling overtakes them, also while an end is draining (D13), and waits at
most ``cancel_timeout`` for the pipeline to stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipecat.clocks.base_clock import BaseClock
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import CancelFrame, EndFrame, Frame, StartFrame, StopFrame
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.pipeline.pipeline import Pipeline, PipelineSink, PipelineSource
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.utils.asyncio.task_manager import TaskManager

from pipecat_workers.errors import WorkerStateError

logger = logging.getLogger("pipecat_workers.pipeline")

FrameHook = Callable[[Frame], Awaitable[None]]
_FINAL = (EndFrame, StopFrame, CancelFrame)


@dataclass(frozen=True, slots=True)
class PipelineParams:
    """What every processor of a pipeline is set up with (pipecat's ``PipelineParams``).

    Attributes:
        audio_in_sample_rate: Input audio sample rate in Hz.
        audio_out_sample_rate: Output audio sample rate in Hz.
        enable_heartbeats: Push a ``HeartbeatFrame`` every ``heartbeats_period_secs`` and warn
            (event ``on_heartbeat_timeout``) when none reaches the sink for
            ``heartbeats_monitor_secs``.
        enable_metrics: Processors report processing and time-to-first-byte metrics.
        enable_usage_metrics: Services report usage (tokens, characters).
        report_only_initial_ttfb: Report only the first time-to-first-byte of a service.
        send_initial_empty_metrics: With metrics on, push an all-zero ``MetricsFrame`` first.
        start_metadata: Carried by the ``StartFrame`` to every processor.
    """

    audio_in_sample_rate: int = 16000
    audio_out_sample_rate: int = 24000
    enable_heartbeats: bool = False
    enable_metrics: bool = False
    enable_usage_metrics: bool = False
    heartbeats_period_secs: float = 1.0
    heartbeats_monitor_secs: float = 10.0
    report_only_initial_ttfb: bool = False
    send_initial_empty_metrics: bool = True
    start_metadata: dict[str, Any] = field(default_factory=dict)


class PipelineStartError(WorkerStateError):
    """Raised when a pipeline does not set up or start within its timeout."""


class PipelineRuntime:
    """One pipeline's life. Frames that reach the top or the bottom go to ``at_source`` and
    ``at_sink``; ``timeout`` is told which frame did not get through in time."""

    def __init__(
        self, pipeline: BasePipeline, *, name: str, at_source: FrameHook, at_sink: FrameHook,
        timeout: FrameHook, params: PipelineParams, observers: Sequence[BaseObserver],
        clock: BaseClock | None, setup_timeout: float, start_timeout: float,
        cancel_timeout: float, inline: bool = False,
    ) -> None:
        self._at_source = at_source
        self._at_sink = at_sink
        self._timeout = timeout
        self._params = params
        self._clock = clock or SystemClock()
        # Every processor reports every push to the observer: none at all unless someone
        # listens, and no proxy with its queue and task for a single one of our own.
        self._observer: BaseObserver | None = None
        if len(observers) == 1 and not isinstance(observers[0], WorkerObserver) and inline:
            self._observer = observers[0]
        elif observers:
            self._observer = WorkerObserver(observers=list(observers))
        self._setup_timeout = setup_timeout
        self._start_timeout = start_timeout
        self._cancel_timeout = cancel_timeout
        self._source = PipelineSource(self._source_reached, name=f"{name}::Source")
        self._sink = PipelineSink(self._sink_reached, name=f"{name}::Sink")
        self._pipeline = Pipeline([pipeline], source=self._source, sink=self._sink)
        self._task_manager: TaskManager | None = None
        self._started: asyncio.Future[None] | None = None
        self._finished: asyncio.Future[Frame] | None = None
        self._final: Frame | None = None  # the End/Stop/Cancel frame queued, if any
        self._cleaned = False

    @property
    def pipeline(self) -> Pipeline:
        """The whole pipeline: source, the worker's pipeline, sink."""
        return self._pipeline

    @property
    def observer(self) -> BaseObserver | None:
        """The observer every processor reports to, if any."""
        return self._observer

    @property
    def clock(self) -> BaseClock:
        """The clock that times the pipeline's frames."""
        return self._clock

    @property
    def running(self) -> bool:
        """Started, and no end or cancel queued."""
        return (self._started is not None and self._started.done() and self._final is None
                and not self._cleaned)

    @property
    def finishing(self) -> bool:
        """An end, stop or cancel was queued (or the pipeline finished)."""
        return self._final is not None or self._cleaned

    @property
    def finished(self) -> bool:
        """The pipeline has finished and was cleaned up (or never started)."""
        return self._cleaned

    async def start(self, worker: Any) -> None:
        """Set the processors up and run the ``StartFrame`` through.

        Raises:
            PipelineStartError: if either takes longer than its timeout; the pipeline is then
                cleaned up.
        """
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._finished = loop.create_future()
        self._task_manager = TaskManager(loop=loop)
        self._clock.start()
        if self._observer is not None:
            await self._observer.setup(self._task_manager)
        params = self._params
        setup = FrameProcessorSetup(
            clock=self._clock, task_manager=self._task_manager, pipeline_worker=worker,
            audio_in_sample_rate=params.audio_in_sample_rate,
            audio_out_sample_rate=params.audio_out_sample_rate,
            enable_metrics=params.enable_metrics, enable_usage_metrics=params.enable_usage_metrics,
            observer=self._observer, report_only_initial_ttfb=params.report_only_initial_ttfb,
        )
        try:
            await asyncio.wait_for(self._pipeline.setup(setup), self._setup_timeout)
        except TimeoutError:
            await self.cleanup()
            raise PipelineStartError(
                f"the pipeline of '{worker.name}' was not set up within "
                f"{self._setup_timeout:g} s (a processor blocked while connecting?)") from None
        start = StartFrame(
            audio_in_sample_rate=params.audio_in_sample_rate,
            audio_out_sample_rate=params.audio_out_sample_rate,
            enable_metrics=params.enable_metrics, enable_usage_metrics=params.enable_usage_metrics,
            report_only_initial_ttfb=params.report_only_initial_ttfb,
        )
        start.metadata = dict(params.start_metadata)
        await self._pipeline.queue_frame(start)
        try:
            await asyncio.wait_for(asyncio.shield(self._started), self._start_timeout)
        except TimeoutError:
            await self._timeout(start)
            await self.cancel("start timeout")
            raise PipelineStartError(
                f"the StartFrame of '{worker.name}' did not reach the end of its pipeline "
                f"within {self._start_timeout:g} s (a processor blocked?)") from None

    async def queue(self, frame: Frame, direction: FrameDirection) -> None:
        """Put a frame in: downstream at the top, upstream at the bottom."""
        if direction is FrameDirection.DOWNSTREAM:
            await self._pipeline.queue_frame(frame, direction)
        else:
            await self._sink.queue_frame(frame, direction)

    async def end(self, frame: EndFrame | StopFrame) -> Frame:
        """Queue ``frame`` behind everything else and wait until the pipeline has finished
        (with it, or with a cancel that overtook it). No timeout: ending lets queued audio
        play; :meth:`cancel` cuts it short."""
        assert self._finished is not None
        if self._final is None:
            self._final = frame
            await self._pipeline.queue_frame(frame)
        return await asyncio.shield(self._finished)

    async def cancel(self, reason: str | None) -> None:
        """Queue a ``CancelFrame`` ahead of any data and wait up to ``cancel_timeout`` for the
        pipeline to finish (also cutting a draining end short)."""
        if self._finished is None or self._finished.done() or self._cleaned:
            return
        if not isinstance(self._final, CancelFrame):
            frame = CancelFrame(reason=reason)
            self._final = frame
            await self._pipeline.queue_frame(frame)
        try:
            await asyncio.wait_for(asyncio.shield(self._finished), self._cancel_timeout)
        except TimeoutError:
            logger.warning("pipeline did not finish within %.1f s of being cancelled",
                           self._cancel_timeout)
            await self._timeout(self._final)
            self._finished.set_result(self._final)

    async def cleanup(self) -> None:
        """Release the processors and every task they left. Safe to call twice."""
        if self._cleaned:
            return
        self._cleaned = True
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(self._final or CancelFrame(reason="cleaned up"))
        try:
            await self._pipeline.cleanup()
            if self._observer is not None:
                await self._observer.cleanup()
        except Exception:
            logger.exception("cleaning up a pipeline failed")
        manager = self._task_manager
        if manager is not None:
            for task in list(manager.current_tasks()):
                await manager.cancel_task(task, timeout=self._cancel_timeout)

    async def _source_reached(self, frame: Frame, direction: FrameDirection) -> None:
        await self._at_source(frame)

    async def _sink_reached(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            if self._started is not None and not self._started.done():
                self._started.set_result(None)
        elif (isinstance(frame, _FINAL) and self._finished is not None
              and not self._finished.done()):
            self._finished.set_result(frame)
        await self._at_sink(frame)
