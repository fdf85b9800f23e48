"""A worker's state as commands read it: the groups they wait on, and one line per worker.

The states are the strings of :attr:`WorkerStatus.state <cli.supervisor.status.WorkerStatus>`
(what ``ps --json`` shows), so this module needs neither the supervisor nor rich.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cli.supervisor.status import WorkerStatus

FAILING = frozenset({"backing off", "crashed", "failed"})
"""Did not get going: ``up -d`` and ``start`` stop waiting and say why."""

ENDED = frozenset({"exited", "crashed", "failed", "stopped"})
"""Nothing of the worker runs, nor will until asked: ``stop`` waits for these. When every
worker is here, the supervisor exits (unless it reloads)."""


def select(workers: Iterable[WorkerStatus], names: Sequence[str]) -> list[WorkerStatus]:
    """The workers named (by name, or by key for every replica), or all if none are."""
    return [w for w in workers if not names or w.name in names or w.worker in names]


def worker_line(worker: WorkerStatus) -> str:
    """``echo: ready (pid 1234)``, ``crasher: backing off (exited with code 3: boom)``."""
    details = [f"pid {worker.pid}"] if worker.pid else []
    if worker.reason:
        details.append(worker.reason)
    elif worker.exit_code is not None and worker.state in FAILING:
        details.append(f"exit code {worker.exit_code}")
    return f"{worker.name}: {worker.state}" + (f" ({'; '.join(details)})" if details else "")
