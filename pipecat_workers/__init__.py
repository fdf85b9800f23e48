"""pipecat-workers: workers (agents) that talk over a typed message bus.

Workers hand off to each other, send jobs with progress and streaming, fan jobs out to groups,
and find each other through a registry, in one process (the default in-memory bus) or across
many (Redis or PGMQ), with the same code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # `X as X` tells type checkers X is re-exported: __all__ is built from _EXPORTS.
    from pipecat_workers.errors import BusClosedError as BusClosedError
    from pipecat_workers.errors import BusConnectionError as BusConnectionError
    from pipecat_workers.errors import BusError as BusError
    from pipecat_workers.errors import ConfigurationError as ConfigurationError
    from pipecat_workers.errors import JobError as JobError
    from pipecat_workers.errors import JobGroupError as JobGroupError
    from pipecat_workers.errors import MessageTooLargeError as MessageTooLargeError
    from pipecat_workers.errors import MissingDependencyError as MissingDependencyError
    from pipecat_workers.errors import SerializationError as SerializationError
    from pipecat_workers.errors import WorkersError as WorkersError
    from pipecat_workers.errors import WorkerStateError as WorkerStateError
    from pipecat_workers.jobs.context import JobContext as JobContext
    from pipecat_workers.jobs.context import JobGroupContext as JobGroupContext
    from pipecat_workers.jobs.group import JobGroup as JobGroup
    from pipecat_workers.jobs.params import JobGroupParams as JobGroupParams
    from pipecat_workers.jobs.params import JobParams as JobParams
    from pipecat_workers.jobs.types import JobEvent as JobEvent
    from pipecat_workers.jobs.types import JobEventType as JobEventType
    from pipecat_workers.jobs.types import JobGroupEvent as JobGroupEvent
    from pipecat_workers.jobs.types import JobGroupResponse as JobGroupResponse
    from pipecat_workers.jobs.types import JobStatus as JobStatus
    from pipecat_workers.registry import WorkerRegistry as WorkerRegistry
    from pipecat_workers.settings import Settings as Settings
    from pipecat_workers.types import WorkerActivationArgs as WorkerActivationArgs
    from pipecat_workers.types import WorkerErrorData as WorkerErrorData
    from pipecat_workers.types import WorkerLostData as WorkerLostData
    from pipecat_workers.types import WorkerReadyData as WorkerReadyData
    from pipecat_workers.types import WorkerRegistryEntry as WorkerRegistryEntry
    from pipecat_workers.workers.base import BaseWorker as BaseWorker
    from pipecat_workers.workers.base import WorkerState as WorkerState
    from pipecat_workers.workers.decorators import job as job
    from pipecat_workers.workers.decorators import worker_ready as worker_ready
    from pipecat_workers.workers.runner import WorkerRunner as WorkerRunner

# Public name -> the module that defines it. Imported on first use (PEP 562), so that a
# tool importing one small module (``pipecat_workers.errors``, say) does not pay for all.
_EXPORTS: dict[str, str] = {
    "BaseWorker": "pipecat_workers.workers.base",
    "BusClosedError": "pipecat_workers.errors",
    "BusConnectionError": "pipecat_workers.errors",
    "BusError": "pipecat_workers.errors",
    "ConfigurationError": "pipecat_workers.errors",
    "JobContext": "pipecat_workers.jobs.context",
    "JobError": "pipecat_workers.errors",
    "JobEvent": "pipecat_workers.jobs.types",
    "JobEventType": "pipecat_workers.jobs.types",
    "JobGroup": "pipecat_workers.jobs.group",
    "JobGroupContext": "pipecat_workers.jobs.context",
    "JobGroupError": "pipecat_workers.errors",
    "JobGroupEvent": "pipecat_workers.jobs.types",
    "JobGroupParams": "pipecat_workers.jobs.params",
    "JobGroupResponse": "pipecat_workers.jobs.types",
    "JobParams": "pipecat_workers.jobs.params",
    "JobStatus": "pipecat_workers.jobs.types",
    "MessageTooLargeError": "pipecat_workers.errors",
    "MissingDependencyError": "pipecat_workers.errors",
    "SerializationError": "pipecat_workers.errors",
    "Settings": "pipecat_workers.settings",
    "WorkerActivationArgs": "pipecat_workers.types",
    "WorkerErrorData": "pipecat_workers.types",
    "WorkerLostData": "pipecat_workers.types",
    "WorkerReadyData": "pipecat_workers.types",
    "WorkerRegistry": "pipecat_workers.registry",
    "WorkerRegistryEntry": "pipecat_workers.types",
    "WorkerRunner": "pipecat_workers.workers.runner",
    "WorkerState": "pipecat_workers.workers.base",
    "WorkerStateError": "pipecat_workers.errors",
    "WorkersError": "pipecat_workers.errors",
    "job": "pipecat_workers.workers.decorators",
    "worker_ready": "pipecat_workers.workers.decorators",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = sorted([*_EXPORTS, "__version__"])
