"""The pipeline rows: a frame's hop into a bridged worker, and its round trip through one.

A transport worker's pipeline is ``[bridge, below]``; a bridged pass-through worker
(``[Arrival]``) is spliced into its bridge. The benchmark queues one ``TextFrame`` at a time
above the bridge and waits for it below, so every frame is timed on an idle system, as the
floors are (see ``pipeline_kit`` for the timestamps):

* **hop**: from the transport's bridge taking the frame (``STAMP``, its ``process_frame``) to
  the bridged worker's top edge (``EDGE``: the worker hands the frame to its pipeline), one
  way, with CLOCK_MONOTONIC timestamps carried in the frame's metadata (one clock for every
  process). The notes add the hop to the first processor of its pipeline (``SEEN``), which
  also counts pipecat's own queues inside the pipeline (the same in both libraries);
* **round trip**: from ``queue_frame`` above the bridge to the frame arriving below it, after
  crossing to the bridged worker, going through its pipeline and crossing back.

Across processes the floor is the raw ping-pong of the Redis and hub rows (``network.py``,
``hub.py``: a 240-byte payload bounced by a peer that uses no pipecat-workers). Its p50 is a
round trip, so the hop is compared with **half** of it (a one-way floor; both directions
of a raw ping-pong cost the same) and the frame round trip with all of it. Floor, ours and the
reference are measured in the same run, interleaved A B C A B C, each after a warm-up.

Ours runs on our buses (``AsyncQueueBus``, ``HubBus``, ``RedisBus``), the reference
(pipecat-ai's ``PipelineWorker``, ``BusBridgeProcessor``, ``WorkerRunner``) on its own
(``AsyncQueueBus``, ``RedisBus``; it has no hub). The reference transport has no RTVI
processor (``enable_rtvi=False``): ours has none, and it would add a hop above the bridge.
Both sides use their library's defaults otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any

from benchmarks.core import Measurement, Scale, Skip, Target, benchmark
from benchmarks.harness import Session
from benchmarks.hub import _on_hub
from benchmarks.hub import _pingpong as hub_pingpong
from benchmarks.network import Cluster, _fresh, _pingpong, _quiet, _stats, redis_url

Phase = Callable[[int, float], Awaitable[dict[str, list[int]]]]
HELPER = "helper"


def kit() -> ModuleType:
    """``benchmarks.pipeline_kit``, which imports pipecat: only when a pipeline row runs (the
    other suites work without the ``pipecat`` extra); :class:`Skip` if it is not installed."""
    try:
        from benchmarks import pipeline_kit
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("pipecat", "loguru"):
            raise
        raise Skip(f"pipecat-ai is not installed ({exc.name}); pip install "
                   "'pipecat-workers[pipecat]'") from None
    return pipeline_kit


@contextlib.contextmanager
def quiet_shutdown() -> Iterator[None]:
    """Ours warns when a bridge's worker stops before the worker serving it: expected here."""
    with _quiet("pipecat_workers.pipeline"):
        yield


