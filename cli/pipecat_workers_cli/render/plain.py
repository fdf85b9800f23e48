"""Plain output: each line prefixed with its worker's name, coloured when the terminal can.

Used when the output is not a terminal (CI logs, pipes) or with ``--no-ui``; state changes
show as the supervisor's own lines ("ready", "exited with code 1"). Times show in local
time, as ``logs --since`` reads them.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.supervisor.status import ProjectStatus

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan",
           "bright_magenta", "bright_green", "bright_yellow")


class Colours:
    """A colour per worker: the names given first, in order, then others as they come."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self._given: dict[str, str] = {}
        for name in names:
            self(name)

    def __call__(self, worker: str) -> str:
        if worker not in self._given:
            self._given[worker] = PALETTE[len(self._given) % len(PALETTE)]
        return self._given[worker]


class PlainRenderer:
    """Prints every record as ``name | text``.

    Args:
        names: Every worker that may print: names are padded to the longest of them, so the
            column stays put from the first line on.
        console: Where lines go; default: stdout.
        timestamps: Prefix each line with its local time.
    """

    def __init__(self, names: Sequence[str] = (), *, console: Console | None = None,
                 timestamps: bool = False) -> None:
        self._console = console or Console(highlight=False, soft_wrap=True)
        self._width = max(map(len, names), default=0)
        self._colours = Colours(names)
        self._timestamps = timestamps

    def start(self) -> None:
        """Nothing to set up: lines print as they come."""

    def stop(self) -> None:
        """Nothing to tear down."""

    def record(self, record: LogRecord) -> None:
        if record.stream == "news":
            return  # heartbeat job counts: the live view's feed; a log of lines skips them
        line = Text()
        if self._timestamps:
            line.append(f"{record.time.astimezone():%H:%M:%S.%f}"[:-3] + " ", style="dim")
        line.append(f"{record.worker:<{self._width}} | ", style=self._colours(record.worker))
        if record.stream == "sup":
            line.append(f"[{record.text}]", style="dim italic")
        elif record.stream == "err":
            line.append(record.text, style="red" if "Error" in record.text else "")
        else:
            line.append(record.text)
        self._console.print(line)

    def status(self, status: ProjectStatus) -> None:
        """Plain output shows state changes as records only."""
