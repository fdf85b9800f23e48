"""What a user's ID names (a trace, a short trace id, a job), and which log lines are about it.

A trace id is 32 hex digits; as with git, a unique prefix of at least :data:`MIN_PREFIX`
digits will do. Anything else is taken as a job id, found through the ``job.id`` attribute
of the spans. Log lines carry their trace in a tag at their end (the library's
:data:`~pipecat_workers.tracing.logs.TAG_PATTERN`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipecat_workers.tracing.logs import TAG_PATTERN, job_in_tag
from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.traces.store import (
    build_tree,
    find_trace_of_job,
    match_traces,
    read_spans,
    walk,
)

MIN_PREFIX = 8
"""The fewest hex digits of a trace id that a user may give."""

_HEX = re.compile(r"[0-9a-fA-F]+")


class NotFound(LookupError):
    """Raised when an ID names no trace or job, or several traces; the message says which."""


@dataclass(frozen=True, slots=True)
class LogTag:
    """The trace context a log line was logged in."""

    trace: str
    span: str
    job: str | None


def parse_tag(text: str) -> LogTag | None:
    """The tag at the end of a log line's text, if it has one."""
    if not text.endswith("]"):
        return None  # most lines: no need to run the expression
    match = TAG_PATTERN.search(text)
    return LogTag(match[1], match[2], match[3]) if match else None


def is_trace_prefix(text: str) -> bool:
    """Whether ``text`` can be (the start of) a trace id."""
    return MIN_PREFIX <= len(text) <= 32 and _HEX.fullmatch(text) is not None


def resolve_trace(traces_dir: Path, text: str) -> str | None:
    """The trace id that ``text`` (a whole id, or a unique prefix) names in the span files.

    Raises:
        NotFound: the prefix matches several traces.
    """
    if not is_trace_prefix(text):
        return None
    found = match_traces(traces_dir, text.lower())
    if len(found) > 1:
        shown = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
        raise NotFound(f"{text!r} starts {len(found)} trace ids ({shown}): give more digits")
    return found.pop() if found else None


@dataclass(frozen=True, slots=True)
class Target:
    """What an ID names: a trace, and the job when the ID was a job's."""

    trace: str
    job: str | None = None


def resolve(traces_dir: Path, text: str) -> Target | None:
    """The trace (or job, and its trace) that ``text`` names; None if it names nothing.

    Raises:
        NotFound: ``text`` is a prefix of several traces.
    """
    trace = resolve_trace(traces_dir, text)
    if trace is not None:
        return Target(trace)
    trace = find_trace_of_job(traces_dir, text)
    return Target(trace, text) if trace is not None else None


def job_spans(traces_dir: Path, trace: str, job: str) -> set[str]:
    """The ids of the spans of job ``job`` in ``trace`` and of every span under them."""
    ids: set[str] = set()
    for _, node in walk(build_tree(read_spans(traces_dir, trace=trace))):
        if node.span.job_id == job or (node.span.parent in ids):
            ids.add(node.span.span)
    return ids


class LineSelector:
    """Chooses the log lines of one trace, or of one job (its spans' subtree included).

    A job's spans are written as they end, so while following a running job the selector
    reads the span files again, at most every ``refresh`` seconds, to learn its new spans
    (and its trace, if it was not known yet). A line of a span below the job that comes
    before that span has ended (and so before it is known) is not chosen: the job's own
    lines show live, those of what it caused once it has ended.

    Args:
        traces_dir: The project's span files.
        trace: The trace id, or a prefix of it (lines with a trace that starts so are kept).
        job: The job id; ``trace``, when given, is the job's.
        refresh: Seconds between two reads of the span files; None reads them once.
        clock: Monotonic seconds.
    """

    def __init__(self, traces_dir: Path, *, trace: str | None = None, job: str | None = None,
                 refresh: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = traces_dir
        self._trace = trace
        self._job = job
        self._job_in_tag = job_in_tag(job) if job is not None else None
        self._refresh = refresh
        self._clock = clock
        self._spans: set[str] = set()
        self._read_at: float | None = None
        self.traces_seen: set[str] = set()  # the trace ids of the lines kept
        if job is not None:
            self._learn()

    @property
    def trace(self) -> str | None:
        """The trace id (or prefix) lines are chosen by; for a job, once its spans tell."""
        return self._trace

    def __call__(self, record: LogRecord) -> bool:
        tag = parse_tag(record.text)
        if tag is None:
            return False
        if self._job is None:
            keep = self._trace is not None and tag.trace.startswith(self._trace)
        else:
            if self._refresh is not None and self._clock() - (self._read_at or 0) >= (
                    self._refresh):
                self._learn()
            keep = tag.job == self._job_in_tag or (
                tag.trace == self._trace and tag.span in self._spans)
        if keep:
            self.traces_seen.add(tag.trace)
        return keep

    def _learn(self) -> None:
        assert self._job is not None
        self._read_at = self._clock()
        if self._trace is None:
            self._trace = find_trace_of_job(self._dir, self._job)
        if self._trace is not None:
            self._spans = job_spans(self._dir, self._trace, self._job)
