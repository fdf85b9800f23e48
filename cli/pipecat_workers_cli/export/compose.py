"""A docker compose file: a service per worker key, its replicas under ``deploy``.

Compose interpolates ``${VAR}`` with the rules the topology follows, so a secret keeps the
reference the file wrote (resolved by compose from its shell or its ``.env``), and a value
written out has its ``$`` doubled. A bus URL the file writes out (a password in it, perhaps)
is never copied: the service reads ``${PIPECAT_WORKERS_BUS_URL_<CHANNEL>}`` instead.

Compose restarts whatever the exit status, so exit 78 (a configuration error, which
``workers up`` does not restart) cannot be told apart: ``restart: on-failure`` becomes
``on-failure:N``, N the worker's ``max_restarts`` or :data:`DEFAULT_MAX_RETRIES`; a
``depends_on`` condition becomes compose's: ``completed`` waits for the service to exit 0,
``ready`` for its container to start (no healthcheck tells when it joined its bus).
"""

from __future__ import annotations

from typing import Any

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.export.plan import (
    HOST_COMMAND,
    Plan,
    Service,
    bus_url_variable,
    dump_yaml,
    host_env,
    listen_notes,
)
from pipecat_workers_cli.host import BUS_URL_ENV, HOSTNAME_REPLICA, REPLICA_ENV
from pipecat_workers_cli.topology.model import Condition, RestartPolicy

DEFAULT_MAX_RETRIES = 5
"""Compose's retries of an ``on-failure`` worker that gives no ``max_restarts``."""

_CONDITIONS = {Condition.READY: "service_started",  # no healthcheck: started, not registered
               Condition.COMPLETED: "service_completed_successfully"}


def compose_file(plan: Plan, *, image: str, workdir: str) -> str:
    """The compose file of ``plan``: every service runs ``image`` in ``workdir``.

    Raises:
        CommandError: two channels' URLs would be read from one variable.
    """
    channels: dict[str, str] = {}
    for channel in dict.fromkeys(s.channel for s in plan.services):
        other = channels.setdefault(bus_url_variable(channel), channel)
        if other != channel:
            raise CommandError(f"channels '{other}' and '{channel}' both read their URL from "
                               f"{bus_url_variable(channel)} in compose: rename one")
    services = {s.key: _service(s, image=image, workdir=workdir) for s in plan.services}
    document = {"name": plan.project, "services": services}
    header = (f"# Written by `workers export compose` from project '{plan.project}'.\n"
              "# Each service runs the worker host of the `workers` command; secrets are\n"
              "# ${VAR} references that compose resolves from its shell or its .env file.\n")
    needed = sorted({bus_url_variable(s.channel) for s in plan.services if s.url is None})
    if needed:
        header += f"# Set the bus URL there too: {', '.join(needed)}.\n"
    header += "".join(f"# {note}\n" for note in listen_notes(plan))
    return header + dump_yaml(document)


def _service(service: Service, *, image: str, workdir: str) -> dict[str, Any]:
    environment = {name: _literal(value) for name, value in host_env(service).items()}
    environment[BUS_URL_ENV] = service.url or (
        f"${{{bus_url_variable(service.channel)}:?the bus URL of channel {service.channel}}}")
    if service.replicas > 1:
        environment[REPLICA_ENV] = HOSTNAME_REPLICA  # replicas of a service are alike
    for name, written in service.secrets.items():
        environment[name] = written if written is not None else f"${{{name}}}"
    entry: dict[str, Any] = {
        "image": _literal(image), "working_dir": _literal(workdir),
        "command": list(HOST_COMMAND), "environment": environment,
        "restart": _restart(service), "stop_grace_period": f"{service.stop_timeout + 5:g}s",
    }
    if service.listen is not None:  # a proxy server: its port on the host
        entry["ports"] = [f"{service.listen[1]}:{service.listen[1]}"]
    if service.depends_on:
        entry["depends_on"] = {key: {"condition": _CONDITIONS[service.conditions[key]]}
                               for key in service.depends_on}
    entry["deploy"] = {"replicas": service.replicas}
    return entry


def _restart(service: Service) -> str:
    if service.restart is RestartPolicy.NO or service.max_restarts == 0:
        return "no"  # (compose reads on-failure:0 as no limit)
    if service.restart is RestartPolicy.ALWAYS:
        return "always"
    retries = service.max_restarts if service.max_restarts is not None else DEFAULT_MAX_RETRIES
    return f"on-failure:{retries}"


def _literal(value: str) -> str:
    """``value`` as compose reads it back: its ``$`` signs are not references."""
    return value.replace("$", "$$")
