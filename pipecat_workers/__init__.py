"""pipecat-workers: workers (agents) that talk over a typed message bus.

Workers hand off to each other, send jobs with progress and streaming, fan jobs out to groups,
and find each other through a registry, in one process (the default in-memory bus) or across
many (Redis or PGMQ), with the same code.
"""

from __future__ import annotations

from pipecat_workers.errors import (
    BusClosedError,
    BusConnectionError,
    BusError,
    ConfigurationError,
    JobError,
    JobGroupError,
    MessageTooLargeError,
    MissingDependencyError,
    SerializationError,
    WorkersError,
    WorkerStateError,
)
from pipecat_workers.jobs.context import JobContext, JobGroupContext
from pipecat_workers.jobs.group import JobGroup
from pipecat_workers.jobs.types import (
    JobEvent,
    JobEventType,
    JobGroupEvent,
    JobGroupResponse,
    JobStatus,
)
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import Settings
from pipecat_workers.types import (
    WorkerActivationArgs,
    WorkerErrorData,
    WorkerLostData,
    WorkerReadyData,
    WorkerRegistryEntry,
)
from pipecat_workers.workers.base import BaseWorker, WorkerState
from pipecat_workers.workers.decorators import job, worker_ready
from pipecat_workers.workers.runner import WorkerRunner

__version__ = "0.1.0"

__all__ = [
    "BaseWorker",
    "BusClosedError",
    "BusConnectionError",
    "BusError",
    "ConfigurationError",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobEventType",
    "JobGroup",
    "JobGroupContext",
    "JobGroupError",
    "JobGroupEvent",
    "JobGroupResponse",
    "JobStatus",
    "MessageTooLargeError",
    "MissingDependencyError",
    "SerializationError",
    "Settings",
    "WorkerActivationArgs",
    "WorkerErrorData",
    "WorkerLostData",
    "WorkerReadyData",
    "WorkerRegistry",
    "WorkerRegistryEntry",
    "WorkerRunner",
    "WorkerState",
    "WorkerStateError",
    "WorkersError",
    "job",
    "worker_ready",
]
