"""Topology files: load and validate them, expand them into processes, resolve worker classes.

The loader (which needs yaml) and the class resolver are imported on first use, so that the
worker host can import :mod:`cli.topology.classes` without paying for yaml.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cli.topology.errors import TopologyError, WorkerClassError
from cli.topology.model import (
    BACKENDS,
    ChannelSpec,
    ProcessSpec,
    RestartPolicy,
    Topology,
    WorkerSpec,
    expand,
)

if TYPE_CHECKING:
    from cli.topology.classes import check_args, resolve_class
    from cli.topology.loader import load_topology
    from cli.topology.schema import topology_schema

__all__ = [
    "BACKENDS",
    "ChannelSpec",
    "ProcessSpec",
    "RestartPolicy",
    "Topology",
    "TopologyError",
    "WorkerClassError",
    "WorkerSpec",
    "check_args",
    "expand",
    "load_topology",
    "resolve_class",
    "topology_schema",
]

_LAZY = {
    "check_args": "cli.topology.classes",
    "load_topology": "cli.topology.loader",
    "resolve_class": "cli.topology.classes",
    "topology_schema": "cli.topology.schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
