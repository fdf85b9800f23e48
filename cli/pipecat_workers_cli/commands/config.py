"""``workers config``: the topology as resolved, the way ``docker compose config`` shows it.

Variables are interpolated, env files are merged into each worker's ``env``, and every default
is written out. The result is itself a topology file (a ``$`` that interpolation would read is
written ``$$``), so it can be kept, diffed, or run as it is.
"""

from __future__ import annotations

import json
from typing import Any

import click

from pipecat_workers_cli.project import find_project
from pipecat_workers_cli.topology import Topology, load_topology
from pipecat_workers_cli.topology.model import PROXY_TOKEN_ENV
from pipecat_workers_cli.topology.record import as_data

_NOT_WRITTEN = ("key", "line")  # where an entry is, not what it says
_RENAMED = {"class_path": "class"}  # model field -> the file's key


@click.command()
@click.argument("file", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.pass_context
def config(ctx: click.Context, file: str | None, as_json: bool) -> None:
    """Print the resolved topology: of FILE (or -f FILE), else of the project here.

    A running project's is what its supervisor resolved when it started (or applied an
    edit), in its own environment; otherwise the file is resolved in this one.
    """
    path = file or ctx.obj.get("file")
    if path is not None:
        topology = load_topology(path, env_files=ctx.obj.get("env_files"))
    else:
        topology = find_project(None, ctx.obj.get("project")).topology_or_recorded()
    document = topology_document(topology)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    import yaml  # type: ignore[import-untyped,unused-ignore]

    click.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)


def topology_document(topology: Topology) -> dict[str, Any]:
    """The topology as the file that says exactly it, with no variable left to resolve."""
    document: dict[str, Any] = {
        "name": topology.name,
        "root": str(topology.root),
        "channels": {key: _entry(spec) for key, spec in topology.channels.items()},
        "workers": {key: _entry(spec) for key, spec in topology.workers.items()},
    }
    if topology.preload:
        document["preload"] = list(topology.preload)
    escaped: dict[str, Any] = _escaped(document)
    return escaped


def _entry(spec: object) -> dict[str, Any]:
    data: dict[str, Any] = as_data(spec)
    conditions = data.pop("conditions", None)
    if conditions:  # the file's mapping form: {dep: {condition: ...}} for every dependency
        data["depends_on"] = {dep: {"condition": conditions.get(dep, "ready")}
                              for dep in data["depends_on"]}
    proxy = data.pop("proxy", None)
    if proxy is not None:  # written as the file writes it: no class or args of its own
        data = _proxy_entry(data, proxy)
    return {_RENAMED.get(k, k): v for k, v in data.items()
            if k not in _NOT_WRITTEN and v is not None}


def _proxy_entry(data: dict[str, Any], proxy: dict[str, Any]) -> dict[str, Any]:
    """A proxy worker's entry with its ``proxy:`` mapping in place of ``class`` and ``args``,
    its token there rather than in ``env``."""
    written: dict[str, Any] = {}
    if proxy["role"] == "client":
        written["url"] = proxy["url"]
    else:
        host = proxy["host"]
        written["listen"] = f"[{host}]:{proxy['port']}" if ":" in host else (
            f"{host}:{proxy['port']}")
    for key in ("remote", "expose", "forward", "token"):
        if proxy[key] not in (None, []):
            written[key] = proxy[key]
    entry = {"proxy": written}
    for key, value in data.items():
        if key in ("class_path", "args"):
            continue
        if key == "env" and proxy["token"] is not None:
            value = {k: v for k, v in value.items() if k != PROXY_TOKEN_ENV}
        entry[key] = value
    return entry


def _escaped(value: Any) -> Any:
    """Strings that interpolation would change, with every ``$`` doubled."""
    if isinstance(value, str):
        return value.replace("$", "$$") if "${" in value or "$$" in value else value
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value
