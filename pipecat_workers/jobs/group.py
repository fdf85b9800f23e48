"""JobGroup: the requester's record of one job sent to one or more workers."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from pipecat_workers.errors import JobGroupError
from pipecat_workers.jobs.spans import end_job_span
from pipecat_workers.jobs.types import JobEventType, JobGroupResponse, JobStatus
from pipecat_workers.tracing.spans import Span

logger = logging.getLogger("pipecat_workers.jobs")

# (event type, worker name, data): built into JobEvent/JobGroupEvent only when read.
RawEvent = tuple[JobEventType, str, "dict[str, Any] | None"]


class JobGroup:
    """One job id shared by every member; collects answers and intermediate events.

    A group ends exactly once: :meth:`complete` when every member answered, or :meth:`fail`
    when it was cancelled, timed out or a member errored under ``cancel_on_error``.

    Attributes:
        label: The human-readable title it was sent with, or ``None``.
        cancellable: Whether ``request_cancel_job_group`` may cancel it.
    """

    __slots__ = ("job_id", "worker_names", "responses", "statuses", "cancel_on_error",
                 "label", "cancellable", "pending", "error", "timer", "sent_at", "_ended",
                 "_enders", "_events", "_event_limit", "_events_dropped", "_event_wait",
                 "_waiter", "_reading", "_room", "_loop", "span", "member_spans")

    def __init__(
        self, job_id: str, worker_names: tuple[str, ...], *, cancel_on_error: bool,
        loop: asyncio.AbstractEventLoop, label: str | None = None, cancellable: bool = True,
    ) -> None:
        self.job_id = job_id
        self.worker_names = worker_names
        self.responses: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, JobStatus] = {}
        self.cancel_on_error = cancel_on_error
        self.label = label
        self.cancellable = cancellable
        self.pending: dict[str, None] = dict.fromkeys(worker_names)
        self.error: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sent_at = loop.time()  # when the requests left (the requester sets it after)
        self._ended = False
        # One future per waiter, resolved directly: a waiter wakes one loop turn after the
        # end, and cancelling one waiter touches nobody else.
        self._enders: list[asyncio.Future[None]] = []
        self._loop = loop
        self._events: deque[RawEvent] | None = None
        self._event_limit = 0
        self._event_wait = 0.0
        self._events_dropped = 0
        self._waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._room: asyncio.Future[None] | None = None
        # When spans are recorded: the group's own (several members) and one per request.
        self.span: Span | None = None
        self.member_spans: dict[str, Span] | None = None

    @property
    def done(self) -> bool:
        """Whether the group has ended, successfully or not."""
        return self._ended

    def result(self) -> JobGroupResponse:
        """What the members answered so far."""
        return JobGroupResponse(self.job_id, dict(self.responses), dict(self.statuses))

    def record(self, worker: str, status: JobStatus, response: dict[str, Any] | None) -> None:
        """Store one member's final answer."""
        self.pending.pop(worker, None)
        self.statuses[worker] = status
        self.responses[worker] = response if response is not None else {}
        if self.member_spans is not None and (span := self.member_spans.get(worker)):
            end_job_span(span, status, response)

    def complete(self) -> None:
        """End the group after every member answered; not a success unless all completed."""
        failed = [f"{w} {s}" for w, s in self.statuses.items() if s != JobStatus.COMPLETED]
        if failed:
            self._end(f"not every worker completed: {', '.join(failed)}")
        else:
            self._end(None)

    def fail(self, reason: str) -> None:
        """End the group with an error (cancel, timeout, member error)."""
        self._end(reason)

    def _end(self, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.error = error
        if self.member_spans is not None:
            for worker in self.pending:  # no answer will end their spans
                span = self.member_spans[worker]
                span.set_attribute("job.reason", error or "")
                span.end("cancelled")
        if self.span is not None:
            self.span.end("ok" if error is None else "error", error)
        enders, self._enders = self._enders, []
        for ender in enders:
            if not ender.done():
                ender.set_result(None)
        self._wake()
        self._free_room()

    async def wait_ended(self) -> None:
        """Wait for the end, whatever it was; never raises (for shutdown bookkeeping)."""
        if self._ended:
            return
        ender = self._loop.create_future()
        self._enders.append(ender)
        try:
            await ender
        finally:
            if ender in self._enders:
                self._enders.remove(ender)

    async def wait(self) -> JobGroupResponse:
        """Wait for the end.

        Raises:
            JobGroupError: if the group did not complete with every member ``completed``.
        """
        await self.wait_ended()
        if self.error is not None:
            raise JobGroupError(
                self.error, job_id=self.job_id, responses=dict(self.responses),
                statuses=dict(self.statuses),
            )
        return self.result()

    # -- intermediate events ------------------------------------------------------------

    def collect_events(self, limit: int, wait: float) -> None:
        """Start keeping events for an ``async for`` reader.

        Args:
            limit: How many events may be unread.
            wait: How long a full queue waits for an iterating reader before dropping.
        """
        if self._events is None:
            self._events = deque()
            self._event_limit = limit
            self._event_wait = wait

    @property
    def events_dropped(self) -> int:
        """Events dropped because nobody was reading and ``limit`` were unread."""
        return self._events_dropped

    def push_event(self, event: RawEvent) -> bool:
        """Queue an event for the reader; False if it is full (the caller may wait for room)."""
        events = self._events
        if events is None:
            return True
        if len(events) >= self._event_limit:
            return False
        events.append(event)
        self._wake()
        return True

    async def put_event(self, event: RawEvent, *, wait: bool = True) -> bool:
        """Queue an event; if full, wait while a reader is iterating, else drop it.

        Waiting here holds up the requester's data messages, so the bus slows the sender to
        the reader's pace instead of losing stream chunks. The wait is bounded, because a
        reader may itself be waiting for a message stuck behind this one. Returns False if
        the event was dropped.
        """
        while not self.push_event(event):
            if wait and self._reading and not self._ended:
                self._room = room = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.wait_for(room, self._event_wait)
                    continue
                except TimeoutError:
                    # The reader is stuck (perhaps on this very requester): drop, and stop
                    # waiting for it until it reads again.
                    self._reading = False
            self._events_dropped += 1
            if self._events_dropped == 1:
                logger.warning("job %s: %d events unread and the reader is not keeping up; "
                               "dropping new ones", self.job_id, self._event_limit)
            return False
        return True

    def stop_reading(self) -> None:
        """The reader is gone (its block exited): never wait for it again."""
        self._reading = False
        self._free_room()

    def _free_room(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def next_event(self) -> RawEvent | None:
        """The next unread event; ``None`` once the group has ended and all were read."""
        events = self._events
        assert events is not None, "collect_events() first"
        self._reading = True
        while True:
            if events:
                if self._room is not None:
                    self._free_room()
                return events.popleft()
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
