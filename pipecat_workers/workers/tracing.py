"""A worker's place in traces: the conversation it holds, its hand-offs, its lifecycle.

An activation starts (or continues) a conversation's trace: what the worker then sends from
code that runs outside any handled message (a pipeline's tasks, a timer) carries the trace of
the activation that made it active. Recorded, the activation is a span that lasts while the
worker is active (who held the conversation, and for how long); a hand-off is a span of its own
under it, the parent of the next worker's activation, so a conversation that moves greeter ->
support -> greeter is one trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pipecat_workers.tracing.context import TraceContext, current_trace
from pipecat_workers.tracing.spans import Span, tracer

if TYPE_CHECKING:
    from pipecat_workers.bus.messages import BusActivateWorkerMessage


class WorkerTracingMixin:
    """Trace bookkeeping of :class:`~pipecat_workers.workers.base.BaseWorker`."""

    _name: str
    # The trace of the activation that made this worker active (None while inactive), and
    # the activation message waiting to be applied.
    _session_trace: TraceContext | None = None
    _session_span: Span | None = None
    _activation: BusActivateWorkerMessage | None = None

    @property
    def trace_context(self) -> TraceContext | None:
        """The trace of the conversation this worker holds now: that of the activation that
        made it active; ``None`` while it is inactive."""
        return self._session_trace

    def _trace_parent(self) -> TraceContext | None:
        """What a message sent now continues: the trace of the message being handled (or
        of the job running), else that of the conversation this worker holds."""
        return current_trace.get() or self._session_trace

    def _note_activation(self, message: BusActivateWorkerMessage) -> None:
        self._activation = message

    def _begin_session(self) -> None:
        """The worker becomes active: its conversation's trace is the activation's (a new
        one if the activation carried none). A worker made active by its constructor holds
        no conversation: each job it sends then starts a trace of its own."""
        activation, self._activation = self._activation, None
        self._end_session()  # activated again while active: the former session ends
        if activation is None:
            return  # active from the start: a service, not a conversation someone began
        parent = activation.trace
        if not tracer.recording:
            self._session_trace = parent if parent is not None else TraceContext.new_root()
            return
        span = self._session_span = tracer.start_span(
            f"session {self._name}", "activation", parent=parent, worker=self._name,
            attributes={"activation.from": activation.source}, announce=True)
        self._session_trace = span.context

    def _session_failed(self, exc: BaseException) -> None:
        """``on_activated`` raised: the session's span ends with the error."""
        span, self._session_span = self._session_span, None
        if span is not None:
            span.end("error", f"{type(exc).__name__}: {exc}")

    def _end_session(self) -> None:
        """The worker is no longer active (deactivated, or stopped)."""
        span, self._session_span = self._session_span, None
        self._session_trace = None
        if span is not None:
            span.end()

    @contextmanager
    def _traced_activation(self, worker_name: str, handoff: bool) -> Iterator[None]:
        """Messages sent inside activate ``worker_name`` in this worker's trace; a hand-off
        is a span of its own (when spans are recorded), the parent of the activation."""
        parent = self._trace_parent()
        span = None
        if handoff and tracer.recording:
            span = tracer.start_span(f"hand off to {worker_name}", "handoff", parent=parent,
                                     worker=self._name,
                                     attributes={"handoff.from": self._name,
                                                 "handoff.to": worker_name})
            context: TraceContext | None = span.context
        else:
            context = parent  # none: the activated worker's session starts the trace
        token = current_trace.set(context)
        try:
            yield
        except Exception as exc:
            if span is not None:
                span.end("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            current_trace.reset(token)
            if span is not None:
                span.end()

    def _lifecycle_span(self, what: str, *, announce: bool = False,
                        **attributes: str) -> Span | None:
        """A span of this worker's lifecycle (``start``, ``stop``), in a trace of its own;
        ``announce`` for one that lasts (a pipeline's)."""
        if not tracer.recording:
            return None
        return tracer.start_span(f"{what} {self._name}", "worker", parent=None,
                                 worker=self._name, attributes=attributes, announce=announce)
