"""``workers ls``: the projects here and their state; ``--prune`` forgets the stopped ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pipecat_workers_cli.listing import list_projects, prune
from pipecat_workers_cli.supervisor.statedir import STATE_DIRNAME


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--prune", "prune_", is_flag=True, help="Delete the state directories (logs "
              "included) of the projects that are not running; running ones are kept.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool, prune_: bool) -> None:
    """List the projects found from this directory (with -f FILE: from the topology's root;
    with -p NAME: that one only): state, root and topology file."""
    here = Path.cwd()
    start, only = here, ctx.obj.get("project")
    if ctx.obj.get("file"):
        from pipecat_workers_cli.topology import load_topology

        start = load_topology(ctx.obj["file"]).root
    if prune_:
        removed = prune(start, only)
        if as_json:
            click.echo(json.dumps([e.to_json() for e in removed], indent=2))
            return
        for entry in removed:
            click.echo(f"removed {entry.name} ({entry.state}): {_shown(entry.state_dir, here)}")
        if not removed:
            click.echo(f"nothing to prune: '{only}' is running" if only else
                       "nothing to prune: no stopped project here")
        return
    entries = [entry for _, entry in list_projects(start, only)]
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no project here: none has a {STATE_DIRNAME}/ directory in this "
                   "directory or above")
        return
    from pipecat_workers_cli.render import table_console
    from pipecat_workers_cli.render.tables import projects_table

    table_console().print(projects_table(
        [(e, _shown(e.root, here), _shown(e.file, here) if e.file else "-") for e in entries]))


def _shown(path: str | None, here: Path) -> str:
    """``path`` relative to ``here`` when it lies under it, else as it is."""
    if not path:
        return ""
    relative = os.path.relpath(path, here)
    return path if relative.startswith("..") else relative


