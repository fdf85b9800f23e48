"""The supervisor's report: job news from heartbeat counters, and log records in the feed."""

from __future__ import annotations

import logging
import sys

from pipecat_workers_cli.supervisor.report import FeedHandler, job_news
from pipecat_workers_cli.supervisor.status import ProjectStatus, WorkerStatus


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


def test_a_runner_whose_loop_keeps_failing_shows_in_ps() -> None:
    from pipecat_workers_cli.render.tables import project_table, runners_table
    from pipecat_workers_cli.supervisor.report import failing_loops
    from rich.console import Console

    loops = {"membership": {"failures": 4, "last_error": "TypeError: boom", "failing": True},
             "job_checks": {"failures": 1, "last_error": "OSError: x", "failing": False}}
    assert failing_loops({"loops": loops}) == ["membership (TypeError: boom)"]
    assert failing_loops({"loops": "junk"}) == [] and failing_loops({}) == []
    worker = WorkerStatus(name="a", worker="a", channel="main", state="ready", registered=True,
                          failing=failing_loops({"loops": loops}))
    console = Console(width=200, record=True)
    console.print(project_table(ProjectStatus(project="p", file="p.yaml", running=True,
                                              supervisor_pid=1, workers=[worker],
                                              channels=[])))
    console.print(runners_table({"channel": "c", "backend": "redis", "runners": [
        {"name": "r1", "stats": {"loops": loops}, "seen_ago": 0.5}]}))
    text = console.export_text()
    assert text.count("loop failing: membership (TypeError: boom)") == 2
    assert "job_checks" not in text
