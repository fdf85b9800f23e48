"""Plain data that workers, the registry and hooks pass around."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pipecat_workers.catalogue import register_message
from pipecat_workers.validate import Name


@register_message(name="registry.entry")
@dataclass(slots=True)
class WorkerRegistryEntry:
    """One worker in a runner's registry snapshot."""

    name: Name
    parent: Name | None = None
    active: bool = False
    bridged: bool = False
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class WorkerReadyData:
    """A worker that is registered and ready to receive messages.

    Attributes:
        worker_name: The worker's name.
        runner: The name of the runner that hosts it.
        incarnation: The start time of that runner, which tells a restarted runner apart.
        parent: The worker's parent, if it is a child.
    """

    worker_name: str
    runner: str
    incarnation: float = 0.0
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerErrorData:
    """An error that a child worker reported to its parent."""

    worker_name: str
    error: str


@dataclass(frozen=True, slots=True)
class WorkerLostData:
    """A worker that left the registry.

    Attributes:
        worker_name: The worker's name.
        runner: The runner that hosted it.
        reason: Why it is gone: ``"stopped"`` for a worker that ended, ``"left"`` for a
            runner that shut down, ``"lost"`` for a runner whose heartbeats stopped, or
            ``"replaced"`` for a runner that restarted.
    """

    worker_name: str
    runner: str
    reason: str


@dataclass(slots=True)
class WorkerActivationArgs:
    """Arguments for :meth:`BaseWorker.activate_worker`; subclass to add fields."""

    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as a dict (``None`` fields are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WorkerActivationArgs:
        """Build from a dict, ignoring keys this class does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})
