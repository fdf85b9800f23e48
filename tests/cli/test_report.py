"""The supervisor's report: job news from heartbeat counters, and log records in the feed."""

from __future__ import annotations

import logging
import sys

from cli.supervisor.report import FeedHandler, job_news
from cli.supervisor.status import ProjectStatus, WorkerStatus


def status(**jobs: dict[str, int]) -> ProjectStatus:
    workers = [WorkerStatus(name=name, worker=name, channel="main", state="ready", jobs=j)
               for name, j in jobs.items()]
    return ProjectStatus(project="p", file="p.yaml", running=True, supervisor_pid=1,
                         workers=workers, channels=[])


def test_job_news_reports_only_counters_that_moved() -> None:
    before = {"a": {"completed": 1, "failed": 0}, "b": {"completed": 4}}
    now = status(a={"completed": 3, "failed": 1, "running": 2}, b={"completed": 4},
                 c={"completed": 9})
    assert job_news(before, now) == [("a", "jobs: +2 completed, +1 failed")]


def test_job_news_is_quiet_for_a_worker_without_counters() -> None:
    assert job_news({"a": {"completed": 1}}, status(a={})) == []


def test_feed_handler_gives_one_line_per_record_with_the_error_but_no_traceback() -> None:
    lines: list[str] = []
    handler = FeedHandler(lines.append)
    try:
        raise ConnectionError("refused")
    except ConnectionError:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "cannot watch %s",
                                   ("main",), exc_info=sys.exc_info())
    handler.emit(record)
    assert lines == ["warning: cannot watch main (ConnectionError: refused)"]
