"""The worker side of jobs: run handlers, answer, stream, honour cancels.

Every request gets exactly one answer: the handler's, ``error`` if it raises or no handler
matches the job name, or ``cancelled`` if the requester cancels or the worker stops (a worker
that is ending or stopping takes no new jobs: it answers them ``cancelled`` at once). A handler
declared ``@job(..., answer="later")`` may return first and leave the answer to other code;
the job stays active, and those same cancels end it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pipecat_workers.bus.messages import (
    MAX_CHECKED_JOBS,
    BusJobCancelMessage,
    BusJobCheckMessage,
    BusJobRequestMessage,
    BusJobResponseAgainMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndAgainMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusJobUpdateUrgentMessage,
    BusMessage,
)
from pipecat_workers.errors import WorkerStateError
from pipecat_workers.jobs.spans import end_job_span
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.tracing.context import TraceContext, current_job, current_trace
from pipecat_workers.tracing.spans import Span, tracer

if TYPE_CHECKING:
    from pipecat_workers.settings import Settings
    from pipecat_workers.workers.decorators import JobHandlerSpec
    from pipecat_workers.workers.runner import RunnerStats

logger = logging.getLogger("pipecat_workers.jobs")

_EARLY_CANCEL_MEMORY = 256  # cancels kept per worker for requests that have not arrived yet
_ANSWER_MEMORY = 256  # final answers kept per worker, to send again when a requester asks
_REFUSAL_MEMORY = 4 * MAX_CHECKED_JOBS  # jobs a check was told are unknown: refused if late

# A final answer as remembered for a check: (requester, status, response, ended a stream).
RememberedAnswer = tuple[str, JobStatus, "dict[str, Any] | None", bool]
_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(memory: dict[_K, _V] | None, key: _K, value: _V, limit: int) -> dict[_K, _V]:
    """``memory`` (made on first use) with ``key`` set, its oldest entry dropped past
    ``limit``; a worker's memories cost nothing until it needs them."""
    if memory is None:
        memory = {}
    memory[key] = value
    if len(memory) > limit:
        del memory[next(iter(memory))]
    return memory


