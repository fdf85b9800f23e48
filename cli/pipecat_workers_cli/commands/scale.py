"""``workers scale WORKER=N...``: change how many replicas of a worker run, without editing
the topology; the file's count comes back with the next ``up`` (or edit under ``--reload``)."""

from __future__ import annotations

import time

import click

from pipecat_workers_cli.commands.lifecycle import (
    _POLL,
    _STARTED,
    _ask,
    _project,
    _timeout,
    status_of,
)
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.states import ENDED, FAILING, worker_line
from pipecat_workers_cli.supervisor.status import WorkerStatus
from pipecat_workers_cli.topology.schema import MAX_REPLICAS


def parse_counts(items: tuple[str, ...]) -> dict[str, int]:
    """``("echo=3", "peer=0")`` -> ``{"echo": 3, "peer": 0}``.

    Raises:
        CommandError: an item is not ``WORKER=N`` with N from 0 to the replica limit.
    """
    counts: dict[str, int] = {}
    for item in items:
        key, equals, count = item.partition("=")
        if not (equals and key and count.strip().isdigit()):
            raise CommandError(f"{item!r}: expected WORKER=N, such as echo=3")
        number = int(count) if len(count) < 20 else MAX_REPLICAS + 1
        if number > MAX_REPLICAS:
            raise CommandError(f"{item!r}: at most {MAX_REPLICAS:,} replicas")
        counts[key] = number
    return counts


@click.command()
@click.argument("counts", nargs=-1, required=True, metavar="WORKER=N...")
@_timeout
@click.pass_context
def scale(ctx: click.Context, counts: tuple[str, ...], timeout: float) -> None:
    """Run N replicas of WORKER (a worker key; 0 stops them all) and wait until they are
    ready. It lasts until the topology is applied again (`up`, or an edit under --reload)."""
    wanted = parse_counts(counts)
    project = _project(ctx)
    _ask(project, {"cmd": "scale", "replicas": wanted})
    deadline = time.monotonic() + timeout
    while True:
        workers = [w for w in status_of(project).workers if w.worker in wanted]
        if _scaled(workers, wanted):
            break
        if failed := [w for w in workers if w.state in FAILING and wanted[w.worker]]:
            raise CommandError("; ".join(worker_line(w) for w in failed))
        if time.monotonic() > deadline:
            raise CommandError(f"timed out after {timeout:g} s waiting for the replicas")
        time.sleep(_POLL)
    for worker in workers:
        click.echo(worker_line(worker))


def _scaled(workers: list[WorkerStatus], wanted: dict[str, int]) -> bool:
    """Whether each key runs its count of replicas, all started (or all ended for 0)."""
    for key, count in wanted.items():
        mine = [w for w in workers if w.worker == key]
        if count == 0:
            if not all(w.state in ENDED for w in mine):
                return False
        elif len(mine) != count or not all(w.state in _STARTED for w in mine):
            return False
    return True
