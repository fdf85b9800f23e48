"""The live view of ``workers up`` in a terminal: a table of workers over a feed of events.

The table shows each worker's state, pid, uptime, restarts, CPU, memory, jobs and why it is
where it is; the feed shows the latest lines (supervisor notes and worker output), newest
last. Rich redraws a few times a second; the renderer only keeps the data. Times show in
local time.

Everything fits the terminal: one line per worker and per feed line (long cells end in
"..."), and no more rows than the terminal has (the table ends with "... N more" when some
workers do not fit; the feed keeps a few lines whatever happens).
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
from pipecat_workers_cli.render.tables import NARROW, channel_table, project_table
from pipecat_workers_cli.supervisor.status import ProjectStatus, WorkerStatus
from pipecat_workers_cli.topology import Topology, expand

_FEED = 12
_FEED_KEPT = 3  # feed lines shown even when workers do not all fit
# A worker's own notes on an exit, which the `workers` stream sums up in one line
# ("crasher: exit code 3; restarting in 1.2 s (attempt 3)"); its log keeps them.
_SAID_BY_THE_NEWS = ("exited with ", "restarting in ")


def fit_workers(workers: list[WorkerStatus], rows: int) -> tuple[list[WorkerStatus], int]:
    """The workers that fit in ``rows`` table rows, and how many are left out (then the
    last row says "... N more")."""
    if len(workers) <= rows:
        return workers, 0
    shown = max(rows - 1, 0)
    return workers[:shown], len(workers) - shown


def status_view(status: ProjectStatus, width: int, height: int,
                below: int = 0) -> tuple[list[object], int]:
    """The project table and channel lines for a screen of ``width`` x ``height``, leaving
    at least ``below`` lines for what comes after; and the lines they take."""
    fixed = 2 + len(status.channels)  # the table's title and header, a line per channel
    shown, more = fit_workers(status.workers, height - fixed - below)
    parts: list[object] = [project_table(status, workers=shown, more=more, ellipsize=True,
                                         narrow=width < NARROW)]
    parts.extend(channel_table(c, ellipsize=True) for c in status.channels)
    return parts, fixed + len(shown) + (1 if more else 0)


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
        if record.stream == "sup" and record.text.startswith(_SAID_BY_THE_NEWS):
            return  # the feed is short: the `workers` stream's one line says it
        self._feed.append(record)

    def status(self, status: ProjectStatus) -> None:
        self._status = status

    def _render(self) -> Group:
        width, height = self._console.size
        height -= 1  # the line the cursor waits on
        hint = 0 if self._over else 1
        feed_records = list(self._feed)  # one copy: rich draws from its own thread
        parts: list[object] = []
        if self._status is None:
            parts.append(Text(f"starting {self._topology.name}...", style="dim"))
            used = 1
        else:
            status = self._status
            if self._over and status.running:
                status = dataclasses.replace(status, running=False)
            kept = min(len(feed_records), _FEED_KEPT) + 2  # the feed's lines and borders
            table, used = status_view(status, width, height, below=kept + hint)
            parts.extend(table)
        room = max(height - used - hint - 2, min(len(feed_records), _FEED_KEPT))
        feed = Text(no_wrap=True, overflow="ellipsis")
        for record in feed_records[-room:] if room > 0 else []:
            feed.append(f"{record.time.astimezone():%H:%M:%S} ", style="dim")
            feed.append(f"{record.worker:<{self._width}} ", style=self._colours(record.worker))
            style = "dim italic" if record.stream in ("sup", "news") else (
                "red" if record.stream == "err" else "")
            feed.append(record.text[:500].replace("\n", " ") + "\n", style=style)
        feed.rstrip()
        parts.append(Panel(feed, title="events", title_align="left", border_style="dim"))
        if hint:
            parts.append(Text("Ctrl-C stops every worker; twice kills them", style="dim",
                              no_wrap=True, overflow="ellipsis"))
        return Group(*parts)  # type: ignore[arg-type]
