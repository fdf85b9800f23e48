"""Every exception pipecat-workers raises, in one tree.

Catch :class:`WorkersError` to handle anything the library raises on purpose::

    WorkersError
    ├── ConfigurationError          bad arguments or settings
    │   └── MissingDependencyError  an optional driver is not installed
    ├── WorkerStateError            an operation does not fit the object's state (also RuntimeError)
    ├── BusError
    │   ├── BusClosedError          sending on a bus that was closed
    │   ├── BusConnectionError      the bus server cannot be reached
    │   └── SerializationError      a message cannot be encoded or decoded
    │       └── MessageTooLargeError
    └── JobError                    a single job did not complete
        └── JobGroupError           a job group did not complete

Job errors carry the job id, the reason, and what each worker answered. Errors that never
leave the module raising them (the bus hub's ``ProtocolError``) are not drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipecat_workers.jobs.types import JobStatus


class WorkersError(Exception):
    """Root of every error raised by pipecat-workers."""


class ConfigurationError(WorkersError, ValueError):
    """Raised when an argument or setting is invalid."""


class MissingDependencyError(ConfigurationError, ImportError):
    """Raised when an optional driver is needed but not installed; names the extra."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{feature} needs the '{module}' package: pip install 'pipecat-workers[{extra}]'"
        )


class WorkerStateError(WorkersError, RuntimeError):
    """Raised when a worker or runner is used in a state that does not allow it."""


class BusError(WorkersError):
    """Raised for failures of the bus itself."""


class BusClosedError(BusError):
    """Raised when sending on a bus that has been closed."""


class BusConnectionError(BusError):
    """Raised when the bus server cannot be reached within the retry budget."""


class SerializationError(BusError):
    """Raised when a message cannot be encoded at the sender; names the field."""


class MessageTooLargeError(SerializationError):
    """Raised when an encoded message is larger than the configured maximum."""


class JobError(WorkersError):
    """Raised when a single job ends without completing (error, failure, cancel, timeout)."""

    def __init__(
        self,
        reason: str,
        *,
        job_id: str | None = None,
        responses: dict[str, dict[str, Any]] | None = None,
        statuses: dict[str, JobStatus] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id
        self.responses: dict[str, dict[str, Any]] = responses if responses is not None else {}
        self.statuses: dict[str, JobStatus] = statuses if statuses is not None else {}


class JobGroupError(JobError):
    """Raised when a job group ends without every member completing."""
