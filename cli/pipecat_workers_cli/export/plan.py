"""What every export needs of a topology: per worker key, how to start its processes.

A pure function of the loaded topology and of the file's text (:func:`plan`): each exported
process runs the host the supervisor runs (``python -P -m pipecat_workers_cli.host``) with its
description in ``PIPECAT_WORKERS_HOST``, without the bus URL, which comes from the environment
(``PIPECAT_WORKERS_BUS_URL``), where each engine keeps its secrets. An environment value that
the file writes with a ``${VAR}`` reference (or that does not come from the file) is a secret
too: the generators never write out what it resolved to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from pipecat_workers_cli.host import BUS_URL_ENV, HOST_ENV, HostSpec
from pipecat_workers_cli.topology.errors import TopologyError
from pipecat_workers_cli.topology.model import RestartPolicy, Topology

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
        channel: The key of its channel.
        url: The channel's URL as the file writes it (``${REDIS_URL}``, or the URL itself).
        depends_on: Keys of the workers that start before it.
        restart: Its restart policy.
        stop_timeout: Seconds it may take to end once asked to.
    """

    key: str
    replicas: int
    host: str
    env: Mapping[str, str]
    secrets: Mapping[str, str | None]
    channel: str
    url: str
    depends_on: tuple[str, ...]
    restart: RestartPolicy
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


def plan(topology: Topology, text: str, file: str) -> Plan:
    """The services of ``topology``, whose file (``file``, as the user named it) holds
    ``text``.

    Raises:
        TopologyError: a worker is on a local (embedded) channel, which lives inside
            ``workers up`` and so cannot be exported; or its ``args`` hold a ``${VAR}``
            reference, whose value an export would write out.
    """
    raw = _raw_document(text)
    services = []
    for spec in topology.workers.values():
        channel = topology.channels[spec.channel]
        if channel.backend == "local" or channel.url is None:
            raise TopologyError(
                "a local channel lives inside `workers up` and cannot be exported; use a "
                "redis or pgmq channel", file=file, line=channel.line or None,
                field=f"channels.{channel.key}")
        raw_worker = _mapping(_mapping(raw.get("workers")).get(spec.key))
        if "${" in yaml.safe_dump(raw_worker.get("args")):
            raise TopologyError(
                "its args hold a ${VAR} reference, whose value an export would write out; "
                "pass secrets through env", file=file, line=spec.line or None,
                field=f"workers.{spec.key}")
        raw_env = _mapping(raw_worker.get("env"))
        env, secrets = {"PYTHONUNBUFFERED": "1"}, {}
        for name, value in spec.env.items():
            written = raw_env.get(name)
            if isinstance(written, str) and "${" not in written:
                env[name] = value
            elif written is not None and not isinstance(written, str):
                env[name] = value  # a number or a boolean, written out as such
            else:
                secrets[name] = written if isinstance(written, str) else None
        raw_url = _mapping(_mapping(raw.get("channels")).get(channel.key)).get("url")
        host = HostSpec(name=spec.key, class_path=spec.class_path, args=dict(spec.args),
                        backend=channel.backend, channel=channel.channel,
                        runner=f"{topology.name}/{spec.key}", root=".")
        services.append(Service(
            key=spec.key, replicas=spec.replicas, host=host.to_json(), env=env,
            secrets=secrets, channel=channel.key,
            url=raw_url if isinstance(raw_url, str) else channel.url,
            depends_on=spec.depends_on, restart=spec.restart, stop_timeout=spec.stop_timeout))
    return Plan(project=topology.name, services=tuple(services))


def host_env(service: Service) -> dict[str, str]:
    """The variables every process of ``service`` gets, the secrets left out."""
    return {HOST_ENV: service.host, **service.env}


def _raw_document(text: str) -> Mapping[str, Any]:
    """The file before interpolation: which values reference variables. It was loaded (and
    checked) already, so it parses."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return _mapping(document)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _Dumper(yaml.SafeDumper):  # type: ignore[misc,unused-ignore]
    """Writes a value that appears twice twice, not as an anchor and an alias (which some
    readers of compose files and manifests refuse)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(document: object) -> str:
    """``document`` as block YAML, in the order of its keys, long strings on one line."""
    text: str = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)
    return text
