"""The template's environment, and how a worker's may differ from it and still be forked.

A forked worker's modules were imported by the template, with the template's environment:
the supervisor's, plus for each variable the workers' ``env:`` set the value most of them
get (:func:`common_env`). A worker whose environment differs where the interpreter or a
preloaded module already read it at start is spawned instead (:func:`refused`); otherwise
it is told only the difference (:func:`difference`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pipecat_workers_cli.topology.model import Topology

_READ_AT_START = ("PYTHON", "LD_")  # by the interpreter or the dynamic loader


def template_env(env: Mapping[str, str], common: Mapping[str, str]) -> dict[str, str]:
    """The template's environment: the supervisor's ``env`` with the workers' ``common``
    values, unbuffered as a worker host's."""
    return {**env, **common, "PYTHONUNBUFFERED": "1"}


def common_env(topology: Topology, env: Mapping[str, str]) -> dict[str, str]:
    """For each variable some worker's ``env:`` sets, the value most worker processes get
    (``env`` for those that do not set it), where that is not ``env``'s own. A tie keeps
    ``env``'s."""
    specs = list(topology.workers.values())
    chosen: dict[str, str] = {}
    for key in sorted({k for w in specs for k in w.env}):
        votes: Counter[str | None] = Counter()
        for w in specs:
            votes[w.env.get(key, env.get(key))] += w.replicas
        default = env.get(key)
        value, count = max(votes.items(), key=lambda kv: (kv[1], kv[0] == default))
        if value is not None and value != default and count > votes[default]:
            chosen[key] = value
    return chosen


def refused(env: Mapping[str, str], template: Mapping[str, str],
            read: Iterable[str] | None) -> str | None:
    """Why a worker with ``env`` cannot be forked from a template with ``template`` whose
    imports read the variables ``read``: it sets, changes or unsets one of them, or one
    Python reads when it starts."""
    read = set(read or ())
    for key in sorted(env.keys() | template.keys()):
        if template.get(key) == env.get(key) or not (
                key.startswith(_READ_AT_START) or key in read):
            continue
        how = "sets" if key in env else "unsets"
        if key.startswith(_READ_AT_START):
            return f"its env {how} {key}, which Python reads when it starts"
        return f"its env {how} {key}, which a preloaded module read when imported"
    return None


def difference(env: Mapping[str, str], template: Mapping[str, str]) -> dict[str, Any]:
    """What a fork request says of ``env``: what it sets otherwise than ``template``, and
    what it unsets."""
    return {"env": {k: v for k, v in env.items() if template.get(k) != v},
            "unset": [k for k in template if k not in env]}
