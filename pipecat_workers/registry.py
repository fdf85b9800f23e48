"""WorkerRegistry: which workers are ready, where they run, and who wants to know.

Each runner owns one registry, shared by its workers. It holds the runner's own workers and
the workers of every peer runner it has heard of. Entries leave when a worker stops, when its
runner leaves or is lost, or when a newer incarnation of its runner replaces them; watchers
hear about both arrivals and departures, and a worker that comes back fires its watches again.

Watches are keyed by (name, handler), so watching the same name twice with the same handler
costs nothing, and waiting for a worker (:meth:`wait_for`) leaves nothing behind.

An entry (:class:`~pipecat_workers.types.WorkerReadyData`) also lists the job names the
worker's ``@job`` handlers take, as its runner announced them, so that a tool can offer them.

A name belongs to one runner at a time. A worker announced under a name that another runner
holds becomes a *claim*: kept (a few per name, a bounded number in all) until the holder's
worker leaves, and then granted, so the claimant's worker is registered and its watchers fire.
That is how a process restarted under a new runner name takes its worker's name back from the
one that died. A claim goes when its runner goes, or stops listing the name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from pipecat_workers.types import WorkerLostData, WorkerReadyData

logger = logging.getLogger("pipecat_workers.registry")

_MAX_CLAIMANTS = 8  # runners waiting for one name
_MAX_REMOTE = 100_000  # workers of other runners kept; more are refused (a flood of forgeries)
_MAX_CLAIMED = 10_000  # names with claims; the oldest is forgotten first

ReadyHandler = Callable[[WorkerReadyData], Awaitable[None]]
LostHandler = Callable[[WorkerLostData], Awaitable[None]]


class WorkerRegistry:
    """The workers a runner knows about, local and remote."""

    def __init__(self, runner_name: str, *, incarnation: float = 0.0) -> None:
        self._runner_name = runner_name
        self._incarnation = incarnation
        self._workers: dict[str, WorkerReadyData] = {}
        self._by_runner: dict[str, dict[str, None]] = {}
        self._watches: dict[str, dict[ReadyHandler, LostHandler | None]] = {}
        self._waiters: dict[str, list[asyncio.Future[WorkerReadyData]]] = {}
        self._departure_listeners: dict[LostHandler, None] = {}
        self._arrival_listeners: dict[ReadyHandler, None] = {}
        self._digest: str | None = None
        self._claims: dict[str, dict[str, WorkerReadyData]] = {}  # name -> runner -> claim
        self._refused = 0  # remote workers not kept: the registry was full

    @property
    def runner_name(self) -> str:
        """The name of the runner that owns this registry."""
        return self._runner_name

    @property
    def incarnation(self) -> float:
        """The owning runner's start time."""
        return self._incarnation

    @property
    def local_workers(self) -> list[str]:
        """Names of the workers of this registry's runner."""
        return list(self._by_runner.get(self._runner_name, ()))

    @property
    def remote_workers(self) -> list[str]:
        """Names of the workers of every other runner."""
        return [n for r, names in self._by_runner.items() if r != self._runner_name for n in names]

    @property
    def runners(self) -> list[str]:
        """Names of the runners with at least one worker, this one included."""
        return list(self._by_runner)

    def get(self, name: str) -> WorkerReadyData | None:
        """The ready worker called ``name``, or ``None``."""
        return self._workers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._workers

    def __len__(self) -> int:
        return len(self._workers)

    def workers_of(self, runner: str) -> list[WorkerReadyData]:
        """The workers registered under ``runner``."""
        return [self._workers[n] for n in self._by_runner.get(runner, ())]

    def digest(self, runner: str | None = None) -> str:
        """A short fingerprint of one runner's workers and their job names (this runner's by
        default)."""
        runner = runner or self._runner_name
        if runner == self._runner_name and self._digest is not None:
            return self._digest
        lines = []
        for name in sorted(self._by_runner.get(runner, ())):
            data = self._workers[name]
            jobs = "\0".join(data.jobs) if data.jobs is not None else "?"
            lines.append(f"{name}\0{jobs}\0{'*' if data.any_job else ''}")
        digest = hashlib.blake2b("\n".join(lines).encode(), digest_size=8).hexdigest()
        if runner == self._runner_name:
            self._digest = digest
        return digest

    # -- arrivals -----------------------------------------------------------------------

    async def register(self, data: WorkerReadyData) -> bool:
        """Record a ready worker and notify its watchers.

        Returns:
            True if the worker is new; False if it was already known under that runner, or if
            another runner holds the name (the holder keeps it, and this worker becomes a
            claim, granted when the holder's worker leaves; an older incarnation of the
            *same* runner is replaced instead), or if the registry already holds 100,000
            workers of other runners.
        """
        known = self._workers.get(data.worker_name)
        if known is not None:
            if known.runner == data.runner and known.incarnation >= data.incarnation:
                if known.incarnation == data.incarnation and _jobs(known) != _jobs(data):
                    self._workers[data.worker_name] = data  # its handlers are news, not it
                    if data.runner == self._runner_name:
                        self._digest = None
                return False
            if known.runner != data.runner:
                self._claim(data, known.runner)
                return False
            await self.unregister(data.worker_name, reason="replaced", grant=False)
        self.drop_claim(data.worker_name, data.runner)
        if data.runner != self._runner_name and len(self._workers) >= _MAX_REMOTE:
            self._refused += 1
            if self._refused in (1, 100) or self._refused % 10_000 == 0:
                logger.warning("registry of '%s' is full (%d workers): ignoring worker '%s' of "
                               "runner '%s' (%d ignored so far)", self._runner_name,
                               len(self._workers), data.worker_name, data.runner, self._refused)
            return False
        self._workers[data.worker_name] = data
        self._by_runner.setdefault(data.runner, {})[data.worker_name] = None
        if data.runner == self._runner_name:
            self._digest = None
        for future in self._waiters.pop(data.worker_name, ()):
            if not future.done():
                future.set_result(data)
        for handler in list(self._watches.get(data.worker_name, ())):
            await self._call_ready(handler, data)
        for listener in list(self._arrival_listeners):
            await self._call_ready(listener, data)
        return True

    @staticmethod
    async def _call_ready(handler: ReadyHandler, data: WorkerReadyData) -> None:
        # Logged, never raised: a watcher's bug must not fail the registration (or the
        # watch() call) of someone else, whether the worker arrives now or was already here.
        try:
            await handler(data)
        except Exception:
            logger.exception("watch handler for '%s' failed", data.worker_name)

    async def watch(
        self, name: str, handler: ReadyHandler, *, on_lost: LostHandler | None = None
    ) -> None:
        """Call ``handler`` whenever ``name`` becomes ready, now too if it already is.

        Args:
            name: The worker to watch.
            handler: Awaited with :class:`WorkerReadyData` on every registration.
            on_lost: Awaited with :class:`WorkerLostData` whenever the worker leaves.
        """
        handlers = self._watches.setdefault(name, {})
        if handler in handlers:
            if on_lost is not None:
                handlers[handler] = on_lost
            return
        handlers[handler] = on_lost
        data = self._workers.get(name)
        if data is not None:
            await self._call_ready(handler, data)

    def unwatch(self, name: str, handler: ReadyHandler) -> None:
        """Stop calling ``handler`` for ``name``."""
        handlers = self._watches.get(name)
        if handlers is not None:
            handlers.pop(handler, None)
            if not handlers:
                del self._watches[name]

    async def wait_for(self, name: str, timeout: float | None = None) -> WorkerReadyData:
        """Wait until ``name`` is ready.

        Raises:
            TimeoutError: if it is not ready within ``timeout`` seconds.
        """
        data = self._workers.get(name)
        if data is not None:
            return data
        future: asyncio.Future[WorkerReadyData] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(name, [])
        waiters.append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            waiters = self._waiters.get(name, [])
            if future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[name]

    def watch_count(self) -> int:
        """How many (name, handler) watches and waiters exist; for leak checks."""
        return sum(map(len, self._watches.values())) + sum(map(len, self._waiters.values()))

    def add_arrival_listener(self, listener: ReadyHandler) -> None:
        """Call ``listener`` for every worker that arrives, whatever its name (a proxy
        uses it to tell its peer which workers it can reach)."""
        self._arrival_listeners[listener] = None

    def remove_arrival_listener(self, listener: ReadyHandler) -> None:
        """Undo :meth:`add_arrival_listener`."""
        self._arrival_listeners.pop(listener, None)

    # -- departures ---------------------------------------------------------------------

    def add_departure_listener(self, listener: LostHandler) -> None:
        """Call ``listener`` for every worker that leaves (used to end jobs sent to it)."""
        self._departure_listeners[listener] = None

    def remove_departure_listener(self, listener: LostHandler) -> None:
        """Undo :meth:`add_departure_listener`."""
        self._departure_listeners.pop(listener, None)

    async def unregister(self, name: str, *, reason: str = "stopped",
                         grant: bool = True) -> WorkerLostData | None:
        """Remove a worker and tell its watchers; ``None`` if it was not registered.

        Args:
            name: The worker.
            reason: Why it left, as its watchers are told.
            grant: Give the name to the oldest claim on it, if any (see the module's doc).
        """
        data = self._workers.pop(name, None)
        if data is None:
            return None
        names = self._by_runner.get(data.runner)
        if names is not None:
            names.pop(name, None)
            if not names:
                del self._by_runner[data.runner]
        if data.runner == self._runner_name:
            self._digest = None
        lost = WorkerLostData(worker_name=name, runner=data.runner, reason=reason)
        await self._notify_lost(lost)
        if grant and name not in self._workers:
            await self._grant(name)
        return lost

    async def remove_runner(
        self, runner: str, *, reason: str, before: float | None = None
    ) -> list[WorkerLostData]:
        """Remove every worker of ``runner`` (only those of incarnations older than ``before``)
        and its claims. Names it held go to their claims, unless it is being ``"replaced"``
        by a newer incarnation, whose snapshot comes next (then :meth:`grant_free_claims`).

        Returns:
            What was removed, in registration order.
        """
        self.drop_claims(runner, before=before)
        removed = []
        grant = reason != "replaced"
        for data in self.workers_of(runner):
            if before is None or data.incarnation < before:
                lost = await self.unregister(data.worker_name, reason=reason, grant=grant)
                if lost is not None:
                    removed.append(lost)
        return removed

    # -- claims ---------------------------------------------------------------------------

    def claims(self, name: str) -> list[str]:
        """The runners claiming ``name``, oldest claim first."""
        return list(self._claims.get(name, ()))

    def claimed_by(self, runner: str) -> list[str]:
        """The names ``runner`` claims."""
        return [name for name, claims in self._claims.items() if runner in claims]

    @property
    def claim_count(self) -> int:
        """How many claims are pending, over all names."""
        return sum(map(len, self._claims.values()))

    def drop_claims(self, runner: str, *, keep: set[str] | None = None,
                    before: float | None = None) -> None:
        """Forget the claims of ``runner``: all of them, or those on names not in ``keep``,
        or those of incarnations older than ``before``."""
        if not self._claims:
            return
        for name in self.claimed_by(runner):
            if keep is not None and name in keep:
                continue
            claim = self._claims[name][runner]
            if before is None or claim.incarnation < before:
                self.drop_claim(name, runner)

    async def grant_free_claims(self) -> None:
        """Grant the claims on names nobody holds (after a runner was replaced)."""
        for name in [n for n in self._claims if n not in self._workers]:
            await self._grant(name)

    def _claim(self, data: WorkerReadyData, holder: str) -> None:
        name = data.worker_name
        claims = self._claims.get(name)
        if claims is None:
            if len(self._claims) >= _MAX_CLAIMED:
                del self._claims[next(iter(self._claims))]
            claims = self._claims[name] = {}
        if data.runner in claims:
            claims[data.runner] = data  # the newest word of that runner
            return
        if len(claims) >= _MAX_CLAIMANTS:
            return
        claims[data.runner] = data
        logger.warning("worker '%s' of runner '%s' waits for its name: runner '%s' has a worker "
                       "with that name", name, data.runner, holder)

    def drop_claim(self, name: str, runner: str) -> None:
        """Forget the claim of ``runner`` on ``name``, if it has one."""
        claims = self._claims.get(name)
        if claims is not None and claims.pop(runner, None) is not None and not claims:
            del self._claims[name]

    async def _grant(self, name: str) -> None:
        claims = self._claims.get(name)
        if not claims:
            return
        runner = next(iter(claims))
        claim = claims.pop(runner)
        if not claims:
            del self._claims[name]
        logger.info("worker '%s' of runner '%s' takes the name over", name, runner)
        await self.register(claim)

    async def _notify_lost(self, lost: WorkerLostData) -> None:
        for listener in list(self._departure_listeners):
            try:
                await listener(lost)
            except Exception:
                logger.exception("departure listener failed for '%s'", lost.worker_name)
        for on_lost in list(self._watches.get(lost.worker_name, {}).values()):
            if on_lost is None:
                continue
            try:
                await on_lost(lost)
            except Exception:
                logger.exception("lost handler for '%s' failed", lost.worker_name)


def _jobs(data: WorkerReadyData) -> tuple[tuple[str, ...] | None, bool]:
    return data.jobs, data.any_job
