"""Entry point of the ``workers`` command: the group, its shared options, and error handling.

Each command lives in :mod:`cli.commands` and is imported when it runs; commands parse
options, call the library or the supervisor, and render. A user error is one red line and
exit status 1, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, cast

import click

from cli.commands import COMMANDS
from cli.errors import CommandError


class WorkersGroup(click.Group):
    """Finds commands lazily, and turns our errors into one line on stderr."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return cast(click.Command, getattr(importlib.import_module(module), attr))

    def invoke(self, ctx: click.Context) -> Any:
        from pipecat_workers.errors import WorkersError

        try:
            return super().invoke(ctx)
        except (CommandError, WorkersError) as exc:
            from rich.console import Console

            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"[red]error:[/red] {exc}", markup=True)
            sys.exit(exc.exit_code if isinstance(exc, CommandError) else 1)


@click.group(cls=WorkersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--file", "file", metavar="FILE", envvar="WORKERS_FILE",
              help="The topology file (default: the project found in this directory).")
@click.option("-p", "--project", "project", metavar="NAME",
              help="The project, when several were started from this directory.")
@click.version_option(package_name="pipecat-workers", prog_name="workers")
@click.pass_context
def main(ctx: click.Context, file: str | None, project: str | None) -> None:
    """Run and inspect multi-worker systems built with pipecat-workers."""
    ctx.obj = {"file": file, "project": project}
