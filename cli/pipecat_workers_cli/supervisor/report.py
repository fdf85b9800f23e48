"""What the supervisor reports: its status joined with the bus's view, and its own log lines.

Kept apart from the loop (:mod:`pipecat_workers_cli.supervisor.driver`) because it only reads state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from pipecat_workers_cli.supervisor.machine import Machine
from pipecat_workers_cli.supervisor.model import ALIVE, State
from pipecat_workers_cli.supervisor.monitors import ChannelView
from pipecat_workers_cli.supervisor.status import ProjectStatus, WorkerStatus
from pipecat_workers_cli.topology.model import Topology


def project_status(topology: Topology, machine: Machine, views: Mapping[str, ChannelView],
                   runners: Mapping[str, str], *, now: float, running: bool) -> ProjectStatus:
    """Every worker's state from the machine, with its counters from its runner's heartbeat
    (``runners`` maps a worker to the runner name its host reported)."""
    workers = []
    for proc in machine.procs.values():
        runner = runners.get(proc.name, f"{topology.name}/{proc.name}")
        seen = views.get(proc.spec.channel.key)
        stats = (seen.runner_stats.get(runner) if seen is not None else None) or {}
        mine = (stats.get("workers") or {}).get(proc.name) or {}
        alive = proc.state in ALIVE
        workers.append(WorkerStatus(
            name=proc.name, worker=proc.spec.worker.key, channel=proc.spec.channel.key,
            state=str(proc.state), pid=proc.pid,
            uptime=now - proc.started_at if alive and proc.started_at else None,
            restarts=proc.restarts, exit_code=proc.exit_code, reason=proc.reason,
            retry_in=(proc.deadline - now if proc.state is State.BACKOFF
                      and proc.deadline is not None else None),
            crash_loop=machine.in_crash_loop(proc), parked=machine.is_parked(proc),
            registered=seen is not None and proc.name in seen.status.workers,
            active=mine.get("active"),
            jobs=dict(stats.get("jobs") or {}) if alive else {},
            failing=failing_loops(stats) if alive else []))
    return ProjectStatus(project=topology.name, file=str(topology.path), running=running,
                         supervisor_pid=os.getpid(), workers=workers,
                         channels=[v.status for v in views.values()])


def failing_loops(stats: Mapping[str, object]) -> list[str]:
    """``"membership (TypeError: ...)"`` for each of a runner's background loops that failed
    lately (``runner.stats()['loops']``), as its counters report them."""
    loops = stats.get("loops")
    if not isinstance(loops, Mapping):
        return []
    failing = []
    for name, info in loops.items():
        if isinstance(info, Mapping) and info.get("failing"):
            error = str(info.get("last_error") or "")[:120]
            failing.append(f"{name} ({error})" if error else str(name))
    return failing


_JOB_OUTCOMES = ("completed", "failed", "errored", "cancelled")


def job_news(before: Mapping[str, Mapping[str, int]], status: ProjectStatus
             ) -> list[tuple[str, str]]:
    """``(worker, text)`` for each worker whose job counters moved since ``before`` (the
    counters come with heartbeats, so this is news about the last second or so)."""
    news = []
    for worker in status.workers:
        old, new = before.get(worker.name), worker.jobs
        if old is None or not new:
            continue
        moved = [f"+{new.get(k, 0) - old.get(k, 0)} {k}" for k in _JOB_OUTCOMES
                 if new.get(k, 0) > old.get(k, 0)]
        if moved:
            news.append((worker.name, "jobs: " + ", ".join(moved)))
    return news


class FeedHandler(logging.Handler):
    """Sends log records to the renderer's feed, one line each."""

    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self._note = note

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self._note(f"{record.levelname.lower()}: {text}")
        except Exception:
            self.handleError(record)
