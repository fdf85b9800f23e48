"""Kubernetes manifests: a Deployment per worker key, or a Job for one that runs to
completion, its secrets from Secrets.

The bus URL of every process comes from the Secret ``<project>-bus`` (a key per channel),
and each secret environment value from the Secret ``<project>-env`` (a key per variable);
the header says how to create both. Kubernetes restarts a Deployment's pods whatever their
exit, so an ``on-failure`` worker is restarted always (the header says so). A one-shot
worker (``restart: no``, or one that others wait to complete) is a Job: retried on failure
up to its ``max_restarts`` (none for ``restart: no``), never after exit 78.
"""

from __future__ import annotations

import re
from typing import Any

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.export.plan import (
    HOST_COMMAND,
    Plan,
    Service,
    dump_yaml,
    host_env,
    listen_notes,
)
from pipecat_workers_cli.host import BUS_URL_ENV, EXIT_CONFIG, HOSTNAME_REPLICA, REPLICA_ENV
from pipecat_workers_cli.topology.model import RestartPolicy

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_MAX_NAME = 63  # a DNS-1123 label, as a Deployment's pods are named after it
DEFAULT_BACKOFF_LIMIT = 6
"""A Job's retries of an ``on-failure`` worker that gives no ``max_restarts`` (Kubernetes's
own default)."""


def manifests(plan: Plan, *, image: str, workdir: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file name, manifest)`` for each Deployment or Job of ``plan``.

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
        make = _job if service.one_shot else _deployment
        documents.append((f"{name}.yaml", make(plan, service, name, image, workdir)))
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
    if any(s.restart is not RestartPolicy.ALWAYS and not s.one_shot for s in plan.services):
        lines.append("# Kubernetes restarts a Deployment's pods whatever their exit status.")
    lines.extend(f"# {note}" for note in listen_notes(plan))
    if any(s.listen is not None for s in plan.services):
        lines.append("# A proxy server's container declares its port; no Service is written "
                     "for it.")
    return "\n".join(lines) + "\n"


def dns_name(text: str) -> str:
    """``text`` as a DNS-1123 label: lower case, ``-`` for anything else, 63 characters."""
    return _NOT_DNS.sub("-", text.lower())[:_MAX_NAME].strip("-") or "worker"


def _labels(plan: Plan, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": plan.project,
            "app.kubernetes.io/managed-by": "workers-export"}


def _container(plan: Plan, service: Service, image: str, workdir: str) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in host_env(service).items()]
    env.append(_from_secret(BUS_URL_ENV, dns_name(f"{plan.project}-bus"), service.channel))
    if service.replicas > 1:
        env.append({"name": REPLICA_ENV, "value": HOSTNAME_REPLICA})  # the pod's name
    env.extend(_from_secret(n, dns_name(f"{plan.project}-env"), n) for n in service.secrets)
    container = {"name": "worker", "image": image, "workingDir": workdir,
                 "command": list(HOST_COMMAND), "env": env}
    if service.listen is not None:  # a proxy server
        container["ports"] = [{"name": "proxy", "containerPort": service.listen[1]}]
    return container


def _deployment(plan: Plan, service: Service, name: str, image: str,
                workdir: str) -> dict[str, Any]:
    labels = _labels(plan, name)
    container = _container(plan, service, image, workdir)
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


def _job(plan: Plan, service: Service, name: str, image: str, workdir: str) -> dict[str, Any]:
    """A Job of ``replicas`` pods, each run to completion; exit 78 fails it at once."""
    labels = _labels(plan, name)
    if service.restart is RestartPolicy.NO:
        retries = 0
    else:
        retries = (service.max_restarts if service.max_restarts is not None
                   else DEFAULT_BACKOFF_LIMIT)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "completions": service.replicas, "parallelism": service.replicas,
            "backoffLimit": retries,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"operator": "In", "values": [EXIT_CONFIG]}}]},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never",  # a failed pod is retried as a new pod
                         "terminationGracePeriodSeconds": int(service.stop_timeout) + 5,
                         "containers": [_container(plan, service, image, workdir)]},
            },
        },
    }


def _from_secret(variable: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
