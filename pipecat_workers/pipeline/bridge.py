"""BusBridgeProcessor: cuts a pipeline in two and splices the active bridged worker in.

A frame that reaches the bridge goes to the bridged worker that has joined it (its *peer*),
through that worker's pipeline, and comes back to be pushed on from the bridge's position.
The bridge keeps no frame from its peer but what it sends to it:

* lifecycle frames, ``OutputTransportMessageUrgentFrame``, the bridge's ``exclude_frames`` and
  the peer's own ``exclude_frames`` pass locally (D5, D15);
* with no peer, system frames (interruptions, speech events, input audio) and drain probes
  pass locally, so an interruption is never lost (D6); data and control frames wait, up to
  ``buffer_frames`` of them (the oldest are dropped and counted), for the next peer to join,
  which gets them first, in order (D9: a hand-off loses nothing);
* a second worker that joins while one is active takes over, and the first is told to
  deactivate (D3: never two peers);
* a worker that stops being the peer is flushed: the frames that reached it after it left
  come back, and go to the next peer before anything newer (system frames excepted, which
  never wait), so a hand-off on a network bus or through a proxy loses no frame in flight;
* from the bus it takes frames of its peer only (and of a peer it replaced, until that one's
  leave arrives), never lifecycle frames (D18); frames of a worker whose join has not been
  handled yet (the join travels ahead, but a busy system lane may hold it up) wait a moment
  for it, and are taken in order once it is handled.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from pipecat.frames.frames import Frame, OutputTransportMessageUrgentFrame, SystemFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup

from pipecat_workers.bus.messages import BusDeactivateWorkerMessage, BusFrameMessage
from pipecat_workers.errors import BusError, ConfigurationError
from pipecat_workers.pipeline.drain import DrainProbeFrame
from pipecat_workers.pipeline.edges import direction_of, named_types, stays_local
from pipecat_workers.pipeline.messages import (
    BusBridgeFlushMessage,
    BusBridgeJoinMessage,
    BusBridgeReturnMessage,
)
from pipecat_workers.types import WorkerLostData, WorkerReadyData

if TYPE_CHECKING:
    from pipecat_workers.bus.core import WorkerBus
    from pipecat_workers.pipeline.worker import PipelineWorker
    from pipecat_workers.tracing.context import TraceContext

logger = logging.getLogger("pipecat_workers.pipeline")

RETURN_WAIT = 5.0  # seconds a former peer has to send back the frames it got after leaving
EARLY_WAIT = 2.0  # seconds frames of a worker may wait for its join to be handled
_EARLY_FRAMES, _EARLY_SOURCES = 256, 8  # at most so many frames, from so many workers


class BusBridgeProcessor(FrameProcessor):
    """Exchanges the frames that reach it with the active bridged worker.

    Args:
        bus: Accepted for compatibility; the bridge uses the bus of the worker whose pipeline
            holds it (it must be that bus if given).
        worker_name: The name frames are sent under; the worker whose pipeline holds the
            bridge by default (in the seeds, the transport worker's name).
        target_worker: Only this worker may join.
        bridge: A tag: only workers serving this tag join (``bridged=("voice",)``).
        exclude_frames: Frame types that always pass locally.
        buffer_frames: Data frames kept while no peer has joined.
        target_task: Old name of ``target_worker``.
    """

    def __init__(
        self, *, bus: WorkerBus | None = None, worker_name: str | None = None,
        target_worker: str | None = None, bridge: str | None = None,
        exclude_frames: tuple[type[Frame], ...] | None = None, buffer_frames: int = 500,
        target_task: str | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if buffer_frames < 0:
            raise ConfigurationError(f"buffer_frames must be >= 0, got {buffer_frames}")
        self._bus = bus
        self._worker_name = worker_name
        self._target_worker = target_worker or target_task
        self._tag = bridge
        self._exclude = tuple(exclude_frames or ())
        self._host: PipelineWorker | None = None
        self._peer: str | None = None
        # The trace of the peer's conversation (its join carries it): frames to it go in it.
        self._peer_trace: TraceContext | None = None
        self._peer_exclude: tuple[type[Frame], ...] = ()
        # What passes locally whoever the peer is, plus what the peer keeps to itself.
        self._local: tuple[type[Frame], ...] = (OutputTransportMessageUrgentFrame, *self._exclude)
        self._replaced: set[str] = set()  # former peers whose leave has not arrived yet
        self._waiting: deque[tuple[Frame, FrameDirection]] = deque(maxlen=buffer_frames or None)
        self._buffer_limit = buffer_frames
        self._dropped = 0
        # Drain probes sent to a peer: (drain id, leg) -> (peer, direction, origin).
        self._probes: dict[tuple[str, int], tuple[str, FrameDirection, str]] = {}
        self._passed: deque[tuple[str, int]] = deque(maxlen=256)  # ...and passed on locally
        # Former peers flushed whose returns are due, and the frames they sent back so far.
        self._awaiting: dict[str, asyncio.TimerHandle] = {}
        self._returned: deque[tuple[Frame, FrameDirection]] = deque()
        # Frames from workers that are not the peer (yet): by worker, (arrival, message).
        self._early: dict[str, deque[tuple[float, BusFrameMessage]]] = {}
        self.early_dropped = 0

    @property
    def worker_name(self) -> str:
        """The name frames are sent under."""
        if self._worker_name is not None:
            return self._worker_name
        if self._host is None:
            raise ConfigurationError("the bridge has no worker yet (it is set up with its "
                                     "pipeline)")
        return self._host.name

    @property
    def tag(self) -> str | None:
        """The bridge's tag, ``None`` if untagged."""
        return self._tag

    @property
    def peer(self) -> str | None:
        """The bridged worker spliced in now, or ``None``."""
        return self._peer

    @property
    def dropped(self) -> int:
        """Frames dropped because too many waited for a peer."""
        return self._dropped

    # -- set up and clean up --------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        from pipecat_workers.pipeline.worker import PipelineWorker

        host = setup.pipeline_worker
        if not isinstance(host, PipelineWorker):
            raise ConfigurationError(
                f"{self.name}: a BusBridgeProcessor runs in a pipecat_workers PipelineWorker")
        if self._bus is not None and self._bus is not host.bus:
            raise ConfigurationError(f"{self.name}: its bus is not the bus of '{host.name}'")
        if self._worker_name not in (None, host.name):
            raise ConfigurationError(
                f"{self.name}: worker_name '{self._worker_name}' must be the name of the worker "
                f"whose pipeline holds the bridge, '{host.name}'")
        self._host = host
        host._attach_bridge(self)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._host is not None:
            self._host._detach_bridge(self)
            await self._set_peer(None, flush=False)
            for timer in self._awaiting.values():
                timer.cancel()
            self._awaiting.clear()

    # -- frames from the pipeline ---------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if stays_local(frame) or isinstance(frame, self._local):
            await self.push_frame(frame, direction)
            return
        peer = self._peer
        if peer is None:
            if isinstance(frame, (SystemFrame, DrainProbeFrame)):
                await self.push_frame(frame, direction)
            else:
                self._keep(frame, direction)
            return
        if self._awaiting and not isinstance(frame, SystemFrame):
            self._keep(frame, direction)  # behind what a former peer is sending back
            return
        await self._send(peer, frame, direction)

    def _keep(self, frame: Frame, direction: FrameDirection) -> None:
        if self._buffer_limit == 0 or len(self._waiting) == self._buffer_limit:
            self._dropped += 1
            if self._dropped in (1, 100, 10_000):
                logger.warning("%s: no worker has joined the bridge and %d frames wait: dropping "
                               "the oldest (%d so far)", self.name, self._buffer_limit,
                               self._dropped)
            if self._buffer_limit == 0:
                return
        self._waiting.append((frame, direction))

    async def _send(self, peer: str, frame: Frame, direction: FrameDirection) -> None:
        probe = None
        if isinstance(frame, DrainProbeFrame):
            probe = (frame.drain_id, frame.leg)
            self._probes[probe] = (peer, direction, frame.origin)
        assert self._host is not None
        if not await self._host._send_frame(self.worker_name, peer, frame, direction, self._tag,
                                            trace=self._peer_trace):
            if probe is not None:
                self._probes.pop(probe, None)  # or the peer's leaving would push it again
            await self.push_frame(frame, direction)  # it cannot cross: it stays local

    # -- frames and news from the bus -------------------------------------------------------

    def expects(self, source: str) -> bool:
        """Whether frames from ``source`` are for this bridge."""
        return source == self._peer or source in self._replaced

    async def receive(self, message: BusFrameMessage) -> None:
        """Push on a frame that came back from the peer."""
        frame = message.frame
        if stays_local(frame):
            return
        if isinstance(frame, DrainProbeFrame):
            key = (frame.drain_id, frame.leg)
            if self._probes.pop(key, None) is None and key in self._passed:
                self._passed.remove(key)
                return  # passed on locally already, when its peer left
        await self.push_frame(frame, direction_of(message))

    def hold_early(self, message: BusFrameMessage) -> bool:
        """Keep a frame from a worker that is not the peer, in case its join is on its way
        (taken when the join is handled, dropped after ``EARLY_WAIT``); False if it may not
        join this bridge at all."""
        source = message.source
        if self._target_worker is not None and source != self._target_worker:
            return False
        now = asyncio.get_running_loop().time()
        self._expire_early(now)
        held = self._early.get(source)
        if held is None:
            if len(self._early) >= _EARLY_SOURCES:
                return False
            held = self._early[source] = deque()
        if len(held) >= _EARLY_FRAMES:
            self.early_dropped += 1
            return True
        held.append((now, message))
        return True

    def _expire_early(self, now: float) -> None:
        for source, held in list(self._early.items()):
            while held and now - held[0][0] > EARLY_WAIT:
                held.popleft()
                self.early_dropped += 1
            if not held:
                del self._early[source]

    async def on_join(self, message: BusBridgeJoinMessage) -> None:
        """A bridged worker became active for this bridge: splice it in."""
        worker = message.source
        if self._target_worker is not None and worker != self._target_worker:
            logger.warning("%s: '%s' may not join (only '%s')", self.name, worker,
                           self._target_worker)
            return
        self._peer_exclude = named_types(message.exclude_frames)
        self._local = (OutputTransportMessageUrgentFrame, *self._exclude, *self._peer_exclude)
        if worker == self._peer:
            return
        old = self._peer
        await self._set_peer(worker)
        self._peer_trace = message.trace
        self._expire_early(asyncio.get_running_loop().time())
        for _, early in self._early.pop(worker, ()):  # what it sent right after joining
            await self.receive(early)
        if old is not None:
            self._replaced.add(old)
            assert self._host is not None
            await self._host.send_bus_message(BusDeactivateWorkerMessage(
                source=self.worker_name, target=old))
        await self._send_waiting()

    async def _send_waiting(self) -> None:
        """Send the peer what waited for it, unless a former peer still owes returns."""
        peer = self._peer
        while self._waiting and peer is not None and self._peer == peer and not self._awaiting:
            frame, direction = self._waiting.popleft()
            await self._send(peer, frame, direction)

    async def on_leave(self, worker: str) -> None:
        """A bridged worker is no longer active for this bridge."""
        self._replaced.discard(worker)
        if worker == self._peer:
            await self._set_peer(None)

    async def _set_peer(self, peer: str | None, *, flush: bool = True) -> None:
        old, self._peer = self._peer, peer
        self._peer_trace = None
        host = self._host
        if host is None or old == peer:
            return
        if old is not None:
            host.registry.unwatch(old, self._on_peer_ready)
            await self._pass_probes_of(old)
            if flush:
                await self._flush(old)
        if peer is not None:
            await host.registry.watch(peer, self._on_peer_ready, on_lost=self._on_peer_lost)

    async def _on_peer_lost(self, data: WorkerLostData) -> None:
        level = logging.WARNING if data.reason == "lost" else logging.DEBUG
        logger.log(level, "%s: its peer '%s' is gone (%s)", self.name, data.worker_name,
                   data.reason)
        self._replaced.discard(data.worker_name)
        if data.worker_name == self._peer:
            await self._set_peer(None, flush=False)
        else:
            await self._pass_probes_of(data.worker_name)
        await self._stop_awaiting(data.worker_name)  # what it had is gone with it

    # -- frames coming back from a former peer ----------------------------------------------

    async def _flush(self, worker: str) -> None:
        """``worker`` is no longer the peer: ask for the frames it got after it left."""
        host = self._host
        if host is None or worker in self._awaiting:
            return
        loop = asyncio.get_running_loop()
        self._awaiting[worker] = loop.call_later(
            RETURN_WAIT, lambda: host.create_task(self._give_up(worker)))
        try:
            await host.send_bus_message(BusBridgeFlushMessage(
                source=self.worker_name, target=worker, bridge=self._tag))
        except BusError:
            await self._stop_awaiting(worker)

    async def _give_up(self, worker: str) -> None:
        if worker in self._awaiting:
            logger.warning("%s: '%s' did not send back in %g s the frames it got after it "
                           "left; going on without them", self.name, worker, RETURN_WAIT)
            await self._stop_awaiting(worker)

    async def on_returned(self, message: Any) -> None:
        """A frame a former peer got after leaving, or its word that there are no more."""
        worker = message.source
        if worker not in self._awaiting:
            return  # too late: the bridge went on without it
        if not isinstance(message, BusBridgeReturnMessage):
            await self._stop_awaiting(worker)
        elif isinstance(message.frame, Frame) and not stays_local(message.frame):
            self._returned.append((message.frame, direction_of(message)))

    async def _stop_awaiting(self, worker: str) -> None:
        timer = self._awaiting.pop(worker, None)
        if timer is None:
            return
        timer.cancel()
        if self._awaiting:
            return  # another former peer still owes its returns
        returned, self._returned = self._returned, deque()
        if self._peer is None:
            self._waiting.extendleft(reversed(returned))  # first, for the next peer
            return
        peer = self._peer
        for frame, direction in returned:
            await self._send(peer, frame, direction)
        await self._send_waiting()

    async def _pass_probes_of(self, worker: str) -> None:
        """Drain probes sent to a worker that is gone go on locally: no drain waits for it."""
        for key, (peer, direction, origin) in list(self._probes.items()):
            if peer == worker:
                del self._probes[key]
                self._passed.append(key)
                drain_id, leg = key
                await self.push_frame(
                    DrainProbeFrame(drain_id=drain_id, origin=origin, leg=leg), direction)

    async def _on_peer_ready(self, data: WorkerReadyData) -> None:
        """The registry watch on the peer is for its departure only."""
