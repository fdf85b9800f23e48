"""A clock for the supervisor's state machine that moves only when a test says so."""

from __future__ import annotations

T0 = 100.0


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
