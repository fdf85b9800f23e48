"""Background loops that survive their own bugs: supervised, counted, restarted with back-off.

A runner lives on a few loops of its own: its bus's reader, the membership loop, presence
sweeps, job checks. None of them may die quietly. :func:`supervise` runs one: a crash is
logged with its traceback (then at most twice a minute while it keeps failing), counted in
a :class:`LoopHealth` (which ``runner.stats()`` shows under ``"loops"``), and the loop starts
again after a back-off that grows while it keeps failing (``_FIRST`` doubling up to ``_CAP``)
and resets once it has run well for a while.
Cancellation is never caught: stopping a loop is its owner's business.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("pipecat_workers.loops")

_FIRST, _CAP = 0.05, 5.0
_HEALTHY_AFTER = 10.0  # a run this long (seconds) resets the back-off
_FAILING_FOR = 60.0  # a loop that failed this recently counts as failing
_ERROR_TEXT = 300  # characters of the last error kept
_REPORT_EVERY = 30.0  # seconds between two log lines of a loop that keeps failing
# Where in each period this process's periodic work falls: the same for all its runners, so
# ten idle runners in one process wake it once per period rather than ten times; different
# from other processes', so a machine's processes do not all wake at once.
_PHASE = random.random()


@dataclass(slots=True)
class LoopRecord:
    """One loop's failures."""

    failures: int = 0
    last_error: str | None = None
    last_failure: float | None = None  # time.time() of the last one


class LoopHealth:
    """Failure counts of the background loops of one owner (a bus, a runner's membership)."""

    def __init__(self) -> None:
        self._loops: dict[str, LoopRecord] = {}

    def failed(self, name: str, error: BaseException) -> int:
        """Count a crash of loop ``name``; returns how many it has had."""
        record = self._loops.setdefault(name, LoopRecord())
        record.failures += 1
        record.last_error = f"{type(error).__name__}: {error}"[:_ERROR_TEXT]
        record.last_failure = time.time()
        return record.failures

    def failures(self, name: str) -> int:
        """How many times loop ``name`` has crashed."""
        record = self._loops.get(name)
        return 0 if record is None else record.failures

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per loop that ever failed: ``failures``, ``last_error``, ``last_failure`` (epoch
        seconds) and ``failing`` (it failed within the last minute)."""
        now = time.time()
        return {
            name: {"failures": r.failures, "last_error": r.last_error,
                   "last_failure": r.last_failure,
                   "failing": r.last_failure is not None and now - r.last_failure < _FAILING_FOR}
            for name, r in sorted(self._loops.items())
        }


def next_tick(now: float, every: float) -> float:
    """The first moment after ``now`` (loop time) on this process's grid of period
    ``every``: periodic work of all the runners of a process lines up (see ``_PHASE``)."""
    offset = _PHASE * every
    return (math.floor((now - offset) / every) + 1) * every + offset


async def supervise(name: str, body: Callable[[], Awaitable[None]], health: LoopHealth) -> None:
    """Run ``body()`` until it returns; restart it, with back-off, whenever it raises.

    Args:
        name: The loop's name in logs and in ``health``.
        body: Starts one run of the loop.
        health: Where crashes are counted.
    """
    loop = asyncio.get_running_loop()
    backoff = _FIRST
    # A loop that keeps failing the same way is said with its traceback twice a minute,
    # not once per restart.
    failing = RateLimitedLog(logger, every=_REPORT_EVERY)
    while True:
        started = loop.time()
        try:
            await body()
            return
        except Exception as exc:
            count = health.failed(name, exc)
            if loop.time() - started >= _HEALTHY_AFTER:
                backoff = _FIRST
            failing.error("background loop '%s' failed (failure %d); restarting it in %.2f s",
                          name, count, backoff, exc_info=exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _CAP)


def start_supervised(name: str, body: Callable[[], Awaitable[None]],
                     health: LoopHealth) -> asyncio.Task[None]:
    """:func:`supervise` in a task of its own, named after the loop."""
    return asyncio.get_running_loop().create_task(supervise(name, body, health),
                                                  name=f"loop {name}")


class RateLimitedLog:
    """Logs the first occurrence of a problem, then one line per ``every`` seconds at most,
    with the number of occurrences left unlogged. A different problem (another line, or
    another type of exception) is logged at once: a new failure never hides behind the
    last one's silence.

    Args:
        log: Where the lines go.
        every: Seconds between two lines.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, log: logging.Logger, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._every = every
        self._clock = clock
        self._next: float | None = None
        self._skipped = 0
        self._problem: tuple[str, tuple[str, ...], type[BaseException] | None] | None = None

    def warning(self, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        self.log(logging.WARNING, message, *args, exc_info=exc_info)

    def error(self, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        self.log(logging.ERROR, message, *args, exc_info=exc_info)

    def log(self, level: int, message: str, *args: object,
            exc_info: BaseException | None = None) -> None:
        now = self._clock()
        problem = _problem(message, args, exc_info)
        if problem == self._problem and self._next is not None and now < self._next:
            self._skipped += 1
            return
        skipped = self._skipped if problem == self._problem else 0
        self._problem, self._skipped, self._next = problem, 0, now + self._every
        suffix = f" ({skipped} more since the last report)" if skipped else ""
        self._log.log(level, message + suffix, *args, exc_info=exc_info)

    def reset(self) -> None:
        """The problem is over (a success came): its next occurrence is news again."""
        self._problem, self._next, self._skipped = None, None, 0


def _problem(message: str, args: tuple[object, ...], exc_info: BaseException | None
             ) -> tuple[str, tuple[str, ...], type[BaseException] | None]:
    """What makes two log calls the same problem: the same line (its template, so counts
    and delays in it do not count), the same errors in its arguments, the same type of
    exception."""
    errors = tuple(f"{type(a).__name__}: {a}" for a in args if isinstance(a, BaseException))
    return message, errors, type(exc_info) if exc_info is not None else None
