"""``workers top``: ``ps``'s table of workers, refreshed in place until Ctrl-C.

The figures come from the supervisor, which samples every worker's CPU and memory anyway
(see :mod:`pipecat_workers_cli.supervisor.usage`); each refresh is one status request.
"""

from __future__ import annotations

import time

import click

from pipecat_workers_cli.commands.inspect import STALE, current_status
from pipecat_workers_cli.project import find_project


@click.command()
@click.option("-n", "--interval", type=click.FloatRange(min=0.2), default=1.0,
              show_default=True, metavar="SECONDS", help="Time between refreshes.")
@click.pass_context
def top(ctx: click.Context, interval: float) -> None:
    """Show the workers' state, CPU and memory, refreshed until Ctrl-C or the project ends.

    Not in a terminal, it prints the table once.
    """
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from pipecat_workers_cli.render import table_console
    from pipecat_workers_cli.render.live import status_view

    project = find_project(ctx.obj.get("file"), ctx.obj.get("project"))
    console = table_console()

    def frame() -> tuple[Group, bool]:
        status, stale = current_status(project)
        width, height = console.size
        parts, _ = status_view(status, width, height - 2, below=1)
        note = (f"{STALE} (supervisor pid {status.supervisor_pid})" if stale else
                "running; Ctrl-C leaves" if status.running else "not running")
        parts.append(Text(note, style="yellow" if stale else "dim", no_wrap=True,
                          overflow="ellipsis"))
        return Group(*parts), status.running  # type: ignore[arg-type]

    if not console.is_terminal:
        console.print(frame()[0])
        return
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                view, running = frame()
                live.update(view, refresh=True)
                if not running:
                    return
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
