"""Plain output: each line prefixed with its worker's name, coloured when the terminal can.

Used when the output is not a terminal (CI logs, pipes) or with ``--no-ui``; state changes
show as the supervisor's own lines ("ready", "exited with code 1").
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from cli.logs.reader import LogRecord
from cli.supervisor.status import ProjectStatus

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan",
           "bright_magenta", "bright_green", "bright_yellow")


class PlainRenderer:
    """Prints every record as ``name | text``."""

    def __init__(self, console: Console | None = None, *, width: int = 0,
                 timestamps: bool = False) -> None:
        self._console = console or Console(highlight=False, soft_wrap=True)
        self._width = width
        self._colours: dict[str, str] = {}
        self._timestamps = timestamps

    def colour(self, worker: str) -> str:
        if worker not in self._colours:
            self._colours[worker] = PALETTE[len(self._colours) % len(PALETTE)]
        return self._colours[worker]

    def record(self, record: LogRecord) -> None:
        self._width = max(self._width, len(record.worker))
        line = Text()
        if self._timestamps:
            line.append(record.time.strftime("%H:%M:%S.%f")[:-3] + " ", style="dim")
        line.append(f"{record.worker:<{self._width}} | ", style=self.colour(record.worker))
        if record.stream == "sup":
            line.append(f"[{record.text}]", style="dim italic")
        elif record.stream == "err":
            line.append(record.text, style="red" if "Error" in record.text else "")
        else:
            line.append(record.text)
        self._console.print(line)

    def status(self, status: ProjectStatus) -> None:
        """Plain output shows state changes as records only."""
