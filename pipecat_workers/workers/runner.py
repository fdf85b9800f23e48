"""WorkerRunner: hosts workers in one process, on one bus, with one registry.

Shutdown is graceful and bounded. ``end()`` asks every root worker to finish (children are
ended by their parents); each worker gives its jobs ``Settings.end_grace``, then cancels what
is left. Only workers still running after that (plus ``Settings.cancel_timeout``) are cancelled
by the runner, and whatever is left after another ``Settings.cancel_timeout`` is stopped
outright. No wait in shutdown is unbounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.local import AsyncQueueBus
from pipecat_workers.bus.messages import (
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDuplicateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusMessage,
)
from pipecat_workers.bus.network import NetworkBus
from pipecat_workers.errors import ConfigurationError, WorkerStateError
from pipecat_workers.events import EventEmitter
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.registry import WorkerRegistry
from pipecat_workers.settings import DEFAULT_SETTINGS, Settings
from pipecat_workers.types import MAX_JOB_NAMES, WorkerErrorData, WorkerRegistryEntry
from pipecat_workers.validate import check_name
from pipecat_workers.workers.base import BaseWorker, WorkerState
from pipecat_workers.workers.membership import Membership
from pipecat_workers.workers.peers import Peer

logger = logging.getLogger("pipecat_workers.runner")


@dataclass(slots=True)
class RunnerStats:
    """Job counters shared by a runner's workers."""

    jobs_requested: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_errored: int = 0
    jobs_cancelled: int = 0
    events_dropped: int = 0

    def count_answer(self, status: JobStatus) -> None:
        if status == JobStatus.COMPLETED:
            self.jobs_completed += 1
        elif status == JobStatus.CANCELLED:
            self.jobs_cancelled += 1
        elif status == JobStatus.FAILED:
            self.jobs_failed += 1
        else:
            self.jobs_errored += 1


