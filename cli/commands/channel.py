"""Joining a project's channel from the terminal: ``ps --channel``, ``call`` and ``tail``."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import click

from cli.errors import CommandError
from cli.host import HostSpec, build_bus
from cli.project import find_project
from pipecat_workers.bus import WorkerBus
from pipecat_workers.errors import WorkersError
from pipecat_workers.monitor import BusMonitor

_SCHEMES = {"redis": "redis", "rediss": "redis", "unix": "redis", "postgresql": "pgmq",
            "postgres": "pgmq"}


@dataclass(frozen=True, slots=True)
class Where:
    """A bus to join: its backend, address and wire channel name."""

    backend: str
    url: str | None
    channel: str

    def bus(self, *, everything: bool = False) -> WorkerBus:
        """A new bus on this channel; ``everything``: also see messages between others
        (only the embedded bus can; elsewhere a targeted message reaches its process only)."""
        if everything and self.backend == "local":
            from pipecat_workers.bus import HubBus

            return HubBus(self.url or "", channel=self.channel, observe_all=True)
        bus: WorkerBus = build_bus(HostSpec(name="", class_path="", args={},
                                            backend=self.backend, channel=self.channel,
                                            url=self.url))
        return bus


def locate(obj: dict[str, Any], channel: str | None, url: str | None, *,
           worker: str | None = None) -> Where:
    """The bus named by ``--url``/``--channel``, or by the project (a worker's channel, the
    channel KEY, or its only channel)."""
    if url is not None:
        backend = _SCHEMES.get(url.split("://", 1)[0])
        if backend is None:
            raise CommandError(f"--url: expected redis://... or postgresql://..., got '{url}'")
        if not channel:
            raise CommandError("--url needs --channel NAME (the channel's name on the wire)")
        return Where(backend, url, channel)
    project = find_project(obj.get("file"), obj.get("project"))
    topology = project.topology_or_recorded()
    if worker is not None:
        key = worker.split(".", 1)[0] if worker not in topology.workers else worker
        if key not in topology.workers:
            raise CommandError(f"no worker named '{worker}' in {topology.path.name}")
        channel = channel or topology.workers[key].channel
    elif channel is None:
        if len(topology.channels) != 1:
            raise CommandError(f"which channel? --channel one of "
                               f"{', '.join(topology.channels)}")
        channel = next(iter(topology.channels))
    spec = topology.channels.get(channel)
    if spec is None:
        raise CommandError(f"no channel '{channel}' in {topology.path.name} (it has "
                           f"{', '.join(topology.channels)})")
    if spec.backend != "local":
        return Where(spec.backend, spec.url, spec.channel)
    hub = ((project.state.read_state() or {}).get("sockets") or {}).get("hub")
    if not project.state.supervisor_alive() or not hub:
        raise CommandError(f"project '{project.name}' is not running: its local channel "
                           f"'{channel}' exists only while `workers up` runs")
    return Where("local", hub, spec.channel)


def show_channel(obj: dict[str, Any], channel: str | None, url: str | None, *,
                 as_json: bool, wait: float | None) -> None:
    where = locate(obj, channel, url)
    data = asyncio.run(_survey(where, wait))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console

    from cli.render.tables import runners_table

    Console(highlight=False).print(runners_table(data))


async def _survey(where: Where, wait: float | None) -> dict[str, Any]:
    try:
        async with BusMonitor(where.bus()) as monitor:
            await monitor.wait_for_heartbeats(wait)
            runners = monitor.runners()
            registry = monitor.registry
            workers = [{"name": name, "runner": data.runner}
                       for name in sorted(registry.remote_workers)
                       if (data := registry.get(name)) is not None]
    except (WorkersError, OSError) as exc:
        raise CommandError(f"cannot join channel '{where.channel}': {exc}") from None
    return {
        "channel": where.channel, "backend": where.backend,
        "runners": [{"name": r.name, "incarnation": r.incarnation,
                     "seen_ago": round(r.seen_ago, 3), "stats": r.stats} for r in runners],
        "workers": workers,
    }
