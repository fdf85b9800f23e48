"""BaseWorker: a named participant on the bus.

A worker is attached to a runner's bus and registry, starts (registers and, if active,
activates), handles messages, and stops (cancels its work, leaves the registry and the bus, and
frees its name). Jobs are in :mod:`pipecat_workers.jobs`; this module holds the lifecycle,
activation and hand-off, parent and children, and message dispatch.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pipecat_workers.bus.core import Role, WorkerBus
from pipecat_workers.bus.messages import (
    BusActivateWorkerMessage,
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusJobRequestMessage,
    BusMessage,
    BusWorkerErrorMessage,
    BusWorkerLocalErrorMessage,
    BusWorkerReadyMessage,
    BusWorkerStoppedMessage,
)
from pipecat_workers.errors import WorkerStateError
from pipecat_workers.events import EventEmitter
from pipecat_workers.jobs.executor import JobExecutorMixin, RememberedAnswer
from pipecat_workers.jobs.group import JobGroup
from pipecat_workers.jobs.requester import JobRequesterMixin
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import DEFAULT_SETTINGS, Settings
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.tracing.context import current_trace
from pipecat_workers.tracing.spans import Span
from pipecat_workers.types import (
    MAX_JOB_NAMES,
    WorkerActivationArgs,
    WorkerErrorData,
    WorkerLostData,
    WorkerReadyData,
)
from pipecat_workers.validate import check_name
from pipecat_workers.workers.decorators import JobHandlerSpec, collect_handlers
from pipecat_workers.workers.dispatch import HANDLERS, builtin_handler, ignored
from pipecat_workers.workers.tracing import WorkerTracingMixin

if TYPE_CHECKING:
    from pipecat_workers.workers.runner import RunnerStats, WorkerRunner

logger = logging.getLogger("pipecat_workers.worker")

_auto_names: dict[str, itertools.count[int]] = {}

T = TypeVar("T")


class WorkerState(enum.StrEnum):
    """Where a worker is in its life."""

    CREATED = "created"
    READY = "ready"
    ENDING = "ending"
    STOPPING = "stopping"
    STOPPED = "stopped"


class BaseWorker(EventEmitter, JobRequesterMixin, JobExecutorMixin, WorkerTracingMixin):
    """Base class of every worker: subclass it and override the hooks you need.

    Args:
        name: Unique name on the bus; defaults to ``ClassName#n`` (fine for workers that
            nobody addresses by name).
        active: Whether the worker activates as soon as it starts; if False it waits for
            ``activate_worker``.

    Example::

        class Greeter(BaseWorker):
            async def on_activated(self, args):
                await super().on_activated(args)
                await self.activate_worker("support", deactivate_self=True)
    """

    EVENTS: ClassVar[frozenset[str]] = frozenset({
        "on_activated", "on_deactivated", "on_bus_message", "on_job_request",
        "on_job_response", "on_job_update", "on_job_update_requested", "on_job_completed",
        "on_job_error", "on_job_stream_start", "on_job_stream_data", "on_job_stream_end",
        "on_job_cancelled", "on_worker_ready", "on_worker_failed", "on_worker_lost",
    })

    _job_handlers: ClassVar[dict[str, JobHandlerSpec]] = {}
    _ready_handlers: ClassVar[dict[str, str]] = {}
    _handles_unnamed_jobs: ClassVar[bool] = False
    # Why this worker leaves the registry, as its watchers are told (see WorkerLostData).
    _departure: str = "stopped"
    # True for a proxy's stand-in: a local name whose work happens in another process, so
    # jobs sent to it are checked on as for a remote worker.
    STANDS_IN: ClassVar[bool] = False
    # True for a proxy and its stand-ins: the registry says so, and proxies expose neither.
    RELAYS: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._job_handlers, cls._ready_handlers = collect_handlers(cls)
        cls._handles_unnamed_jobs = cls.on_job_request is not JobExecutorMixin.on_job_request

    def __init__(self, name: str | None = None, *, active: bool = True) -> None:
        if name is None:
            cls_name = type(self).__name__
            counter = _auto_names.setdefault(cls_name, itertools.count())
            name = f"{cls_name}#{next(counter)}"
        self._name = check_name("worker", name)
        self._active = False
        self._pending_activation = active
        self._activation_args: dict[str, Any] | None = None
        self._parent: str | None = None
        self._children: list[BaseWorker] = []
        self._started_at: float | None = None
        self._state = WorkerState.CREATED
        self._bus: WorkerBus | None = None
        self._registry: WorkerRegistry | None = None
        self._runner: WorkerRunner | None = None
        self._settings: Settings = DEFAULT_SETTINGS
        self._stats: RunnerStats | None = None
        self._watched: dict[str, None] = {}
        self._active_jobs: dict[str, BusJobRequestMessage] = {}
        self._job_tasks: dict[str, asyncio.Task[None]] = {}
        self._job_locks: dict[str, asyncio.Lock] | None = None
        self._early_cancels: dict[str, tuple[str, str | None]] | None = None
        self._answers: dict[str, RememberedAnswer] | None = None
        self._job_spans: dict[str, Span] | None = None
        self._refused: dict[str, str] | None = None
        self._all_answered: asyncio.Future[None] | None = None
        self._job_groups: dict[str, JobGroup] = {}
        self._finished: asyncio.Future[None] | None = None
        self._done_callbacks: list[Callable[[BaseWorker], None]] = []
        self._end_task: asyncio.Task[None] | None = None
        self._tasks: dict[asyncio.Task[Any], None] | None = None
        self._registered: asyncio.Future[None] | None = None

    # -- properties -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The worker's name on the bus."""
        return self._name

    @property
    def bus(self) -> WorkerBus:
        """The bus this worker is attached to.

        Raises:
            WorkerStateError: before the worker was added to a runner.
        """
        if self._bus is None:
            raise WorkerStateError(f"worker '{self._name}' is not attached to a bus yet")
        return self._bus

    @property
    def registry(self) -> WorkerRegistry:  # type: ignore[override]
        """The registry shared with this worker's runner.

        Raises:
            WorkerStateError: before the worker was added to a runner.
        """
        if self._registry is None:
            raise WorkerStateError(f"worker '{self._name}' is not attached to a registry yet")
        return self._registry

    @property
    def worker_runner(self) -> WorkerRunner:
        """The runner hosting this worker.

        Raises:
            WorkerStateError: before the worker was added to a runner.
        """
        if self._runner is None:
            raise WorkerStateError(f"worker '{self._name}' is not attached to a runner yet")
        return self._runner

    @property
    def state(self) -> WorkerState:
        """Where the worker is in its life."""
        return self._state

    @property
    def active(self) -> bool:
        """Whether the worker is active."""
        return self._active

    @property
    def activation_args(self) -> dict[str, Any] | None:
        """Arguments of the latest activation; ``None`` while inactive."""
        return self._activation_args

    @property
    def parent(self) -> str | None:
        """The parent's name, or ``None`` for a root worker."""
        return self._parent

    @property
    def children(self) -> list[BaseWorker]:
        """Children added with :meth:`add_workers`."""
        return list(self._children)

    @property
    def started_at(self) -> float | None:
        """Unix time at which the worker became ready, or ``None``."""
        return self._started_at

    @property
    def job_names(self) -> tuple[str, ...]:
        """The job names its ``@job`` handlers take, sorted: what its registry entry tells
        the other runners, so that tools can offer them."""
        return tuple(sorted(self._job_handlers))

    @property
    def handles_any_job(self) -> bool:
        """Whether it takes requests of any name, and without one: it overrides
        ``on_job_request``."""
        return self._handles_unnamed_jobs

    @property
    def bridged(self) -> bool:
        """Whether pipeline frames from the bus enter this worker; False for BaseWorker."""
        return False

    @property
    def active_jobs(self) -> dict[str, BusJobRequestMessage]:
        """Jobs this worker is working on, by job id."""
        return dict(self._active_jobs)

    @property
    def job_groups(self) -> dict[str, JobGroup]:
        """Job groups this worker launched and that have not ended, by job id."""
        return dict(self._job_groups)

    # -- lifecycle hooks --------------------------------------------------------------

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        """Called when this worker is activated."""

    async def on_deactivated(self) -> None:
        """Called when this worker is deactivated."""

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        """Called when a watched worker (or a child) is ready."""

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        """Called when a watched worker (or a child) stops, leaves or is lost."""

    async def on_worker_failed(self, data: WorkerErrorData) -> None:
        """Called when a child reports an error."""

    # -- attach, start, stop ------------------------------------------------------------

    def attach(self, *, registry: WorkerRegistry, bus: WorkerBus,
               worker_runner: WorkerRunner) -> None:
        """Connect to a runner's bus and registry; called by ``WorkerRunner.add_workers``."""
        if self._runner is not None and self._runner is not worker_runner:
            raise WorkerStateError(f"worker '{self._name}' already belongs to another runner")
        self._registry = registry
        self._bus = bus
        self._runner = worker_runner
        self._settings = worker_runner.settings
        self._stats = worker_runner.stats_counters
        bus.subscribe(self, role=self._bus_role())

    def _bus_role(self) -> Role:
        """What the bus delivers to this worker: ``"worker"`` (messages for it, and
        application broadcasts) for all but a proxy that forwards session-wide broadcasts."""
        return "worker"

    async def start(self) -> None:
        """Announce and register the worker, then activate it if activation is pending."""
        if self._state is not WorkerState.CREATED:
            raise WorkerStateError(f"worker '{self._name}' was already started")
        runner = self.worker_runner
        self._state = WorkerState.READY
        self._started_at = time.time()
        span = self._lifecycle_span("start", runner=runner.name)
        try:
            await self.send_bus_message(BusWorkerReadyMessage(
                source=self._name, runner=runner.name, parent=self._parent,
                active=self._pending_activation, bridged=self.bridged,
                started_at=self._started_at))
            await self.registry.register(WorkerReadyData(
                worker_name=self._name, runner=runner.name, incarnation=runner.incarnation,
                parent=self._parent, jobs=self.job_names[:MAX_JOB_NAMES],
                any_job=self.handles_any_job, relay=self.RELAYS))
        finally:
            self._mark_registered()  # whoever waits for it must not wait for a failed start
            if span is not None:
                span.end()
        await self._maybe_activate()
        for name in (*self._ready_handlers, *self._watched):
            await self.registry.watch(name, self._on_watched_ready, on_lost=self._on_watched_lost)

    def _mark_registered(self) -> None:
        if self._registered is None:
            self._registered = asyncio.get_running_loop().create_future()
        if not self._registered.done():
            self._registered.set_result(None)

    async def wait_registered(self) -> None:
        """Wait until :meth:`start` has registered the worker (or gave up trying)."""
        if self._registered is None:
            self._registered = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._registered)

    async def stop(self, *, reason: str | None = None) -> None:
        """Stop for good: cancel launched groups and running jobs, leave registry and bus.

        Safe to call more than once; later calls wait for the first to finish.
        """
        if self._state in (WorkerState.STOPPING, WorkerState.STOPPED):
            if self._end_task is not asyncio.current_task():
                await self.wait()
            return
        self._state = WorkerState.STOPPING
        why = reason or "stopped"
        span = self._lifecycle_span("stop", reason=why)
        try:
            try:
                await self._cancel_own_tasks()
                for job_id in list(self._job_groups):
                    await self.cancel_job_group(job_id, reason=f"worker '{self._name}' {why}")
                if self._bus is not None:
                    await self._cancel_all_jobs(f"worker '{self._name}' {why}")
            finally:
                # Leave even if interrupted (a bounded stop timed out): a worker that stays
                # registered and subscribed keeps its name and strands the jobs sent to it.
                await self._leave()
            await self._wait_event_handlers(self._settings.cancel_timeout)
        finally:
            self._state = WorkerState.STOPPED
            self._active = False
            self._end_session()
            if span is not None:
                span.end()
            self._finish()

    def create_task(self, coro: Coroutine[Any, Any, T], *, name: str | None = None
                    ) -> asyncio.Task[T]:
        """Run ``coro`` in a task owned by this worker: it is cancelled when the worker stops.

        Use it for work a hook starts but should not wait for (a conversation loop, a
        poller), so that no task outlives its worker.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if self._tasks is None:
            self._tasks = {}
        self._tasks[task] = None
        task.add_done_callback(self._tasks.pop)
        return task

    async def _cancel_own_tasks(self) -> None:
        if self._tasks:
            await cancel_and_wait(list(self._tasks), self._settings.cancel_timeout)

    async def _leave(self) -> None:
        """Drop this worker's watches, leave the registry, and unsubscribe from the bus."""
        bus = self._bus
        if bus is None:
            return
        try:
            if self._started_at is not None:
                registry = self.registry
                # Watches outlive their owner in the shared registry: drop ours, or a
                # stopped worker keeps getting hooks and each stopped worker leaks one.
                for name in (*self._ready_handlers, *self._watched):
                    registry.unwatch(name, self._on_watched_ready)
                await registry.unregister(self._name, reason=self._departure)
                await self.send_bus_message(BusWorkerStoppedMessage(
                    source=self._name, runner=self.worker_runner.name,
                    incarnation=self.worker_runner.incarnation))
        finally:
            bus.unsubscribe(self)

    def _finish(self) -> None:
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
        if not self._finished.done():
            self._finished.set_result(None)
            callbacks, self._done_callbacks = self._done_callbacks, []
            for callback in callbacks:
                self._call_done_callback(callback)

    async def wait(self) -> None:
        """Wait until this worker has stopped."""
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._finished)

    def add_done_callback(self, callback: Callable[[BaseWorker], None]) -> None:
        """Call ``callback(worker)`` once the worker has stopped.

        Callbacks run before :meth:`stop` returns (not on a later loop turn), so when
        ``await worker.stop()`` returns the runner has already freed the worker's name.
        """
        if self._finished is not None and self._finished.done():
            self._call_done_callback(callback)
        else:
            self._done_callbacks.append(callback)

    def _call_done_callback(self, callback: Callable[[BaseWorker], None]) -> None:
        try:
            callback(self)
        except Exception:
            logger.exception("%s: done callback %r failed", self._name, callback)

    def _job_refusal(self) -> str | None:
        # A worker that is ending or stopping takes no new work (it only finishes old work).
        if self._state in (WorkerState.ENDING, WorkerState.STOPPING, WorkerState.STOPPED):
            return f"worker '{self._name}' is {self._state}"
        return None

    # -- activation and hand-off -------------------------------------------------------

    async def _maybe_activate(self) -> None:
        if self._pending_activation and self._state is WorkerState.READY:
            self._pending_activation = False
            self._active = True
            args = self._activation_args
            self._begin_session()
            token = current_trace.set(self._session_trace)
            try:
                await self.on_activated(args)
            except Exception as exc:
                self._session_failed(exc)
                raise
            finally:
                current_trace.reset(token)
            self._emit("on_activated", args)

    async def activate_worker(
        self, worker_name: str, *, args: WorkerActivationArgs | None = None,
        deactivate_self: bool = False,
    ) -> None:
        """Activate a worker by name; with ``deactivate_self``, hand off to it.

        On hand-off this worker is inactive before the target is activated, so the two are
        never active together.
        """
        with self._traced_activation(worker_name, deactivate_self):
            if deactivate_self and self._active:
                self._active = False
                await self.send_bus_message(BusDeactivateWorkerMessage(
                    source=self._name, target=self._name))
            await self.send_bus_message(BusActivateWorkerMessage(
                source=self._name, target=worker_name, args=args.to_dict() if args else None))

    async def deactivate_worker(self, worker_name: str) -> None:
        """Deactivate a worker by name."""
        await self.send_bus_message(BusDeactivateWorkerMessage(
            source=self._name, target=worker_name))

    async def _handle_activate(self, message: BusActivateWorkerMessage) -> None:
        self._note_activation(message)
        self._activation_args = message.args
        self._pending_activation = True
        await self._maybe_activate()

    async def _handle_deactivate(self, message: BusDeactivateWorkerMessage) -> None:
        self._active = False
        self._pending_activation = False
        self._activation_args = None
        self._end_session()
        await self.on_deactivated()
        self._emit("on_deactivated")

    # -- watching -------------------------------------------------------------------------

    async def watch_workers(self, *worker_names: str) -> None:
        """Get ``on_worker_ready`` when each worker is ready (now, if it already is), and
        ``on_worker_lost`` whenever it goes away."""
        for name in worker_names:
            self._watched[name] = None
            if self._registry is not None and self._state is not WorkerState.CREATED:
                await self._registry.watch(name, self._on_watched_ready,
                                           on_lost=self._on_watched_lost)

    async def _on_watched_ready(self, data: WorkerReadyData) -> None:
        attribute = self._ready_handlers.get(data.worker_name)
        if attribute is not None:
            await getattr(self, attribute)(data)
        await self.on_worker_ready(data)
        self._emit("on_worker_ready", data)

    async def _on_watched_lost(self, data: WorkerLostData) -> None:
        await self.on_worker_lost(data)
        self._emit("on_worker_lost", data)

    # -- children -------------------------------------------------------------------------

    async def add_workers(self, *workers: BaseWorker, watch: bool = True) -> None:
        """Add child workers; this worker ends and cancels them with itself.

        Children added before the runner runs start when it does.
        """
        for worker in workers:
            if worker._parent is not None:
                logger.warning("%s: '%s' already has parent '%s'; not added", self._name,
                               worker.name, worker._parent)
                continue
            worker._parent = self._name
            self._children.append(worker)
            if watch:
                await self.watch_workers(worker.name)
            if self._bus is not None:
                await self.send_bus_message(BusAddWorkerMessage(source=self._name, worker=worker))

    # -- end and cancel ---------------------------------------------------------------

    async def end(self, *, reason: str | None = None) -> None:
        """End the session gracefully: every runner on the bus ends its workers."""
        await self.send_bus_message(BusEndMessage(source=self._name, reason=reason))

    async def cancel(self, *, reason: str | None = None) -> None:
        """Cancel the session now: every runner on the bus cancels its workers."""
        await self.send_bus_message(BusCancelMessage(source=self._name, reason=reason))

    async def _handle_end_worker(self, message: BusEndWorkerMessage) -> None:
        if self._state is WorkerState.READY and self._end_task is None:
            self._state = WorkerState.ENDING
            # In its own task, so answers to this worker's own jobs still arrive meanwhile.
            self._end_task = asyncio.get_running_loop().create_task(self._end(message.reason))

    async def _end(self, reason: str | None) -> None:
        """Finish gracefully: wait (up to ``end_grace``) for the children, for the jobs this
        worker runs until they are answered, and for the answers to the jobs it sent; then
        stop."""
        grace = self._settings.end_grace
        for child in self._children:
            await self.send_bus_message(BusEndWorkerMessage(
                source=self._name, target=child.name, reason=reason))
        # Stopping cancels the groups this worker launched, so let their answers arrive first.
        waiters = [asyncio.ensure_future(c.wait()) for c in self._children]
        waiters += [asyncio.ensure_future(g.wait_ended()) for g in self._job_groups.values()]
        if self._active_jobs:
            # Jobs whose handler already returned (answer="later", on_job_request) are
            # answered by other code: give it the same grace as a running handler.
            waiters.append(asyncio.ensure_future(self._wait_all_answered()))
        handlers = [t for t in self._job_tasks.values() if not t.done()]
        if waiters or handlers:
            await asyncio.wait([*waiters, *handlers], timeout=grace)
            for waiter in waiters:
                waiter.cancel()  # only the waits: the handlers are stop()'s to cancel
        await self.stop(reason="ended")

    async def _handle_cancel_worker(self, message: BusCancelWorkerMessage) -> None:
        for child in self._children:
            await self.send_bus_message(BusCancelWorkerMessage(
                source=self._name, target=child.name, reason=message.reason))
        # Cut the graceful end short only while it is still waiting; once it is inside
        # stop(), cancelling it would interrupt the leave, so stop() below waits for it.
        if (self._end_task is not None and self._state is WorkerState.ENDING
                and self._end_task is not asyncio.current_task()):
            self._end_task.cancel()
        await self.stop(reason="cancelled")

    # -- bus ------------------------------------------------------------------------------

    async def send_bus_message(self, message: BusMessage) -> None:
        """Send a message on the bus.

        Raises:
            WorkerStateError: before the worker was added to a runner.
        """
        bus = self._bus
        if bus is None:
            raise WorkerStateError(
                f"worker '{self._name}' cannot send {type(message).__name__}: not attached to a "
                "bus (add it to a WorkerRunner first)")
        if message.trace is None and self._session_trace is not None:
            # Sent outside any handled message (else the bus stamps the handler's trace):
            # it belongs to the conversation this worker holds.
            message.trace = current_trace.get() or self._session_trace
        await bus.send(message)

    async def send_bus_error_message(self, error: str) -> None:
        """Report an error: to the parent if this is a child, to the bus otherwise."""
        if self._parent is not None:
            await self.send_bus_message(BusWorkerLocalErrorMessage(
                source=self._name, target=self._parent, error=error))
        else:
            await self.send_bus_message(BusWorkerErrorMessage(source=self._name, error=error))

    async def _handle_worker_error(
        self, message: BusWorkerErrorMessage | BusWorkerLocalErrorMessage
    ) -> None:
        if any(child.name == message.source for child in self._children):
            data = WorkerErrorData(worker_name=message.source, error=message.error)
            await self.on_worker_failed(data)
            self._emit("on_worker_failed", data)

    async def on_bus_message(self, message: BusMessage) -> None:
        """Handle a message; override to handle your own types, calling ``super()`` first."""
        cls = type(message)
        handler = HANDLERS.get(cls) or builtin_handler(cls)
        if handler is ignored:
            return
        await handler(self, message)
        if self._event_handlers:
            self._emit("on_bus_message", message)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._state}>"
