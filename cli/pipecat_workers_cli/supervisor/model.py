"""What the supervisor's state machine works with: states, delays, actions, and one process.

Plain data shared by :mod:`pipecat_workers_cli.supervisor.machine` (which decides), the driver
(which acts) and the status it reports.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from pipecat_workers_cli.topology.model import ProcessSpec


class State(StrEnum):
    """Where a worker process is in its life, as ``ps`` and the live view show it."""

    WAITING = "waiting"          # for its dependencies to be ready
    STARTING = "starting"        # spawned, not yet registered on its bus
    READY = "ready"              # registered on its bus
    STOPPING = "stopping"        # draining, then SIGTERM, then SIGKILL
    BACKOFF = "backing off"      # exited; restarts when its back-off delay is over
    EXITED = "exited"            # ended by itself, successfully
    CRASHED = "crashed"          # ended with an error, and its policy says no restart
    FAILED = "failed"            # cannot run: bad class or arguments, or a dependency failed
    STOPPED = "stopped"          # stopped on request



ALIVE = frozenset({State.STARTING, State.READY, State.STOPPING})
FINAL = frozenset({State.EXITED, State.CRASHED, State.FAILED, State.STOPPED})


@dataclass(frozen=True, slots=True)
class Timing:
    """The supervisor's delays, in seconds; the defaults suit most projects."""

    term_timeout: float = 5.0      # after SIGTERM, before SIGKILL
    kill_timeout: float = 5.0      # after SIGKILL, before saying the process will not die
    backoff_first: float = 0.5     # the first restart's delay (before jitter)
    backoff_max: float = 30.0
    stable_after: float = 10.0     # up this long, a process's failures are forgiven
    crash_loop_after: int = 5      # this many failures in a row is a crash loop


# -- actions: what the driver must do ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    name: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Ask the worker to end gracefully on its bus."""

    name: str


@dataclass(frozen=True, slots=True)
class Kill:
    """Signal the worker's whole process group."""

    name: str
    sig: int


@dataclass(frozen=True, slots=True)
class Note:
    """A line from the supervisor about one worker, for its log and the live view."""

    name: str
    text: str


Action = Spawn | Drain | Kill | Note


@dataclass(slots=True)
class Proc:
    """One worker process as the supervisor sees it."""

    spec: ProcessSpec
    state: State = State.WAITING
    wanted: bool = True
    pid: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    failures: int = 0               # in a row; forgiven after Timing.stable_after
    reason: str = ""                # why it is in its state, when that needs saying
    deadline: float | None = None   # when tick() has something to do for it
    phase: Literal["drain", "term", "kill"] | None = None
    restart_when_stopped: bool = False
    quick_stop: bool = False        # skip the drain (a reload: its code is already stale)
    removed: bool = False           # gone from the topology: forgotten once it has stopped
    held: bool = False              # stopped by a `stop` request: may be started again
    failed_at: float | None = None  # when it last became crashed or failed
    auto_restarts: int = 0          # by its restart policy, in a row (for max_restarts)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying a topology did, process by process, for the ``up`` that asked."""

    started: tuple[str, ...] = ()    # new, or stopped and started again
    restarted: tuple[str, ...] = ()  # changed in the file
    stopped: tuple[str, ...] = ()    # gone from the file
    unchanged: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"started": list(self.started), "restarted": list(self.restarted),
                "stopped": list(self.stopped), "unchanged": list(self.unchanged)}


def same_process(a: ProcessSpec, b: ProcessSpec) -> bool:
    """Whether two specs run the same process: where they sit in the file, and how many
    replicas their worker or its dependencies have, do not count (so scaling a worker
    restarts none of its dependents)."""
    return a.name == b.name and replace(
        a.worker, line=0, replicas=1) == replace(b.worker, line=0, replicas=1) and replace(
        a.channel, line=0) == replace(b.channel, line=0)


def describe_exit(code: int) -> str:
    """``code 1`` or ``SIGKILL`` (a negative code is the signal that ended the process)."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
