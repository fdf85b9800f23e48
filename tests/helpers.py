"""Generic test helpers: a recording bus subscriber, polling, and running a runner in a block.

Import as ``from tests.helpers import Recorder, running, wait_until``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pipecat_workers import BaseWorker, Settings, WorkerRunner, WorkerState
from pipecat_workers.bus.messages import BusMessage

M = TypeVar("M", bound=BusMessage)


class Recorder:
    """A bus subscriber that records every message it gets, in order.

    Subscribe it as an observer to see all traffic::

        rec = Recorder()
        runner.bus.subscribe(rec, role="observer")
        ...
        await rec.wait_for(lambda m: isinstance(m, BusJobResponseMessage))
    """

    def __init__(self, name: str = "recorder") -> None:
        self._name = name
        self.messages: list[BusMessage] = []
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    async def on_bus_message(self, message: BusMessage) -> None:
        self.messages.append(message)
        self._changed.set()

    def of_type(self, *types: type[M]) -> list[M]:
        """The recorded messages that are instances of any of ``types``."""
        return [m for m in self.messages if isinstance(m, types)]  # type: ignore[misc]

    def index(self, predicate: Callable[[BusMessage], bool]) -> int | None:
        """Position of the first recorded message matching ``predicate``, or ``None``."""
        for i, message in enumerate(self.messages):
            if predicate(message):
                return i
        return None

    async def wait_for(
        self, predicate: Callable[[BusMessage], bool], timeout: float = 2.0
    ) -> BusMessage:
        """Wait until a recorded message matches ``predicate`` and return it."""

        async def scan() -> BusMessage:
            while True:
                self._changed.clear()
                for message in self.messages:
                    if predicate(message):
                        return message
                await self._changed.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def wait_count(self, count: int, timeout: float = 2.0) -> None:
        """Wait until at least ``count`` messages were recorded."""
        await wait_until(lambda: len(self.messages) >= count, timeout=timeout)


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 2.0, interval: float = 0.001
) -> None:
    """Poll ``predicate`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(interval)

    await asyncio.wait_for(poll(), timeout)


async def leftover_tasks(
    before: set[asyncio.Task[Any]], *, timeout: float = 2.0
) -> set[asyncio.Task[Any]]:
    """Tasks that exist now but not in ``before``, after giving them ``timeout`` s to finish.

    Polls in the calling task (``wait_until`` would add a task of its own).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = asyncio.all_tasks() - before
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.005)


async def drain(bus: Any, *, timeout: float = 2.0) -> None:
    """Deliver what is still queued on a bus, leaving it stopped or running as it was.

    A runner stops its bus when ``run()`` returns; answers sent during shutdown to
    subscribers that are not the runner's workers (a test's ``Recorder``) wait in their
    mailboxes until the bus starts again.
    """
    was_running = bus.running
    if not was_running:
        await bus.start()
    try:
        await wait_until(lambda: bus.stats()["queued"] == 0, timeout=timeout)
    finally:
        if not was_running:
            await bus.stop()


@asynccontextmanager
async def running(
    runner: Any, *, auto_end: bool = False, timeout: float = 10.0
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``runner.run(auto_end=...)`` in a task for the duration of the block.

    Yields the run task once the runner is ready (workers started). On exit the runner is
    cancelled if it still runs, and the task is awaited (bounded by ``timeout``), so a test
    never leaves a runner behind.
    """
    ready = asyncio.Event()

    async def on_ready(_runner: Any) -> None:
        ready.set()

    runner.add_event_handler("on_ready", on_ready)
    task = asyncio.get_running_loop().create_task(runner.run(auto_end=auto_end))
    waiter = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()  # surface a crash in run()
    elif not ready.is_set():
        task.cancel()
        raise TimeoutError("runner did not become ready")
    try:
        yield task
    finally:
        if not task.done():
            await runner.cancel(reason="test finished")
            await asyncio.wait_for(task, timeout)


# -- a runner hosting workers, with an observer (used by the worker and job tests) -------------

TIMEOUT = 5.0
SETTINGS = Settings(end_grace=2.0, cancel_timeout=0.5)


class Observer(Recorder):
    """Sees every message on the bus (subscribed with the ``observer`` role)."""

    def of(self, cls: type, **fields: Any) -> list[Any]:
        """Messages of exactly type ``cls`` whose attributes equal ``fields``."""
        return [m for m in self.of_type(cls) if type(m) is cls
                and all(getattr(m, k) == v for k, v in fields.items())]


async def within(awaitable: Any, timeout: float = TIMEOUT) -> Any:
    """Await with a deadline, so a bug fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, timeout)


async def eventually(condition: Callable[[], Any], what: str = "condition",
                     timeout: float = TIMEOUT) -> None:
    """Wait until ``condition()`` is truthy; fail the test saying ``what`` did not happen."""
    try:
        await wait_until(lambda: bool(condition()), timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def settle(seconds: float = 0.05) -> None:
    """Let queued messages be handled (used before asserting that something did NOT happen)."""
    await asyncio.sleep(seconds)


@dataclass
class Harness:
    runner: WorkerRunner
    observer: Observer
    task: asyncio.Task[None]


@asynccontextmanager
async def hosting(*workers: BaseWorker, settings: Settings = SETTINGS,
                  before_run: Callable[[WorkerRunner], Awaitable[Any]] | None = None,
                  ) -> AsyncIterator[Harness]:
    """A running runner hosting ``workers``, with an observer; cancelled on exit."""
    runner = WorkerRunner(handle_sigint=False, settings=settings)
    observer = Observer("test-observer")
    runner.bus.subscribe(observer, role="observer")
    await runner.add_workers(*workers)
    if before_run is not None:
        await before_run(runner)
    async with running(runner, timeout=TIMEOUT) as task:
        await eventually(lambda: all(w.state is not WorkerState.CREATED for w in workers),
                         "workers to start")
        yield Harness(runner, observer, task)
    if not task.cancelled():
        task.result()  # surface a crash in run()
