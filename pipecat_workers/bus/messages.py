"""The messages workers exchange on the bus.

Every message has a ``source`` (the sender's name) and a ``target`` (the recipient's name, or
``None`` for a broadcast). Two priorities: :class:`BusSystemMessage` subclasses (activation
changes, cancellation, liveness) are handled ahead of, and never wait behind,
:class:`BusDataMessage` subclasses. :class:`BusLocalMessage` marks messages that never leave
the process.

Broadcast *control* messages (registry, liveness, session end/cancel) reach runners and
observers only; application broadcasts reach every subscriber. A full queue drops data
messages, except *essential* ones (job requests and final answers, activation, end), whose
loss would leave work waiting forever.

What arrives from another process is checked against these annotations before anyone sees it
(:mod:`pipecat_workers.validate`): names and ids are ``Name`` strings of at most
``MAX_NAME_LENGTH`` characters, as they become keys of the registry and of job tables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pipecat_workers.catalogue import register_message
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.tracing.context import TraceContext
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.validate import Name, Range

if TYPE_CHECKING:
    from pipecat_workers.workers.base import BaseWorker

SYSTEM_PRIORITY = 0
DATA_PRIORITY = 1

MAX_HEARTBEAT_INTERVAL = 3600.0


@dataclass(kw_only=True, slots=True)
class BusMessage:
    """Root of every bus message.

    Attributes:
        source: Name of the sending worker, runner or tool.
        target: Name of the recipient, or ``None`` to broadcast.
    """

    PRIORITY: ClassVar[int] = DATA_PRIORITY
    CONTROL: ClassVar[bool] = False
    # Never dropped when a subscriber's queue is full: losing it would leave work hanging.
    ESSENTIAL: ClassVar[bool] = False

    source: Name
    target: Name | None = None
    # The trace this message belongs to (W3C trace context): stamped when it is sent, from
    # the code that sends it; carried as the envelope's ``tp``, not as a field of the body.
    trace: TraceContext | None = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{type(self).__name__} (source={self.source}, target={self.target})"


@dataclass(kw_only=True, slots=True)
class BusDataMessage(BusMessage):
    """Normal priority: delivered in order, after any waiting system message."""


@dataclass(kw_only=True, slots=True)
class BusSystemMessage(BusMessage):
    """High priority: handled ahead of data and never behind a slow data handler."""

    PRIORITY: ClassVar[int] = SYSTEM_PRIORITY


class BusLocalMessage:
    """Mixin for messages that stay in the process: never serialized, never sent on a network."""

    __slots__ = ()


@dataclass(kw_only=True, slots=True)
class BusUnregisteredMessage(BusLocalMessage, BusDataMessage):
    """A message of a type this process has not registered, kept as its wire name and raw
    fields. Only a serializer made with ``keep_unknown=True`` (for an observer that shows the
    traffic, such as ``workers tail``) produces it; nothing is imported to build it."""

    type_name: str
    body: dict[str, Any]


# -- frames ---------------------------------------------------------------------------------


@register_message(name="frame.direction")
class FrameDirection(enum.Enum):
    """Which way a frame travels in a pipeline."""

    DOWNSTREAM = 1
    UPSTREAM = 2


@register_message(name="frame")
@dataclass(kw_only=True, slots=True)
class BusFrameMessage(BusDataMessage):
    """Carries a frame between pipelines; the frame may be any registered dataclass.

    Attributes:
        frame: The frame.
        direction: Which way it travels (a pipeline package may use its own enum with the
            same values).
        bridge: The bridge's tag, for named bridges; ``None`` for the default bridge.
    """

    frame: Any
    direction: Any = FrameDirection.DOWNSTREAM
    bridge: Name | None = None


@register_message(name="frame.system")
@dataclass(kw_only=True, slots=True)
class BusSystemFrameMessage(BusFrameMessage):
    """A frame that must not wait behind data (an interruption, speech events, input audio):
    it travels with system priority, as such frames do inside a pipeline."""

    PRIORITY: ClassVar[int] = SYSTEM_PRIORITY


@register_message(name="tts.speak")
@dataclass(kw_only=True, slots=True)
class BusTTSSpeakMessage(BusDataMessage):
    """Asks a pipeline worker to speak a text."""

    text: str
    append_to_context: bool = True


# -- activation and lifecycle -----------------------------------------------------------------


@register_message(name="worker.activate")
@dataclass(kw_only=True, slots=True)
class BusActivateWorkerMessage(BusDataMessage):
    """Activates the target worker with optional arguments.

    Attributes:
        args: The activation arguments (``WorkerActivationArgs.to_dict()``).
        bridge_worker: Set by pipeline workers: the worker whose bridge an activated bridged
            worker is to serve. Plain workers ignore it.
        bridge_tag: That bridge's tag (``None`` for an untagged bridge).
    """

    ESSENTIAL: ClassVar[bool] = True

    args: dict[str, Any] | None = None
    bridge_worker: Name | None = None
    bridge_tag: Name | None = None


@register_message(name="worker.deactivate")
@dataclass(kw_only=True, slots=True)
class BusDeactivateWorkerMessage(BusDataMessage):
    """Deactivates the target worker."""

    ESSENTIAL: ClassVar[bool] = True


@register_message(name="session.end")
@dataclass(kw_only=True, slots=True)
class BusEndMessage(BusDataMessage):
    """Ends the session gracefully: every runner on the channel ends."""

    CONTROL: ClassVar[bool] = True
    reason: str | None = None


@register_message(name="worker.end")
@dataclass(kw_only=True, slots=True)
class BusEndWorkerMessage(BusDataMessage):
    """Ends the target worker gracefully (it finishes its jobs and its children first)."""

    ESSENTIAL: ClassVar[bool] = True

    reason: str | None = None


@register_message(name="session.cancel")
@dataclass(kw_only=True, slots=True)
class BusCancelMessage(BusSystemMessage):
    """Cancels the session: every runner on the channel cancels its workers."""

    CONTROL: ClassVar[bool] = True
    reason: str | None = None


@register_message(name="worker.cancel")
@dataclass(kw_only=True, slots=True)
class BusCancelWorkerMessage(BusSystemMessage):
    """Cancels the target worker now."""

    reason: str | None = None


@dataclass(kw_only=True, slots=True)
class BusAddWorkerMessage(BusLocalMessage, BusSystemMessage):
    """Asks the local runner to add and start a child worker."""

    CONTROL: ClassVar[bool] = True
    worker: BaseWorker


@register_message(name="worker.ready")
@dataclass(kw_only=True, slots=True)
class BusWorkerReadyMessage(BusDataMessage):
    """Announces that a worker started; for observers and tools."""

    CONTROL: ClassVar[bool] = True
    runner: Name
    parent: Name | None = None
    active: bool = False
    bridged: bool = False
    started_at: float | None = None


@register_message(name="worker.stopped")
@dataclass(kw_only=True, slots=True)
class BusWorkerStoppedMessage(BusSystemMessage):
    """Announces that a worker stopped and left the registry; its name is free again."""

    CONTROL: ClassVar[bool] = True
    runner: Name
    incarnation: float = 0.0


@register_message(name="worker.error")
@dataclass(kw_only=True, slots=True)
class BusWorkerErrorMessage(BusSystemMessage):
    """A root worker reports an error."""

    error: str


@dataclass(kw_only=True, slots=True)
class BusWorkerLocalErrorMessage(BusLocalMessage, BusSystemMessage):
    """A child worker reports an error to its parent, in process."""

    error: str


# -- registry and liveness --------------------------------------------------------------------


@register_message(name="registry.snapshot")
@dataclass(kw_only=True, slots=True)
class BusWorkerRegistryMessage(BusSystemMessage):
    """A runner's full list of workers, with a digest that identifies this version of it."""

    CONTROL: ClassVar[bool] = True
    runner: Name
    workers: list[WorkerRegistryEntry] = field(default_factory=list)
    incarnation: float = 0.0
    digest: Name = ""


