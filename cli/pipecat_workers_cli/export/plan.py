"""What every export needs of a topology: per worker key, how to start its processes.

A pure function of the loaded topology and of its file as written (:func:`plan`): each
exported process runs the host the supervisor runs (``python -P -m pipecat_workers_cli.host``)
with its description in ``PIPECAT_WORKERS_HOST``, without the bus URL, which comes from the
environment (``PIPECAT_WORKERS_BUS_URL``), where each engine keeps its secrets. An
environment value that the file writes with a ``${VAR}`` reference (or that does not come
from the file) is a secret too: the generators never write out what it resolved to, so the
topology is loaded with :func:`kept_as_reference` and needs no value for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from pipecat_workers.proxy.server import is_loopback
from pipecat_workers_cli.host import BUS_URL_ENV, HOST_ENV, HostSpec
from pipecat_workers_cli.topology.errors import TopologyError
from pipecat_workers_cli.topology.loader import Loaded
from pipecat_workers_cli.topology.model import (
    PROXY_TOKEN_ENV,
    Condition,
    RestartPolicy,
    WorkerSpec,
)
from pipecat_workers_cli.topology.nodes import Node

HOST_COMMAND = ("python", "-P", "-m", "pipecat_workers_cli.host")
"""How a process starts its worker: what the supervisor runs, with the image's ``python``."""


@dataclass(frozen=True, slots=True)
class Service:
    """One worker key of the topology, as an engine runs it.

    Attributes:
        key: The worker's key; its processes are ``key`` or, with replicas, ``key.<replica>``.
        replicas: How many processes.
        host: The host's description (JSON), the bus URL left out.
        env: Environment values the file writes out, by name.
        secrets: Environment values that are secrets, by name: the file's raw text for each
            (``${OPENAI_KEY}``), or ``None`` when it does not come from the file.
        listen: The port a proxy server listens on, with its address, if it is one.
        channel: The key of its channel.
        url: The channel's URL as the file writes it when that is a reference holding no
            credentials (``${REDIS_URL}``); ``None`` when it is written out (a secret that the
            engine must provide).
        depends_on: Keys of the workers that start before it.
        conditions: What it waits for of each of ``depends_on``.
        restart: Its restart policy.
        max_restarts: Restarts in a row before it stays down, if bounded.
        one_shot: It runs to completion: ``restart: no``, or another worker waits for it to
            complete.
        stop_timeout: Seconds it may take to end once asked to.
    """

    key: str
    replicas: int
    host: str
    env: Mapping[str, str]
    secrets: Mapping[str, str | None]
    listen: tuple[str, int] | None
    channel: str
    url: str | None
    depends_on: tuple[str, ...]
    conditions: Mapping[str, Condition]
    restart: RestartPolicy
    max_restarts: int | None
    one_shot: bool
    stop_timeout: float


@dataclass(frozen=True, slots=True)
class Plan:
    """The services of one project, in file order."""

    project: str
    services: tuple[Service, ...]

    @property
    def secret_names(self) -> list[str]:
        """Every secret environment name, sorted, the bus URL's first."""
        names = {name for s in self.services for name in s.secrets}
        return [BUS_URL_ENV, *sorted(names)]


_KEPT = re.compile(r"channels\.[^.]+\.url|workers\.[^.]+\.env\.[^.]+"
                   r"|workers\.[^.]+\.proxy\.token")


def kept_as_reference(field: str) -> bool:
    """Whether an export writes ``field``'s ``${VAR}`` rather than its value: a channel's
    URL, a worker's ``env`` values and a proxy's token (so an export needs no value for
    them)."""
    return _KEPT.fullmatch(field) is not None


