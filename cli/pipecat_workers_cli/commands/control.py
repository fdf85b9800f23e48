"""What the commands that steer a running project share: finding it, asking its supervisor,
and how they wait for an answer to show in its status."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.project import Project, find_project
from pipecat_workers_cli.supervisor.control import request
from pipecat_workers_cli.supervisor.status import ProjectStatus

POLL = 0.05
"""Seconds between two looks at the supervisor's status while waiting."""

STARTED = frozenset({"ready", "exited"})
"""What ``start``, ``restart`` and ``scale`` wait for (a one-shot job may have ended)."""

timeout_option = click.option("--timeout", type=float, default=60.0, show_default=True,
                              help="Seconds to wait for the workers to get there.")


def project_of(ctx: click.Context) -> Project:
    """The project the command's ``--file`` and ``--project`` options name."""
    return find_project(ctx.obj.get("file"), ctx.obj.get("project"))


def ask(project: Project, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the project's supervisor and return its answer.

    Raises:
        CommandError: the project is not running, or its supervisor refused or did not
            answer within ``timeout`` seconds.
    """
    if not project.state.supervisor_alive():
        raise CommandError(f"project '{project.name}' is not running")
    return asyncio.run(request(project.state.socket_from_state("control"), payload, timeout))


def status_of(project: Project, timeout: float = 10.0) -> ProjectStatus:
    """The live status from the supervisor.

    Raises:
        CommandError: the project is not running, or its supervisor does not answer within
            ``timeout`` seconds.
    """
    return ProjectStatus.from_json(ask(project, {"cmd": "status"}, timeout)["status"])