@register_message(name="registry.request")
@dataclass(kw_only=True, slots=True)
class BusRegistryRequestMessage(BusSystemMessage):
    """Asks a runner (the target) for its full registry snapshot."""

    CONTROL: ClassVar[bool] = True
    runner: Name


@register_message(name="runner.heartbeat")
@dataclass(kw_only=True, slots=True)
class BusHeartbeatMessage(BusSystemMessage):
    """A runner is alive; carries its registry digest and counters."""

    CONTROL: ClassVar[bool] = True
    runner: Name
    incarnation: float
    digest: Name = ""
    # Positive and bounded: a peer is declared lost after a few intervals of silence.
    interval: Annotated[float, Range(gt=0.0, le=MAX_HEARTBEAT_INTERVAL)] = 1.0
    stats: dict[str, Any] | None = None


@register_message(name="runner.leave")
@dataclass(kw_only=True, slots=True)
class BusRunnerLeaveMessage(BusSystemMessage):
    """A runner is shutting down: remove its workers now."""

    CONTROL: ClassVar[bool] = True
    runner: Name
    incarnation: float


@register_message(name="worker.duplicate")
@dataclass(kw_only=True, slots=True)
class BusDuplicateWorkerMessage(BusSystemMessage):
    """Two live workers claim one name; sent to both runners."""

    CONTROL: ClassVar[bool] = True
    worker_name: Name
    runner: Name
    other_runner: Name


