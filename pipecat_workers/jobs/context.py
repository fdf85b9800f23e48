"""``async with worker.job(...)`` and ``async with worker.job_group(...)``."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pipecat_workers.errors import JobError, JobGroupError
from pipecat_workers.jobs.group import JobGroup
from pipecat_workers.jobs.params import JobGroupParams
from pipecat_workers.jobs.types import JobEvent, JobGroupEvent, JobGroupResponse, JobStatus

if TYPE_CHECKING:
    from pipecat_workers.workers.base import BaseWorker


class JobGroupContext:
    """Sends a job to several workers on enter, waits for all answers on exit.

    Inside the block, ``async for event in ctx`` yields :class:`JobGroupEvent` (updates and
    stream chunks) until the group ends. Leaving the block with an exception cancels the group.
    """

    def __init__(
        self, requester: BaseWorker, worker_names: tuple[str, ...], params: JobGroupParams,
    ) -> None:
        self._requester = requester
        self._worker_names = worker_names
        self._params = params
        self._group: JobGroup | None = None

    @property
    def job_id(self) -> str:
        """The id shared by the group's requests."""
        return self._started().job_id

    @property
    def responses(self) -> dict[str, dict[str, Any]]:
        """Each worker's payload, as answered so far."""
        return self._started().responses

    @property
    def statuses(self) -> dict[str, JobStatus]:
        """Each worker's final status, as answered so far."""
        return self._started().statuses

    @property
    def events_dropped(self) -> int:
        """Events lost because the block did not read them fast enough (normally 0)."""
        return self._started().events_dropped

    @property
    def result(self) -> JobGroupResponse:
        """Responses and statuses together."""
        return self._started().result()

    def _started(self) -> JobGroup:
        if self._group is None:
            raise RuntimeError("the job has not been sent yet: use 'async with'")
        return self._group

    async def __aenter__(self) -> Self:
        self._group = await self._requester._open_group(
            self._worker_names, self._params, collect_events=True)
        return self

    def __aiter__(self) -> JobGroupContext:
        return self

    async def __anext__(self) -> JobGroupEvent:
        event = await self._started().next_event()
        if event is None:
            raise StopAsyncIteration
        return JobGroupEvent(event[0], event[1], event[2])

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group = self._started()
        group.stop_reading()
        if exc_type is not None:
            await self._cancel_if_live(group)
            return
        try:
            await self._wait(group)
        except asyncio.CancelledError:
            # Cancelled while waiting for the answers (an interrupted tool call, usually):
            # the job must not outlive the caller that waits for it.
            await self._cancel_if_live(group)
            raise

    async def _cancel_if_live(self, group: JobGroup) -> None:
        if not group.done:
            await asyncio.shield(self._requester.cancel_job_group(
                group.job_id, reason="context exited with error"))

    async def _wait(self, group: JobGroup) -> None:
        await group.wait()


class JobContext(JobGroupContext):
    """Sends a job to one worker on enter, waits for its answer on exit.

    ``async for event in ctx`` yields :class:`JobEvent`; ``ctx.response`` is the answer.

    Raises:
        JobError: on exit, if the job did not complete.
    """

    def __init__(self, requester: BaseWorker, worker_name: str, params: JobGroupParams) -> None:
        super().__init__(requester, (worker_name,), params)
        self._worker_name = worker_name

    @property
    def response(self) -> dict[str, Any]:
        """The worker's answer (``{}`` until it answers)."""
        return self._started().responses.get(self._worker_name, {})

    @property
    def status(self) -> JobStatus | None:
        """The worker's final status, or ``None`` until it answers."""
        return self._started().statuses.get(self._worker_name)

    async def __aenter__(self) -> Self:
        try:
            await super().__aenter__()
        except JobGroupError as error:
            raise _single(error) from None
        return self

    def __aiter__(self) -> JobContext:
        return self

    async def __anext__(self) -> JobEvent:  # type: ignore[override]
        event = await self._started().next_event()
        if event is None:
            raise StopAsyncIteration
        return JobEvent(event[0], event[2])

    async def _wait(self, group: JobGroup) -> None:
        try:
            await group.wait()
        except JobGroupError as error:
            raise _single(error) from None


def _single(error: JobGroupError) -> JobError:
    """The single-job form of a group error (a single job is a group of one)."""
    return JobError(error.reason, job_id=error.job_id, responses=error.responses,
                    statuses=error.statuses)