class WorkerRunner(EventEmitter):
    """Runs workers until they end, or until ``end()``/``cancel()``.

    Args:
        name: Stable name of this runner on the bus; defaults to ``runner-<random>``.
        bus: The bus to use; defaults to a new in-process :class:`AsyncQueueBus`.
        handle_sigint: Cancel the workers on Ctrl-C while ``run()`` is running.
        handle_sigterm: Likewise for SIGTERM.
        settings: Timeouts and limits.

    Example::

        runner = WorkerRunner()
        await runner.add_workers(Greeter("greeter"), Support("support"))
        await runner.run()
    """

    EVENTS: ClassVar[frozenset[str]] = frozenset({"on_ready", "on_error"})

    def __init__(
        self, *, name: str | None = None, bus: WorkerBus | None = None,
        handle_sigint: bool = True, handle_sigterm: bool = False,
        settings: Settings | None = None,
    ) -> None:
        self._name = check_name("runner", name or f"runner-{os.urandom(4).hex()}")
        self._settings = settings or DEFAULT_SETTINGS
        self._incarnation = time.time()
        self._bus = bus if bus is not None else AsyncQueueBus(
            data_queue_size=self._settings.data_queue_size)
        self._registry = WorkerRegistry(self._name, incarnation=self._incarnation)
        self._handle_sigint = handle_sigint
        self._handle_sigterm = handle_sigterm
        self._workers: dict[str, BaseWorker] = {}
        self._stats = RunnerStats()
        self._running = False
        self._shutdown: asyncio.Future[str] | None = None
        self._auto_end = True
        self._roots_started = 0
        self._signalled = False
        self._signal_task: asyncio.Task[None] | None = None
        self._cancelled = False
        self._membership = Membership(
            runner=self._name, incarnation=self._incarnation, bus=self._bus,
            registry=self._registry, settings=self._settings, entries=self._registry_entries,
            stats=self.stats, on_duplicate=self._on_duplicate, check_jobs=self._check_jobs)
        self._bus.subscribe(self, role="runner")
        self._bus.bind(self._name, self._incarnation, self._locate)
        if isinstance(self._bus, NetworkBus):
            self._bus.add_event_handler("on_disconnected", self._on_bus_disconnected)
            self._bus.add_event_handler("on_reconnected", self._on_bus_reconnected)

    # -- properties -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This runner's name on the bus."""
        return self._name

    @property
    def incarnation(self) -> float:
        """When this runner was created; tells a restarted runner apart from the old one."""
        return self._incarnation

    @property
    def bus(self) -> WorkerBus:
        """The bus this runner's workers share."""
        return self._bus

    @property
    def registry(self) -> WorkerRegistry:
        """The registry of every worker this runner knows, local and remote."""
        return self._registry

    @property
    def settings(self) -> Settings:
        """Timeouts and limits in force."""
        return self._settings

    @property
    def stats_counters(self) -> RunnerStats:
        """The live job counters (prefer :meth:`stats` for a snapshot)."""
        return self._stats

    @property
    def peers(self) -> dict[str, Peer]:
        """The other runners heard on the channel: incarnation, last heartbeat, counters."""
        return self._membership.peers

    @property
    def running(self) -> bool:
        """Whether ``run()`` is in progress."""
        return self._running

    def get_worker(self, name: str) -> BaseWorker | None:
        """The local worker called ``name``, or ``None`` (remote workers have no object)."""
        return self._workers.get(name)

    # -- workers ------------------------------------------------------------------------

    async def add_workers(self, *workers: BaseWorker) -> None:
        """Add workers; they start now if the runner is running, else when it runs.

        Raises:
            ConfigurationError: if a name is already used on this bus.
        """
        for worker in workers:
            if worker.name in self._workers or self._bus.is_local(worker.name):
                raise ConfigurationError(f"a worker named '{worker.name}' is already on this bus")
            known = self._registry.get(worker.name)
            if known is not None:
                raise ConfigurationError(f"a worker named '{worker.name}' already runs on "
                                         f"runner '{known.runner}'")
            worker.attach(registry=self._registry, bus=self._bus, worker_runner=self)
            self._workers[worker.name] = worker
            worker.add_done_callback(self._on_worker_stopped)
            if self._running:
                await self._start_worker(worker)
            # Children given to the worker before it had a bus come along with it.
            for child in worker.children:
                if child.name not in self._workers:
                    await self.add_workers(child)

    async def _start_worker(self, worker: BaseWorker) -> None:
        await self._start_workers([worker])

    async def _start_workers(self, workers: list[BaseWorker]) -> None:
        """Start workers, each in a task of its own (its hooks may wait for workers that
        start after it), and return once all are registered."""
        starting = [w for w in workers if w.state is WorkerState.CREATED]
        for worker in starting:
            if worker.parent is None:
                self._roots_started += 1
            worker.create_task(self._run_start(worker), name=f"start {worker.name}")
        for worker in starting:
            await worker.wait_registered()
        if starting:
            self._membership.local_changed()

    async def _run_start(self, worker: BaseWorker) -> None:
        try:
            await worker.start()
        except Exception as exc:
            logger.exception("worker '%s' failed to start", worker.name)
            self._emit("on_error", WorkerErrorData(worker_name=worker.name, error=str(exc)))
            await worker.stop(reason="failed to start")

    def _on_worker_stopped(self, worker: BaseWorker) -> None:
        if self._workers.get(worker.name) is worker:
            del self._workers[worker.name]  # the name is free again
        if (self._auto_end and self._running and worker.parent is None
                and not any(w.parent is None for w in self._workers.values())):
            self._request_shutdown("all workers finished")

    # -- run ----------------------------------------------------------------------------

    async def run(self, *, auto_end: bool = True) -> None:
        """Start the bus and every worker, and run until the end.

        Args:
            auto_end: Return once every root worker has stopped; if False, run until
                ``end()`` or ``cancel()``.

        Raises:
            WorkerStateError: if the runner is already running.
        """
        if self._running:
            raise WorkerStateError(f"runner '{self._name}' is already running")
        loop = asyncio.get_running_loop()
        self._shutdown = loop.create_future()
        self._auto_end = auto_end
        self._signalled = self._cancelled = False
        signals = self._install_signal_handlers(loop)
        owns_bus = not self._bus.running  # a bus someone else started is theirs to stop
        try:
            await self._bus.start()
            self._running = True
            await self._membership.start()
            await self._start_workers(list(self._workers.values()))
            if auto_end and self._roots_started and not any(
                    w.parent is None for w in self._workers.values()):
                self._request_shutdown("all workers finished")
            self._emit("on_ready")
            try:
                await asyncio.shield(self._shutdown)
            except asyncio.CancelledError:
                self._request_shutdown("runner task cancelled")
                await self._stop_workers(graceful=False)
                raise
            await self._stop_workers(graceful=self._shutdown.result() == "end")
        finally:
            self._running = False
            if self._signal_task is not None:
                await asyncio.wait({self._signal_task}, timeout=self._settings.cancel_timeout)
            await self._membership.stop()
            await self._wait_event_handlers(self._settings.cancel_timeout)
            if owns_bus:
                await self._bus.stop()
            self._remove_signal_handlers(loop, signals)

    def _request_shutdown(self, why: str) -> None:
        if self._shutdown is not None and not self._shutdown.done():
            self._shutdown.set_result(why)

    async def _stop_workers(self, *, graceful: bool) -> None:
        settings = self._settings
        if graceful:
            # A worker's own end takes up to end_grace, then up to cancel_timeout to cancel
            # what is left; cancelling it at the same moment would race with that.
            await self._wait_workers(settings.end_grace + settings.cancel_timeout)
        # A worker that is already stopping is on its way out: wait for it, don't cancel it.
        live = [w for w in self._workers.values()
                if w.state not in (WorkerState.STOPPING, WorkerState.STOPPED)]
        for worker in live:
            if worker.parent is None or self._workers.get(worker.parent) is None:
                await self._bus.send(BusCancelWorkerMessage(
                    source=self._name, target=worker.name, reason="runner exiting"))
        await self._wait_workers(settings.cancel_timeout)
        for worker in list(self._workers.values()):
            if worker.state is not WorkerState.STOPPED:
                logger.warning("worker '%s' did not stop in time; stopping it", worker.name)
                try:
                    await asyncio.wait_for(worker.stop(reason="runner exiting"),
                                           settings.cancel_timeout)
                except (TimeoutError, Exception):
                    logger.exception("worker '%s' could not be stopped cleanly", worker.name)

    async def _wait_workers(self, timeout: float) -> None:
        waits = [asyncio.ensure_future(w.wait()) for w in self._workers.values()
                 if w.state is not WorkerState.STOPPED]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for future in pending:
            future.cancel()

    async def end(self, reason: str | None = None) -> None:
        """Ask every worker to finish, then stop; cancels only after the grace period."""
        if self._shutdown is not None and self._shutdown.done():
            return
        for worker in list(self._workers.values()):
            if worker.parent is None:
                await self._bus.send(BusEndWorkerMessage(
                    source=self._name, target=worker.name, reason=reason))
        self._request_shutdown("end")

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel every worker now, then stop; also cuts a graceful ``end()`` short."""
        shutdown = self._shutdown
        if shutdown is not None and shutdown.done() and (
                not self._running or shutdown.result() != "end" or self._cancelled):
            return
        self._cancelled = True
        for worker in list(self._workers.values()):
            if worker.parent is None:
                await self._bus.send(BusCancelWorkerMessage(
                    source=self._name, target=worker.name, reason=reason))
        self._request_shutdown("cancel")

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> dict[int, Any]:
        """Install the wanted handlers; returns each signal's previous Python-level handler."""
        wanted = [s for s, on in ((signal.SIGINT, self._handle_sigint),
                                  (signal.SIGTERM, self._handle_sigterm)) if on]
        installed: dict[int, Any] = {}
        for sig in wanted:
            try:
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed[sig] = previous
            except (NotImplementedError, RuntimeError, ValueError):
                logger.debug("cannot handle %s in this thread or on this platform", sig)
        return installed

    @staticmethod
    def _remove_signal_handlers(
        loop: asyncio.AbstractEventLoop, installed: dict[int, Any]
    ) -> None:
        # remove_signal_handler() resets to the default, not to what was there before run()
        # (e.g. asyncio.Runner's own Ctrl-C handler), so put the previous handler back.
        for sig, previous in installed.items():
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)

    def _on_signal(self, sig: int) -> None:
        if self._signalled:
            return
        self._signalled = True
        logger.info("%s received: cancelling workers", signal.Signals(sig).name)
        self._signal_task = asyncio.get_running_loop().create_task(
            self.cancel(reason="interrupt signal"))

    # -- bus --------------------------------------------------------------------------------

    async def on_bus_message(self, message: BusMessage) -> None:
        """React to session-wide messages and to children being added."""
        if message.source == self._name or await self._membership.handle(message):
            return
        if isinstance(message, BusEndMessage):
            await self.end(message.reason)
        elif isinstance(message, BusCancelMessage):
            await self.cancel(message.reason)
        elif isinstance(message, BusAddWorkerMessage):
            await self._adopt(message)

    async def _adopt(self, message: BusAddWorkerMessage) -> None:
        child = message.worker
        parent = self._workers.get(message.source)
        if parent is None or child.name in self._workers:
            return
        try:
            await self.add_workers(child)
        except ConfigurationError as exc:
            logger.error("%s: cannot add child: %s", message.source, exc)
            data = WorkerErrorData(worker_name=child.name, error=str(exc))
            await parent.on_worker_failed(data)
            parent._emit("on_worker_failed", data)

    async def _check_jobs(self, older_than: float) -> None:
        """Ask workers in other processes about the jobs they have owed ours an answer for
        more than ``older_than`` seconds; one that no longer runs a job answers ``error``."""
        def remote(name: str) -> bool:
            data = self._registry.get(name)
            if data is None:
                return False
            local = self._workers.get(name)
            return data.runner != self._name or (local is not None and local.STANDS_IN)

        for worker in list(self._workers.values()):
            await worker._check_jobs(older_than, remote)

    def _locate(self, name: str) -> str | None:
        """The runner that hosts a worker (or is that runner), for targeted routing."""
        data = self._registry.get(name)
        if data is not None:
            return data.runner
        return name if self._membership.knows(name) else None

    async def _on_bus_disconnected(self, bus: WorkerBus) -> None:
        self._membership.bus_down()

    async def _on_bus_reconnected(self, bus: WorkerBus) -> None:
        # Peers may have missed our changes and we theirs (pub/sub keeps nothing):
        # membership exchanges snapshots again.
        self._membership.bus_up()

    async def _on_duplicate(self, remote: WorkerRegistryEntry, runner: str) -> None:
        """Two live workers claim one name: the one that started later (the newcomer) stops,
        and both runners are told. Both sides see both snapshots, so they agree."""
        local = self._workers.get(remote.name)
        if local is None:
            return
        ours = (local.started_at or float("inf"), self._name)
        theirs = (remote.started_at or float("inf"), runner)
        newcomer = self._name if ours > theirs else runner
        error = (f"worker name '{remote.name}' is used by runners '{self._name}' and "
                 f"'{runner}'; the newcomer on '{newcomer}' is stopped")
        logger.error(error)
        self._emit("on_error", WorkerErrorData(worker_name=remote.name, error=error))
        await self._bus.send(BusDuplicateWorkerMessage(
            source=self._name, target=runner, worker_name=remote.name, runner=self._name,
            other_runner=runner))
        if newcomer == self._name:
            await local.stop(reason="stopped: its name is taken")

    def _registry_entries(self) -> list[WorkerRegistryEntry]:
        """This runner's registered workers, as announced to its peers."""
        entries = []
        for name in self._registry.local_workers:
            worker = self._workers.get(name)
            if worker is not None:
                entries.append(WorkerRegistryEntry(
                    name=name, parent=worker.parent, active=worker.active,
                    bridged=worker.bridged, started_at=worker.started_at,
                    jobs=list(worker.job_names[:MAX_JOB_NAMES]),
                    any_job=worker.handles_any_job, relay=worker.RELAYS))
        return entries

    # -- observability ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A snapshot of counters: messages, jobs, each worker's state, the background loops
        that crashed (``"loops"``, see :meth:`loop_failures`) and the sizes of membership's
        tables (``"membership"``)."""
        s = self._stats
        running = sum(len(w._active_jobs) for w in self._workers.values())
        return {
            "runner": self._name,
            "incarnation": self._incarnation,
            "messages": self._bus.stats(),
            "jobs": {
                "requested": s.jobs_requested, "running": running,
                "completed": s.jobs_completed, "failed": s.jobs_failed,
                "errored": s.jobs_errored, "cancelled": s.jobs_cancelled,
                "events_dropped": s.events_dropped,
            },
            "workers": {
                name: {"state": str(w.state), "active": w.active, "parent": w.parent,
                       "jobs": len(w._active_jobs)}
                for name, w in self._workers.items()
            },
            "loops": self.loop_failures(),
            "membership": self._membership.summary(),
        }

    def loop_failures(self) -> dict[str, dict[str, Any]]:
        """The background loops that have crashed (and were restarted): per loop, its
        ``failures``, ``last_error``, ``last_failure`` (epoch seconds) and ``failing``
        (it crashed within the last minute). Empty while every loop is healthy."""
        loops = {f"bus.{name}": record for name, record in self._bus.loops.snapshot().items()}
        loops.update(self._membership.health.snapshot())
        return loops