# -- jobs -------------------------------------------------------------------------------------


@register_message(name="job.request")
@dataclass(kw_only=True, slots=True)
class BusJobRequestMessage(BusDataMessage):
    """Asks the target worker to do a job."""

    ESSENTIAL: ClassVar[bool] = True

    job_id: Name
    job_name: Name | None = None
    payload: dict[str, Any] | None = None


@register_message(name="job.response")
@dataclass(kw_only=True, slots=True)
class BusJobResponseMessage(BusDataMessage):
    """A worker's final answer to a job."""

    ESSENTIAL: ClassVar[bool] = True

    job_id: Name
    status: JobStatus = JobStatus.COMPLETED
    response: dict[str, Any] | None = None


@register_message(name="job.response.again")
@dataclass(kw_only=True, slots=True)
class BusJobResponseAgainMessage(BusJobResponseMessage):
    """A final answer sent again in reply to a :class:`BusJobCheckMessage`; a requester that
    had the answer already ignores it, hooks included."""


@register_message(name="job.response.urgent")
@dataclass(kw_only=True, slots=True)
class BusJobResponseUrgentMessage(BusSystemMessage):
    """A final answer delivered with system priority."""

    job_id: Name
    status: JobStatus = JobStatus.COMPLETED
    response: dict[str, Any] | None = None


@register_message(name="job.update")
@dataclass(kw_only=True, slots=True)
class BusJobUpdateMessage(BusDataMessage):
    """Progress of a job."""

    job_id: Name
    update: dict[str, Any] | None = None


@register_message(name="job.update.urgent")
@dataclass(kw_only=True, slots=True)
class BusJobUpdateUrgentMessage(BusSystemMessage):
    """Progress delivered with system priority."""

    job_id: Name
    update: dict[str, Any] | None = None


@register_message(name="job.update.request")
@dataclass(kw_only=True, slots=True)
class BusJobUpdateRequestMessage(BusDataMessage):
    """The requester asks for progress."""

    job_id: Name


@register_message(name="job.check")
@dataclass(kw_only=True, slots=True)
class BusJobCheckMessage(BusDataMessage):
    """The requester asks about jobs it has waited on for long. The worker stays silent about
    those it runs, sends again the answers it remembers (the first may have been lost), and
    answers ``error`` for the others (their request, or an answer it no longer remembers, was
    lost). Network buses deliver at most once: this is how such a job still ends. At most
    :data:`MAX_CHECKED_JOBS` ids per message; a worker ignores the rest."""

    job_ids: list[Name]


MAX_CHECKED_JOBS = 1024


@register_message(name="job.cancel")
@dataclass(kw_only=True, slots=True)
class BusJobCancelMessage(BusSystemMessage):
    """The requester cancels a job."""

    job_id: Name
    reason: str | None = None


@register_message(name="job.stream.start")
@dataclass(kw_only=True, slots=True)
class BusJobStreamStartMessage(BusDataMessage):
    """A worker starts streaming results."""

    job_id: Name
    data: dict[str, Any] | None = None


@register_message(name="job.stream.data")
@dataclass(kw_only=True, slots=True)
class BusJobStreamDataMessage(BusDataMessage):
    """One streamed chunk."""

    job_id: Name
    data: dict[str, Any] | None = None


@register_message(name="job.stream.end")
@dataclass(kw_only=True, slots=True)
class BusJobStreamEndMessage(BusDataMessage):
    """The end of a stream; also the worker's final answer."""

    ESSENTIAL: ClassVar[bool] = True

    job_id: Name
    data: dict[str, Any] | None = None


@register_message(name="job.stream.end.again")
@dataclass(kw_only=True, slots=True)
class BusJobStreamEndAgainMessage(BusJobStreamEndMessage):
    """The end of a stream sent again in reply to a :class:`BusJobCheckMessage`, as
    :class:`BusJobResponseAgainMessage` is for a plain answer."""
