"""BusMonitor: watch a channel without hosting workers.

Tools (``workers ps --channel``, ``workers tail``, the supervisor's live view) join a channel
to see who is on it: a runner with no workers of its own takes part in membership, so it
learns every runner's workers and, from their heartbeats, their counters; an observer
subscription sees every message that reaches this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.messages import BusCancelMessage, BusEndMessage, BusMessage
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import Settings
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.workers.runner import WorkerRunner


@dataclass(frozen=True, slots=True)
class RunnerView:
    """One runner on the channel, as its last heartbeat described it."""

    name: str
    incarnation: float
    seen_ago: float                   # seconds since its last heartbeat
    stats: dict[str, Any] | None      # its counters (see :meth:`WorkerRunner.stats`)


class _Tap:
    """The observer subscription: hands every message to a callback."""

    def __init__(self, name: str, callback: Callable[[BusMessage], None]) -> None:
        self._name = name
        self._callback = callback

    @property
    def name(self) -> str:
        return self._name

    async def on_bus_message(self, message: BusMessage) -> None:
        self._callback(message)


class _WatchingRunner(WorkerRunner):
    """A runner that only watches: the session's end or cancel is not its own."""

    async def on_bus_message(self, message: BusMessage) -> None:
        if not isinstance(message, BusEndMessage | BusCancelMessage):
            await super().on_bus_message(message)


class BusMonitor:
    """Joins a channel to watch it; hosts no workers.

    Args:
        bus: The channel's bus (not started; the monitor starts and stops it).
        name: The monitor's runner name on the bus; defaults to ``monitor-<random>``.
        on_message: Called with every message that reaches this process.
        settings: Heartbeat timing; must match the channel's for timely loss detection.

    Example::

        async with BusMonitor(RedisBus(url, channel="pipecat:app")) as monitor:
            await monitor.wait_for_heartbeats()
            print(monitor.registry.remote_workers)
    """

    def __init__(
        self, bus: WorkerBus, *, name: str | None = None,
        on_message: Callable[[BusMessage], None] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._runner = _WatchingRunner(name=name or f"monitor-{os.urandom(4).hex()}", bus=bus,
                                    handle_sigint=False, settings=settings)
        if on_message is not None:
            bus.subscribe(_Tap(f"{self._runner.name}.tap", on_message), role="observer")
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0

    @property
    def runner(self) -> WorkerRunner:
        """The worker-less runner that takes part in membership for the monitor."""
        return self._runner

    @property
    def registry(self) -> WorkerRegistry:
        """Every worker on the channel, as membership knows it."""
        return self._runner.registry

    def runners(self) -> list[RunnerView]:
        """The other runners heard on the channel, by name."""
        now = asyncio.get_running_loop().time()
        return [RunnerView(name, peer.incarnation, now - peer.last_seen, peer.stats)
                for name, peer in sorted(self._runner.peers.items())]

    async def start(self) -> None:
        """Join the channel; raises what the bus raises when it cannot connect."""
        if self._task is not None:
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_ready(_: WorkerRunner) -> None:
            _resolve(ready)

        self._runner.add_event_handler("on_ready", on_ready)
        self._task = asyncio.get_running_loop().create_task(self._runner.run(auto_end=False))
        self._task.add_done_callback(lambda _: _resolve(ready))
        try:
            await ready
        except BaseException:  # cancelled while connecting: leave no runner behind
            await self.stop()
            raise
        if self._task.done():
            task, self._task = self._task, None
            task.result()  # the bus could not start: raise why
        self._started_at = asyncio.get_running_loop().time()

    async def stop(self) -> None:
        """Leave the channel. Safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            await self._runner.cancel(reason="monitor stopped")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        await cancel_and_wait((task,), 1.0)

    async def wait_for_heartbeats(self, timeout: float | None = None) -> None:
        """Wait long enough to have heard every live runner's heartbeat and snapshot."""
        interval = self._runner.settings.heartbeat_interval
        wait = timeout if timeout is not None else interval * 1.5
        loop = asyncio.get_running_loop()
        remaining = self._started_at + wait - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
