"""The topology as typed, frozen objects: what `workers up` runs.

A :class:`Topology` is loaded and validated by
:func:`pipecat_workers_cli.topology.loader.load_topology`; :func:`expand` turns it into the
processes to run (one per replica), a pure function the supervisor and its tests share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

Backend = Literal["local", "redis", "pgmq"]
BACKENDS: tuple[Backend, ...] = ("local", "redis", "pgmq")


class RestartPolicy(StrEnum):
    """When the supervisor starts a worker process again after it exits."""

    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class Condition(StrEnum):
    """What a dependent waits for of a dependency (``depends_on: {db: {condition: ...}}``)."""

    READY = "ready"          # registered on its bus (or exited with code 0)
    COMPLETED = "completed"  # exited with code 0: a one-shot job, such as a migration


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One bus that workers join: ``key`` is its name in the file, ``channel`` on the wire."""

    key: str
    backend: Backend = "local"
    url: str | None = None  # redis:// URL or postgresql:// DSN; None for local
    channel: str = ""       # the bus channel name; defaults to "<project>.<key>"
    line: int = 0           # where it is declared, for later error messages


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker entry of the file (possibly several replicas)."""

    key: str
    class_path: str                          # "module:attr", a BaseWorker subclass
    args: Mapping[str, Any] = field(default_factory=dict)  # constructor keyword arguments
    channel: str = "main"                    # key of a ChannelSpec
    env: Mapping[str, str] = field(default_factory=dict)
    replicas: int = 1
    depends_on: tuple[str, ...] = ()         # worker keys started (and ready) before this one
    conditions: Mapping[str, Condition] = field(default_factory=dict)  # of depends_on keys
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    stop_timeout: float = 10.0               # seconds to drain before SIGTERM
    ready_timeout: float = 30.0              # seconds from spawn to registered on the bus
    max_restarts: int | None = None          # restarts in a row before it stays crashed
    line: int = 0

    def condition(self, key: str) -> Condition:
        """What it waits for of its dependency ``key``: ready unless the file says otherwise."""
        return self.conditions.get(key, Condition.READY)

    def instance_names(self) -> list[str]:
        """Bus names of its processes: ``key`` alone, or ``key.1``..``key.N`` for replicas."""
        if self.replicas == 1:
            return [self.key]
        return [f"{self.key}.{i}" for i in range(1, self.replicas + 1)]


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole project: its channels and workers, in file order."""

    name: str
    path: Path                    # the topology file (absolute)
    root: Path                    # the project directory: imports and the state directory
    channels: Mapping[str, ChannelSpec]
    workers: Mapping[str, WorkerSpec]
    preload: tuple[str, ...] = ()  # modules the process template imports (``preload:``)
    # The project's env files given on the command line (``--env-file``), absolute; None:
    # the ``.env`` beside the file, if any. Kept so that a reload reads the same ones.
    env_files: tuple[str, ...] | None = None

    def unknown_workers(self, names: Iterable[str]) -> str | None:
        """What is wrong with ``names`` given to a command (a worker key names all its
        replicas), as one line; None if every name is known."""
        known = list(dict.fromkeys(
            n for spec in self.workers.values() for n in (spec.key, *spec.instance_names())))
        unknown = [n for n in names if n not in known]
        if not unknown:
            return None
        return (f"no worker named {', '.join(map(repr, unknown))} in {self.path.name} "
                f"(it has {', '.join(known)})")


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One worker process to run: a replica of a :class:`WorkerSpec` on its channel."""

    name: str                        # bus name of the worker, unique in the project
    worker: WorkerSpec
    channel: ChannelSpec
    depends_on: tuple[str, ...]      # process names that must be ready first
    completed: frozenset[str] = frozenset()  # of those, the ones that must exit with code 0


def expand(topology: Topology) -> list[ProcessSpec]:
    """The processes of a topology in dependency order (dependencies first, else file order).

    ``depends_on: [greeter]`` on a worker waits for every replica of ``greeter``. The loader
    has already refused unknown names and cycles.
    """
    names = {key: spec.instance_names() for key, spec in topology.workers.items()}
    ordered: list[str] = []
    seen: set[str] = set()

    def visit(key: str) -> None:
        if key in seen:
            return
        seen.add(key)
        for dep in topology.workers[key].depends_on:
            visit(dep)
        ordered.append(key)

    for key in topology.workers:
        visit(key)
    processes: list[ProcessSpec] = []
    for key in ordered:
        spec = topology.workers[key]
        deps = tuple(n for dep in spec.depends_on for n in names[dep])
        completed = frozenset(n for dep in spec.depends_on for n in names[dep]
                              if spec.condition(dep) is Condition.COMPLETED)
        channel = topology.channels[spec.channel]
        processes.extend(ProcessSpec(name=n, worker=spec, channel=channel, depends_on=deps,
                                     completed=completed)
                         for n in names[key])
    return processes
