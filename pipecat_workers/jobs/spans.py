"""How jobs show in traces: the status of a span from a job's answer."""

from __future__ import annotations

from typing import Any

from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.tracing.spans import Span, SpanStatus

_STATUS: dict[str, SpanStatus] = {
    JobStatus.COMPLETED: "ok", JobStatus.CANCELLED: "cancelled",
    JobStatus.FAILED: "error", JobStatus.ERROR: "error",
}


def end_job_span(span: Span, status: JobStatus | str, response: Any) -> None:
    """End a job's span as its answer says: ``failed`` and ``error`` are errors (with the
    answer's ``error`` or ``reason``), ``cancelled`` is its own status."""
    outcome = _STATUS.get(status, "error")
    detail = None
    if outcome != "ok" and isinstance(response, dict):
        detail = response.get("error") or response.get("reason")
    span.set_attribute("job.status", str(status))
    if outcome == "cancelled" and detail is not None:
        span.set_attribute("job.reason", str(detail))
    span.end(outcome, str(detail) if outcome == "error" and detail is not None else None)
