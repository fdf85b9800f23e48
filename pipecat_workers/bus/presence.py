"""Presence: who is on a channel, told by the backend itself instead of by heartbeats.

Heartbeats through the bus cost every runner one decode per peer per interval, so the work
of a channel grows with the square of its runners. A backend that can tell who is connected
offers a :class:`Presence` instead, and membership (:mod:`pipecat_workers.workers.membership`)
stops heartbeating:

- the embedded hub knows its connections: it tells each client who is present, who joins and
  who leaves, the moment a socket closes;
- Redis keeps a sorted set per channel, runner -> the time it becomes overdue, refreshed by
  each runner with one script call per half interval; a runner only reads the overdue ones;
- PostgreSQL has the advisory lock each runner's reader holds: one query per half interval
  lists the watched runners whose lock is free.

What a presence reports goes to a :class:`PresenceListener`. Presence says nothing about
workers: snapshots still travel on the bus, and a runner heard of only by message (a newcomer
whose snapshot came first) is confirmed or refuted by the presence before long.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol


class PresenceListener(Protocol):
    """What a :class:`Presence` reports to (membership)."""

    def present(self, runner: str) -> None:
        """``runner`` is on the channel: it joined, came back, or a watch confirmed it."""

    def absent(self, runner: str, *, certain: bool, silent_for: float = 0.0) -> None:
        """``runner`` is not on the channel now.

        Args:
            runner: The runner.
            certain: The backend knows its process or connection is gone (a closed socket, a
                freed lock); otherwise it has only not been heard of for a while.
            silent_for: Seconds since the backend last had a sign of life from it.
        """


class Presence(ABC):
    """A backend's own account of which runners are on its channel."""

    @abstractmethod
    async def join(self, listener: PresenceListener, interval: float) -> None:
        """Show this runner as present and report the others to ``listener``.

        Args:
            listener: Gets every change from now on.
            interval: The runner's heartbeat interval: the pace of sweeps and refreshes.
        """

    @abstractmethod
    async def leave(self) -> None:
        """Stop reporting, and withdraw this runner's presence if the backend can (a runner
        that stops gracefully). Never raises."""

    @abstractmethod
    def watch(self, runner: str) -> None:
        """Report soon whether ``runner`` (heard of by message) is present."""

    @abstractmethod
    def forget(self, runner: str) -> None:
        """Stop tracking ``runner``: membership no longer knows it."""

    @abstractmethod
    def is_present(self, runner: str) -> bool | None:
        """What the backend last knew of ``runner`` (``None``: nothing)."""
