"""``workers down``, ``stop``, ``start`` and ``restart``: ask the running supervisor."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import click

from pipecat_workers_cli.commands.control import (
    POLL,
    STARTED,
    ask,
    project_of,
    status_of,
    timeout_option,
)
from pipecat_workers_cli.errors import CommandError, SeveralProjects
from pipecat_workers_cli.project import Project
from pipecat_workers_cli.states import ENDED, FAILING, select, worker_line
from pipecat_workers_cli.supervisor.status import WorkerStatus

_UNANSWERED_DOWN_WAIT = 2.0  # seconds for a supervisor that did not answer `down` to be gone


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
        time.sleep(POLL)


def _stops_within(project: Project, timeout: float) -> bool:
    """Whether the supervisor is gone within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while project.state.supervisor_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def _report(workers: list[WorkerStatus]) -> None:
    for worker in workers:
        click.echo(worker_line(worker))


@click.command()
@timeout_option
@click.pass_context
def down(ctx: click.Context, timeout: float) -> None:
    """Stop every worker (dependents first) and the supervisor."""
    try:
        project = project_of(ctx)
    except SeveralProjects as none_running:
        click.echo(f"no project is running here ({', '.join(none_running.names)})")
        return
    if not project.state.supervisor_alive():
        click.echo(f"project '{project.name}' is not running")
        return
    try:
        ask(project, {"cmd": "down"})
    except CommandError:
        # With nothing left to stop, it may exit before its answer leaves: that is done too.
        if not _stops_within(project, _UNANSWERED_DOWN_WAIT):
            raise
    if not _stops_within(project, timeout):
        raise CommandError(f"the supervisor did not stop within {timeout:g} s")
    click.echo(f"project '{project.name}' is down")


@click.command()
@click.argument("workers", nargs=-1)
@timeout_option
@click.pass_context
def stop(ctx: click.Context, workers: tuple[str, ...], timeout: float) -> None:
    """Stop WORKERS (all if none); the project keeps running."""
    project = project_of(ctx)
    ask(project, {"cmd": "stop", "workers": list(workers)})
    _report(_wait(project, list(workers), ENDED, timeout))


@click.command()
@click.argument("workers", nargs=-1)
@timeout_option
@click.pass_context
def start(ctx: click.Context, workers: tuple[str, ...], timeout: float) -> None:
    """Start stopped WORKERS (all if none) and wait until they are ready."""
    project = project_of(ctx)
    ask(project, {"cmd": "start", "workers": list(workers)})
    _report(_wait(project, list(workers), STARTED, timeout))


@click.command()
@click.argument("workers", nargs=-1)
@click.option("--rolling", is_flag=True, help="One process at a time, each ready again "
              "before the next: a replicated worker keeps serving. Running ones only.")
@timeout_option
@click.pass_context
def restart(ctx: click.Context, workers: tuple[str, ...], rolling: bool, timeout: float
            ) -> None:
    """Restart WORKERS (all if none) and wait until they are ready again."""
    project = project_of(ctx)
    if rolling:
        _report(_roll(project, workers, timeout))
        return
    before = {w.name: w.restarts for w in status_of(project).workers}
    ask(project, {"cmd": "restart", "workers": list(workers)})
    deadline = time.monotonic() + timeout
    # First see the restart happen, then wait for readiness.
    while not all(w.restarts > before.get(w.name, -1)
                  for w in select(status_of(project).workers, workers)):
        if time.monotonic() > deadline:
            raise CommandError(f"timed out after {timeout:g} s waiting for the restart")
        time.sleep(POLL)
    _report(_wait(project, list(workers), STARTED, max(0.0, deadline - time.monotonic())))


def _roll(project: Project, workers: Sequence[str], timeout: float) -> list[WorkerStatus]:
    """Ask for a rolling restart and follow it in the supervisor's status until it ends;
    returns the workers it restarted. Only the supervisor knows whose turn came, so the
    states of the others (one backing off all along, say) do not count."""
    answer = ask(project, {"cmd": "restart", "workers": list(workers), "rolling": True})
    roll_id = answer.get("roll")
    if not isinstance(roll_id, int):
        raise CommandError("the running supervisor does not follow rolling restarts: "
                           "restart the project to update it")
    deadline = time.monotonic() + timeout
    while True:
        status = status_of(project)
        roll = status.roll(roll_id)
        if roll is None:
            raise CommandError("the supervisor lost track of the rolling restart")
        if roll.state == "stopped":
            left = f"; not restarted: {', '.join(roll.pending)}" if roll.pending else ""
            raise CommandError(f"rolling restart stopped: {roll.reason}{left}")
        if roll.state == "done":
            return [w for w in status.workers if w.name in roll.restarted]
        if time.monotonic() > deadline:
            at = roll.restarted[-1] if roll.restarted else "its start"
            raise CommandError(f"timed out after {timeout:g} s; the rolling restart goes on "
                               f"(at {at})")
        time.sleep(POLL)
