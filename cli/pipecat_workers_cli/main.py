"""Entry point of the ``workers`` command: the group, its shared options, and error handling.

Each command lives in :mod:`pipecat_workers_cli.commands` and is imported when it runs;
commands parse options, call the library or the supervisor, and render. A user error is one
red line (a topology with several mistakes: a line each) and exit status 1, never a
traceback. Log records (of the library, say) are one line each on stderr, at WARNING and
above, with an exception's type and message but not its traceback; ``WORKERS_DEBUG=1`` shows
tracebacks.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, cast

import click

from pipecat_workers_cli.commands import COMMANDS
from pipecat_workers_cli.errors import CommandError


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
            from rich.markup import escape

            console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
            for line in str(exc).splitlines() or [""]:  # several topology errors: a line each
                console.print(f"[red]error:[/red] {escape(line)}", markup=True)
            sys.exit(exc.exit_code if isinstance(exc, CommandError) else 1)


class OneLineFormatter(logging.Formatter):
    """A record on one line: an exception is told by its type and message, not by its
    traceback (that is for ``WORKERS_DEBUG=1``)."""

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        bare = logging.makeLogRecord(
            {**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        line = super().format(bare).replace("\n", " ")
        if exc is not None:
            first = (str(exc).strip().splitlines() or [""])[0]
            line += f" ({type(exc).__name__}{': ' + first if first else ''})"
        return line


def configure_logging() -> None:
    """Send log records to stderr, one line each (tracebacks with ``WORKERS_DEBUG=1``)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = (logging.Formatter if os.environ.get("WORKERS_DEBUG") == "1"
                 else OneLineFormatter)
    handler.setFormatter(formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


@click.group(cls=WorkersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--file", "file", metavar="FILE", envvar="WORKERS_FILE",
              help="The topology file (default: the project found in this directory).")
@click.option("-p", "--project", "project", metavar="NAME",
              help="The project, when several were started from this directory.")
@click.option("--env-file", "env_files", metavar="PATH", multiple=True,
              help="Variables for ${VAR} in the topology, in place of the .env beside it "
              "(repeatable: a later file wins; the shell's environment wins over all).")
@click.version_option(package_name="pipecat-workers", prog_name="workers")
@click.pass_context
def main(ctx: click.Context, file: str | None, project: str | None,
         env_files: tuple[str, ...]) -> None:
    """Run and inspect multi-worker systems built with pipecat-workers."""
    configure_logging()
    ctx.obj = {"file": file, "project": project, "env_files": list(env_files) or None}
