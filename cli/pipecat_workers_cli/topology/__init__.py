"""Topology files: load and validate them, expand them into processes, resolve worker classes.

The loader (which needs yaml) and the class resolver are imported on first use, so that the
worker host can import :mod:`pipecat_workers_cli.topology.classes` without paying for yaml.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipecat_workers_cli.topology.errors import TopologyError, TopologyErrors, WorkerClassError
from pipecat_workers_cli.topology.model import (
    BACKENDS,
    ChannelSpec,
    ProcessSpec,
    RestartPolicy,
    Topology,
    WorkerSpec,
    expand,
)

if TYPE_CHECKING:
    from pipecat_workers_cli.topology.classes import check_args, resolve_class
    from pipecat_workers_cli.topology.loader import load_topology
    from pipecat_workers_cli.topology.schema import topology_schema

__all__ = [
    "BACKENDS",
    "ChannelSpec",
    "ProcessSpec",
    "RestartPolicy",
    "Topology",
    "TopologyError",
    "TopologyErrors",
    "WorkerClassError",
    "WorkerSpec",
    "check_args",
    "expand",
    "load_topology",
    "resolve_class",
    "topology_schema",
]

_LAZY = {
    "check_args": "pipecat_workers_cli.topology.classes",
    "load_topology": "pipecat_workers_cli.topology.loader",
    "resolve_class": "pipecat_workers_cli.topology.classes",
    "topology_schema": "pipecat_workers_cli.topology.schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
