"""``workers export``: a topology as files that other engines run, one generator per engine.

Each generator turns the same :class:`~pipecat_workers_cli.export.plan.Plan` into files; every
process they describe starts the worker host the supervisor starts, with its description in
its environment and its secrets left to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipecat_workers_cli.export.compose import compose_file
from pipecat_workers_cli.export.kubernetes import header, manifests, manifests_text
from pipecat_workers_cli.export.plan import Plan, dump_yaml
from pipecat_workers_cli.export.systemd import units

Kind = Literal["compose", "kubernetes", "systemd"]
KINDS: tuple[Kind, ...] = ("compose", "kubernetes", "systemd")


@dataclass(frozen=True, slots=True)
class Options:
    """Where the exported processes find the project.

    Attributes:
        image: The container image holding the project and pipecat-workers (compose and
            Kubernetes).
        workdir: The project's directory, in the image or on the machine.
        python: The interpreter that systemd starts.
        env_dir: Where systemd units read their environment files.
    """

    image: str
    workdir: str
    python: str
    env_dir: str


@dataclass(frozen=True, slots=True)
class Exported:
    """What an export wrote: named files, and all of them as one text (what stdout shows, or
    what one output file holds; ``None`` when they cannot be one file)."""

    files: list[tuple[str, str]]
    text: str | None


def export(kind: Kind, plan: Plan, options: Options) -> Exported:
    """The files of ``kind`` for ``plan``.

    Raises:
        CommandError: the plan cannot be written for that engine.
    """
    if kind == "compose":
        text = compose_file(plan, image=options.image, workdir=options.workdir)
        return Exported([("compose.yaml", text)], text)
    if kind == "kubernetes":
        documents = manifests(plan, image=options.image, workdir=options.workdir)
        files = [(name, header(plan) + dump_yaml(doc))
                 for name, doc in documents]
        return Exported(files, manifests_text(plan, documents))
    return Exported(units(plan, python=options.python, workdir=options.workdir,
                          env_dir=options.env_dir), None)