async def interleave(phases: dict[str, Phase], *, rounds: int, n: int, warmup: int,
                     budget: float) -> dict[str, Any]:
    """Run every phase (``phase(count, seconds)`` returns named ns samples) for a warm-up,
    then ``rounds`` times in turn; pooled stats and per-round p50s of each named series."""
    for phase in phases.values():
        await phase(warmup, budget)
    pooled: dict[str, list[int]] = {}
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        medians = {}
        for label, phase in phases.items():
            for series, samples in (await phase(n, budget / rounds / len(phases))).items():
                key = f"{label}.{series}"
                pooled.setdefault(key, []).extend(samples)
                medians[key] = sorted(samples)[len(samples) // 2] / 1e3
        per_round.append(medians)
    out: dict[str, Any] = {key: _stats(sorted(v)) for key, v in pooled.items()}
    out.update(rounds=rounds, per_round_p50_us=per_round)
    return out


def trips_phase(worker: Any, below: Any) -> Phase:
    async def run(count: int, seconds: float) -> dict[str, list[int]]:
        hops, firsts, trips = await kit().frame_trips(worker, below, count, seconds)
        return {"hop": hops, "first": firsts, "trip": trips}

    return run


# -- in one process --------------------------------------------------------------------------


async def _local(rounds: int, n: int, warmup: int, budget: float) -> dict[str, Any]:
    k = kit()
    acme, bridge, below = k.ours_transport()
    helper = k.ours_helper()
    ours = Session(acme, helper)
    await ours.add(acme, helper)
    await ours.start()
    bus, close = k.ref_bus("local")
    racme, _, rbelow = k.ref_transport(bus)
    ref = k.RefSession(racme, k.ref_helper(), bus=bus)
    try:
        await acme.activate_worker(HELPER)
        await k.wait_until(lambda: bridge.peer == HELPER, 10, "the helper to join the bridge")
        await ref.start()
        return await interleave({"ours": trips_phase(acme, below),
                                 "ref": trips_phase(racme, rbelow)},
                                rounds=rounds, n=n, warmup=warmup, budget=budget)
    finally:
        with quiet_shutdown():
            await ref.stop()
            await close()
            await ours.stop()


_measured: dict[tuple[str, bool], dict[str, Any]] = {}


def _once(kind: str, scale: Scale, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measurement per kind and scale, shared by the rows that report it."""
    if (kind, scale.quick) not in _measured:
        _measured[(kind, scale.quick)] = measure()
    return _measured[(kind, scale.quick)]


def _local_pair(scale: Scale) -> dict[str, Any]:
    return _once("local", scale, lambda: _fresh(_local(
        rounds=scale.pick(4, 2), n=scale.pick(2_000, 200), warmup=scale.pick(500, 50),
        budget=scale.budget(10, 2))))


def _hop_notes(r: dict[str, Any], label: str) -> str:
    s = r[f"{label}.hop"]
    first = r.get(f"{label}.first")
    to_first = f"; to its first processor {first['p50_us']:.0f} µs" if first else ""
    return f"p99 {s['p99_us']:.0f} µs, n={s['n']:,}{to_first}"


@benchmark("pipeline.hop_local", group="pipeline",
           workload="frame hop bridge → bridged worker's top, 1 process, p50", unit="µs",
           target=Target("<=", 30))
def hop_local(scale: Scale) -> Measurement:
    r = _local_pair(scale)
    hop, ref = r["ours.hop"]["p50_us"], r["ref.first"]["p50_us"]
    return Measurement(hop, notes=f"{_hop_notes(r, 'ours')} (reference {ref:.0f} µs); "
                       f"{r['rounds']} rounds A B A B", details=r)


# The reference's local bus hands the same frame object to every subscriber, and its bridged
# worker publishes it back: a top-edge stamp in its metadata is overwritten by the second
# pass, so the comparable figure in one process is the hop to the first processor.
@benchmark("pipeline.hop_local_ref", group="pipeline",
           workload="  reference: bridge → first processor, on its AsyncQueueBus, p50",
           unit="µs", target=None)
def hop_local_ref(scale: Scale) -> Measurement:
    r = _local_pair(scale)
    first, ours = r["ref.first"], r["ours.first"]
    return Measurement(first["p50_us"], notes=f"p99 {first['p99_us']:.0f} µs, "
                       f"n={first['n']:,}; ours {ours['p50_us']:.0f} µs; interleaved with "
                       "pipeline.hop_local", details=r)


# -- across processes: Redis and the hub -----------------------------------------------------


async def _redis(url: str, rounds: int, n: int, warmup: int, budget: float) -> dict[str, Any]:
    from redis.asyncio import Redis

    k = kit()
    async with Cluster("redis", url) as cluster:
        ping, pong = f"{cluster.channel}:ping", f"{cluster.channel}:pong"
        ref_channel = f"{cluster.channel}:ref"
        common = ("--backend", "redis", "--url", url)
        await asyncio.gather(
            cluster.peer("pingpong", "--url", url, "--ping", ping, "--pong", pong),
            k.peer(cluster, "helper", "--impl", "ours", *common, "--channel", cluster.channel),
            k.peer(cluster, "helper", "--impl", "ref", *common, "--channel", ref_channel))
        redis = Redis.from_url(url)
        cluster.on_exit(redis.aclose)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        cluster.on_exit(pubsub.aclose)
        await pubsub.subscribe(pong)
        listen = pubsub.listen()

        async def floor(count: int, seconds: float) -> dict[str, list[int]]:
            return {"rtt": await _pingpong(redis.publish, listen, ping, count, seconds)}

        acme, bridge, below = k.ours_transport()
        runner = await cluster.session(acme)
        await runner.registry.wait_for(HELPER, 10)
        await acme.activate_worker(HELPER)
        await k.wait_until(lambda: bridge.peer == HELPER, 10, "the helper to join the bridge")
        bus, close = k.ref_bus("redis", url, ref_channel)
        racme, _, rbelow = k.ref_transport(bus)
        ref = k.RefSession(racme, bus=bus, name="bench-ref")
        cluster.on_exit(close)
        cluster.on_exit(ref.stop)
        await ref.start()
        await k.wait_until(lambda: HELPER in ref.runner.registry, 10,
                           "the reference runner to know the helper")
        return await interleave({"floor": floor, "ours": trips_phase(acme, below),
                                 "ref": trips_phase(racme, rbelow)},
                                rounds=rounds, n=n, warmup=warmup, budget=budget)


async def _hub(path: str, rounds: int, n: int, warmup: int, budget: float) -> dict[str, Any]:
    k = kit()
    async with Cluster("hub", path) as cluster:
        pong = f"{cluster.channel}:pong"
        await asyncio.gather(
            cluster.peer("hubpong", "--path", path, "--channel", pong),
            k.peer(cluster, "helper", "--impl", "ours", "--backend", "hub", "--url", path,
                   "--channel", cluster.channel))
        from pipecat_workers.bus.hub_wire import hello, read_frame

        reader, writer = await asyncio.open_unix_connection(path)

        async def close() -> None:
            writer.close()

        cluster.on_exit(close)
        writer.write(hello(pong, "ping", 1.0))
        await read_frame(reader)  # WELCOME

        async def floor(count: int, seconds: float) -> dict[str, list[int]]:
            return {"rtt": await hub_pingpong(reader, writer, count, seconds)}

        acme, bridge, below = k.ours_transport()
        runner = await cluster.session(acme)
        await runner.registry.wait_for(HELPER, 10)
        await acme.activate_worker(HELPER)
        await k.wait_until(lambda: bridge.peer == HELPER, 10, "the helper to join the bridge")
        return await interleave({"floor": floor, "ours": trips_phase(acme, below)},
                                rounds=rounds, n=n, warmup=warmup, budget=budget)


def _counts(scale: Scale) -> dict[str, Any]:
    return {"rounds": scale.pick(4, 2), "n": scale.pick(1_000, 150),
            "warmup": scale.pick(300, 50), "budget": scale.budget(20, 3)}


def _redis_run(scale: Scale) -> dict[str, Any]:
    url = redis_url()
    return _once("redis", scale, lambda: _fresh(_redis(url, **_counts(scale))))


def _hub_run(scale: Scale) -> dict[str, Any]:
    return _once("hub", scale, lambda: _fresh(_on_hub(lambda path: _hub(path,
                                                                         **_counts(scale)))))


def _vs_floor(r: dict[str, Any], label: str, series: str, *, half: bool,
              others: str = "") -> Measurement:
    """A row whose value is ``label.series`` p50 over the floor's p50 (or half of it)."""
    floor = r["floor.rtt"]["p50_us"] / (2 if half else 1)
    s = r[f"{label}.{series}"]
    ratio = s["p50_us"] / floor
    which = "½ floor" if half else "floor"
    notes = (f"floor {r['floor.rtt']['p50_us']:.0f} µs rtt; p99 {s['p99_us']:.0f} µs, "
             f"n={s['n']:,}; {r['rounds']} rounds interleaved{others}")
    return Measurement(ratio, display=f"{s['p50_us']:.0f} µs ({ratio:.2f}× {which})",
                       notes=notes, details=r)


def _ref_note(r: dict[str, Any], series: str, half: bool) -> str:
    if "ref.hop" not in r:
        return ""
    floor = r["floor.rtt"]["p50_us"] / (2 if half else 1)
    ref = r[f"ref.{series}"]["p50_us"]
    return f"; reference {ref:.0f} µs ({ref / floor:.2f}×)"


@benchmark("pipeline.hop_hub", group="pipeline",
           workload="frame hop to a bridged worker, hub, 2 processes + hub, p50", unit="×",
           target=Target("<=", 1.3))
def hop_hub(scale: Scale) -> Measurement:
    return _vs_floor(_hub_run(scale), "ours", "hop", half=True)


@benchmark("pipeline.hop_redis", group="pipeline",
           workload="frame hop to a bridged worker, Redis, 2 processes, p50", unit="×",
           target=Target("<=", 1.3))
def hop_redis(scale: Scale) -> Measurement:
    r = _redis_run(scale)
    return _vs_floor(r, "ours", "hop", half=True, others=_ref_note(r, "hop", True))


@benchmark("pipeline.hop_redis_ref", group="pipeline",
           workload="  reference: the same hop on its RedisBus, p50", unit="×", target=None)
def hop_redis_ref(scale: Scale) -> Measurement:
    return _vs_floor(_redis_run(scale), "ref", "hop", half=True)


@benchmark("pipeline.round_trip_redis", group="pipeline",
           workload="frame round trip through a spliced worker, Redis, p50", unit="×",
           target=Target("<=", 2.5))
def round_trip_redis(scale: Scale) -> Measurement:
    r = _redis_run(scale)
    return _vs_floor(r, "ours", "trip", half=False, others=_ref_note(r, "trip", False))


@benchmark("pipeline.round_trip_redis_ref", group="pipeline",
           workload="  reference: the same round trip on its RedisBus, p50", unit="×",
           target=None)
def round_trip_redis_ref(scale: Scale) -> Measurement:
    return _vs_floor(_redis_run(scale), "ref", "trip", half=False)
