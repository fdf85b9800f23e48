"""Plain data that workers, the registry and hooks pass around."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any

from pipecat_workers.catalogue import register_message
from pipecat_workers.validate import MaxLen, Name

MAX_JOB_NAMES = 256
"""The most job names one worker's registry entry carries; a peer refuses a longer list."""

JobNames = Annotated[list[Name], MaxLen(MAX_JOB_NAMES)]
"""A worker's job names as a registry entry carries them: bounded in number and in length,
as anyone on the channel may send an entry."""


@register_message(name="registry.entry")
@dataclass(slots=True)
class WorkerRegistryEntry:
    """One worker in a runner's registry snapshot.

    ``jobs`` lists the names of its ``@job`` handlers, sorted; ``None`` from a peer that does
    not announce them. ``any_job`` says that it takes other names too (it overrides
    ``on_job_request``). ``relay`` marks a proxy or a proxy's stand-in, whose work happens
    beyond this bus (a proxy never exposes one onward).
    """

    name: Name
    parent: Name | None = None
    active: bool = False
    bridged: bool = False
    started_at: float | None = None
    jobs: JobNames | None = None
    any_job: bool = False
    relay: bool = False


@dataclass(frozen=True, slots=True)
class WorkerReadyData:
    """A worker that is registered and ready to receive messages.

    Attributes:
        worker_name: The worker's name.
        runner: The name of the runner that hosts it.
        incarnation: The start time of that runner, which tells a restarted runner apart.
        parent: The worker's parent, if it is a child.
        jobs: The job names its ``@job`` handlers take, sorted, so that a caller can offer
            them (``workers call``, ``workers ps --jobs``); ``None`` when its runner does not
            say (a peer running an older version).
        any_job: It takes requests of other names too, and without a name: it overrides
            ``on_job_request``.
        relay: It is a proxy, or a proxy's stand-in for a worker on another bus.
    """

    worker_name: str
    runner: str
    incarnation: float = 0.0
    parent: str | None = None
    jobs: tuple[str, ...] | None = None
    any_job: bool = False
    relay: bool = False


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
