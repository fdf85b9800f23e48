"""Trace context: which trace a message belongs to, and which span caused it.

A :class:`TraceContext` is the W3C trace-context ``traceparent`` (``00-<trace id>-<span
id>-<flags>``) as a value. Every bus message may carry one (:attr:`BusMessage.trace`); network
buses send it as the envelope's ``tp``. The context a handler runs in is a context variable
set by the mailbox from the message being handled, so whatever the handler sends inherits
it, and tasks it starts inherit it too (asyncio copies context variables into new tasks).

Without a tracer that records (:mod:`pipecat_workers.tracing.spans`), a context is passed on
as it came: one trace id follows a conversation across workers and processes, and log lines
can be tagged with it, at the cost of a context-variable lookup per message sent.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar
from typing import Final

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SAMPLED: Final = 0x01
_randbits = random.getrandbits


class TraceContext:
    """One point in a trace: the trace's id and the span that is the parent of what comes
    next. Immutable; its ``traceparent`` text is made once, when first needed."""

    __slots__ = ("trace_id", "span_id", "flags", "_header")

    def __init__(self, trace_id: int, span_id: int, flags: int = _SAMPLED) -> None:
        if not 0 < trace_id < 1 << 128 or not 0 < span_id < 1 << 64 or not 0 <= flags < 256:
            raise ValueError("a trace context needs a non-zero 128-bit trace id, a non-zero "
                             "64-bit span id and 8-bit flags")
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self._header: str | None = None

    @classmethod
    def new_root(cls) -> TraceContext:
        """The start of a new trace."""
        return cls(_new_trace_id(), _new_span_id())

    def child(self) -> TraceContext:
        """A new span of the same trace (its parent is this one's span)."""
        return TraceContext(self.trace_id, _new_span_id(), self.flags)

    @property
    def trace_hex(self) -> str:
        """The trace id as 32 lowercase hex digits (as log tags and span files show it)."""
        return f"{self.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        """The span id as 16 lowercase hex digits."""
        return f"{self.span_id:016x}"

    @property
    def sampled(self) -> bool:
        return bool(self.flags & _SAMPLED)

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header value."""
        header = self._header
        if header is None:
            header = self._header = (
                f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}")
        return header

    @classmethod
    def from_traceparent(cls, value: object) -> TraceContext | None:
        """Parse a ``traceparent``; ``None`` for anything that is not a valid version-00 one
        (the W3C rule: a receiver that cannot use the header starts a new trace)."""
        if type(value) is not str or len(value) != 55:
            return None
        match = _TRACEPARENT.fullmatch(value)
        if match is None:
            return None
        trace_id, span_id = int(match[1], 16), int(match[2], 16)
        if not trace_id or not span_id:
            return None
        context = cls(trace_id, span_id, int(match[3], 16))
        context._header = value
        return context

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TraceContext) and other.trace_id == self.trace_id
                and other.span_id == self.span_id and other.flags == self.flags)

    def __hash__(self) -> int:
        return hash((self.trace_id, self.span_id))

    def __repr__(self) -> str:
        return f"TraceContext({self.traceparent!r})"


def _new_trace_id() -> int:
    return _randbits(128) or 1


def _new_span_id() -> int:
    return _randbits(64) or 1


current_trace: ContextVar[TraceContext | None] = ContextVar(
    "pipecat_workers_trace", default=None)
"""The trace context of the code running now: set around each handled message, and by
spans while they are current."""

current_job: ContextVar[str | None] = ContextVar("pipecat_workers_job", default=None)
"""The id of the job whose handler is running now (for log tags)."""


def current_context() -> TraceContext | None:
    """The trace context of the code running now, if any."""
    return current_trace.get()
