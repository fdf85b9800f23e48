"""Job statuses, events and results."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipecat_workers.catalogue import register_message


@register_message(name="job.status")
class JobStatus(enum.StrEnum):
    """How a worker ended its part of a job."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    """The work was done and the answer is a business failure."""
    ERROR = "error"
    """The work broke: an exception, an unknown job name, a worker that went away."""


class JobEventType(enum.StrEnum):
    """What a job event carries."""

    UPDATE = "update"
    STREAM_START = "stream_start"
    STREAM_DATA = "stream_data"
    STREAM_END = "stream_end"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """An intermediate event of a single job, yielded by ``async for`` in a ``job()`` block."""

    UPDATE: ClassVar[JobEventType] = JobEventType.UPDATE
    STREAM_START: ClassVar[JobEventType] = JobEventType.STREAM_START
    STREAM_DATA: ClassVar[JobEventType] = JobEventType.STREAM_DATA
    STREAM_END: ClassVar[JobEventType] = JobEventType.STREAM_END

    type: JobEventType
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class JobGroupEvent:
    """An intermediate event of a job group: which worker sent what."""

    UPDATE: ClassVar[JobEventType] = JobEventType.UPDATE
    STREAM_START: ClassVar[JobEventType] = JobEventType.STREAM_START
    STREAM_DATA: ClassVar[JobEventType] = JobEventType.STREAM_DATA
    STREAM_END: ClassVar[JobEventType] = JobEventType.STREAM_END

    type: JobEventType
    worker_name: str
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class JobGroupResponse:
    """What every member of a job group answered.

    Attributes:
        job_id: The id shared by the group's requests.
        responses: Each worker's payload (``{}`` when it sent none).
        statuses: Each worker's final status.
    """

    job_id: str
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, JobStatus] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True only if every member answered ``completed``."""
        return all(s == JobStatus.COMPLETED for s in self.statuses.values())
