"""The LOCAL rows of spec §4: everything in one process, on the default in-memory bus.

Each workload runs in a fresh event loop (``asyncio.run``) after a full garbage collection
(see :func:`benchmarks.core.run`); every runner is built with ``handle_sigint=False``.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

from benchmarks.core import Measurement, Scale, Target, benchmark, percentile
from benchmarks.harness import (
    PAYLOAD,
    Client,
    Echo,
    Idle,
    Session,
    Streamer,
    jobs_in_flight,
    round_trips,
)
from pipecat_workers import JobEventType

GROUP = "local"
IDLE_WORKERS = 1_000


def _us(ns: float) -> float:
    return ns / 1_000


def _idle(n: int) -> list[Idle]:
    return [Idle(f"idle-{i}") for i in range(n)]


def _fresh(coro: Any) -> Any:
    """Run one workload in a new event loop, after a full collection."""
    gc.collect()
    return asyncio.run(coro)


# -- 1. round trip -----------------------------------------------------------------------


async def _round_trip_samples(idle: int, iterations: int, warmup: int,
                              budget: float) -> list[int]:
    client = Client("client")
    async with Session(client, Echo("echo"), *_idle(idle)):
        samples = await round_trips(client, "echo", iterations=iterations, warmup=warmup,
                                    budget=budget)
    samples.sort()
    return samples


@benchmark("local.round_trip", group=GROUP, workload="local job round trip p50, 2 workers",
           unit="µs", target=Target("<=", 40))
def round_trip(scale: Scale) -> Measurement:
    iterations = scale.pick(20_000, 2_000)
    samples = _fresh(_round_trip_samples(0, iterations, scale.pick(2_000, 200),
                                         scale.budget(10, 2)))
    p50, p99 = _us(percentile(samples, 50)), _us(percentile(samples, 99))
    return Measurement(p50, notes=f"p99 {p99:.1f} µs, n={len(samples):,}",
                       details={"p50_us": p50, "p90_us": _us(percentile(samples, 90)),
                                "p99_us": p99, "max_us": _us(samples[-1]),
                                "iterations": len(samples)})


# -- 2. throughput -----------------------------------------------------------------------


async def _throughput(total: int, in_flight: int, budget: float) -> tuple[int, float]:
    client = Client("client")
    async with Session(client, Echo("echo")):
        await round_trips(client, "echo", iterations=0, warmup=1_000, budget=budget)
        return await jobs_in_flight(client, "echo", total=total, in_flight=in_flight,
                                    budget=budget)


@benchmark("local.throughput", group=GROUP, workload="local jobs/s, 100 in flight",
           unit="jobs/s", target=Target(">=", 20_000))
def throughput(scale: Scale) -> Measurement:
    jobs, elapsed = _fresh(_throughput(scale.pick(100_000, 5_000), 100, scale.budget(15, 2)))
    rate = jobs / elapsed
    return Measurement(rate, notes=f"{jobs:,} jobs in {elapsed:.2f} s",
                       details={"jobs": jobs, "seconds": elapsed, "in_flight": 100})


# -- 3. job group ------------------------------------------------------------------------


async def _group_samples(members: int, iterations: int, warmup: int, budget: float) -> list[int]:
    client = Client("client")
    echoes = [Echo(f"echo-{i}") for i in range(members)]
    names = [e.name for e in echoes]
    async with Session(client, *echoes):
        for _ in range(warmup):
            async with client.job_group(*names, name="echo", payload=PAYLOAD):
                pass
        clock = time.perf_counter_ns
        deadline = clock() + int(budget * 1e9)
        samples = []
        for _ in range(iterations):
            start = clock()
            async with client.job_group(*names, name="echo", payload=PAYLOAD) as group:
                pass
            samples.append(clock() - start)
            if len(group.responses) != members:
                raise RuntimeError(f"group answered by {len(group.responses)} of {members}")
            if start > deadline:
                break
    samples.sort()
    return samples


@benchmark("local.job_group", group=GROUP, workload="local job group of 50 workers, p50",
           unit="ms", target=Target("<=", 1.5))
def job_group(scale: Scale) -> Measurement:
    samples = _fresh(_group_samples(50, scale.pick(3_000, 200), scale.pick(200, 20),
                                    scale.budget(10, 2)))
    p50, p99 = percentile(samples, 50) / 1e6, percentile(samples, 99) / 1e6
    return Measurement(p50, notes=f"p99 {p99:.2f} ms, n={len(samples):,}",
                       details={"p50_ms": p50, "p99_ms": p99, "members": 50,
                                "iterations": len(samples)})


# -- 4. streaming ------------------------------------------------------------------------


async def _stream(chunks: int) -> dict[str, Any]:
    client, streamer = Client("client"), Streamer("streamer")
    async with Session(client, streamer) as session:
        received, in_order, expected = 0, True, 0
        start = time.perf_counter()
        async with client.job("streamer", name="stream", payload={"chunks": chunks}) as j:
            async for event in j:
                if event.type is JobEventType.STREAM_DATA:
                    received += 1
                    if event.data is None or event.data["i"] != expected:
                        in_order = False
                    expected = (event.data or {}).get("i", expected) + 1
        elapsed = time.perf_counter() - start
        dropped = session.runner.bus.stats()["dropped"]
    return {"received": received, "sent": streamer.sent, "in_order": in_order,
            "seconds": elapsed, "bus_dropped": dropped, "response": j.response}


@benchmark("local.streaming", group=GROUP, workload="local streaming chunks/s",
           unit="chunks/s", target=Target(">=", 200_000))
def streaming(scale: Scale) -> Measurement:
    r = _fresh(_stream(scale.pick(200_000, 20_000)))
    lost = r["sent"] - r["received"]
    notes = f"received {r['received']:,} / sent {r['sent']:,}"
    if lost:
        notes += f", LOST {lost:,}"
    if not r["in_order"]:
        notes += ", OUT OF ORDER"
    return Measurement(r["received"] / r["seconds"], notes=notes, details=r,
                       valid=not lost and r["in_order"])


# -- 5. start-up -------------------------------------------------------------------------


async def _startup(n: int) -> tuple[float, float, int]:
    session = Session()
    workers = _idle(n)
    start = time.perf_counter()
    await session.add(*workers)
    added = time.perf_counter()
    await session.start()
    ready = time.perf_counter()
    registered = len(session.runner.registry)
    await session.stop()
    return added - start, ready - added, registered


@benchmark("local.startup", group=GROUP, workload="start 1,000 idle workers in one process",
           unit="s", target=Target("<=", 0.5))
def startup(scale: Scale) -> Measurement:
    # One shot takes milliseconds, so take the median of a few, each in a fresh loop.
    runs = sorted((_fresh(_startup(IDLE_WORKERS)) for _ in range(scale.pick(5, 1))),
                  key=lambda r: r[0] + r[1])
    add, run, registered = runs[len(runs) // 2]
    if registered < IDLE_WORKERS:
        raise RuntimeError(f"only {registered} of {IDLE_WORKERS} workers registered")
    return Measurement(add + run, notes=f"add_workers {add * 1e3:.1f} ms + run→ready "
                       f"{run * 1e3:.1f} ms, median of {len(runs)}",
                       details={"add_workers_s": add, "run_to_ready_s": run,
                                "registered": registered,
                                "all_runs_s": [a + r for a, r, _ in runs]})


# -- 6. memory ---------------------------------------------------------------------------


async def _memory(n: int) -> tuple[int, list[str]]:
    async with Session(Client("client")) as session:
        await session.settle()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            base = tracemalloc.get_traced_memory()[0]
            await session.add(*_idle(n))
            await session.settle()
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
            top = tracemalloc.take_snapshot().compare_to(before, "lineno")[:8]
        finally:
            tracemalloc.stop()
    return used, [str(stat) for stat in top]


@benchmark("local.memory", group=GROUP, workload="memory per idle worker",
           unit="KB", target=Target("<=", 6))
def memory(scale: Scale) -> Measurement:
    used, top = _fresh(_memory(IDLE_WORKERS))
    per_worker = used / IDLE_WORKERS / 1024
    return Measurement(per_worker, notes=f"{used / 1024:,.0f} KB for {IDLE_WORKERS:,} started",
                       details={"bytes": used, "workers": IDLE_WORKERS, "top_sites": top})


# -- 7. round trip with many idle workers ------------------------------------------------


@benchmark("local.idle_ratio", group=GROUP,
           workload="round trip with 1,000 idle workers vs with 2", unit="×",
           target=Target("<=", 1.2))
def idle_ratio(scale: Scale) -> Measurement:
    # Alternate the two set-ups (A B A B) so drift in the machine hits both alike.
    iterations, warmup = scale.pick(10_000, 1_000), scale.pick(1_000, 100)
    budget = scale.budget(5, 1)
    few: list[int] = []
    many: list[int] = []
    for _ in range(2):
        few += _fresh(_round_trip_samples(0, iterations, warmup, budget))
        many += _fresh(_round_trip_samples(IDLE_WORKERS, iterations, warmup, budget))
    few.sort()
    many.sort()
    p50_few, p50_many = _us(percentile(few, 50)), _us(percentile(many, 50))
    return Measurement(p50_many / p50_few,
                       notes=f"p50 {p50_few:.1f} µs (2) vs {p50_many:.1f} µs (1,002)",
                       details={"p50_2_workers_us": p50_few, "p50_1002_workers_us": p50_many,
                                "iterations_each": [len(few), len(many)]})
