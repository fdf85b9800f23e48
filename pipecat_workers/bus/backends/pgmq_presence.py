"""PgmqPresence: who is on a PGMQ channel, from the advisory locks the readers hold.

Every runner's reader holds an advisory lock named after its queue for as long as it reads
(:mod:`pipecat_workers.bus.backends.pgmq`): the server frees it the moment that session ends,
which is what a killed process's socket does. So presence needs no table and no heartbeat:
every half heartbeat interval a runner asks, in one query over ``pg_locks``, which of the
runners it knows have a free lock (normally none, so the answer is empty whatever their
number).

- A known runner whose lock has stayed free for ``_LOST_AFTER`` (its reader is not merely
  reconnecting) is reported gone for certain.
- A runner heard of by message only (a newcomer's snapshot) is confirmed if its lock is held
  (a reader takes it before it sends anything); if not, it is reported absent.
- Nothing is concluded while this bus's own reader is down or has just reconnected: a server
  restart frees every lock until the readers come back.

Newcomers announce themselves with their snapshot (a PGMQ broadcast, stored in every bound
queue), so there is nothing else to watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pipecat_workers.bus.loops import LoopHealth, next_tick, start_supervised
from pipecat_workers.bus.presence import Presence, PresenceListener
from pipecat_workers.tasks import cancel_and_wait

logger = logging.getLogger("pipecat_workers.bus.pgmq")

_LOST_AFTER = 1.5  # seconds a known runner's lock must stay free before it counts as gone
# (longer than a reader's reconnect: back-off up to 1 s, then connecting and locking)
_MAX_CHECKED = 4096  # runners checked per sweep

# The keys of $1 whose advisory lock nobody holds in this database. A bigint key k is held as
# (classid, objid, objsubid) = (k >> 32, k & 0xffffffff, 1).
FREE_LOCKS = """
SELECT k FROM unnest($1::bigint[]) AS k WHERE NOT EXISTS (
  SELECT 1 FROM pg_locks l
  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = ((k >> 32) & 4294967295)::oid AND l.objid = (k & 4294967295)::oid)
"""

FreeLocks = Callable[[list[int]], Awaitable["set[int] | None"]]


class PgmqPresence(Presence):
    """Presence on one PGMQ channel for one runner (see the module's doc).

    Args:
        free_locks: Returns which of the given lock keys are free, or ``None`` when the bus
            cannot tell right now (down, or just reconnected).
        key_of: The lock key of a runner's queue.
        runner: This runner.
        health: Where the sweep loop's crashes are counted.
    """

    def __init__(self, free_locks: FreeLocks, key_of: Callable[[str], int], *, runner: str,
                 health: LoopHealth) -> None:
        self._free_locks = free_locks
        self._key_of = key_of
        self._runner = runner
        self._health = health
        self._listener: PresenceListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._period = 0.5
        self._present: set[str] = set()
        self._watch: dict[str, None] = {}
        self._free_since: dict[str, float] = {}  # present runners whose lock is free
        self._gone: set[str] = set()  # reported gone, until membership forgets them
        self._soon = asyncio.Event()

    # -- Presence ---------------------------------------------------------------------------

    async def join(self, listener: PresenceListener, interval: float) -> None:
        self._listener = listener
        self._period = interval / 2
        self._task = start_supervised("presence", self._run, self._health)

    async def leave(self) -> None:
        await self.close()  # our lock goes with our reader's session

    async def close(self) -> None:
        """Stop sweeping (the bus is closing)."""
        await cancel_and_wait((self._task,), 1.0)
        self._task, self._listener = None, None

    def watch(self, runner: str) -> None:
        if runner != self._runner:
            self._watch[runner] = None
            self._soon.set()

    def forget(self, runner: str) -> None:
        self._present.discard(runner)
        self._watch.pop(runner, None)
        self._free_since.pop(runner, None)
        self._gone.discard(runner)

    def is_present(self, runner: str) -> bool | None:
        if runner in self._present:
            return True
        return False if runner in self._gone else None

    # -- sweeping ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(next_tick(loop.time(), self._period)):
                    await self._soon.wait()
                await asyncio.sleep(0.005)  # a burst of newcomers, answered in one query
            except TimeoutError:
                pass
            self._soon.clear()
            await self._sweep()

    async def _sweep(self) -> None:
        watched = list(self._watch)[:_MAX_CHECKED]
        names = list(dict.fromkeys([*watched, *self._present]))[:_MAX_CHECKED]
        if not names:
            return
        keys = {name: self._key_of(name) for name in names}
        free = await self._free_locks(list(keys.values()))
        if free is None:
            return  # cannot tell now; the watched wait for the next sweep
        for name in watched:
            self._watch.pop(name, None)
        now = asyncio.get_running_loop().time()
        listener = self._listener
        for name in names:
            if keys[name] not in free:
                self._free_since.pop(name, None)
                if name not in self._present:
                    self._present.add(name)
                    self._gone.discard(name)
                    if listener is not None:
                        listener.present(name)
            elif name not in self._present:  # heard of, never here: forged, or long gone
                self._gone.add(name)
                if listener is not None:
                    listener.absent(name, certain=False)
            else:
                since = self._free_since.setdefault(name, now)
                if now - since >= _LOST_AFTER:
                    self._present.discard(name)
                    self._free_since.pop(name, None)
                    self._gone.add(name)
                    if listener is not None:
                        listener.absent(name, certain=True, silent_for=now - since)
