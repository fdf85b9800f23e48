"""What a worker process under ``workers up`` does about traces: tagged log lines (the
standard library's and loguru's, which pipecat uses)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from loguru import logger as loguru_logger
from pipecat_workers_cli.hosttracing import LOG_FORMAT, tag_loguru_lines

from pipecat_workers.tracing import span
from pipecat_workers.tracing.logs import TAG_PATTERN


@pytest.fixture
def loguru_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = loguru_logger.add(lambda message: lines.append(str(message).rstrip("\n")),
                             format="{message}")
    try:
        yield lines
    finally:
        loguru_logger.remove(sink)
        loguru_logger.configure(patcher=None)


def test_loguru_lines_logged_in_a_trace_end_with_its_tag(loguru_lines: list[str]) -> None:
    tag_loguru_lines()
    with span("conversation"):
        loguru_logger.info("in a trace")
    loguru_logger.info("outside")
    inside, outside = loguru_lines
    assert TAG_PATTERN.search(inside) and inside.startswith("in a trace [trace=")
    assert outside == "outside"


def test_the_hosts_log_format_ends_with_the_tag() -> None:
    from pipecat_workers.tracing import TraceLogFilter

    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None)
    with span("conversation"):
        TraceLogFilter().filter(record)
    line = logging.Formatter(LOG_FORMAT).format(record)
    assert line.startswith("INFO app: hello [trace=") and TAG_PATTERN.search(line)
