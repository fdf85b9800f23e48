"""Pieces shared by the pipeline benchmarks and their peer processes (``pipeline_peers.py``).

Two implementations of the same splice are built here, each on its own buses: **ours**
(``pipecat_workers.pipeline``) and the **reference** (pipecat-ai's ``pipecat.pipeline.worker``,
``pipecat.bus``, ``pipecat.workers``). Both splice a bridged worker into a transport worker's
pipeline ``[bridge, below]``; the bridged worker's pipeline is ``[Arrival]``, a pass-through.

Timestamps are ``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock for every process of the
machine), carried in the frame's ``metadata``, which both wires keep:

* ``STAMP``: set by the transport's bridge as it takes the frame (``process_frame``, before the
  bridge's own code runs);
* ``SEEN``: set by :class:`Arrival`, the first processor of the bridged worker's pipeline, when
  the frame reaches it. ``SEEN - STAMP`` is one hop, bridge -> the worker's top edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.network import ROOT, Cluster, Peer, _live
from benchmarks.peers import make_bus, say, stdin_lines


def quiet() -> None:
    """pipecat logs with loguru at DEBUG by default: keep warnings only (logging costs time
    per frame and would flood the report). Called on import, before pipecat's banner."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


quiet()

from pipecat.frames.frames import Frame, TextFrame  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402

STAMP, EDGE, SEEN = "bench_t0", "bench_te", "bench_t1"
now = time.monotonic_ns
TRANSPORT, HELPER = "acme", "helper"


class Arrival(FrameProcessor):
    """The first processor of a bridged worker: notes when a stamped frame reaches it."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        metadata = frame.metadata
        if STAMP in metadata:
            metadata[SEEN] = now()
        await self.push_frame(frame, direction)


class Below(FrameProcessor):
    """Below the transport's bridge: hands the next stamped text frame to whoever waits."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._waiter: asyncio.Future[tuple[Frame, int]] | None = None

    def expect(self) -> asyncio.Future[tuple[Frame, int]]:
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if type(frame) is TextFrame and STAMP in frame.metadata:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result((frame, now()))
        await self.push_frame(frame, direction)


def stamping(base: type) -> type:
    """A subclass of a bridge class that stamps the text frames it takes."""

    class StampingBridge(base):  # type: ignore[misc, valid-type]
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            if type(frame) is TextFrame:
                frame.metadata[STAMP] = now()
            await super().process_frame(frame, direction)

    return StampingBridge


# -- the two implementations -----------------------------------------------------------------


def ours_transport(name: str = TRANSPORT) -> tuple[Any, Any, Below]:
    """Our transport worker ``[bridge, below]``: (worker, bridge, below)."""
    from pipecat.pipeline.pipeline import Pipeline

    from pipecat_workers.pipeline import BusBridgeProcessor, PipelineWorker

    bridge = stamping(BusBridgeProcessor)(worker_name=name, name=f"{name}::BusBridge")
    below = Below(name=f"{name}.below")
    worker = PipelineWorker(Pipeline([bridge, below]), name=name, idle_timeout_secs=None)
    return worker, bridge, below


def ours_helper(name: str = HELPER) -> Any:
    """Our bridged pass-through worker, inactive until the transport activates it. It notes
    when a stamped frame reaches its top edge (it is handed to the pipeline: ``EDGE``)."""
    from pipecat.pipeline.pipeline import Pipeline

    from pipecat_workers.pipeline import PipelineWorker

    class Helper(PipelineWorker):
        async def _inject(self, frame: Frame, direction: FrameDirection) -> None:
            if STAMP in frame.metadata:
                frame.metadata[EDGE] = now()
            await super()._inject(frame, direction)

    return Helper(Pipeline([Arrival(name=f"{name}.arrival")]), name=name, active=False,
                  bridged=(), idle_timeout_secs=None)


def ref_transport(bus: Any, name: str = TRANSPORT) -> tuple[Any, Any, Below]:
    """The reference's transport worker ``[bridge, below]`` (no RTVI processor: ours has
    none, and it would add a hop ahead of the bridge)."""
    from pipecat.bus.bridge_processor import BusBridgeProcessor
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker

    bridge = stamping(BusBridgeProcessor)(bus=bus, worker_name=name, name=f"{name}::BusBridge")
    below = Below(name=f"{name}.below")
    worker = PipelineWorker(Pipeline([bridge, below]), name=name, idle_timeout_secs=None,
                            enable_rtvi=False)
    return worker, bridge, below


