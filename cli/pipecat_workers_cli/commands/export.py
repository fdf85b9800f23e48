"""``workers export``: a topology as a docker compose file, Kubernetes manifests or systemd
units."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.export import KINDS, Exported, Kind, Options, export
from pipecat_workers_cli.export.plan import plan
from pipecat_workers_cli.topology import load_topology

DEFAULT_WORKDIR = "/app"
DEFAULT_ENV_DIR = "/etc/pipecat-workers"


@click.command(name="export")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("file", required=False)
@click.option("-o", "--output", metavar="DIR|FILE", help="Write there: a directory gets one "
              "file each (systemd always does), a file all of it. Default: stdout.")
@click.option("--image", metavar="IMAGE", help="compose, kubernetes: the image holding the "
              "project and pipecat-workers (default: PROJECT:latest).")
@click.option("--workdir", metavar="DIR", help="The project's directory where the workers "
              f"run (default: {DEFAULT_WORKDIR} in the image; for systemd, the project's).")
@click.option("--python", "python", metavar="PATH", help="systemd: the interpreter to start "
              "(default: the one running this command).")
@click.option("--env-dir", metavar="DIR", default=DEFAULT_ENV_DIR, show_default=True,
              help="systemd: where the units read their environment files (the secrets).")
@click.pass_context
def export_command(ctx: click.Context, kind: Kind, file: str | None, output: str | None,
                   image: str | None, workdir: str | None, python: str | None,
                   env_dir: str) -> None:
    """Write FILE's workers for another engine: a docker compose file, Kubernetes
    Deployments, or systemd units. Each process runs the worker host `workers up` runs;
    the bus URL and secret env values come from the engine's secrets, never written out.
    """
    path = file or ctx.obj.get("file")
    if path is None:
        raise CommandError("which topology? `workers export KIND FILE`")
    topology = load_topology(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CommandError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    local = kind == "systemd"
    options = Options(
        image=image or f"{topology.name}:latest",
        workdir=workdir or (str(topology.root) if local else DEFAULT_WORKDIR),
        python=python or sys.executable, env_dir=env_dir)
    exported = export(kind, plan(topology, text, path), options)
    if output is None:
        click.echo(exported.text if exported.text is not None else _concatenated(exported),
                   nl=False)
        return
    _write(exported, Path(output), kind, as_dir=output.endswith("/"))


def _concatenated(exported: Exported) -> str:
    return "".join(f"# ==> {name} <==\n{text}\n" for name, text in exported.files)


def _write(exported: Exported, target: Path, kind: str, *, as_dir: bool) -> None:
    """Into the directory ``target`` (one file each) or the file ``target`` (all in one)."""
    as_dir = as_dir or target.is_dir() or exported.text is None
    if as_dir and target.is_file():
        raise CommandError(f"-o {target}: {kind} writes several files: name a directory")
    try:
        if not as_dir:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(exported.text or "")
            click.echo(f"wrote {target}")
            return
        target.mkdir(parents=True, exist_ok=True)
        for name, text in exported.files:
            (target / name).write_text(text)
            click.echo(f"wrote {target / name}")
    except OSError as exc:
        raise CommandError(f"-o {target}: {exc.strerror or exc}") from None
