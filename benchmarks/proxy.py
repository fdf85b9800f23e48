"""The proxy rows: a job's round trip and a frame's hop through a WebSocket proxy pair, each
beside the same on one bus.

Everything runs in one process and one event loop, on two buses joined by a proxy pair as
two deployments would be: the caller's side (bus A) has a :class:`WebSocketProxyClient`, the
worker's side (bus B) a :class:`WebSocketProxyServer` listening on loopback, and the client
stands in on A for the worker on B. The same workload on one bus is the comparison; both
set-ups run side by side and are measured in turns (A B A B, after a warm-up of each), so
machine drift hits both alike. The floor is a raw WebSocket ping-pong (the ``websockets``
library, as the proxy uses it, with no pipecat-workers) between the same loop's client and
server: a proxied round trip crosses the link once each way, as one ping-pong does.

The proxy pair uses its defaults (a bearer token, so the server does not warn that anyone gets
in), except in the throughput row, which lifts ``LinkLimits.max_rate``: the default of 5,000
messages a second each way is below what the link carries, and the messages over it are
dropped (their jobs end with an error), so the row would measure the limit, not the link.

The Redis row joins two Redis channels the same way: the caller and the proxy client are two
runners on channel A, the proxy server and the worker two runners on channel B, so every bus
hop goes through Redis; one bus is a caller and a worker, two runners on one channel.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from benchmarks.core import Measurement, Scale, Skip, benchmark
from benchmarks.harness import Client, Echo, Session, jobs_in_flight, round_trips
from benchmarks.network import FLOOR_MESSAGE_SIZE, _fresh, make_bus, redis_url
from benchmarks.pipeline import HELPER, Phase, _once, interleave, kit, quiet_shutdown, trips_phase
from pipecat_workers import BaseWorker
from pipecat_workers.bus import WorkerBus
from pipecat_workers.proxy import LinkLimits, WebSocketProxyClient, WebSocketProxyServer

GROUP = "proxy"
ECHO = "echo"
TOKEN = "bench-token"  # the server wants one (without it, it warns that anyone gets in)


def _need_websockets() -> None:
    """:class:`Skip` without the ``websockets`` package (the proxy's link runs on it)."""
    try:
        import websockets  # noqa: F401
    except ModuleNotFoundError:
        raise Skip("websockets is not installed; pip install 'pipecat-workers[proxy]'") from None


async def _session(stack: AsyncExitStack, *workers: BaseWorker, name: str,
                   bus: WorkerBus | None = None) -> Session:
    """A started runner, stopped when ``stack`` closes (the last started stops first)."""
    return await stack.enter_async_context(Session(*workers, bus=bus, name=name))


@asynccontextmanager
async def _pair(front: list[BaseWorker], behind: list[BaseWorker], remote: str, *,
                limits: LinkLimits | None = None, buses: tuple[WorkerBus, WorkerBus] | None = None,
                ) -> AsyncIterator[Session]:
    """``behind`` on bus B with a proxy server exposing ``remote``; ``front`` on bus A with a
    proxy client standing in for it. Yields the front runner's session, once the link is up
    and the stand-in registered; the client's side stops first."""
    _need_websockets()
    bus_a, bus_b = buses or (None, None)
    server = WebSocketProxyServer("proxy-server", worker_name=remote, port=0,
                                        token=TOKEN, limits=limits)
    async with AsyncExitStack() as stack:
        behind_session = await _session(stack, *behind, server, name="bus-b", bus=bus_b)
        # The server's runner knows the worker before the client connects (on a network bus
        # it may be another runner's), so the client's first list of what is behind has it.
        await behind_session.runner.registry.wait_for(remote, 10)
        client = WebSocketProxyClient(
            "proxy-client", url=f"ws://127.0.0.1:{server.port}/", remote_worker_name=remote,
            token=TOKEN, limits=limits)
        front_session = await _session(stack, *front, client, name="bus-a", bus=bus_a)
        await client.wait_connected(10)
        await front_session.runner.registry.wait_for(remote, 10)
        yield front_session


def _jobs_phase(client: Client) -> Phase:
    async def run(count: int, seconds: float) -> dict[str, list[int]]:
        return {"rtt": await round_trips(client, ECHO, iterations=count, warmup=0,
                                         budget=seconds)}

    return run


# -- the WebSocket floor ---------------------------------------------------------------------


async def _steady_reads() -> None:
    """Open and close one WebSocket connection, so that what follows reads at the pace a
    process keeps once a connection has closed.

    asyncio reads a socket into a fresh 256 KiB buffer each time. glibc's malloc serves a
    block that big with ``mmap`` (and unmaps it when it is freed) until the process frees
    a large block from its heap, which raises that threshold for good. Until then every read
    costs page faults (a loopback ping-pong took about 85 µs instead of 50 where this was
    measured). Whether an earlier benchmark already did that would otherwise decide the
    figures."""
    _need_websockets()
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    async def nothing(connection: ServerConnection) -> None:
        await connection.wait_closed()

    async with serve(nothing, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None):
            pass


@asynccontextmanager
async def _ws_floor() -> AsyncIterator[Phase]:
    """A raw ``websockets`` ping-pong on loopback (the proxy's options: no compression):
    a phase timing ``FLOOR_MESSAGE_SIZE``-byte messages bounced by an echo server."""
    await _steady_reads()
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    async def bounce(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(bounce, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:

            async def run(count: int, seconds: float) -> dict[str, list[int]]:
                clock = time.perf_counter_ns
                deadline = clock() + int(seconds * 1e9)
                samples: list[int] = []
                for i in range(count):
                    data = (b"%d:" % i).ljust(FLOOR_MESSAGE_SIZE, b".")
                    start = clock()
                    await ws.send(data)
                    echo = await ws.recv()
                    samples.append(clock() - start)
                    if echo != data:
                        raise RuntimeError(f"the echo server answered {echo!r:.40}")
                    if start > deadline:
                        break
                return {"rtt": samples}

            yield run


# -- 1. job round trip, one process ----------------------------------------------------------


async def _jobs(rounds: int, n: int, warmup: int, budget: float) -> dict[str, Any]:
    direct, proxied = Client("client"), Client("client")
    async with AsyncExitStack() as stack:
        floor = await stack.enter_async_context(_ws_floor())
        await _session(stack, direct, Echo(ECHO), name="one-bus")
        await stack.enter_async_context(_pair([proxied], [Echo(ECHO)], ECHO))
        return await interleave({"floor": floor, "direct": _jobs_phase(direct),
                                 "proxied": _jobs_phase(proxied)},
                                rounds=rounds, n=n, warmup=warmup, budget=budget)


def _jobs_run(scale: Scale) -> dict[str, Any]:
    return _once("proxy.jobs", scale, lambda: _fresh(_jobs(
        rounds=scale.pick(4, 2), n=scale.pick(2_000, 200), warmup=scale.pick(500, 50),
        budget=scale.budget(15, 2))))


def _versus(r: dict[str, Any], series: str, *, link: float | None = None,
            floor: float | None = None, floor_name: str = "the WebSocket floor",
            extra: str = "") -> Measurement:
    """A row whose value is ``proxied.<series>`` p50 over ``direct.<series>`` p50. ``link``
    is what the proxy pair adds (default: the difference of the p50s), compared with
    ``floor`` (in µs, called ``floor_name``) when given."""
    proxied, direct = r[f"proxied.{series}"], r[f"direct.{series}"]
    ratio = proxied["p50_us"] / direct["p50_us"]
    notes = (f"one bus {direct['p50_us']:.0f} µs; p99 {proxied['p99_us']:.0f} µs "
             f"(one bus {direct['p99_us']:.0f}), n={proxied['n']:,}")
    added = proxied["p50_us"] - direct["p50_us"] if link is None else link
    notes += f"; the link adds {added:.0f} µs"
    if floor:
        notes += f" = {added / floor:.1f}× {floor_name}"
    return Measurement(ratio, display=f"{proxied['p50_us']:.0f} µs ({ratio:.1f}× one bus)",
                       notes=f"{notes}{extra}; {r['rounds']} rounds interleaved", details=r)


@benchmark("proxy.ws_floor", group=GROUP,
           workload="raw WebSocket ping-pong p50, loopback, 1 process (floor)", unit="µs",
           target=None)
def ws_floor(scale: Scale) -> Measurement:
    f = _jobs_run(scale)["floor.rtt"]
    return Measurement(f["p50_us"], notes=f"p99 {f['p99_us']:.0f} µs, n={f['n']:,}, "
                       f"{FLOOR_MESSAGE_SIZE}-byte messages; interleaved with proxy.round_trip",
                       details=_jobs_run(scale))


@benchmark("proxy.round_trip", group=GROUP,
           workload="job round trip p50 through a proxy pair ÷ one bus, 1 process", unit="×",
           target=None)
def round_trip(scale: Scale) -> Measurement:
    r = _jobs_run(scale)
    return _versus(r, "rtt", floor=r["floor.rtt"]["p50_us"])


# -- 2. throughput ---------------------------------------------------------------------------


async def _rate(client: Client, total: int, warmup: int, budget: float) -> tuple[int, float]:
    await round_trips(client, ECHO, iterations=0, warmup=warmup, budget=budget)
    return await jobs_in_flight(client, ECHO, total=total, in_flight=100, budget=budget)


async def _throughput(total: int, warmup: int, budget: float) -> dict[str, Any]:
    limits = LinkLimits(max_rate=None)
    direct, proxied = Client("client"), Client("client")
    await _steady_reads()
    async with AsyncExitStack() as stack:
        await _session(stack, direct, Echo(ECHO), name="one-bus")
        await stack.enter_async_context(_pair([proxied], [Echo(ECHO)], ECHO, limits=limits))
        out: dict[str, Any] = {"in_flight": 100}
        for label, client in (("proxied", proxied), ("direct", direct)):
            jobs, seconds = await _rate(client, total, warmup, budget)
            out[label] = {"jobs": jobs, "seconds": seconds, "rate": jobs / seconds}
        return out


@benchmark("proxy.throughput", group=GROUP,
           workload="jobs/s through a proxy pair, 100 in flight, 1 process", unit="jobs/s",
           target=None)
def throughput(scale: Scale) -> Measurement:
    r = _fresh(_throughput(scale.pick(20_000, 2_000), scale.pick(1_000, 100),
                           scale.budget(6, 2)))
    proxied, direct = r["proxied"], r["direct"]
    return Measurement(proxied["rate"], details=r, notes=(
        f"{proxied['jobs']:,} jobs in {proxied['seconds']:.2f} s; one bus "
        f"{direct['rate']:,.0f}/s ({proxied['rate'] / direct['rate']:.2f}×); max_rate lifted"))


# -- 3. frame hop ----------------------------------------------------------------------------


async def _frames(rounds: int, n: int, warmup: int, budget: float) -> dict[str, Any]:
    k = kit()
    async with AsyncExitStack() as stack:
        stack.enter_context(quiet_shutdown())
        acme, bridge, below = k.ours_transport()
        await _session(stack, acme, k.ours_helper(), name="one-bus")
        await acme.activate_worker(HELPER)
        await k.wait_until(lambda: bridge.peer == HELPER, 10, "the helper to join the bridge")
        floor = await stack.enter_async_context(_ws_floor())
        pacme, pbridge, pbelow = k.ours_transport()
        await stack.enter_async_context(_pair([pacme], [k.ours_helper()], HELPER))
        await pacme.activate_worker(HELPER)
        await k.wait_until(lambda: pbridge.peer == HELPER, 10,
                           "the helper behind the proxy to join the bridge")
        return await interleave({"floor": floor, "direct": trips_phase(acme, below),
                                 "proxied": trips_phase(pacme, pbelow)},
                                rounds=rounds, n=n, warmup=warmup, budget=budget)


def _frames_run(scale: Scale) -> dict[str, Any]:
    return _once("proxy.frames", scale, lambda: _fresh(_frames(
        rounds=scale.pick(4, 2), n=scale.pick(2_000, 200), warmup=scale.pick(500, 50),
        budget=scale.budget(15, 2))))


@benchmark("proxy.frame_hop", group=GROUP,
           workload="frame hop bridge → bridged worker's top, proxy pair ÷ one bus, p50",
           unit="×", target=None)
def frame_hop(scale: Scale) -> Measurement:
    r = _frames_run(scale)
    trip, one = r["proxied.trip"]["p50_us"], r["direct.trip"]["p50_us"]
    return _versus(r, "hop", floor=r["floor.rtt"]["p50_us"] / 2,
                   floor_name="½ the WebSocket floor (one way)",
                   extra=f"; frame round trip {trip:.0f} µs (one bus {one:.0f})")


# -- 4. job round trip, both sides on Redis --------------------------------------------------


async def _redis(url: str, rounds: int, n: int, warmup: int, budget: float) -> dict[str, Any]:
    channel = f"pw-bench-{uuid.uuid4().hex[:10]}"

    def bus(side: str) -> WorkerBus:
        return make_bus("redis", url, f"{channel}:{side}")

    direct, proxied = Client("client"), Client("client")
    await _steady_reads()
    async with AsyncExitStack() as stack:
        one = await _session(stack, direct, name="caller", bus=bus("one"))
        await _session(stack, Echo(ECHO), name="worker", bus=bus("one"))
        await one.runner.registry.wait_for(ECHO, 10)
        # Each proxy has a runner of its own, between the caller's and the worker's.
        await _session(stack, Echo(ECHO), name="b-worker", bus=bus("b"))
        await stack.enter_async_context(_pair([], [], ECHO, buses=(bus("a"), bus("b"))))
        caller = await _session(stack, proxied, name="a-caller", bus=bus("a"))
        await caller.runner.registry.wait_for(ECHO, 10)
        return await interleave({"direct": _jobs_phase(direct),
                                 "proxied": _jobs_phase(proxied)},
                                rounds=rounds, n=n, warmup=warmup, budget=budget)


@benchmark("proxy.round_trip_redis", group=GROUP,
           workload="job round trip p50 through a proxy pair ÷ one bus, both on Redis",
           unit="×", target=None)
def round_trip_redis(scale: Scale) -> Measurement:
    url = redis_url()
    r = _once("proxy.redis", scale, lambda: _fresh(_redis(
        url, rounds=scale.pick(4, 2), n=scale.pick(500, 100), warmup=scale.pick(200, 30),
        budget=scale.budget(10, 3))))
    # The proxied trip crosses Redis twice as often (4 runners vs 2): the link's own part
    # is what is left of it after two trips on one bus.
    link = r["proxied.rtt"]["p50_us"] - 2 * r["direct.rtt"]["p50_us"]
    return _versus(r, "rtt", link=link, extra=" (the proxied trip less 2 on one bus)")

