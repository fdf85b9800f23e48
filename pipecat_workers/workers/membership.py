"""Membership: how runners on one channel learn about each other's workers, and forget them.

A runner broadcasts a snapshot of its workers when it starts and whenever they change, and
answers a newcomer (and anyone who asks) with its snapshot and counters. A runner that stops
says so (leave), a worker that stops says so, and a runner that dies is found out:

- **With a presence** (the hub, Redis, PostgreSQL: see :mod:`pipecat_workers.bus.presence`),
  the backend says who is on the channel, and runners send no periodic heartbeat. A runner the
  presence reports gone for certain (its socket closed, its lock freed) is lost at once; one it
  has only not seen for a while (or never vouched for, such as a sender of forged messages) is
  lost after ``Settings.lost_after`` intervals. Heartbeats still carry a runner's counters and
  digest, but only when they changed, at most once per interval.
- **Without one** (the in-process bus, other backends), every runner heartbeats each interval
  with the digest of its workers (a peer that sees a digest it does not know asks for the full
  snapshot, so a snapshot lost in a discovery race is repaired), and a runner silent for
  ``lost_after`` intervals is lost (sooner if the bus can tell that its process is gone).

A newer incarnation of a runner replaces the older one's workers. A worker name held by a
runner that is gone goes to the live runner that claims it (see :class:`WorkerRegistry`); a
claim on a name whose holder the bus says is gone gets the holder declared lost at once.
Every ``lost_after`` intervals the runner also asks the peers that owe its workers an answer
for that long whether they still run those jobs (``check_jobs``).

Silence heard while this runner's own bus connection is down proves little about the peers:
up to ``outage_grace`` seconds of it (at least ``lost_after`` intervals) are excused, and after
the connection returns, peers have ``lost_after`` intervals to show up again before anything
about them counts as certain. A leave removes a runner for ``lost_after`` intervals; after
that, a runner that proves it is alive (a heartbeat, or the presence) is welcome again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.loops import LoopHealth, RateLimitedLog, next_tick, start_supervised
from pipecat_workers.bus.messages import (
    BusDuplicateWorkerMessage,
    BusHeartbeatMessage,
    BusMessage,
    BusRegistryRequestMessage,
    BusRunnerLeaveMessage,
    BusWorkerRegistryMessage,
    BusWorkerStoppedMessage,
)
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import Settings
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.types import WorkerReadyData, WorkerRegistryEntry
from pipecat_workers.workers.announcer import Announcer
from pipecat_workers.workers.peers import (
    Peer,
    digest_of,
    entries_of,
    interval_of,
    name_of,
    number_of,
    stats_of,
)

logger = logging.getLogger("pipecat_workers.membership")

OUTAGE_GRACE = 10.0  # seconds of our own outage during which no peer is lost

MEMBERSHIP_MESSAGES = (BusDuplicateWorkerMessage, BusHeartbeatMessage, BusWorkerRegistryMessage,
                        BusRegistryRequestMessage, BusRunnerLeaveMessage, BusWorkerStoppedMessage)


class Membership(Announcer):
    """The discovery and liveness protocol of one runner."""

    def __init__(
        self, *, runner: str, incarnation: float, bus: WorkerBus, registry: WorkerRegistry,
        settings: Settings, entries: Callable[[], list[WorkerRegistryEntry]],
        stats: Callable[[], dict[str, Any]],
        on_duplicate: Callable[[WorkerRegistryEntry, str], Awaitable[None]],
        check_jobs: Callable[[float], Awaitable[None]],
    ) -> None:
        super().__init__(runner=runner, incarnation=incarnation, bus=bus, registry=registry,
                         settings=settings, entries=entries, stats=stats,
                         outage_grace=OUTAGE_GRACE)
        self._on_duplicate = on_duplicate
        self._check_jobs = check_jobs
        self.health = LoopHealth()
        self._task: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None  # a round of job checks
        self._next_beat = self._next_check = 0.0
        self._joined = False
        self._errors = RateLimitedLog(logger)

    async def start(self) -> None:
        """Start the loop, which joins the presence (if the bus has one) and announces this
        runner. Returns at once: the runner starts its workers meanwhile."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._joined = False
        self._task = start_supervised("membership", self._run, self.health)

    async def _join(self) -> None:
        presence = self._bus.presence
        if presence is not None:
            await presence.join(self, self._interval)
            self._presence = presence
        loop = asyncio.get_running_loop()
        self._next_beat = loop.time()
        self._next_check = next_tick(loop.time() + self._window, self._window)
        self._joined = True
        await self._send_snapshot()

    async def stop(self) -> None:
        """Stop, and tell the peers this runner is leaving (unless the bus is down: they
        will notice, and a goodbye would only wait to fail)."""
        started = self._task is not None
        await cancel_and_wait((self._task, self._announce, self._checking, self._resync),
                              self._settings.cancel_timeout)
        self._task = self._announce = self._checking = self._resync = None
        presence, self._presence = self._presence, None
        if not started:
            return  # the bus never started: nobody heard of us
        if self._down_since is None:
            try:
                await self._bus.send(BusRunnerLeaveMessage(
                    source=self._runner, runner=self._runner, incarnation=self._incarnation))
            except Exception:
                logger.warning("could not announce that runner '%s' leaves", self._runner,
                               exc_info=True)
        else:
            logger.debug("runner '%s' leaves without a goodbye: its bus is down", self._runner)
        if presence is not None:
            await presence.leave()

    def bus_up(self) -> None:
        """The connection is back: excuse the silence, and exchange snapshots again (pub/sub
        kept nothing of what was sent meanwhile)."""
        super().bus_up()
        if self._task is not None and (self._resync is None or self._resync.done()):
            self._resync = asyncio.get_running_loop().create_task(self._exchange())

    def summary(self) -> dict[str, Any]:
        """Sizes of membership's tables, for ``stats()``."""
        book = self._book
        return {"presence": type(self._presence).__name__ if self._presence else None,
                "peers": len(book.peers), "doubtful": len(book.doubtful),
                "left": len(book.left), "heard": len(book.heard), "refused": book.refused,
                "claims": self._registry.claim_count, "dropped": dict(self._dropped)}

    # -- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        if not self._joined:
            await self._join()
        while True:
            wake.clear()
            now = loop.time()
            await self._apply_news()
            if now >= self._next_beat:
                self._next_beat = next_tick(now, self._interval)
                if self._presence is None:
                    await self._send_heartbeat()
                else:
                    await self._send_status()
                if self._registry.digest() != self._announced:
                    self.local_changed()  # e.g. a claim of ours was granted
            await self._expire(now)
            await self._follow_up(now)
            if (now >= self._next_check and self._down_since is None
                    and (self._checking is None or self._checking.done())):
                # In a task of its own: many checks on a slow bus must not delay the loop.
                self._next_check = next_tick(now, self._window)
                self._checking = loop.create_task(self._run_checks(self._window))
            wake_at = min(self._next_beat, self._next_check)
            if self._busy():  # a timer shorter than an interval may expire
                wake_at = min(wake_at, next_tick(now, self._interval / 4))
            timeout = wake_at - loop.time()
            if self._waiting_news():
                timeout = 0.005  # news put back behind our mailbox: soon again
            if not wake.is_set():
                try:
                    async with asyncio.timeout(max(timeout, 0.001)):
                        await wake.wait()
                except TimeoutError:
                    pass

    async def _run_checks(self, window: float) -> None:
        try:
            await self._check_jobs(window)
        except Exception as exc:
            self.health.failed("job_checks", exc)
            logger.exception("checking the jobs of runner '%s' failed", self._runner)

    # -- receiving ----------------------------------------------------------------------

    async def handle(self, message: BusMessage) -> bool:
        """Apply a membership message from another runner; False if it is not one. Never
        raises: a message that breaks a rule is dropped and counted."""
        if not isinstance(message, MEMBERSHIP_MESSAGES):
            return False
        try:
            await self._dispatch(message)
        except Exception as exc:
            self.health.failed("membership.handle", exc)
            self._errors.warning("runner '%s' could not apply a %s", self._runner,
                                 type(message).__name__, exc_info=exc)
        return True

    async def _dispatch(self, message: BusMessage) -> None:
        if getattr(message, "runner", None) == self._runner and not isinstance(
                message, BusRegistryRequestMessage):
            # About this runner itself (its workers' stop notices, say): the registry
            # already knows, and a worker that stopped may have a successor by now.
            return
        if isinstance(message, BusHeartbeatMessage):
            await self._on_heartbeat(message)
        elif isinstance(message, BusWorkerRegistryMessage):
            await self._on_snapshot(message)
        elif isinstance(message, BusRegistryRequestMessage):
            asker = name_of(message.runner)
            if asker is None:
                self._drop("bad_runner")
            elif message.target in (None, self._runner):
                if not self.knows(asker):  # so the answer goes to it alone
                    self._book.hear(asker, asyncio.get_running_loop().time())
                await self._send_snapshot(target=asker)
                await self._send_status(target=asker)
        elif isinstance(message, BusRunnerLeaveMessage):
            await self._on_leave(message)
        elif isinstance(message, BusDuplicateWorkerMessage):
            logger.error("runner '%s' reports that its worker '%s' has the name of one of ours",
                         str(message.runner)[:200], str(message.worker_name)[:200])
        elif isinstance(message, BusWorkerStoppedMessage):
            await self._on_worker_stopped(message)

    def _who(self, message: BusHeartbeatMessage | BusWorkerRegistryMessage
             | BusRunnerLeaveMessage) -> tuple[str, float] | None:
        runner, incarnation = name_of(message.runner), number_of(message.incarnation)
        if runner is None or incarnation is None:
            self._drop("bad_runner" if runner is None else "bad_incarnation")
            return None
        return runner, incarnation

    async def _on_heartbeat(self, message: BusHeartbeatMessage) -> None:
        who = self._who(message)
        if who is None:
            return
        peer = await self._meet(*who, interval_of(message.interval, self._interval))
        if peer is None:
            return
        stats = stats_of(message.stats)
        if stats is not None:
            peer.stats = stats
        digest = digest_of(message.digest)
        if digest != peer.digest:
            peer.wanted = True
        await self._follow_up_peer(who[0], peer, greet=message.target is None)

    async def _on_snapshot(self, message: BusWorkerRegistryMessage) -> None:
        who = self._who(message)
        entries = entries_of(message.workers)
        if who is None:
            return
        if entries is None:
            self._drop("bad_workers")
            return
        runner, incarnation = who
        existing = self._book.peers.get(runner)
        peer = await self._meet(runner, incarnation,
                                existing.interval if existing else self._interval)
        if peer is None:
            return
        peer.digest = digest_of(message.digest)
        peer.wanted = False
        registry = self._registry
        listed = {entry.name for entry in entries}
        for data in registry.workers_of(runner):
            if data.worker_name not in listed:
                await registry.unregister(data.worker_name, reason="stopped")
        registry.drop_claims(runner, keep=listed)
        holders: set[str] = set()
        for entry in entries:
            known = registry.get(entry.name)
            if known is not None and known.runner == self._runner:
                await self._on_duplicate(entry, runner)
                continue
            await registry.register(WorkerReadyData(
                worker_name=entry.name, runner=runner, incarnation=incarnation,
                parent=entry.parent, any_job=entry.any_job, relay=entry.relay,
                jobs=tuple(entry.jobs) if entry.jobs is not None else None))
            held = registry.get(entry.name)
            if held is not None and held.runner not in (runner, self._runner):
                holders.add(held.runner)
        for holder in holders:
            await self._challenge(holder, runner)
        await registry.grant_free_claims()
        await self._follow_up_peer(runner, peer, greet=message.target is None)

    async def _on_leave(self, message: BusRunnerLeaveMessage) -> None:
        who = self._who(message)
        if who is None:
            return
        runner, incarnation = who
        peer = self._book.peers.get(runner)
        now = asyncio.get_running_loop().time()
        if peer is None:
            # Not met yet: remembered all the same, so that a message it sent before its
            # goodbye and that arrives after it (its answer to our registry request, say)
            # does not bring it back, to be found "lost" once it is gone.
            self._book.heard.pop(runner, None)
            self._book.remember_leave(runner, incarnation, now)
            return
        if incarnation < peer.incarnation:
            return
        self._book.remove(runner)
        self._book.remember_leave(runner, incarnation, now)
        await self._registry.remove_runner(runner, reason="left")

    async def _on_worker_stopped(self, message: BusWorkerStoppedMessage) -> None:
        runner, worker = name_of(message.runner), name_of(message.source)
        incarnation = number_of(message.incarnation)
        if runner is None or worker is None:
            self._drop("bad_runner")
            return
        known = self._registry.get(worker)
        if (known is not None and known.runner == runner
                and known.incarnation <= (incarnation or 0.0)):
            await self._registry.unregister(worker, reason="stopped")
        else:
            self._registry.drop_claim(worker, runner)

    async def _follow_up_peer(self, name: str, peer: Peer, *, greet: bool) -> None:
        """Greet a peer we just met, and ask for its snapshot if ours is out of date; to a
        peer the presence has not vouched for yet, nothing is sent (it may be forged)."""
        if not greet:
            peer.greeted = True  # it wrote to us: it knows us
        if not peer.confirmed:
            return  # greeted (and asked) once it is confirmed
        if not peer.greeted:
            await self._greet(name, peer)
        if peer.wanted:
            await self._ask(name, peer, asyncio.get_running_loop().time())

    async def _follow_up(self, now: float) -> None:
        """Confirmed peers still owed a greeting or a request; runners the presence shows
        that sent us nothing yet are asked for their snapshot."""
        for name in list(self._owed):
            peer = self._book.peers.get(name)
            self._owed.pop(name, None)
            if peer is not None and peer.confirmed:
                if not peer.greeted:
                    await self._greet(name, peer)
                if peer.wanted:
                    await self._ask(name, peer, now)
        heard = self._book.heard
        for name, (since, asks) in list(heard.items()):
            if name in self._book.peers or asks >= 3:
                heard.pop(name, None)
            elif now - since >= self._interval / 2 * (asks + 1):
                heard[name] = (since, asks + 1)
                await self._ask(name, None, now)

    async def _challenge(self, holder: str, claimant: str) -> None:
        """``claimant`` announced a worker whose name ``holder`` holds: if the bus can tell
        that the holder is gone, it is lost now (and the name goes to the claim)."""
        peer = self._book.peers.get(holder)
        now = asyncio.get_running_loop().time()
        if peer is None or now - peer.challenged_at < self._interval or not self._settled(now):
            return
        peer.challenged_at = now
        try:
            async with asyncio.timeout(1.0):
                alive = await self._bus.probe(holder)
        except Exception:
            alive = None
        if alive is False:
            await self._lose(holder, peer, f"its connection is closed, and runner '{claimant}' "
                             "claims the name of its worker")
