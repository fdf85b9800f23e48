"""The supervisor's eyes on its buses: one :class:`BusMonitor` per channel.

A monitor that cannot connect (Redis down, say) keeps retrying in the background; the
project runs regardless, and ``ps`` shows the channel as not connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from pipecat_workers.bus.backends.unreachable import REPORT_EVERY
from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.errors import WorkersError
from pipecat_workers.monitor import BusMonitor
from pipecat_workers_cli.host import build_bus
from pipecat_workers_cli.supervisor.status import ChannelStatus
from pipecat_workers_cli.topology.hints import channel_hint, with_hint
from pipecat_workers_cli.topology.model import ChannelSpec, Topology

logger = logging.getLogger("pipecat_workers_cli.supervisor")

_RETRY = 2.0


@dataclass(slots=True)
class ChannelView:
    status: ChannelStatus
    runner_stats: dict[str, dict[str, Any]] = field(default_factory=dict)


class Monitors:
    """Watches every channel of a topology from the supervisor's process."""

    def __init__(self, topology: Topology, hub_path: str | None) -> None:
        self._topology = topology
        self._hub_path = hub_path
        self._monitors: dict[str, BusMonitor] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._connect(spec))
                       for spec in self._topology.channels.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for monitor in self._monitors.values():
            with contextlib.suppress(Exception):
                await monitor.stop()
        self._monitors.clear()

    async def _connect(self, spec: ChannelSpec) -> None:
        url = self._hub_path if spec.backend == "local" else spec.url
        hint = channel_hint(self._topology.path, spec)
        # A server that stays down is said once, then twice a minute: not every retry.
        failing = RateLimitedLog(logger, every=REPORT_EVERY)
        while True:
            bus = build_bus(spec.backend, url, spec.channel)
            # Unique per supervisor: one project may be supervised on several machines.
            name = f"{self._topology.name}/supervisor@{socket.gethostname()}:{os.getpid()}"
            monitor = BusMonitor(bus, name=name)
            try:
                await monitor.start()
            except (WorkersError, OSError) as exc:
                failing.warning("cannot watch channel '%s' yet: %s", spec.key,
                                with_hint(str(exc), hint))
                await asyncio.sleep(_RETRY)
                continue
            self._monitors[spec.key] = monitor
            return

    def views(self) -> dict[str, ChannelView]:
        """Each channel's status and the counters of every runner on it."""
        views: dict[str, ChannelView] = {}
        for key, spec in self._topology.channels.items():
            status = ChannelStatus(key=key, backend=spec.backend, channel=spec.channel)
            view = views[key] = ChannelView(status)
            monitor = self._monitors.get(key)
            if monitor is None:
                continue
            bus = monitor.runner.bus
            status.connected = bool(getattr(bus, "connected", True))
            status.workers = sorted(monitor.registry.remote_workers)
            _add_job_names(status, monitor)
            runners = monitor.runners()
            status.runners = len(runners)
            for runner in runners:
                stats = runner.stats or {}
                view.runner_stats[runner.name] = stats
                status.jobs_running += int((stats.get("jobs") or {}).get("running", 0))
        return views


def _add_job_names(status: ChannelStatus, monitor: BusMonitor) -> None:
    """What ``ps --jobs`` lists: each worker's job names, as its runner announced them."""
    for name in status.workers:
        data = monitor.registry.get(name)
        if data is None:
            continue
        if data.jobs is not None:
            status.job_names[name] = list(data.jobs)
        if data.any_job:
            status.any_job.append(name)