class JobExecutorMixin:
    """Runs the jobs other workers send; mixed into :class:`BaseWorker`."""

    # Provided by BaseWorker.
    if TYPE_CHECKING:

        @property
        def name(self) -> str: ...

    _settings: Settings
    _stats: RunnerStats | None
    _active_jobs: dict[str, BusJobRequestMessage]
    _job_tasks: dict[str, asyncio.Task[None]]
    _job_locks: dict[str, asyncio.Lock] | None
    _early_cancels: dict[str, tuple[str, str | None]] | None
    _answers: dict[str, RememberedAnswer] | None
    _refused: dict[str, str] | None
    _job_spans: dict[str, Span] | None  # a running job's span, while spans are recorded
    _all_answered: asyncio.Future[None] | None
    _emit: Any
    _job_handlers: ClassVar[dict[str, JobHandlerSpec]]
    _handles_unnamed_jobs: ClassVar[bool]

    async def send_bus_message(self, message: BusMessage) -> None:
        raise NotImplementedError  # pragma: no cover - BaseWorker implements it

    # -- hooks ----------------------------------------------------------------------------

    async def on_job_request(self, message: BusJobRequestMessage) -> None:
        """Handle a request that no ``@job`` handler matches; override to do the work."""

    async def on_job_update_requested(self, message: BusJobUpdateRequestMessage) -> None:
        """Called when the requester asks for progress; answer with ``send_job_update``."""

    async def on_job_cancelled(self, message: BusJobCancelMessage) -> None:
        """Called after the requester cancelled a job and its handler was cancelled."""

    def _job_refusal(self) -> str | None:
        """Why new jobs are refused right now, or ``None`` if they are taken."""
        return None

    # -- answering ----------------------------------------------------------------------

    def _active_request(self, job_id: str) -> BusJobRequestMessage:
        request = self._active_jobs.get(job_id)
        if request is None:
            raise WorkerStateError(f"job '{job_id}' is not active on worker '{self.name}'")
        return request

    async def send_job_response(
        self, job_id: str, response: dict[str, Any] | None = None, *,
        status: JobStatus = JobStatus.COMPLETED, urgent: bool = False,
    ) -> None:
        """Send the final answer to a job; the job is then no longer active.

        Raises:
            WorkerStateError: if the job is not active on this worker.
        """
        request = self._active_request(job_id)
        del self._active_jobs[job_id]
        if not self._active_jobs and self._all_answered is not None:
            self._wake_all_answered()
        self._count_answer(status)
        self._answers = _remember(self._answers, job_id,
                                 (request.source, status, response, False), _ANSWER_MEMORY)
        cls = BusJobResponseUrgentMessage if urgent else BusJobResponseMessage
        answer = cls(source=self.name, target=request.source, job_id=job_id, status=status,
                     response=response)
        answer.trace = (self._end_job_trace(job_id, request, status, response)
                        if self._job_spans else request.trace)
        await self.send_bus_message(answer)

    async def send_job_update(
        self, job_id: str, update: dict[str, Any] | None = None, *, urgent: bool = False
    ) -> None:
        """Send progress to the requester.

        Raises:
            WorkerStateError: if the job is not active on this worker.
        """
        request = self._active_request(job_id)
        self._count_on_span(job_id, "job.updates")
        cls = BusJobUpdateUrgentMessage if urgent else BusJobUpdateMessage
        await self.send_bus_message(cls(source=self.name, target=request.source, job_id=job_id,
                                        update=update))

    async def send_job_stream_start(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """Tell the requester a stream begins."""
        request = self._active_request(job_id)
        if (span := self._job_span(job_id)) is not None:
            span.add_event("stream.start")
        await self.send_bus_message(BusJobStreamStartMessage(
            source=self.name, target=request.source, job_id=job_id, data=data))

    async def send_job_stream_data(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """Send one chunk of the stream."""
        # The hot path of streaming: one dict lookup, the checked one only when it fails.
        request = self._active_jobs.get(job_id) or self._active_request(job_id)
        if self._job_spans:
            self._count_on_span(job_id, "stream.chunks")
        await self.send_bus_message(BusJobStreamDataMessage(
            source=self.name, target=request.source, job_id=job_id, data=data))

    async def send_job_stream_end(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """End the stream; this is also the final answer (``data`` is the response)."""
        request = self._active_request(job_id)
        del self._active_jobs[job_id]
        if not self._active_jobs and self._all_answered is not None:
            self._wake_all_answered()
        self._count_answer(JobStatus.COMPLETED)
        self._answers = _remember(self._answers, job_id,
                                 (request.source, JobStatus.COMPLETED, data, True), _ANSWER_MEMORY)
        end = BusJobStreamEndMessage(source=self.name, target=request.source, job_id=job_id,
                                     data=data)
        end.trace = (self._end_job_trace(job_id, request, JobStatus.COMPLETED, data)
                     if self._job_spans else request.trace)
        await self.send_bus_message(end)

    def _job_span(self, job_id: str) -> Span | None:
        """The running job's span, while spans are recorded."""
        return self._job_spans.get(job_id) if self._job_spans else None

    def _count_on_span(self, job_id: str, key: str) -> None:
        """Count an update or a stream chunk on the job's span (an attribute, not an event
        each: a stream may be long)."""
        if (span := self._job_span(job_id)) is not None:
            span.set_attribute(key, int(span.attributes.get(key, 0)) + 1)

    def _end_job_trace(self, job_id: str, request: BusJobRequestMessage, status: JobStatus,
                       response: Any) -> TraceContext | None:
        """End the job's span, if it has one; the trace context its answer carries."""
        span = self._job_spans.pop(job_id, None) if self._job_spans is not None else None
        if span is None:
            return request.trace
        end_job_span(span, status, response)
        return span.context

    def _wake_all_answered(self) -> None:
        waiter, self._all_answered = self._all_answered, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_all_answered(self) -> None:
        """Wait until every job taken here is answered (a graceful end waits for this)."""
        if not self._active_jobs:
            return
        if self._all_answered is None:
            self._all_answered = asyncio.get_running_loop().create_future()
        # Shielded: a waiter that gives up (the end's grace ran out) leaves the future alone.
        await asyncio.shield(self._all_answered)

    def _count_answer(self, status: JobStatus) -> None:
        stats = self._stats
        if stats is not None:
            stats.count_answer(status)

    # -- receiving ----------------------------------------------------------------------

    async def _handle_job_request(self, message: BusJobRequestMessage) -> None:
        job_id = message.job_id
        if self._refused and self._refused.get(job_id) == message.source:
            # Late (a redelivery): its requester was told it never arrived, and gave up.
            del self._refused[job_id]
            await self.send_bus_message(BusJobResponseAgainMessage(
                source=self.name, target=message.source, job_id=job_id,
                status=JobStatus.CANCELLED, response={"reason": "arrived after a check"}))
            return
        if job_id in self._active_jobs:
            logger.warning("%s: ignored a second request for active job %s", self.name, job_id)
            return
        self._active_jobs[job_id] = message
        context = message.trace
        if tracer.recording:
            span = tracer.start_span(
                f"run {message.job_name or 'job'}", "job.run", parent=context, worker=self.name,
                attributes={"job.id": job_id, "job.name": message.job_name or "",
                            "job.requester": message.source})
            if self._job_spans is None:
                self._job_spans = {}
            self._job_spans[job_id] = span
            context = span.context
        refusal = self._job_refusal() or self._cancelled_before_arrival(message)
        if refusal is not None:
            # Ending or stopping: a handler started now would outlive the worker.
            await self.send_job_response(job_id, {"reason": refusal},
                                         status=JobStatus.CANCELLED)
            return
        spec = self._job_handlers.get(message.job_name) if message.job_name else None
        if spec is None and not self._handles_unnamed_jobs:
            what = f"job '{message.job_name}'" if message.job_name else "jobs without a name"
            await self.send_job_response(
                job_id, {"error": f"no handler for {what} on worker '{self.name}'"},
                status=JobStatus.ERROR)
            return
        task = asyncio.get_running_loop().create_task(self._run_job(spec, message, context))
        self._job_tasks[job_id] = task
        self._emit("on_job_request", message)

    async def _run_job(self, spec: JobHandlerSpec | None, message: BusJobRequestMessage,
                       context: TraceContext | None) -> None:
        """Run one handler; make sure the job gets an answer when it returns or raises.

        A ``@job`` handler that returns without answering completes the job with what it
        returned (a dict, or nothing). ``on_job_request`` and ``@job(answer="later")`` may
        answer later from elsewhere, so only a dict they return answers for them.
        """
        job_id = message.job_id
        if context is not None:
            # The handler runs in the job's trace, and its log lines name the job (this
            # task's context is its own: nothing to reset).
            current_trace.set(context)
            current_job.set(job_id)
        handler: Callable[[BusJobRequestMessage], Awaitable[Any]] = (
            self.on_job_request if spec is None else getattr(self, spec.attribute))
        try:
            if spec is not None and spec.sequential:
                async with self._job_lock(spec.name):
                    result = await handler(message)
            else:
                result = await handler(message)
            if job_id in self._active_jobs and (
                    isinstance(result, dict) or (spec is not None and spec.answer == "on_return")):
                await self.send_job_response(job_id, result if isinstance(result, dict) else None)
        except asyncio.CancelledError:
            pass  # the cancel path answers
        except Exception as exc:
            logger.exception("%s: job %s (%s) failed", self.name, job_id, message.job_name)
            if job_id in self._active_jobs:
                await self.send_job_response(
                    job_id, {"error": f"{type(exc).__name__}: {exc}"}, status=JobStatus.ERROR)
        finally:
            tasks = self._job_tasks
            if tasks.get(job_id) is asyncio.current_task():
                del tasks[job_id]

    def _job_lock(self, name: str) -> asyncio.Lock:
        if self._job_locks is None:
            self._job_locks = {}
        lock = self._job_locks.get(name)
        if lock is None:
            lock = self._job_locks[name] = asyncio.Lock()
        return lock

    def _cancelled_before_arrival(self, request: BusJobRequestMessage) -> str | None:
        early = self._early_cancels.pop(request.job_id, None) if self._early_cancels else None
        if early is not None and early[0] == request.source:
            return early[1] or "cancelled"
        return None

    async def _handle_job_cancel(self, message: BusJobCancelMessage) -> None:
        request = self._active_jobs.get(message.job_id)
        if request is None:
            # A cancel is a system message and may overtake its own request: remember it.
            self._early_cancels = _remember(self._early_cancels, message.job_id,
                                           (message.source, message.reason),
                                           _EARLY_CANCEL_MEMORY)
            return
        if message.source != request.source:
            logger.warning("%s: ignored a cancel of job %s from '%s', who did not request it",
                           self.name, message.job_id, message.source)
            return
        await self._stop_job_task(message.job_id)
        await self.on_job_cancelled(message)
        self._emit("on_job_cancelled", message)
        if message.job_id in self._active_jobs:
            await self.send_job_response(message.job_id, {"reason": message.reason or "cancelled"},
                                         status=JobStatus.CANCELLED)

    async def _stop_job_task(self, job_id: str) -> None:
        task = self._job_tasks.get(job_id)
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=self._settings.cancel_timeout)

    async def _handle_job_update_request(self, message: BusJobUpdateRequestMessage) -> None:
        if message.job_id in self._active_jobs:
            await self.on_job_update_requested(message)
            self._emit("on_job_update_requested", message)

    async def _handle_job_check(self, message: BusJobCheckMessage) -> None:
        job_ids = message.job_ids if isinstance(message.job_ids, list) else []
        for job_id in job_ids[:MAX_CHECKED_JOBS]:
            if not isinstance(job_id, str) or job_id in self._active_jobs:
                continue  # running: the answer will come
            answer = self._answers.get(job_id) if self._answers else None
            if answer is None:
                # A request that was only late (a redelivery) must not run after this.
                self._refused = _remember(self._refused, job_id, message.source,
                                         _REFUSAL_MEMORY)
                await self.send_bus_message(BusJobResponseAgainMessage(
                    source=self.name, target=message.source, job_id=job_id,
                    status=JobStatus.ERROR, response={"error": (
                        f"worker '{self.name}' has no record of this job: its request, or its "
                        "answer, was lost on the bus")}))
                continue
            requester, status, response, streamed = answer
            if requester != message.source:
                continue  # not theirs to ask about
            if streamed:
                await self.send_bus_message(BusJobStreamEndAgainMessage(
                    source=self.name, target=requester, job_id=job_id, data=response))
            else:
                await self.send_bus_message(BusJobResponseAgainMessage(
                    source=self.name, target=requester, job_id=job_id, status=status,
                    response=response))

    async def _cancel_all_jobs(self, reason: str) -> None:
        """Cancel every running handler and answer ``cancelled`` for each active job."""
        await cancel_and_wait(list(self._job_tasks.values()), self._settings.cancel_timeout)
        for job_id in list(self._active_jobs):
            await self.send_job_response(job_id, {"reason": reason}, status=JobStatus.CANCELLED)
