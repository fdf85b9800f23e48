"""Workers and a runner session shared by the in-process benchmarks.

The requester (:class:`Client`) is a plain worker driven from the benchmark coroutine, not
from a hook: ``on_activated`` is awaited inline while the runner starts its workers, so a
measurement there would hold up the start of every worker added after it.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, Self

from pipecat_workers import BaseWorker, WorkerRunner, job
from pipecat_workers.bus import WorkerBus
from pipecat_workers.bus.messages import BusJobRequestMessage

PAYLOAD = {"x": 1}


class Client(BaseWorker):
    """Sends the jobs; has no handlers of its own."""


class Idle(BaseWorker):
    """Does nothing: the cost of simply existing."""


class Echo(BaseWorker):
    """Answers ``echo`` with its payload."""

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> None:
        await self.send_job_response(message.job_id, message.payload)


class Streamer(BaseWorker):
    """Answers ``stream`` with ``payload["chunks"]`` stream chunks, then ends the stream."""

    sent = 0

    @job("stream")
    async def stream(self, message: BusJobRequestMessage) -> None:
        job_id = message.job_id
        chunks = (message.payload or {})["chunks"]
        send = self.send_job_stream_data
        await self.send_job_stream_start(job_id)
        for i in range(chunks):
            await send(job_id, {"i": i})
            self.sent += 1
        await self.send_job_stream_end(job_id, {"sent": chunks})


class Session:
    """A runner with ``handle_sigint=False``, run in a task until the session ends.

    ``bus`` and ``name`` go to the runner (default: the in-memory bus, a generated name).

    ``start()`` returns once the runner has emitted ``on_ready``, i.e. every worker added
    before it is registered; ``stop()`` ends the runner gracefully and waits for it.
    """

    def __init__(self, *workers: BaseWorker, bus: WorkerBus | None = None,
                 name: str | None = None) -> None:
        self.runner = WorkerRunner(name=name, bus=bus, handle_sigint=False)
        self._workers = workers
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runner.add_event_handler("on_ready", self._on_ready)

    async def _on_ready(self, runner: WorkerRunner) -> None:
        self._ready.set()

    async def add(self, *workers: BaseWorker) -> None:
        await self.runner.add_workers(*workers)

    async def start(self) -> None:
        """Run the runner in a task and wait until it is ready (or failed)."""
        self._task = asyncio.get_running_loop().create_task(self.runner.run(auto_end=False))
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()  # raises what run() raised
            raise RuntimeError("the runner returned before it was ready")

    async def stop(self, timeout: float = 60.0) -> None:
        if self._task is None:
            return
        await self.runner.end()
        await asyncio.wait_for(self._task, timeout)

    async def settle(self) -> None:
        """Wait until the bus has nothing queued and pending callbacks have run."""
        bus = self.runner.bus
        for _ in range(10_000):
            if not bus.stats()["queued"]:
                break
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        await self.add(*self._workers)
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


async def round_trips(client: Client, target: str, *, iterations: int, warmup: int,
                      budget: float, payload: Any = PAYLOAD) -> list[int]:
    """Sequential ``async with client.job(...)`` round trips; each sample in nanoseconds.

    Stops early once ``budget`` seconds have passed, so a slow library cannot stall the run.
    """
    for _ in range(warmup):
        async with client.job(target, name="echo", payload=payload):
            pass
    clock = time.perf_counter_ns
    deadline = clock() + int(budget * 1e9)
    samples: list[int] = []
    append = samples.append
    for _ in range(iterations):
        start = clock()
        async with client.job(target, name="echo", payload=payload):
            pass
        append(clock() - start)
        if start > deadline:
            break
    return samples


async def jobs_in_flight(client: Client, target: str, *, total: int, in_flight: int,
                         budget: float) -> tuple[int, float]:
    """Run ``total`` echo jobs with ``in_flight`` of them open at once (until ``budget``
    seconds pass); return how many ran and how long they took."""
    left = total
    deadline = time.perf_counter() + budget

    async def lane() -> int:
        nonlocal left
        done = 0
        while left > 0 and time.perf_counter() < deadline:
            left -= 1
            async with client.job(target, name="echo", payload=PAYLOAD):
                pass
            done += 1
        return done

    start = time.perf_counter()
    counts = await asyncio.gather(*(lane() for _ in range(in_flight)))
    return sum(counts), time.perf_counter() - start
