"""The live view of ``workers up`` in a terminal: a table of workers over a feed of events.

The table shows each worker's state, pid, uptime, restarts and jobs; the feed shows the
latest lines (supervisor notes and worker output), newest last. Rich redraws a few times a
second; the renderer only keeps the data. Times show in local time.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.project import command_for
from pipecat_workers_cli.render.plain import Colours
from pipecat_workers_cli.render.tables import channel_table, project_table
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.topology import Topology, expand

_FEED = 12


class LiveRenderer:
    """Keeps the last status and feed lines; rich's refresh thread draws them."""

    def __init__(self, topology: Topology, console: Console | None = None) -> None:
        self._topology = topology
        self._console = console or Console()
        self._status: ProjectStatus | None = None
        self._feed: deque[LogRecord] = deque(maxlen=_FEED)
        self._over = False  # the supervisor is done: the last frame shows no running project
        names = [p.name for p in expand(topology)]
        self._width = max(map(len, names), default=0)
        self._colours = Colours(names)
        self._live = Live(self._render(), console=self._console, refresh_per_second=4,
                          transient=False, get_renderable=self._render)

    def start(self) -> None:
        self._live.start()

    def stop(self) -> None:
        self._over = True
        self._live.refresh()  # the last frame, drawn with what is true now
        self._live.stop()
        self._console.print(Text(f"every line is kept: `{command_for(self._topology)} logs`",
                                 style="dim"))

    def record(self, record: LogRecord) -> None:
        self._feed.append(record)

    def status(self, status: ProjectStatus) -> None:
        self._status = status

    def _render(self) -> Group:
        parts: list[object] = []
        if self._status is None:
            parts.append(Text(f"starting {self._topology.name}...", style="dim"))
        else:
            status = self._status
            if self._over and status.running:
                status = dataclasses.replace(status, running=False)
            parts.append(project_table(status))
            parts.extend(channel_table(c) for c in self._status.channels)
        feed = Text()
        for record in list(self._feed):  # one copy: rich draws from its own thread
            feed.append(f"{record.time.astimezone():%H:%M:%S} ", style="dim")
            feed.append(f"{record.worker:<{self._width}} ", style=self._colours(record.worker))
            style = "dim italic" if record.stream in ("sup", "news") else (
                "red" if record.stream == "err" else "")
            feed.append(record.text[:200] + "\n", style=style)
        parts.append(Panel(feed, title="events", title_align="left", border_style="dim"))
        if not self._over:
            parts.append(Text("Ctrl-C stops every worker; twice kills them", style="dim"))
        return Group(*parts)  # type: ignore[arg-type]
