"""``workers down``, ``stop``, ``start`` and ``restart``: ask the running supervisor."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from cli.errors import CommandError
from cli.project import Project, find_project
from cli.supervisor.control import request
from cli.supervisor.status import ProjectStatus

_POLL = 0.05


def _project(ctx: click.Context) -> Project:
    return find_project(ctx.obj.get("file"), ctx.obj.get("project"))


def _ask(project: Project, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    if not project.state.supervisor_alive():
        raise CommandError(f"project '{project.name}' is not running")
    socket = ((project.state.read_state() or {}).get("sockets") or {}).get("control")
    path = socket or project.state.socket_path("control")
    return asyncio.run(request(path, payload, timeout))


def status_of(project: Project) -> ProjectStatus:
    """The live status from the supervisor."""
    return ProjectStatus.from_json(_ask(project, {"cmd": "status"})["status"])


def _wait(project: Project, names: list[str], wanted: set[str], timeout: float) -> None:
    """Wait until the named workers (all if none) are in one of the ``wanted`` states."""
    deadline = time.monotonic() + timeout
    while True:
        status = status_of(project)
        chosen = [w for w in status.workers if not names or w.name in names
                  or w.worker in names]
        if all(w.state in wanted for w in chosen):
            return
        failed = [w for w in chosen if w.state in ("crashed", "failed", "backing off")]
        if failed and "ready" in wanted:
            raise CommandError("; ".join(f"{w.name} is {w.state}"
                                         + (f" ({w.reason})" if w.reason else "")
                                         for w in failed))
        if time.monotonic() > deadline:
            late = ", ".join(f"{w.name} ({w.state})" for w in chosen if w.state not in wanted)
            raise CommandError(f"timed out after {timeout:g} s waiting for {late}")
        time.sleep(_POLL)


_timeout = click.option("--timeout", type=float, default=60.0, show_default=True,
                        help="Seconds to wait for the workers to get there.")


@click.command()
@_timeout
@click.pass_context
def down(ctx: click.Context, timeout: float) -> None:
    """Stop every worker (dependents first) and the supervisor."""
    project = _project(ctx)
    if not project.state.supervisor_alive():
        click.echo(f"project '{project.name}' is not running")
        return
    _ask(project, {"cmd": "down"})
    deadline = time.monotonic() + timeout
    while project.state.supervisor_alive():
        if time.monotonic() > deadline:
            raise CommandError(f"the supervisor did not stop within {timeout:g} s")
        time.sleep(_POLL)
    click.echo(f"project '{project.name}' is down")


@click.command()
@click.argument("workers", nargs=-1)
@_timeout
@click.pass_context
def stop(ctx: click.Context, workers: tuple[str, ...], timeout: float) -> None:
    """Stop WORKERS (all if none); the project keeps running."""
    project = _project(ctx)
    _ask(project, {"cmd": "stop", "workers": list(workers)})
    _wait(project, list(workers), {"stopped", "exited", "crashed", "failed"}, timeout)


@click.command()
@click.argument("workers", nargs=-1)
@_timeout
@click.pass_context
def start(ctx: click.Context, workers: tuple[str, ...], timeout: float) -> None:
    """Start stopped WORKERS (all if none) and wait until they are ready."""
    project = _project(ctx)
    _ask(project, {"cmd": "start", "workers": list(workers)})
    _wait(project, list(workers), {"ready", "exited"}, timeout)


@click.command()
@click.argument("workers", nargs=-1)
@_timeout
@click.pass_context
def restart(ctx: click.Context, workers: tuple[str, ...], timeout: float) -> None:
    """Restart WORKERS (all if none) and wait until they are ready again."""
    project = _project(ctx)
    before = {w.name: w.restarts for w in status_of(project).workers}
    _ask(project, {"cmd": "restart", "workers": list(workers)})
    deadline = time.monotonic() + timeout
    # First see the restart happen, then wait for readiness.
    while True:
        status = status_of(project)
        chosen = [w for w in status.workers if not workers or w.name in workers
                  or w.worker in workers]
        if all(w.restarts > before.get(w.name, 0) for w in chosen):
            break
        if time.monotonic() > deadline:
            raise CommandError(f"timed out after {timeout:g} s waiting for the restart")
        time.sleep(_POLL)
    _wait(project, list(workers), {"ready", "exited"}, max(0.0, deadline - time.monotonic()))
