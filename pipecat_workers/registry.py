"""WorkerRegistry: which workers are ready, where they run, and who wants to know.

Each runner owns one registry, shared by its workers. It holds the runner's own workers and
the workers of every peer runner it has heard of. Entries leave when a worker stops, when its
runner leaves or is lost, or when a newer incarnation of its runner replaces them; watchers
hear about both arrivals and departures, and a worker that comes back fires its watches again.

Watches are keyed by (name, handler), so watching the same name twice with the same handler
costs nothing, and waiting for a worker (:meth:`wait_for`) leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from pipecat_workers.types import WorkerLostData, WorkerReadyData

logger = logging.getLogger("pipecat_workers.registry")

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
        self._digest: str | None = None

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
        """A short fingerprint of one runner's workers (this runner's by default)."""
        runner = runner or self._runner_name
        if runner == self._runner_name and self._digest is not None:
            return self._digest
        names = sorted(self._by_runner.get(runner, ()))
        digest = hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest()
        if runner == self._runner_name:
            self._digest = digest
        return digest

    # -- arrivals -----------------------------------------------------------------------

    async def register(self, data: WorkerReadyData) -> bool:
        """Record a ready worker and notify its watchers.

        Returns:
            True if the worker is new; False if it was already known under that runner, or if
            another live runner already owns the name (the older entry is kept and a warning
            logged; an older incarnation of the *same* runner is replaced instead).
        """
        known = self._workers.get(data.worker_name)
        if known is not None:
            if known.runner == data.runner and known.incarnation >= data.incarnation:
                return False
            if known.runner != data.runner:
                logger.warning(
                    "worker '%s' of runner '%s' ignored: runner '%s' already has a worker "
                    "with that name", data.worker_name, data.runner, known.runner,
                )
                return False
            await self.unregister(data.worker_name, reason="replaced")
        self._workers[data.worker_name] = data
        self._by_runner.setdefault(data.runner, {})[data.worker_name] = None
        if data.runner == self._runner_name:
            self._digest = None
        for future in self._waiters.pop(data.worker_name, ()):
            if not future.done():
                future.set_result(data)
        for handler in list(self._watches.get(data.worker_name, ())):
            await self._call_ready(handler, data)
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

    # -- departures ---------------------------------------------------------------------

    def add_departure_listener(self, listener: LostHandler) -> None:
        """Call ``listener`` for every worker that leaves (used to end jobs sent to it)."""
        self._departure_listeners[listener] = None

    def remove_departure_listener(self, listener: LostHandler) -> None:
        """Undo :meth:`add_departure_listener`."""
        self._departure_listeners.pop(listener, None)

    async def unregister(self, name: str, *, reason: str = "stopped") -> WorkerLostData | None:
        """Remove a worker and tell its watchers; ``None`` if it was not registered."""
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
        return lost

    async def remove_runner(
        self, runner: str, *, reason: str, before: float | None = None
    ) -> list[WorkerLostData]:
        """Remove every worker of ``runner`` (only those of incarnations older than ``before``).

        Returns:
            What was removed, in registration order.
        """
        removed = []
        for data in self.workers_of(runner):
            if before is None or data.incarnation < before:
                lost = await self.unregister(data.worker_name, reason=reason)
                if lost is not None:
                    removed.append(lost)
        return removed

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
