"""What the supervisor serves while it runs, beside its workers.

The embedded bus hub (when a channel is ``local``), the control socket (``ps``, ``down``,
``up -d`` on a running project...), a monitor per channel (what ``ps`` shows of the bus) and,
with ``up --dashboard``, the dashboard page. Each is started and stopped here, in the order
the supervisor needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipecat_workers.bus import BusHub
from pipecat_workers_cli.supervisor.control import ControlServer, Handler
from pipecat_workers_cli.supervisor.monitors import ChannelView, Monitors
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.topology.model import Topology

if TYPE_CHECKING:
    from pipecat_workers_cli.dashboard.listener import Listener
    from pipecat_workers_cli.dashboard.server import Dashboard


def _has_local(topology: Topology) -> bool:
    return any(c.backend == "local" for c in topology.channels.values())


class ProjectServices:
    """The hub, the control socket and the channel monitors of one project.

    Args:
        state: The project's state directory (where the sockets are).
        on_control: Answers a control request.
        note: Says something to the user (a hub that cannot start after an edit, say).
        dashboard: Where to serve the dashboard (a bound socket), if at all.
        status: The project's status now, for the dashboard.
    """

    def __init__(self, state: StateDir, on_control: Handler,
                 note: Callable[[str], None], *, dashboard: Listener | None = None,
                 status: Callable[[], ProjectStatus] | None = None) -> None:
        self._state = state
        self._on_control = on_control
        self._note = note
        self._hub: BusHub | None = None
        self._control: ControlServer | None = None
        self._monitors: Monitors | None = None
        self._listener = dashboard
        self._status = status
        self._dashboard: asyncio.Task[None] | None = None
        self._served: Dashboard | None = None

    @property
    def hub_path(self) -> str | None:
        """The embedded hub's socket, if the project hosts one."""
        return str(self._hub.path) if self._hub is not None else None

    def sockets(self) -> dict[str, str | None]:
        """Where the control socket and the hub are, for the state file."""
        return {"control": str(self._state.socket_path("control")), "hub": self.hub_path}

    async def start(self, topology: Topology) -> None:
        """Host the hub (if a channel needs it), open the control socket, watch the
        channels."""
        if _has_local(topology):
            self._hub = BusHub(self._state.socket_path("hub"))
            await self._hub.start()
        self._control = ControlServer(self._state.socket_path("control"), self._on_control)
        await self._control.start()
        self._monitors = Monitors(topology, self.hub_path)
        self._monitors.start()
        if self._listener is not None and self._status is not None:
            self._start_dashboard(topology, self._listener, self._status)

    def _start_dashboard(self, topology: Topology, listener: Listener,
                         status: Callable[[], ProjectStatus]) -> None:
        from pipecat_workers_cli.dashboard.sources import in_supervisor

        served = self._served = in_supervisor(topology, self._state, listener, status,
                                              lambda: self.hub_path)

        async def run() -> None:
            try:
                await served.run()
            except Exception as exc:  # the project goes on without its page
                self._note(f"the dashboard stopped: {type(exc).__name__}: {exc}")

        self._dashboard = asyncio.get_running_loop().create_task(run())

    async def channels_changed(self, topology: Topology) -> None:
        """An edit changed the channels: host the hub if a local one is new, and watch
        the new channels."""
        if self._hub is None and _has_local(topology):
            hub = self._hub = BusHub(self._state.socket_path("hub"))
            try:
                await hub.start()
            except Exception as exc:
                self._note(f"cannot host the embedded bus: {exc}")
        # Swapped before the old ones are awaited, so a quick second edit cannot leak one.
        old, self._monitors = self._monitors, Monitors(topology, self.hub_path)
        self._monitors.start()
        if self._served is not None:
            from pipecat_workers_cli.dashboard.sources import channels_of

            self._served.channels_changed(channels_of(topology, lambda: self.hub_path))
        if old is not None:
            await old.stop()

    def views(self) -> dict[str, ChannelView]:
        """What each channel's monitor sees now."""
        return self._monitors.views() if self._monitors is not None else {}

    async def stop_control(self) -> None:
        """Close the control socket: first, so nobody waits on a loop that has ended."""
        if self._control is not None:
            await self._control.stop()

    async def stop(self) -> None:
        """Stop the dashboard and the monitors, then the hub (after the workers, which use
        it)."""
        if self._dashboard is not None:
            self._dashboard.cancel()
            await asyncio.gather(self._dashboard, return_exceptions=True)
        if self._monitors is not None:
            await self._monitors.stop()
        if self._hub is not None:
            await self._hub.stop()
