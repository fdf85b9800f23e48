"""The hub rows: the embedded ``local`` bus across processes, as ``workers up`` runs it.

Three processes, as under ``workers up``: a hub (``python -m benchmarks.peers hub``, standing in
for the supervisor that hosts it), a peer runner hosting ``echo`` on a :class:`HubBus`, and this
process's runner with a :class:`Client` on another. The workloads and methods are those of the
Redis rows (``benchmarks/network.py``), so the numbers compare directly. Spec §4 sets no target
for the hub: throughput and the killed worker borrow the Redis targets (a bus that never leaves
the machine should do at least as well). The round trip is a reference row: the Redis bar
(1.5x its floor) does not carry over, because the hub's floor is about half of Redis's while
the library's own work per round trip (encoding, decoding and dispatch in both processes,
about 110 µs here) is the same on both buses.

Rows (``--only hub``):

- ``hub.pingpong_floor``, reference row: raw hub ping-pong p50. Peer ``hubpong`` speaks the hub
  protocol by hand (no runner) and sends back every 240-byte payload it gets; this process
  writes one and reads the echo.
- ``hub.round_trip``, reference row: job round trip p50 between 2 processes, sequential
  ``client.job("echo")``, interleaved A B A B with the floor as on Redis; shown in µs and as a
  multiple of the floor.
- ``hub.throughput``: jobs/s with 100 in flight, as ``redis.throughput``; target 8,000/s.
- ``hub.kill``: a job to a killed worker ends, as ``redis.kill`` (``probe`` asks the hub, which
  knows at once); target 3 s.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.core import Measurement, Scale, Target, benchmark
from benchmarks.harness import Client
from benchmarks.network import (
    FLOOR_MESSAGE_SIZE,
    Cluster,
    Peer,
    _fresh,
    _kill,
    _kill_row,
    _quiet,
    _throughput,
    _throughput_row,
    floor_row,
    interleaved,
    round_trip_row,
)
from pipecat_workers.bus.hub_wire import OP_PAYLOAD, frame, hello, read_frame

T = TypeVar("T")


@asynccontextmanager
async def _hub() -> AsyncIterator[str]:
    """A hub process on a socket in a fresh directory; its path."""
    directory = tempfile.mkdtemp(prefix="pw-bench-")
    path = f"{directory}/hub.sock"
    peer = await Peer.start(Path(directory) / "hub.log", "hub", "--path", path)
    try:
        await peer.expect("READY")
        yield path
    finally:
        await peer.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def _on_hub(run: Callable[[str], Awaitable[T]]) -> T:
    async with _hub() as path:
        return await run(path)


async def _pingpong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int,
                    budget: float) -> list[int]:
    """Raw hub ping-pong: write a payload, read its echo; ns samples."""
    clock = time.perf_counter_ns
    deadline = clock() + int(budget * 1e9)
    samples: list[int] = []
    for i in range(n):
        data = (b"%d:" % i).ljust(FLOOR_MESSAGE_SIZE, b".")
        start = clock()
        writer.write(frame(OP_PAYLOAD, data))
        _, echo = await read_frame(reader)
        samples.append(clock() - start)
        if echo != data:
            raise RuntimeError(f"ping-pong answered {echo!r:.40} to {data!r:.40}")
        if start > deadline:
            break
    return samples


async def _floor_and_round_trip(path: str, rounds: int, n: int, warmup: int,
                                budget: float) -> dict[str, Any]:
    async with Cluster("hub", path) as cluster:
        pong = f"{cluster.channel}:pong"
        await asyncio.gather(cluster.peer("hubpong", "--path", path, "--channel", pong),
                             cluster.runner_peer("peer-echo", "echo"))
        reader, writer = await asyncio.open_unix_connection(path)

        async def close() -> None:
            writer.close()

        cluster.on_exit(close)
        writer.write(hello(pong, "ping", 1.0))
        await read_frame(reader)  # WELCOME
        client = Client("client")
        runner = await cluster.session(client)
        await runner.registry.wait_for("echo", 10)

        return await interleaved(
            lambda count, seconds: _pingpong(reader, writer, count, seconds),
            client, rounds=rounds, n=n, warmup=warmup, budget=budget)


_pair: dict[bool, dict[str, Any]] = {}  # scale.quick -> the one interleaved measurement


def _hub_pair(scale: Scale) -> dict[str, Any]:
    if scale.quick not in _pair:
        _pair[scale.quick] = _fresh(_on_hub(lambda path: _floor_and_round_trip(
            path, rounds=scale.pick(4, 2), n=scale.pick(1_000, 150),
            warmup=scale.pick(300, 50), budget=scale.budget(8, 2))))
    return _pair[scale.quick]


@benchmark("hub.pingpong_floor", group="hub",
           workload="raw hub ping-pong p50, 2 processes + hub (floor)", unit="µs",
           target=None)
def hub_floor(scale: Scale) -> Measurement:
    return floor_row(_hub_pair(scale), "hub.round_trip")


@benchmark("hub.round_trip", group="hub",
           workload="hub job round trip p50, 2 processes + hub", unit="µs", target=None)
def hub_round_trip(scale: Scale) -> Measurement:
    return round_trip_row(_hub_pair(scale), as_ratio=False)


@benchmark("hub.throughput", group="hub", workload="hub jobs/s, 100 in flight",
           unit="jobs/s", target=Target(">=", 8_000))
def hub_throughput(scale: Scale) -> Measurement:
    return _throughput_row(_fresh(_on_hub(lambda path: _throughput(
        "hub", path, scale.pick(40_000, 3_000), 100, scale.pick(500, 100),
        scale.budget(6, 1.5)))))


@benchmark("hub.kill", group="hub", workload="hub: job to a killed worker ends (max)",
           unit="s", target=Target("<=", 3))
def hub_kill(scale: Scale) -> Measurement:
    with _quiet("pipecat_workers.membership"):
        return _kill_row(_fresh(_on_hub(lambda path: _kill(
            "hub", path, scale.pick(3, 1), 10.0))), 10.0)
