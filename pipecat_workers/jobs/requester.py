"""The requester side of jobs: send, track, collect, cancel.

Every job, single or group, is a :class:`JobGroup` keyed by its job id. A group always ends:
with every answer, at its timeout (one budget that covers waiting for the workers and the
work), when cancelled, or at once when a member leaves or is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from pipecat_workers.bus.messages import (
    MAX_CHECKED_JOBS,
    SYSTEM_PRIORITY,
    BusJobCancelMessage,
    BusJobCheckMessage,
    BusJobRequestMessage,
    BusJobResponseAgainMessage,
    BusJobResponseMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndAgainMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusMessage,
)
from pipecat_workers.errors import BusError, ConfigurationError, JobGroupError, WorkerStateError
from pipecat_workers.jobs.context import JobContext, JobGroupContext
from pipecat_workers.jobs.group import JobGroup, RawEvent
from pipecat_workers.jobs.params import JobGroupParams, JobParams, resolve_params
from pipecat_workers.jobs.types import JobEventType, JobGroupResponse, JobStatus
from pipecat_workers.tracing.context import TraceContext
from pipecat_workers.tracing.spans import tracer
from pipecat_workers.types import WorkerLostData

if TYPE_CHECKING:
    from pipecat_workers.bus.messages import BusJobResponseUrgentMessage, BusJobUpdateUrgentMessage
    from pipecat_workers.registry import WorkerRegistry
    from pipecat_workers.settings import Settings
    from pipecat_workers.workers.runner import RunnerStats

logger = logging.getLogger("pipecat_workers.jobs")
T = TypeVar("T")


def _fresh_prefix() -> str:
    return os.urandom(6).hex()


_id_prefix = _fresh_prefix()
_id_counter = itertools.count(1)


def _reset_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = _fresh_prefix()
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_reset_ids)


def new_job_id() -> str:
    """A job id unique across processes: a random per-process prefix and a counter."""
    return f"{_id_prefix}-{next(_id_counter)}"


class JobRequesterMixin:
    """Sends jobs and collects their answers; mixed into :class:`BaseWorker`."""

    # Provided by BaseWorker.
    if TYPE_CHECKING:

        @property
        def name(self) -> str: ...

        def create_task(self, coro: Coroutine[Any, Any, T], *, name: str | None = None
                        ) -> asyncio.Task[T]: ...

        def _trace_parent(self) -> TraceContext | None: ...

    registry: WorkerRegistry
    _settings: Settings
    _stats: RunnerStats | None
    _job_groups: dict[str, JobGroup]
    _emit: Any

    async def send_bus_message(self, message: BusMessage) -> None:
        raise NotImplementedError  # pragma: no cover - BaseWorker implements it

    # -- hooks ----------------------------------------------------------------------------

    async def on_job_response(self, message: BusJobResponseMessage) -> None:
        """Called for each worker's final answer to a job this worker sent."""

    async def on_job_update(self, message: BusJobUpdateMessage) -> None:
        """Called for each progress update of a job this worker sent."""

    async def on_job_completed(self, result: JobGroupResponse) -> None:
        """Called when every member of a job group has answered (see ``result.ok``)."""

    async def on_job_error(self, message: BusJobResponseMessage) -> None:
        """Called when a member answers ``error`` or ``failed`` and the group cancels on error."""

    async def on_job_stream_start(self, message: BusJobStreamStartMessage) -> None:
        """Called when a worker starts streaming results."""

    async def on_job_stream_data(self, message: BusJobStreamDataMessage) -> None:
        """Called for each streamed chunk."""

    async def on_job_stream_end(self, message: BusJobStreamEndMessage) -> None:
        """Called when a worker ends its stream (its final answer)."""

    # -- sending --------------------------------------------------------------------------

    async def request_job(
        self, worker_name: str, *, name: str | None = None,
        payload: dict[str, Any] | None = None, timeout: float | None = None,
        label: str | None = None, cancellable: bool | None = None,
        params: JobParams | None = None,
    ) -> str:
        """Send a job to one worker once it is ready, and return its job id at once.

        Answers arrive through the hooks (``on_job_response``, ``on_job_completed``...).
        Options go either as keywords or as ``params``, not both.

        Args:
            worker_name: The worker to send the job to.
            name: The job name (routes to the worker's ``@job`` handler).
            payload: The data describing the work.
            timeout: Seconds for the whole job, waiting for the worker included.
            label: A human-readable title, kept on the group.
            cancellable: Whether :meth:`request_cancel_job_group` may cancel it (default
                True).
            params: The options as one :class:`JobParams` (the pipecat 1.14 spelling); a
                :class:`JobGroupParams` also sets ``cancel_on_error``.

        Returns:
            The job id.

        Raises:
            TypeError: if ``params`` comes with any of the keywords.
            ConfigurationError: if an option is invalid.
            JobGroupError: if the worker is not ready within ``timeout``.
        """
        resolved = resolve_params(params, name=name, payload=payload, timeout=timeout,
                                  label=label, cancellable=cancellable)
        group = await self._open_group((worker_name,), resolved)
        return group.job_id

    async def request_job_group(
        self, *worker_names: str, name: str | None = None,
        payload: dict[str, Any] | None = None, timeout: float | None = None,
        cancel_on_error: bool | None = None, label: str | None = None,
        cancellable: bool | None = None, params: JobParams | None = None,
    ) -> str:
        """Send one job to several workers once all are ready; return the shared job id.

        Takes the options of :meth:`request_job` (``timeout`` covers the whole group), and:

        Args:
            worker_names: The workers to send the job to.
            cancel_on_error: Whether a member answering ``error`` or ``failed`` cancels the
                group (default True).

        Returns:
            The job id shared by the group.

        Raises:
            TypeError: if ``params`` comes with any of the keywords, or a worker name is
                not a string.
            ConfigurationError: if an option is invalid, or no worker or a repeated one is
                named.
            JobGroupError: if the workers are not all ready within ``timeout``.
        """
        resolved = resolve_params(params, name=name, payload=payload, timeout=timeout,
                                  label=label, cancellable=cancellable,
                                  cancel_on_error=cancel_on_error)
        group = await self._open_group(worker_names, resolved)
        return group.job_id

    def job(
        self, worker_name: str, *, name: str | None = None,
        payload: dict[str, Any] | None = None, timeout: float | None = None,
        label: str | None = None, cancellable: bool | None = None,
        params: JobParams | None = None,
    ) -> JobContext:
        """A context manager that sends a job to one worker and waits for its answer.

        Takes the options of :meth:`request_job`.

        Raises:
            TypeError: if ``params`` comes with any of the keywords.
            ConfigurationError: if an option is invalid.

        Example::

            async with self.job("researcher", name="search", payload={"q": q}) as j:
                async for event in j:
                    print(event.type, event.data)
            print(j.response)
        """
        resolved = resolve_params(params, name=name, payload=payload, timeout=timeout,
                                  label=label, cancellable=cancellable)
        return JobContext(self, worker_name, resolved)  # type: ignore[arg-type]

    def job_group(
        self, *worker_names: str, name: str | None = None,
        payload: dict[str, Any] | None = None, timeout: float | None = None,
        cancel_on_error: bool | None = None, label: str | None = None,
        cancellable: bool | None = None, params: JobParams | None = None,
    ) -> JobGroupContext:
        """A context manager that sends one job to several workers and waits for all.

        Takes the options of :meth:`request_job_group`.

        Raises:
            TypeError: if ``params`` comes with any of the keywords.
            ConfigurationError: if an option is invalid.
        """
        resolved = resolve_params(params, name=name, payload=payload, timeout=timeout,
                                  label=label, cancellable=cancellable,
                                  cancel_on_error=cancel_on_error)
        return JobGroupContext(self, worker_names, resolved)  # type: ignore[arg-type]

    async def create_job_group_and_request_job(
        self, worker_names: list[str], *, name: str | None = None,
        payload: dict[str, Any] | None = None, timeout: float | None = None,
        cancel_on_error: bool | None = None, label: str | None = None,
        cancellable: bool | None = None, params: JobParams | None = None,
    ) -> JobGroup:
        """Wait for the workers, create the group, send the requests; do not wait for answers.

        Takes the options of :meth:`request_job_group`.

        Returns:
            The group; ``await group.wait()`` for the answers.

        Raises:
            TypeError: if ``params`` comes with any of the keywords, or a worker name is
                not a string.
            ConfigurationError: if an option is invalid, or no worker or a repeated one is
                named.
            JobGroupError: if the workers are not all ready within ``timeout``.
        """
        resolved = resolve_params(params, name=name, payload=payload, timeout=timeout,
                                  label=label, cancellable=cancellable,
                                  cancel_on_error=cancel_on_error)
        return await self._open_group(worker_names, resolved)

    async def _open_group(
        self, worker_names: list[str] | tuple[str, ...], params: JobGroupParams, *,
        collect_events: bool = False,
    ) -> JobGroup:
        """The work of :meth:`create_job_group_and_request_job`; with ``collect_events``,
        events are kept for an ``async for`` reader from before the first request leaves."""
        names = tuple(worker_names)
        if not names:
            raise ConfigurationError("a job needs at least one worker name")
        for worker in names:
            if not isinstance(worker, str):
                raise TypeError(f"worker names must be str, got {type(worker).__name__}")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"a job group names a worker twice: {', '.join(names)}")
        timeout = params.timeout  # validated by JobParams
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        registry = self.registry
        for worker in names:
            if worker not in registry:
                await self._wait_ready(names, deadline, timeout)
                break
        group = JobGroup(new_job_id(), names, cancel_on_error=params.cancel_on_error,
                         label=params.label, cancellable=params.cancellable, loop=loop)
        if collect_events:
            group.collect_events(self._settings.event_queue_size, self._settings.event_wait)
        if not self._job_groups:
            registry.add_departure_listener(self._on_peer_departed)
        self._job_groups[group.job_id] = group
        if deadline is not None:
            group.timer = loop.call_later(max(deadline - loop.time(), 0), self._on_group_timeout,
                                          group.job_id, timeout)
        if self._stats is not None:
            self._stats.jobs_requested += len(names)
        contexts = self._trace_job(group, params.name)
        for worker in names:
            request = BusJobRequestMessage(
                source=self.name, target=worker, job_id=group.job_id, job_name=params.name,
                payload=params.payload)
            request.trace = contexts[worker]
            await self.send_bus_message(request)
        group.sent_at = loop.time()  # checks count from here: a slow send is not a lost one
        for worker in names:
            if worker not in registry and worker in group.pending:
                await self._settle_departed(group, worker, "left before the job was sent")
        return group

    def _trace_job(self, group: JobGroup, job_name: str | None) -> dict[str, TraceContext]:
        """The trace context of each request of a new group: children of the current trace
        (a new one if there is none). Recorded, a group of several gets a span, each request
        its own under it; otherwise every request carries the one context."""
        parent = self._trace_parent()
        if not tracer.recording:
            context = parent if parent is not None else TraceContext.new_root()
            return dict.fromkeys(group.worker_names, context)
        what = job_name or "job"
        names = group.worker_names
        if len(names) > 1:
            group.span = tracer.start_span(
                f"group {what}", "job.group", parent=parent, worker=self.name,
                attributes={"group.id": group.job_id, "job.name": job_name or "",
                            "group.size": len(names)})
            parent = group.span.context
        spans = group.member_spans = {
            worker: tracer.start_span(
                f"{what} -> {worker}", "job.request", parent=parent, worker=self.name,
                attributes={"job.id": group.job_id, "job.name": job_name or "",
                            "job.target": worker})
            for worker in names}
        return {worker: span.context for worker, span in spans.items()}

    async def _wait_ready(self, names: tuple[str, ...], deadline: float | None,
                          timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        for worker in names:
            remaining = None if deadline is None else max(deadline - loop.time(), 0)
            try:
                await self.registry.wait_for(worker, remaining)
            except TimeoutError:
                missing = [n for n in names if n not in self.registry]
                raise JobGroupError(
                    f"workers not ready within timeout ({timeout} s): {', '.join(missing)}"
                ) from None

    async def cancel_job_group(self, job_id: str, *, reason: str | None = None) -> None:
        """Cancel a job group: its pending members get a cancel, and its waiters fail."""
        # Cancels the requester makes itself (timeouts, cancel_on_error, shutdown, its own
        # code) ignore ``cancellable``: that flag only guards request_cancel_job_group.
        group = self._job_groups.pop(job_id, None)
        if group is None:
            return
        self._forget_group()
        reason = reason or "cancelled"
        group.fail(reason)
        for worker in list(group.pending):
            await self.send_bus_message(BusJobCancelMessage(
                source=self.name, target=worker, job_id=job_id, reason=reason))

    async def request_cancel_job_group(self, job_id: str, *, reason: str | None = None) -> bool:
        """Cancel a job group on behalf of someone outside it (a UI, an operator), if allowed.

        The group is cancelled as :meth:`cancel_job_group` does, unless it was sent with
        ``cancellable=False``: the requester decided that work must not be interrupted from
        outside.

        Args:
            job_id: The group's job id.
            reason: Why; its waiters' error says it (default ``"cancelled"``).

        Returns:
            True if the group was cancelled; False if it is unknown, already ended, or not
            cancellable.
        """
        group = self._job_groups.get(job_id)
        if group is None or group.done or not group.cancellable:
            return False
        await self.cancel_job_group(job_id, reason=reason)
        return True

    async def request_job_update(self, job_id: str, worker_name: str) -> None:
        """Ask a worker for a progress update on a job."""
        await self.send_bus_message(BusJobUpdateRequestMessage(
            source=self.name, target=worker_name, job_id=job_id))

    async def _check_jobs(self, older_than: float, remote: Callable[[str], bool]) -> None:
        """Ask each ``remote`` worker that has owed an answer for more than ``older_than``
        seconds about those jobs, in one :class:`BusJobCheckMessage`."""
        now = asyncio.get_running_loop().time()
        due: dict[str, list[str]] = {}
        for group in list(self._job_groups.values()):
            if now - group.sent_at >= older_than:
                for worker in group.pending:
                    if remote(worker):
                        due.setdefault(worker, []).append(group.job_id)
        for worker, job_ids in due.items():
            for start in range(0, len(job_ids), MAX_CHECKED_JOBS):
                try:
                    await self.send_bus_message(BusJobCheckMessage(
                        source=self.name, target=worker,
                        job_ids=job_ids[start:start + MAX_CHECKED_JOBS]))
                except (BusError, WorkerStateError) as exc:  # the next round asks again
                    logger.debug("could not check jobs on '%s': %s", worker, exc)
                    break

    def _forget_group(self) -> None:
        if not self._job_groups:
            self.registry.remove_departure_listener(self._on_peer_departed)

    def _on_group_timeout(self, job_id: str, timeout: float | None) -> None:
        group = self._job_groups.get(job_id)
        if group is not None:
            group.timer = None
            self.create_task(self.cancel_job_group(job_id, reason=f"timeout after {timeout} s"))

    # -- receiving ----------------------------------------------------------------------

    async def _handle_job_response(
        self, message: BusJobResponseMessage | BusJobResponseUrgentMessage
    ) -> None:
        group = self._job_groups.get(message.job_id)
        if group is not None and message.source not in group.pending:
            logger.debug("ignored %s from '%s': not a pending member", message, message.source)
            return
        if group is None and isinstance(message, BusJobResponseAgainMessage):
            return  # sent again after a check that crossed the answer: had it already
        await self.on_job_response(message)  # type: ignore[arg-type]
        self._emit("on_job_response", message)
        if group is not None:
            status = message.status
            if not isinstance(status, JobStatus):
                status = JobStatus(status)
            await self._settle(group, message.source, status, message.response, message)

    async def _settle(self, group: JobGroup, worker: str, status: JobStatus,
                      response: dict[str, Any] | None, message: Any) -> None:
        group.record(worker, status, response)
        if group.cancel_on_error and status in (JobStatus.ERROR, JobStatus.FAILED):
            await self.on_job_error(message)
            self._emit("on_job_error", message)
            detail = (response or {}).get("error")
            reason = f"worker '{worker}' answered {status}" + (f": {detail}" if detail else "")
            await self.cancel_job_group(group.job_id, reason=reason)
            return
        if not group.pending and self._job_groups.pop(group.job_id, None) is not None:
            self._forget_group()
            result = group.result()
            await self.on_job_completed(result)
            self._emit("on_job_completed", result)
            group.complete()

    async def _handle_job_update(
        self, message: BusJobUpdateMessage | BusJobUpdateUrgentMessage
    ) -> None:
        await self.on_job_update(message)  # type: ignore[arg-type]
        self._emit("on_job_update", message)
        group = self._job_groups.get(message.job_id)
        if group is not None and message.source in group.pending:
            # An urgent update is handled on the system lane, which must never wait.
            await self._put_event(group, (JobEventType.UPDATE, message.source, message.update),
                                  wait=message.PRIORITY != SYSTEM_PRIORITY)

    async def _handle_stream_start(self, message: BusJobStreamStartMessage) -> None:
        await self.on_job_stream_start(message)
        self._emit("on_job_stream_start", message)
        group = self._job_groups.get(message.job_id)
        if group is not None and message.source in group.pending:
            await self._put_event(group, (JobEventType.STREAM_START, message.source, message.data))

    async def _handle_stream_data(self, message: BusJobStreamDataMessage) -> None:
        await self.on_job_stream_data(message)
        if self._event_handlers:  # type: ignore[attr-defined]
            self._emit("on_job_stream_data", message)
        group = self._job_groups.get(message.job_id)
        if group is not None and message.source in group.pending:
            await self._put_event(group, (JobEventType.STREAM_DATA, message.source, message.data))

    async def _handle_stream_end(self, message: BusJobStreamEndMessage) -> None:
        group = self._job_groups.get(message.job_id)
        if group is not None and message.source not in group.pending:
            return
        if group is None and isinstance(message, BusJobStreamEndAgainMessage):
            return  # sent again after a check that crossed the end: had it already
        await self.on_job_stream_end(message)
        self._emit("on_job_stream_end", message)
        if group is not None:
            await self._put_event(group, (JobEventType.STREAM_END, message.source, message.data))
            await self._settle(group, message.source, JobStatus.COMPLETED, message.data, message)

    async def _put_event(self, group: JobGroup, event: RawEvent, *, wait: bool = True) -> None:
        if not await group.put_event(event, wait=wait) and self._stats is not None:
            self._stats.events_dropped += 1

    async def _on_peer_departed(self, lost: WorkerLostData) -> None:
        for group in list(self._job_groups.values()):
            if lost.worker_name in group.pending:
                await self._settle_departed(group, lost.worker_name, lost.reason)

    async def _settle_departed(self, group: JobGroup, worker: str, why: str) -> None:
        error = f"worker '{worker}' is gone ({why})"
        message = BusJobResponseMessage(source=worker, target=self.name, job_id=group.job_id,
                                        status=JobStatus.ERROR, response={"error": error})
        await self._handle_job_response(message)
