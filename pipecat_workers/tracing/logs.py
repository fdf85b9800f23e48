"""Log lines that say which trace (and job) they belong to.

:class:`TraceLogFilter` on a handler gives every record a ``trace_tag`` attribute: empty
outside a trace, else `` [trace=<32 hex> span=<16 hex>]`` (and `` job=<id>`` inside a job's
handler), for a format that ends with ``%(trace_tag)s``. ``workers logs --trace`` and
``--job`` find lines by it.
"""

from __future__ import annotations

import logging
import re

from pipecat_workers.tracing.context import current_job, current_trace

TAG_PATTERN = re.compile(r"\[trace=([0-9a-f]{32}) span=([0-9a-f]{16})(?: job=(\S+))?\]$")
"""What a tagged line ends with: groups are the trace id, the span id and the job id."""

_UNSAFE = re.compile(r"[\s\]]")


def job_in_tag(job_id: str) -> str:
    """A job id as a tag writes it: spaces and ``]`` (which would end the tag) as ``_``."""
    return _UNSAFE.sub("_", job_id)


def trace_tag() -> str:
    """The tag for a line logged now (empty outside a trace)."""
    context = current_trace.get()
    if context is None:
        return ""
    job = current_job.get()
    tail = f" job={job_in_tag(job)}" if job else ""
    return f" [trace={context.trace_hex} span={context.span_hex}{tail}]"


class TraceLogFilter(logging.Filter):
    """Adds ``trace_tag`` to each record (see the module's docstring); filters nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_tag = trace_tag()
        return True
