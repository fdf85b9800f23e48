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


PROXY_CLASSES: Mapping[str, str] = {
    "client": "pipecat_workers.proxy:WebSocketProxyClient",
    "server": "pipecat_workers.proxy:WebSocketProxyServer",
}
"""The library class a ``proxy:`` entry runs, by its role."""
PROXY_TOKEN_ENV = "PIPECAT_WORKERS_PROXY_TOKEN"
"""Where a proxy worker reads its token (the library's ``pipecat_workers.proxy.TOKEN_ENV``)."""
FORWARD_MESSAGES: Mapping[str, str] = {"end": "BusEndMessage", "cancel": "BusCancelMessage"}
"""``proxy.forward``'s short names: the broadcasts of :mod:`pipecat_workers.bus` they mean."""


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """A ``proxy:`` entry: a worker that joins this bus to another project's over WebSocket.

    A client (``url``) stands in here for workers of the project behind the server; a server
    (``host``/``port``) lets clients reach the workers it exposes. Either way the stand-ins
    put on this bus are named after the other side's workers, never after the proxy.
    """

    role: Literal["client", "server"]
    url: str | None = None                  # a client's ws:// or wss:// URL
    host: str | None = None                 # a server's address
    port: int | None = None
    remote: tuple[str, ...] | None = None   # the other side's workers to stand in for
    expose: tuple[str, ...] | None = None   # this bus's workers the other side may reach
    forward: tuple[str, ...] = ()           # keys of FORWARD_MESSAGES
    token: str | None = field(default=None, repr=False)  # bearer token (passed in env)

    @property
    def class_path(self) -> str:
        return PROXY_CLASSES[self.role]

    def args(self) -> dict[str, Any]:
        """The class's keyword arguments, JSON-friendly: ``forward_messages`` holds short
        names, made into message classes where the worker is built; the token is left out
        (it travels in the environment, as secrets do)."""
        args: dict[str, Any] = {}
        if self.role == "client":
            args["url"] = self.url
            if self.expose is not None:
                args["local_worker_name"] = list(self.expose)
        else:
            args.update(worker_name=list(self.expose or ()), host=self.host, port=self.port)
        if self.remote is not None:
            args["remote_worker_name"] = list(self.remote)
        if self.forward:
            args["forward_messages"] = list(self.forward)
        return args


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
    proxy: ProxySpec | None = None           # a ``proxy:`` entry (class_path and args follow)

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

    def proxy_for(self, name: str) -> WorkerSpec | None:
        """The client proxy that stands in for the remote worker ``name``: one that lists it
        in ``remote``, else the only client that stands in for all the other side exposes;
        None if there is neither."""
        clients = [spec for spec in self.workers.values()
                   if spec.proxy is not None and spec.proxy.role == "client"]
        for spec in clients:
            if spec.proxy is not None and name in (spec.proxy.remote or ()):
                return spec
        unlisted = [spec for spec in clients if spec.proxy and spec.proxy.remote is None]
        return unlisted[0] if len(unlisted) == 1 else None

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
