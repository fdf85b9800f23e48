"""What the supervisor reports: its status joined with the bus's view, and its own log lines.

Kept apart from the loop (:mod:`pipecat_workers_cli.supervisor.driver`) because it only reads state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pipecat_workers_cli.supervisor.exits import explain_exit
from pipecat_workers_cli.supervisor.machine import Machine
from pipecat_workers_cli.supervisor.model import ALIVE, Proc, State
from pipecat_workers_cli.supervisor.monitors import ChannelView
from pipecat_workers_cli.supervisor.status import ProjectStatus, WorkerStatus
from pipecat_workers_cli.topology.model import Topology

if TYPE_CHECKING:
    from pipecat_workers_cli.supervisor.usage import Usage  # psutil: only the supervisor's


def project_status(topology: Topology, machine: Machine, views: Mapping[str, ChannelView],
                   runners: Mapping[str, str], *, now: float, running: bool,
                   last_exits: Mapping[str, str] | None = None,
                   usage: Callable[[str], Usage | None] | None = None) -> ProjectStatus:
    """Every worker's state from the machine, with its counters from its runner's heartbeat
    (``runners`` maps a worker to the runner name its host reported), why it is where it is
    (``last_exits``: each worker's last exit, explained) and its CPU and memory."""
    workers = []
    for proc in machine.procs.values():
        runner = runners.get(proc.name, f"{topology.name}/{proc.name}")
        seen = views.get(proc.spec.channel.key)
        stats = (seen.runner_stats.get(runner) if seen is not None else None) or {}
        mine = (stats.get("workers") or {}).get(proc.name) or {}
        alive = proc.state in ALIVE
        used = usage(proc.name) if usage is not None and proc.pid else None
        workers.append(WorkerStatus(
            name=proc.name, worker=proc.spec.worker.key, channel=proc.spec.channel.key,
            state=str(proc.state), pid=proc.pid,
            uptime=now - proc.started_at if alive and proc.started_at else None,
            restarts=proc.restarts, exit_code=proc.exit_code,
            reason=reason_of(proc, machine, (last_exits or {}).get(proc.name, "")),
            retry_in=(proc.deadline - now if proc.state is State.BACKOFF
                      and proc.deadline is not None else None),
            crash_loop=machine.in_crash_loop(proc), parked=machine.is_parked(proc),
            registered=seen is not None and proc.name in seen.status.workers,
            active=mine.get("active"),
            jobs=dict(stats.get("jobs") or {}) if alive else {},
            failing=failing_loops(stats) if alive else [],
            cpu_percent=used.cpu_percent if used is not None and alive else None,
            rss_bytes=used.rss_bytes if used is not None and alive else None))
    return ProjectStatus(project=topology.name, file=str(topology.path), running=running,
                         supervisor_pid=os.getpid(), workers=workers,
                         channels=[v.status for v in views.values()])


def reason_of(proc: Proc, machine: Machine, last_exit: str) -> str:
    """Why the worker is in its state, when that needs saying: the machine's reason, else
    what it waits for, else (starting again after a failure) how it last ended."""
    if proc.reason:
        return proc.reason
    if proc.state is State.WAITING and proc.wanted:
        waits = []
        for name in proc.spec.depends_on:
            dep = machine.procs.get(name)
            if dep is None or (dep.state is State.EXITED and dep.exit_code == 0):
                continue
            if name in proc.spec.completed:
                waits.append(f"{name} to complete")
            elif dep.state is not State.READY:
                waits.append(name)
        if waits:
            return "waiting for " + ", ".join(waits)
    if proc.state in (State.WAITING, State.STARTING) and proc.failures and last_exit:
        return f"last run: {last_exit}"
    return ""


def exit_reason(code: int, last_err: str) -> str:
    """``exit code 3: boom``: the exit explained, with the last line the worker wrote on
    stderr (most often the error that ended it)."""
    return explain_exit(code) + (f": {last_err[:200]}" if last_err else "")


def exit_news(proc: Proc, reason: str, notes: Sequence[str]) -> str:
    """One line for the ``workers`` stream about a worker that exited unasked, with what the
    machine decided (its notes on it): ``crasher: exit code 3: boom; restarting in 1.2 s
    (attempt 3)``."""
    then = []
    for note in notes:
        if note.startswith("exited with"):
            continue  # said better by the reason
        if note.startswith("restarting in"):
            # "restarting in 7.9 s (attempt 5; crash loop: 5 failures in a row)"
            when, _, more = note.partition(" (")
            note = f"{when} (attempt {proc.restarts + 1}" + (f"; {more}" if more else ")")
        then.append(note)
    return f"{proc.name}: {reason}" + "".join(f"; {n}" for n in then)


_ROUTINE = ("started, pid ", "exited with ", "restarting in ")


def is_news(note: str) -> bool:
    """Whether a machine's note about a worker belongs in the ``workers`` stream too: all
    but the routine ones (started, ready, stopped; exits have their own line)."""
    return note not in ("ready", "stopped") and not note.startswith(_ROUTINE)


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
