"""A worker's state as commands read it: the groups they wait on, and one line per worker.

The states are the strings of :attr:`WorkerStatus.state <cli.supervisor.status.WorkerStatus>` (what
``ps --json`` shows), the values of :class:`pipecat_workers_cli.supervisor.model.State`. This module
takes them from that plain-data module, and needs neither the supervisor itself nor rich.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipecat_workers_cli.supervisor.model import FINAL, State
from pipecat_workers_cli.supervisor.status import WorkerStatus

GONE = "gone"
"""Not a state of the supervisor's: ``ps`` says it of a worker that was running when its
supervisor was last heard of, and the supervisor is no longer there (killed)."""

STATES: tuple[str, ...] = (*(s.value for s in State), GONE)
"""Every word ``ps``, ``ps --json`` and the live view use for a worker's state."""

FAILING = frozenset(s.value for s in (State.BACKOFF, State.CRASHED, State.FAILED))
"""Did not get going: ``up -d`` and ``start`` stop waiting and say why."""

ENDED = frozenset(s.value for s in FINAL)
"""Nothing of the worker runs, nor will until asked: ``stop`` waits for these. When every
worker is here the supervisor exits, unless some worker was stopped on request (``workers
stop``, for ``start`` to bring back) or it runs with ``--reload``: then it stays until
``down``."""


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
