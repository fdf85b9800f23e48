"""``workers dashboard``: serve the live page of a project that runs already (``up -d``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import click

from pipecat_workers_cli.dashboard.listener import DEFAULT_HOST, Listener
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.project import find_project

host_option = click.option(
    "--host", default=DEFAULT_HOST, show_default=True,
    help="Address to listen on. Beyond loopback, anyone who can reach it and learns the URL "
         "sees the project.")
port_option = click.option("--port", type=click.IntRange(0, 65535), default=0,
                           help="Port to listen on (default: a free one).")


@click.command()
@host_option
@port_option
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int) -> None:
    """Serve a live web page of the running project: its workers, who talks to whom, jobs,
    hand-offs and traces. Prints the page's URL (with its secret token) once; runs until
    Ctrl-C or until the project stops."""
    project = find_project(ctx.obj.get("file"), ctx.obj.get("project"))
    if not project.state.supervisor_alive():
        raise CommandError(f"project '{project.name}' is not running; "
                           f"`{project.command()} up -d` starts it")
    from pipecat_workers_cli.dashboard.sources import for_running_project

    listener = Listener.bind(host, port)
    announce(listener)
    served = for_running_project(project, listener)
    try:
        asyncio.run(_serve(served.run()))
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo("the project stopped; so does its dashboard", err=True)


def announce(listener: Listener) -> None:
    """Print the URL, once (it holds the token), and a warning beyond loopback."""
    if warning := listener.warning():
        click.secho(warning, fg="yellow", err=True)
    click.echo(f"dashboard: {listener.url}")


async def _serve(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends; SIGTERM ends it as Ctrl-C does."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        raise KeyboardInterrupt from None
