"""HubPresence: who is on a hub channel, as the hub itself tells it.

The hub knows its connections, so it says who is present when a client connects (PRESENT),
and who joins and leaves from then on (JOINED, LEFT: see :mod:`pipecat_workers.bus.hub`). A
LEFT is certain: that runner's last connection closed, which is what a killed process's
kernel does at once. After a reconnection the new PRESENT list is compared with the old: a
runner missing from it may only be reconnecting too (the hub restarted), so its absence is
reported as uncertain. Nothing is sent or polled for presence: an idle channel costs nothing.
"""

from __future__ import annotations

from pipecat_workers.bus.presence import Presence, PresenceListener


class HubPresence(Presence):
    """The mirror of a hub channel's presence, kept by :class:`HubBus`'s reader."""

    def __init__(self) -> None:
        self._present: set[str] = set()
        self._synced = False  # a PRESENT list came on the current connection
        self._listener: PresenceListener | None = None

    # -- Presence ---------------------------------------------------------------------------

    async def join(self, listener: PresenceListener, interval: float) -> None:
        self._listener = listener
        for runner in list(self._present):
            listener.present(runner)

    async def leave(self) -> None:
        self._listener = None  # the connection's close withdraws us

    def watch(self, runner: str) -> None:
        pass  # the hub reports every change: a runner not present now was never here

    def forget(self, runner: str) -> None:
        pass  # the mirror follows the hub, not membership

    def is_present(self, runner: str) -> bool | None:
        return runner in self._present if self._synced else None

    # -- what the hub says ------------------------------------------------------------------

    def reset(self, runners: list[str]) -> None:
        """A PRESENT list: the whole view, right after (re)connecting."""
        fresh = set(runners)
        gone, new = self._present - fresh, fresh - self._present
        self._present, self._synced = fresh, True
        listener = self._listener
        if listener is not None:
            for runner in gone:
                listener.absent(runner, certain=False)
            for runner in new:
                listener.present(runner)

    def joined(self, runner: str) -> None:
        self._present.add(runner)
        if self._listener is not None:
            self._listener.present(runner)

    def left(self, runner: str) -> None:
        self._present.discard(runner)
        if self._listener is not None:
            self._listener.absent(runner, certain=True)

    def disconnected(self) -> None:
        self._synced = False
