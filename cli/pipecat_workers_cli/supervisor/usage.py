"""CPU and memory of each worker, with everything it started, sampled by the supervisor.

The supervisor samples rather than ``ps``: a CPU share needs two readings some time apart, and
the supervisor takes them anyway as it runs (one sampler, the same process objects kept between
readings), so ``ps`` answers at once with figures over the last second or so.

A worker counts with its descendants (a worker that runs a subprocess pays for it). Memory is
the resident set size summed over them; a worker forked from the process template shares pages
with it, which each worker's figure counts in full.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil

_EVERY = 1.0  # seconds between samples: enough for a table people read, cheap for 1,000 workers


@dataclass(frozen=True, slots=True)
class Usage:
    """One worker's share: ``cpu_percent`` of one core (over 100 with several), None until
    two readings exist; ``rss_bytes`` summed over its processes."""

    cpu_percent: float | None
    rss_bytes: int


class UsageSampler:
    """Reads every worker's processes at most once per ``every`` seconds.

    Args:
        clock: Monotonic seconds; injected for tests.
        every: Seconds between two samples; calls in between keep the last figures.
    """

    def __init__(self, clock: Callable[[], float], *, every: float = _EVERY) -> None:
        self._clock = clock
        self._every = every
        self._last: float | None = None
        # Kept between samples: psutil measures CPU since the previous call on the same object.
        self._procs: dict[int, psutil.Process] = {}
        self._usage: dict[str, Usage] = {}  # replaced whole: read while a thread samples
        self._reading = False

    def due(self) -> bool:
        """Whether a sample is due: none read lately, and none being read."""
        return not self._reading and (
            self._last is None or self._clock() - self._last >= self._every)

    async def refresh(self, pids: Mapping[str, int]) -> None:
        """:meth:`sample` in a thread of its own, if one is due: a walk over the process
        table takes tens of milliseconds with hundreds of workers, which the supervisor's
        loop (the embedded bus, the control socket, the logs) must not wait for."""
        if not self.due():
            return
        self._reading = True
        try:
            await asyncio.to_thread(self.sample, dict(pids))
        finally:
            self._reading = False

    def sample(self, pids: Mapping[str, int]) -> None:
        """Read the processes of ``pids`` (worker name -> pid), unless read lately."""
        now = self._clock()
        if self._last is not None and now - self._last < self._every:
            return
        self._last = now
        children = _children_by_parent()
        seen: set[int] = set()
        usage = {}
        for name, pid in pids.items():
            known = pid in self._procs  # read before: its CPU share is measured since then
            cpu, rss, found = 0.0, 0, False
            for proc in self._tree(pid, children):
                seen.add(proc.pid)
                with contextlib.suppress(psutil.Error), proc.oneshot():
                    cpu += proc.cpu_percent()
                    rss += proc.memory_info().rss
                    found = True
            if found:
                usage[name] = Usage(cpu if known else None, rss)
        self._procs = {pid: p for pid, p in self._procs.items() if pid in seen}
        self._usage = usage

    def usage(self, name: str) -> Usage | None:
        """What the last sample found for worker ``name`` (None: not running then)."""
        return self._usage.get(name)

    def _tree(self, pid: int, children: Mapping[int, list[int]]) -> list[psutil.Process]:
        """The worker's process and its descendants, the objects of earlier reads reused."""
        tree, pending = [], [pid]
        while pending:
            current = pending.pop()
            proc = self._procs.get(current)
            try:
                if proc is None or not proc.is_running():  # new, or its pid was reused
                    proc = self._procs[current] = psutil.Process(current)
            except psutil.Error:
                continue
            tree.append(proc)
            pending.extend(children.get(current, ()))
        return tree


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from one pass over the process table (rather than one per
    worker: a project may run a thousand)."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if isinstance(ppid, int):
            children.setdefault(ppid, []).append(proc.pid)
    return children
