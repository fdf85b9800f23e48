"""What an observer sees on a bus, summed up for the dashboard.

Every message is counted as it arrives (a dict update, cheap enough for thousands a second);
the sums over the last :data:`WINDOW` seconds are only computed when a snapshot is asked for.
Names come from the bus, that is from anyone who can publish on it: they are cut short, and the
number of distinct edges, workers and jobs in flight is capped, so that a hostile or broken
peer cannot grow the supervisor's memory without bound.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WINDOW = 10  # seconds of traffic the rates and edges are computed over
MAX_NAME = 120  # characters of a name kept
MAX_EDGES = 2_000  # distinct source -> target pairs counted per second
MAX_WORKERS = 2_000  # distinct workers whose job counts are kept per second
MAX_IN_FLIGHT = 20_000  # jobs awaiting their answer that are remembered
IN_FLIGHT_FOR = 600.0  # seconds after which a job without an answer is forgotten
HANDOFFS_KEPT = 50
OTHER = "(others)"  # where counts beyond the caps go
BROADCAST = "*"  # the target of a message for every worker


def clip(value: object) -> str:
    """A name from the bus, as a bounded string."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_NAME else text[:MAX_NAME - 1] + "\u2026"


@dataclass(frozen=True, slots=True)
class Handoff:
    time: float
    channel: str
    source: str  # who activated (the worker handing the conversation on)
    target: str  # who was activated
    previous: str | None  # who was active in that session before


class _Second:
    """The counts of one second."""

    __slots__ = ("done", "edges", "failed", "second", "started")

    def __init__(self, second: int) -> None:
        self.second = second
        self.edges: dict[tuple[str, str], int] = {}
        self.started: dict[str, int] = {}  # jobs sent to each worker
        self.done: dict[str, int] = {}     # answers each worker gave
        self.failed: dict[str, int] = {}   # of them, not completed


def _add(total: dict[Any, int], counts: dict[Any, int]) -> None:
    for key, n in counts.items():
        total[key] = total.get(key, 0) + n


def _bump(counts: dict[Any, int], key: Any, cap: int, other: Any) -> None:
    if key in counts or len(counts) < cap:
        counts[key] = counts.get(key, 0) + 1
    else:
        counts[other] = counts.get(other, 0) + 1


class Traffic:
    """Sliding-window counts of one project's bus traffic.

    Args:
        clock: Seconds (``time.time`` by default); injected for tests.
        window: Seconds the edges and rates cover.
    """

    def __init__(self, clock: Callable[[], float], window: int = WINDOW) -> None:
        self._clock = clock
        self._window = window
        self._seconds: deque[_Second] = deque()
        self._in_flight: dict[str, tuple[str, str, float]] = {}  # id -> target, channel, sent
        self._active: dict[str, str] = {}  # channel -> its active worker
        self._handoffs: deque[Handoff] = deque(maxlen=HANDOFFS_KEPT)
        self.messages = 0  # every message counted, ever

    def _now(self) -> _Second:
        second = math.floor(self._clock())
        if not self._seconds or self._seconds[-1].second != second:
            self._seconds.append(_Second(second))
            while self._seconds and self._seconds[0].second <= second - self._window:
                self._seconds.popleft()
        return self._seconds[-1]

    # -- what the observer reports --------------------------------------------------

    def message(self, source: str, target: str | None) -> None:
        """A message passed from ``source`` to ``target`` (None: to everyone)."""
        self.messages += 1
        key = (clip(source), BROADCAST if target is None else clip(target))
        _bump(self._now().edges, key, MAX_EDGES, (OTHER, OTHER))

    def job_sent(self, job_id: str, target: str | None, channel: str) -> None:
        job_id, target = clip(job_id), BROADCAST if target is None else clip(target)
        _bump(self._now().started, target, MAX_WORKERS, OTHER)
        if job_id in self._in_flight or len(self._in_flight) < MAX_IN_FLIGHT:
            self._in_flight[job_id] = (target, channel, self._clock())

    def job_answered(self, job_id: str, source: str, ok: bool) -> None:
        source = clip(source)
        now = self._now()
        _bump(now.done, source, MAX_WORKERS, OTHER)
        if not ok:
            _bump(now.failed, source, MAX_WORKERS, OTHER)
        self._in_flight.pop(clip(job_id), None)

    def activated(self, channel: str, source: str, target: str | None) -> None:
        """``source`` activated ``target``: the session on ``channel`` is now its."""
        if target is None:
            return
        source, target = clip(source), clip(target)
        previous = self._active.get(channel)
        self._active[channel] = target
        self._handoffs.append(Handoff(self._clock(), channel, source, target, previous))

    def deactivated(self, channel: str, target: str | None) -> None:
        if target is not None and self._active.get(channel) == clip(target):
            del self._active[channel]

    # -- what the page shows --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Edges and per-worker rates over the window, jobs in flight, active workers and
        the latest hand-offs (newest first), as JSON-ready data."""
        now = self._clock()
        self._now()  # drops the seconds that left the window
        seconds = [s for s in self._seconds if s.second > math.floor(now) - self._window]
        span = float(self._window)
        edges: dict[tuple[str, str], int] = {}
        started: dict[str, int] = {}
        done: dict[str, int] = {}
        failed: dict[str, int] = {}
        for s in seconds:
            _add(edges, s.edges)
            for table, total in ((s.started, started), (s.done, done), (s.failed, failed)):
                _add(total, table)
        self._forget_old(now)
        in_flight: dict[str, int] = {}
        for target, _, _ in self._in_flight.values():
            in_flight[target] = in_flight.get(target, 0) + 1
        workers = sorted(set(started) | set(done) | set(in_flight))
        return {
            "window": self._window,
            "messages": self.messages,
            "edges": [{"source": a, "target": b, "count": n, "rate": round(n / span, 2)}
                      for (a, b), n in sorted(edges.items())],
            "jobs": {w: {"in_flight": in_flight.get(w, 0),
                         "rate": round(started.get(w, 0) / span, 2),
                         "done_rate": round(done.get(w, 0) / span, 2),
                         "failed": failed.get(w, 0)} for w in workers},
            "in_flight": len(self._in_flight),
            "active": dict(sorted(self._active.items())),
            "handoffs": [{"time": h.time, "channel": h.channel, "source": h.source,
                          "target": h.target, "previous": h.previous}
                         for h in reversed(self._handoffs)],
        }

    def _forget_old(self, now: float) -> None:
        """Jobs whose answer never came (or that this observer could not see)."""
        if not self._in_flight:
            return
        oldest = next(iter(self._in_flight.values()))[2]  # dicts keep insertion order
        if now - oldest < IN_FLIGHT_FOR:
            return
        self._in_flight = {k: v for k, v in self._in_flight.items()
                           if now - v[2] < IN_FLIGHT_FOR}
