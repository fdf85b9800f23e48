"""Draining a pipeline: a probe frame that makes a round trip, completed by a message.

A drain waits until everything queued ahead of it has gone through, including what crossed a
bridge to another worker and what that caused: a function call result that makes the
transport's aggregator push the context back up, and the reply that comes down from it. The
probe therefore makes three legs, down, up and down again, through every pipeline it meets:

* a pipeline whose bottom edge sends the probe on (a bridged worker serving a bridge) leaves the
  turn-around to the pipeline it reaches; the last pipeline turns it up at its sink, down at its
  source, and on its third arrival at a sink the drain is over;
* that pipeline's worker tells the origin with :class:`BusDrainDoneMessage` (or completes it
  itself), so a drain completes on every bus: nothing in the probe needs to stay in one process;
* a bridge whose peer leaves or is lost passes the probes it had sent to that peer on locally,
  so a drain never waits for a pipeline that is gone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pipecat.frames.frames import ControlFrame

from pipecat_workers.jobs.requester import new_job_id
from pipecat_workers.pipeline.wire import register_frame

logger = logging.getLogger("pipecat_workers.pipeline")

DOWN_FIRST, UP, DOWN_LAST = 1, 2, 3


@register_frame(name="pipecat_workers.drain_probe")
@dataclass
class DrainProbeFrame(ControlFrame):
    """The probe of a drain. Control frames are processed in order, so it waits behind every
    frame queued before it; it is not interruptible, so an interruption does not lose it.

    Parameters:
        drain_id: Unique across processes (a per-process counter would not be).
        origin: The worker waiting for it.
        leg: 1 (down), 2 (back up), 3 (down again).
    """

    drain_id: str = ""
    origin: str = ""
    leg: int = DOWN_FIRST
    interruptible: bool = field(default=False, init=False)

    def next_leg(self) -> DrainProbeFrame:
        """The probe for the next leg of the same drain."""
        return DrainProbeFrame(drain_id=self.drain_id, origin=self.origin, leg=self.leg + 1)

    def __str__(self) -> str:
        return f"{self.name}({self.drain_id}, leg {self.leg})"


class Drains:
    """The drains a worker is waiting for, by id."""

    def __init__(self, origin: str) -> None:
        self._origin = origin
        self._waiting: dict[str, asyncio.Future[bool]] = {}

    def start(self) -> DrainProbeFrame:
        """A probe for a new drain; :meth:`wait` for it after queueing it."""
        probe = DrainProbeFrame(drain_id=new_job_id(), origin=self._origin)
        self._waiting[probe.drain_id] = asyncio.get_running_loop().create_future()
        return probe

    async def wait(self, probe: DrainProbeFrame, timeout: float) -> bool:
        """Whether the drain completed within ``timeout`` seconds."""
        future = self._waiting.get(probe.drain_id)
        if future is None:
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            logger.warning("%s: a drain did not complete within %.1f s; going on",
                           self._origin, timeout)
            return False
        finally:
            self._waiting.pop(probe.drain_id, None)

    def done(self, drain_id: str, completed: bool = True) -> None:
        """Settle a drain (an unknown or settled id is ignored: a message may come late)."""
        future = self._waiting.get(drain_id)
        if future is not None and not future.done():
            future.set_result(completed)

    def fail_all(self) -> None:
        """Settle every waiting drain as incomplete (the pipeline or its bridge is gone)."""
        for drain_id in list(self._waiting):
            self.done(drain_id, completed=False)
