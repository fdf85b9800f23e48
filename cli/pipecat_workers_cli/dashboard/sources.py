"""Where a dashboard gets its data: from inside the supervisor (``workers up --dashboard``) or
from a running project's supervisor, asked over its control socket (``workers dashboard``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from pipecat_workers_cli.commands.channel import Where
from pipecat_workers_cli.dashboard.listener import Listener
from pipecat_workers_cli.dashboard.server import Dashboard
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.project import Project
from pipecat_workers_cli.supervisor.control import request
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.topology.model import ChannelSpec, Topology
from pipecat_workers_cli.traces.store import traces_dir

STATUS_WITHIN = 5.0  # seconds a supervisor has to answer a status request
RETRY = 0.25  # seconds between status requests while none was answered yet


def channels_of(topology: Topology, hub: Callable[[], str | None]
                ) -> Mapping[str, Callable[[], Where | None]]:
    """How to reach each channel of ``topology``; ``hub``: the embedded bus's socket now."""
    def where(spec: ChannelSpec) -> Callable[[], Where | None]:
        def now() -> Where | None:
            if spec.backend != "local":
                return Where(spec.backend, spec.url, spec.channel)
            path = hub()
            return Where("local", path, spec.channel) if path else None
        return now

    return {key: where(spec) for key, spec in topology.channels.items()}


def for_running_project(project: Project, listener: Listener) -> Dashboard:
    """A dashboard of a project some other process supervises; it ends when that
    supervisor does."""
    topology = project.topology_or_recorded()
    last: ProjectStatus | None = None

    async def status() -> ProjectStatus | None:
        nonlocal last
        while project.state.supervisor_alive():
            try:
                answer = await request(project.state.socket_from_state("control"),
                                       {"cmd": "status"}, STATUS_WITHIN)
                last = ProjectStatus.from_json(answer["status"])
            except (CommandError, OSError, KeyError, TypeError):
                if last is None:  # nothing to show yet: ask again
                    await asyncio.sleep(RETRY)
                    continue
            return last  # when it does not answer (busy stopping, say): what it said last
        return None

    def hub() -> str | None:
        if not project.state.supervisor_alive():
            return None
        try:
            return str(project.state.socket_from_state("hub"))
        except CommandError:
            return None

    return Dashboard(listener, status=status, channels=channels_of(topology, hub),
                     trace_dir=traces_dir(project.state))


def in_supervisor(topology: Topology, state: StateDir, listener: Listener,
                  status: Callable[[], ProjectStatus], hub: Callable[[], str | None]
                  ) -> Dashboard:
    """A dashboard served by the supervisor itself, from its own status."""
    async def now() -> ProjectStatus:
        return status()

    return Dashboard(listener, status=now, channels=channels_of(topology, hub),
                     trace_dir=traces_dir(state))