def plan(loaded: Loaded, file: str) -> Plan:
    """The services of the topology ``loaded`` from ``file`` (as the user named it).

    Raises:
        TopologyError: a worker is on a local (embedded) channel, which lives inside
            ``workers up`` and so cannot be exported; or its ``args`` hold a ``${VAR}``
            reference, whose value an export would write out.
    """
    topology, raw = loaded.topology, loaded.document
    completed = {dep for spec in topology.workers.values() for dep in spec.depends_on
                 if spec.condition(dep) is Condition.COMPLETED}
    services = []
    for spec in topology.workers.values():
        channel = topology.channels[spec.channel]
        if channel.backend == "local" or channel.url is None:
            raise TopologyError(
                "a local channel lives inside `workers up` and cannot be exported; use a "
                "redis or pgmq channel", file=file, line=channel.line or None,
                field=f"channels.{channel.key}")
        raw_worker = _entry(raw, "workers", spec.key)
        if raw_worker is not None and _references(_entry(raw_worker, "args")):
            raise TopologyError(
                "its args hold a ${VAR} reference, whose value an export would write out; "
                "pass secrets through env", file=file, line=spec.line or None,
                field=f"workers.{spec.key}")
        env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
        secrets: dict[str, str | None] = {}
        for name, value in spec.env.items():
            written = _entry(raw_worker, "env", name)
            if spec.proxy is not None and name == PROXY_TOKEN_ENV:
                written = _entry(raw_worker, "proxy", "token")
            if written is None:
                secrets[name] = None  # from an env file
            elif _references(written):
                secrets[name] = written.raw
            else:
                env[name] = value  # a number or a boolean is written out as such
        host = HostSpec(name=spec.key, class_path=spec.class_path, args=dict(spec.args),
                        backend=channel.backend, channel=channel.channel,
                        runner=f"{topology.name}/{spec.key}", root=".")
        services.append(Service(
            key=spec.key, replicas=spec.replicas, host=host.to_json(), env=env,
            secrets=secrets, channel=channel.key, listen=_listen(spec),
            url=_url_reference(_entry(raw, "channels", channel.key, "url")),
            depends_on=spec.depends_on,
            conditions={dep: spec.condition(dep) for dep in spec.depends_on},
            restart=spec.restart, max_restarts=spec.max_restarts,
            one_shot=spec.restart is RestartPolicy.NO or spec.key in completed,
            stop_timeout=spec.stop_timeout))
    return Plan(project=topology.name, services=tuple(services))


def _listen(spec: WorkerSpec) -> tuple[str, int] | None:
    proxy = spec.proxy
    if proxy is None or proxy.host is None or proxy.port is None:
        return None
    return proxy.host, proxy.port


def listen_notes(plan: Plan) -> list[str]:
    """What to change for a proxy server to be reached from outside its container: one
    that listens on a loopback address answers only inside it."""
    return [f"Proxy server '{s.key}' listens on {s.listen[0]}:{s.listen[1]}, which only its "
            "own container reaches: listen on 0.0.0.0 (with a token) to serve others."
            for s in plan.services
            if s.listen is not None and is_loopback(s.listen[0])]


def bus_url_variable(channel: str) -> str:
    """The variable an engine that interpolates (compose) reads channel ``channel``'s URL
    from, when the file writes the URL out: ``PIPECAT_WORKERS_BUS_URL_MAIN``."""
    return f"{BUS_URL_ENV}_{re.sub(r'[^A-Z0-9]+', '_', channel.upper())}"


def host_env(service: Service) -> dict[str, str]:
    """The variables every process of ``service`` gets, the secrets left out."""
    return {HOST_ENV: service.host, **service.env}


def _entry(node: Node | None, *keys: str) -> Node | None:
    """The value at ``keys`` of a mapping as written, if there is one."""
    for key in keys:
        if node is None or not node.is_mapping:
            return None
        node = node.value.get(key)
    return node


def _references(node: Node | None) -> bool:
    """Whether a value as written holds a ``${VAR}`` reference anywhere in it."""
    if node is None:
        return False
    if node.is_mapping:
        return any(_references(v) for v in node.value.values())
    if node.is_list:
        return any(_references(v) for v in node.value)
    return isinstance(node.value, str) and "${" in node.raw


def _url_reference(node: Node | None) -> str | None:
    """The URL as written, if an engine may write it too: a reference with no credentials in
    its literal text (a default such as ``${URL:-redis://:pw@host}`` holds some)."""
    if node is None or not _references(node) or "@" in node.raw:
        return None
    return node.raw


class _Dumper(yaml.SafeDumper):  # type: ignore[misc,unused-ignore]
    """Writes a value that appears twice twice, not as an anchor and an alias (which some
    readers of compose files and manifests refuse)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(document: object) -> str:
    """``document`` as block YAML, in the order of its keys, long strings on one line."""
    text: str = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)
    return text
