"""A docker compose file: a service per worker key, its replicas under ``deploy``.

Compose interpolates ``${VAR}`` with the rules the topology follows, so a secret keeps the
reference the file wrote (resolved by compose from its shell or its ``.env``), and a value
written out has its ``$`` doubled.
"""

from __future__ import annotations

from typing import Any

from pipecat_workers_cli.export.plan import HOST_COMMAND, Plan, Service, dump_yaml, host_env
from pipecat_workers_cli.host import BUS_URL_ENV, HOSTNAME_REPLICA, REPLICA_ENV
from pipecat_workers_cli.topology.model import RestartPolicy

_RESTART = {RestartPolicy.NO: "no", RestartPolicy.ON_FAILURE: "on-failure",
            RestartPolicy.ALWAYS: "always"}


def compose_file(plan: Plan, *, image: str, workdir: str) -> str:
    """The compose file of ``plan``: every service runs ``image`` in ``workdir``."""
    services = {s.key: _service(s, image=image, workdir=workdir) for s in plan.services}
    document = {"name": plan.project, "services": services}
    header = (f"# Written by `workers export compose` from project '{plan.project}'.\n"
              "# Each service runs the worker host of the `workers` command; secrets are\n"
              "# ${VAR} references that compose resolves from its shell or its .env file.\n")
    return header + dump_yaml(document)


def _service(service: Service, *, image: str, workdir: str) -> dict[str, Any]:
    environment = {name: _literal(value) for name, value in host_env(service).items()}
    environment[BUS_URL_ENV] = service.url
    if service.replicas > 1:
        environment[REPLICA_ENV] = HOSTNAME_REPLICA  # replicas of a service are alike
    for name, written in service.secrets.items():
        environment[name] = written if written is not None else f"${{{name}}}"
    entry: dict[str, Any] = {
        "image": image, "working_dir": workdir, "command": list(HOST_COMMAND),
        "environment": environment, "restart": _RESTART[service.restart],
        "stop_grace_period": f"{service.stop_timeout + 5:g}s",
    }
    if service.depends_on:
        entry["depends_on"] = list(service.depends_on)
    entry["deploy"] = {"replicas": service.replicas}
    return entry


def _literal(value: str) -> str:
    """``value`` as compose reads it back: its ``$`` signs are not references."""
    return value.replace("$", "$$")
