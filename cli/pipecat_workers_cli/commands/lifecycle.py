"""``workers down``, ``stop``, ``start`` and ``restart``: ask the running supervisor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

import click

from pipecat_workers_cli.errors import CommandError, SeveralProjects
from pipecat_workers_cli.project import Project, find_project
from pipecat_workers_cli.states import ENDED, FAILING, select, worker_line
from pipecat_workers_cli.supervisor.control import request
from pipecat_workers_cli.supervisor.status import ProjectStatus, WorkerStatus

_POLL = 0.05
_STARTED = frozenset({"ready", "exited"})  # what start and restart wait for
_UNANSWERED_DOWN_WAIT = 2.0  # seconds for a supervisor that did not answer `down` to be gone


def _project(ctx: click.Context) -> Project:
    return find_project(ctx.obj.get("file"), ctx.obj.get("project"))


def _ask(project: Project, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    if not project.state.supervisor_alive():
        raise CommandError(f"project '{project.name}' is not running")
    return asyncio.run(request(project.state.socket_from_state("control"), payload, timeout))


def status_of(project: Project, timeout: float = 10.0) -> ProjectStatus:
    """The live status from the supervisor.

    Raises:
        CommandError: the project is not running, or its supervisor does not answer within
            ``timeout`` seconds.
    """
    return ProjectStatus.from_json(_ask(project, {"cmd": "status"}, timeout)["status"])


def _wait(project: Project, names: list[str], wanted: Collection[str], timeout: float
          ) -> list[WorkerStatus]:
    """Wait until the named workers (all if none) are in one of the ``wanted`` states;
    returns them."""
    deadline = time.monotonic() + timeout
    while True:
        chosen = select(status_of(project).workers, names)
        if all(w.state in wanted for w in chosen):
            return chosen
        failed = [w for w in chosen if w.state in FAILING]
        if failed and "ready" in wanted:
            raise CommandError("; ".join(worker_line(w) for w in failed))
        if time.monotonic() > deadline:
            late = ", ".join(f"{w.name} ({w.state})" for w in chosen if w.state not in wanted)
            raise CommandError(f"timed out after {timeout:g} s waiting for {late}")
        time.sleep(_POLL)


def _stops_within(project: Project, timeout: float) -> bool:
    """Whether the supervisor is gone within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while project.state.supervisor_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def _report(workers: list[WorkerStatus]) -> None:
    for worker in workers:
        click.echo(worker_line(worker))


_timeout = click.option("--timeout", type=float, default=60.0, show_default=True,
                        help="Seconds to wait for the workers to get there.")


@click.command()
@_timeout
@click.pass_context
def down(ctx: click.Context, timeout: float) -> None:
    """Stop every worker (dependents first) and the supervisor."""
    try:
        project = _project(ctx)
    except SeveralProjects as none_running:
        click.echo(f"no project is running here ({', '.join(none_running.names)})")
        return
    if not project.state.supervisor_alive():
        click.echo(f"project '{project.name}' is not running")
        return
    try:
        _ask(project, {"cmd": "down"})
    except CommandError:
        # With nothing left to stop, it may exit before its answer leaves: that is done too.
        if not _stops_within(project, _UNANSWERED_DOWN_WAIT):
            raise
    if not _stops_within(project, timeout):
        raise CommandError(f"the supervisor did not stop within {timeout:g} s")
    click.echo(f"project '{project.name}' is down")


@click.command()
@click.argument("workers", nargs=-1)
@_timeout
@click.pass_context
def stop(ctx: click.Context, workers: tuple[str, ...], timeout: float) -> None:
    """Stop WORKERS (all if none); the project keeps running."""
    project = _project(ctx)
    _ask(project, {"cmd": "stop", "workers": list(workers)})
    _report(_wait(project, list(workers), ENDED, timeout))


@click.command()
@click.argument("workers", nargs=-1)
@_timeout
@click.pass_context
def start(ctx: click.Context, workers: tuple[str, ...], timeout: float) -> None:
    """Start stopped WORKERS (all if none) and wait until they are ready."""
    project = _project(ctx)
    _ask(project, {"cmd": "start", "workers": list(workers)})
    _report(_wait(project, list(workers), _STARTED, timeout))


@click.command()
@click.argument("workers", nargs=-1)
@click.option("--rolling", is_flag=True, help="One process at a time, each ready again "
              "before the next: a replicated worker keeps serving. Running ones only.")
@_timeout
@click.pass_context
def restart(ctx: click.Context, workers: tuple[str, ...], rolling: bool, timeout: float
            ) -> None:
    """Restart WORKERS (all if none) and wait until they are ready again."""
    project = _project(ctx)
    before = {w.name: w for w in status_of(project).workers}
    _ask(project, {"cmd": "restart", "workers": list(workers), "rolling": rolling})
    deadline = time.monotonic() + timeout
    # First see the restart happen, then wait for readiness.
    while True:
        chosen = select(status_of(project).workers, workers)
        if rolling:  # stopped ones are left alone; one that fails ends the roll
            chosen = [w for w in chosen if w.name in before
                      and before[w.name].state not in ENDED]
            if failed := [w for w in chosen if w.state in FAILING]:
                raise CommandError("rolling restart stopped: "
                                   + "; ".join(worker_line(w) for w in failed))
        if all(w.restarts > before[w.name].restarts if w.name in before else True
               for w in chosen):
            break
        if time.monotonic() > deadline:
            raise CommandError(f"timed out after {timeout:g} s waiting for the restart")
        time.sleep(_POLL)
    _report(_wait(project, [w.name for w in chosen] if rolling else list(workers), _STARTED,
                  max(0.0, deadline - time.monotonic())))
