"""Kubernetes manifests: a Deployment per worker key, its secrets from Secrets.

The bus URL of every process comes from the Secret ``<project>-bus`` (a key per channel),
and each secret environment value from the Secret ``<project>-env`` (a key per variable);
the header says how to create both. Kubernetes restarts a Deployment's pods whatever their
exit, so a ``restart: no`` or ``on-failure`` worker is restarted always (the header says so).
"""

from __future__ import annotations

import re
from typing import Any

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.export.plan import HOST_COMMAND, Plan, Service, dump_yaml, host_env
from pipecat_workers_cli.host import BUS_URL_ENV, HOSTNAME_REPLICA, REPLICA_ENV
from pipecat_workers_cli.topology.model import RestartPolicy

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_MAX_NAME = 63  # a DNS-1123 label, as a Deployment's pods are named after it


def manifests(plan: Plan, *, image: str, workdir: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file name, manifest)`` for each Deployment of ``plan``.

    Raises:
        CommandError: two worker keys make one Kubernetes name.
    """
    made: dict[str, str] = {}
    documents = []
    for service in plan.services:
        name = dns_name(f"{plan.project}-{service.key}")
        if name in made:
            raise CommandError(f"workers '{made[name]}' and '{service.key}' both make the "
                               f"Kubernetes name '{name}': rename one")
        made[name] = service.key
        documents.append((f"{name}.yaml", _deployment(plan, service, name, image, workdir)))
    return documents


def manifests_text(plan: Plan, documents: list[tuple[str, dict[str, Any]]]) -> str:
    """All of them in one YAML stream, after a header that says which Secrets they use."""
    body = "---\n".join(dump_yaml(doc) for _, doc in documents)
    return header(plan) + body


def header(plan: Plan) -> str:
    """Comment lines: where the manifests come from and the Secrets to create first."""
    bus = dns_name(f"{plan.project}-bus")
    keys = sorted({s.channel for s in plan.services})
    lines = [f"# Written by `workers export kubernetes` from project '{plan.project}'.",
             "# Create the Secrets it reads first, for example:",
             f"#   kubectl create secret generic {bus} "
             + " ".join(f"--from-literal={k}=URL" for k in keys)]
    secrets = sorted({n for s in plan.services for n in s.secrets})
    if secrets:
        lines.append(f"#   kubectl create secret generic {dns_name(f'{plan.project}-env')} "
                     + " ".join(f"--from-literal={n}=..." for n in secrets))
    if any(s.restart is not RestartPolicy.ALWAYS for s in plan.services):
        lines.append("# Kubernetes restarts a Deployment's pods whatever their exit status.")
    return "\n".join(lines) + "\n"


def dns_name(text: str) -> str:
    """``text`` as a DNS-1123 label: lower case, ``-`` for anything else, 63 characters."""
    return _NOT_DNS.sub("-", text.lower())[:_MAX_NAME].strip("-") or "worker"


def _deployment(plan: Plan, service: Service, name: str, image: str,
                workdir: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": plan.project,
              "app.kubernetes.io/managed-by": "workers-export"}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in host_env(service).items()]
    env.append(_from_secret(BUS_URL_ENV, dns_name(f"{plan.project}-bus"), service.channel))
    if service.replicas > 1:
        env.append({"name": REPLICA_ENV, "value": HOSTNAME_REPLICA})  # the pod's name
    env.extend(_from_secret(n, dns_name(f"{plan.project}-env"), n) for n in service.secrets)
    container = {"name": "worker", "image": image, "workingDir": workdir,
                 "command": list(HOST_COMMAND), "env": env}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": service.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": int(service.stop_timeout) + 5,
                         "containers": [container]},
            },
        },
    }


def _from_secret(variable: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
