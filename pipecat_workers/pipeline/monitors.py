"""Watching a running pipeline: idle time and heartbeats.

Idle time counts only while the worker is active. An inactive helper waits for its turn by
design, so its silence never ends anything (D16).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pipecat.frames.frames import (
    BotSpeakingFrame,
    Frame,
    HeartbeatFrame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed

logger = logging.getLogger("pipecat_workers.pipeline")

IDLE_TIMEOUT_FRAMES: tuple[type[Frame], ...] = (
    BotSpeakingFrame, InterimTranscriptionFrame, TranscriptionFrame, UserSpeakingFrame,
    UserStartedSpeakingFrame,
)


class ActivityObserver(BaseObserver):
    """Remembers when a frame that counts as activity was last pushed anywhere in the
    pipeline."""

    def __init__(self, frames: tuple[type[Frame], ...]) -> None:
        super().__init__()
        self._frames: tuple[type[Frame], ...] = (StartFrame, *frames)
        self.last_activity = time.monotonic()

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, self._frames):
            self.last_activity = time.monotonic()


async def watch_idle(
    activity: ActivityObserver, timeout: float, is_active: Callable[[], bool],
    on_idle: Callable[[], Awaitable[None]],
) -> None:
    """Call ``on_idle`` once nothing counted as activity for ``timeout`` seconds while the
    worker was active; the clock starts again whenever the worker is inactive."""
    while True:
        await asyncio.sleep(min(timeout, 1.0))
        now = time.monotonic()
        if not is_active():
            activity.last_activity = now
        elif now - activity.last_activity >= timeout:
            await on_idle()
            return


class Heartbeats:
    """Pushes a ``HeartbeatFrame`` every period and notices when none gets through."""

    def __init__(self, period: float, monitor: float) -> None:
        self._period = period
        self._monitor = monitor
        self._last = time.monotonic()

    def arrived(self) -> None:
        """A heartbeat reached the sink."""
        self._last = time.monotonic()

    async def push(self, queue: Callable[[Frame], Awaitable[None]],
                   now_ns: Callable[[], int]) -> None:
        """Push heartbeats for ever (run it in a task)."""
        while True:
            await queue(HeartbeatFrame(timestamp=now_ns()))
            await asyncio.sleep(self._period)

    async def monitor(self, on_timeout: Callable[[], Awaitable[None]]) -> None:
        """Call ``on_timeout`` each period in which no heartbeat arrived (run it in a task)."""
        while True:
            await asyncio.sleep(self._monitor)
            if time.monotonic() - self._last >= self._monitor:
                logger.warning("no heartbeat got through the pipeline for %.1f s", self._monitor)
                await on_timeout()