def ref_helper(name: str = HELPER) -> Any:
    """The reference's bridged pass-through worker; active from the start (its bridge
    broadcasts, and only active workers take frames in). Its top edge is where it queues a
    frame from the bus into its pipeline (``EDGE``)."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker

    class Helper(PipelineWorker):  # type: ignore[misc]
        async def _queue_bridged_frame(self, message: Any) -> None:
            frame = message.frame
            if frame is not None and STAMP in frame.metadata:
                frame.metadata[EDGE] = now()
            await super()._queue_bridged_frame(message)

    return Helper(Pipeline([Arrival(name=f"{name}.arrival")]), name=name, active=True,
                  bridged=(), idle_timeout_secs=None)


def ref_bus(backend: str, url: str = "", channel: str = "") -> tuple[Any, Callable[[], Any]]:
    """The reference's bus and a coroutine function that closes what it opened."""
    if backend == "local":
        from pipecat.bus.local import AsyncQueueBus

        return AsyncQueueBus(), _nothing
    from pipecat.bus.network.redis import RedisBus
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    return RedisBus(redis=client, channel=channel), client.aclose


async def _nothing() -> None:
    return None


class RefSession:
    """The reference's ``WorkerRunner`` run in a task until :meth:`stop` (as
    ``harness.Session`` does for ours)."""

    def __init__(self, *workers: Any, bus: Any = None, name: str | None = None) -> None:
        from pipecat.workers.runner import WorkerRunner

        self.runner = WorkerRunner(name=name, bus=bus, handle_sigint=False,
                                   check_dangling_tasks=False)
        self._workers = workers
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

        async def ready(_runner: Any) -> None:
            self._ready.set()

        self.runner.add_event_handler("on_ready", ready)

    async def start(self) -> None:
        await self.runner.add_workers(*self._workers)
        self._task = asyncio.get_running_loop().create_task(self.runner.run(auto_end=False))
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()
            raise RuntimeError("the reference runner returned before it was ready")

    async def stop(self, timeout: float = 15.0) -> None:
        if self._task is None:
            return
        await self.runner.end()
        try:
            await asyncio.wait_for(self._task, timeout)
        except TimeoutError:
            await self.runner.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, timeout)


async def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``check`` every millisecond until it returns something true; ``TimeoutError``
    naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}") from None


async def frame_trips(worker: Any, below: Below, n: int, budget: float,
                      tag: str = "hop") -> tuple[list[int], list[int], list[int]]:
    """Sequential text frames queued above the bridge, each waited for below it; returns
    (hops bridge -> the bridged worker's top edge, hops bridge -> its first processor,
    round trips queue -> below) in ns. Stops early at ``budget`` seconds."""
    hops: list[int] = []
    firsts: list[int] = []
    trips: list[int] = []
    deadline = now() + int(budget * 1e9)
    for i in range(n):
        arrived = below.expect()
        start = now()
        await worker.queue_frame(TextFrame(f"{tag} {i}"))
        frame, end = await asyncio.wait_for(arrived, 10)
        trips.append(end - start)
        hops.append(frame.metadata[EDGE] - frame.metadata[STAMP])
        firsts.append(frame.metadata[SEEN] - frame.metadata[STAMP])
        if start > deadline:
            break
    return hops, firsts, trips


async def serve(args: Any, *workers: Any,
                on_ready: Any = None, name: str | None = None) -> None:
    """Run ``workers`` on a runner of ``args.impl`` until stdin closes or SIGTERM; print
    ``READY`` once it is ready (after awaiting ``on_ready()``, if given)."""
    name = name or f"{args.mode}-{args.impl}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    lines = stdin_lines()

    async def commands() -> None:
        while (line := await lines.get()) is not None:
            if args.command is not None:
                await args.command(line)
        stop.set()

    if args.impl == "ref":
        bus, close = ref_bus(args.backend, args.url, args.channel)
        session = RefSession(*workers, bus=bus, name=name)
        await session.start()
    else:
        from benchmarks.harness import Session

        close = None
        session = Session(*workers, bus=make_bus(args.backend, args.url, args.channel),
                          name=name)
        await session.add(*workers)
        await session.start()
    if on_ready is not None:
        await on_ready()
    say("READY")
    reader = asyncio.create_task(commands())
    await stop.wait()
    reader.cancel()
    await session.stop(timeout=10)
    if close is not None:
        await close()


# -- peer processes of this suite ------------------------------------------------------------

_numbers = itertools.count()


async def peer(cluster: Cluster, *args: str, ready: bool = True,
               timeout: float = 30.0) -> Peer:
    """A ``python -m benchmarks.pipeline_peers ...`` process, stopped with ``cluster``."""
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    log = Path(cluster._logs.name) / f"{args[0]}-{next(_numbers)}.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.pipeline_peers", *args, cwd=ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            start_new_session=True)
    _live.add(proc.pid)
    started = Peer(proc, log)
    cluster.peers.append(started)
    if ready:
        await started.expect("READY", timeout)
    return started


def log_dir(cluster: Cluster) -> Path:
    """The cluster's temporary directory (removed when it exits)."""
    return Path(cluster._logs.name)
