"""The sustained-audio row: 200 concurrent 16 kHz streams, both ways, through one Redis.

What "200 concurrent streams through one Redis" means here: 200 calls, each a transport worker
``call-i`` whose pipeline is ``[bridge, sink]`` with its own bridged worker ``voice-i`` spliced
in, all on one Redis channel (one application). Every 20 ms each call queues a 640-byte
``InputAudioRawFrame`` (20 ms of 16 kHz 16-bit mono) above its bridge; it crosses to its
``voice-i``, whose pipeline turns it into an ``OutputAudioRawFrame`` with the same samples and
sends it back, where it arrives below the bridge. That is 10,000 frames/s each way, 20,000
bus messages/s, every one encoded, published, read and decoded.

Layout: the calls are split over ``P`` transport processes and the voices over ``P`` worker
processes (``P`` = 2; 100 calls or voices per process, one runner per process), so each
direction of a call crosses between processes, and no process does both ends of a stream. The
benchmark process only starts them, sends ``go`` and collects the reports; it runs no runner.
The streams start together at a CLOCK_MONOTONIC instant given to every process and are spread
evenly over the 20 ms period (as independent calls would be), each paced on an absolute
schedule that never drifts or skips.

Hop: one way, from the sending side's bridge (input audio) or the voice's processor (output
audio) stamping ``time.monotonic_ns()`` in the frame's metadata, to the first processor on the
other side seeing it. Both directions are pooled; the row's value is their p99.

Loss and order: each frame carries its stream and sequence number; each receiving process
counts per stream the frames received, the sequence numbers skipped over and the frames older
than one already received. After the streams stop, the calls wait up to 5 s for the output
audio still in flight. Lost = sent - received, per direction; any loss or reordering makes the
row invalid (✗ whatever the latency).

CPU: user + system seconds of every process (and of the Redis server, whose pid ``INFO`` gives)
over the streaming window, as a share of one core.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from benchmarks.core import Measurement, Scale, Target, benchmark, percentile
from benchmarks.network import Cluster, Peer, _cpu_seconds, _fresh, redis_url
from benchmarks.pipeline import kit

FRAME_SECONDS = 0.020


async def _redis_pid(url: str) -> int | None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        info = await client.info("server")
        return int(info["process_id"]) if "process_id" in info else None
    finally:
        await client.aclose()


def _cpu(pids: dict[str, int | None]) -> dict[str, float | None]:
    return {name: None if pid is None else _cpu_seconds(pid) for name, pid in pids.items()}


async def _audio(url: str, streams: int, processes: int, seconds: float) -> dict[str, Any]:
    k = kit()
    async with Cluster("redis", url) as cluster:
        out = k.log_dir(cluster)
        common = ("--backend", "redis", "--url", url, "--channel", cluster.channel)
        per = -(-streams // processes)
        slices = [(first, min(per, streams - first)) for first in range(0, streams, per)]

        def start(mode: str, j: int, first: int, count: int) -> Any:
            return k.peer(cluster, mode, *common, "--first", str(first), "--count", str(count),
                          "--out", str(out / f"{mode}-{j}.json"), timeout=90)

        voices: list[Peer] = await asyncio.gather(
            *(start("audio-workers", j, f, c) for j, (f, c) in enumerate(slices)))
        calls: list[Peer] = await asyncio.gather(
            *(start("audio-transports", j, f, c) for j, (f, c) in enumerate(slices)))
        pids: dict[str, int | None] = {f"transports-{j}": p.pid for j, p in enumerate(calls)}
        pids.update({f"workers-{j}": p.pid for j, p in enumerate(voices)})
        pids["redis-server"] = await _redis_pid(url)
        t0 = k.now() + 300_000_000
        for call in calls:
            await call.send(f"go {t0} {seconds}")
        await asyncio.sleep(max(0.0, (t0 - k.now()) / 1e9))
        cpu0 = _cpu(pids)
        await asyncio.sleep(seconds)
        cpu1 = _cpu(pids)
        for call in calls:
            await call.expect("DONE", timeout=120)
        for voice in voices:
            await voice.send("report")
            await voice.expect("REPORTED", timeout=30)
        reports = {name: json.loads(Path(out / f"{name}.json").read_text())
                   for name in (f"{mode}-{j}" for mode in ("audio-workers", "audio-transports")
                                for j in range(len(slices)))}
    cpu = {name: _share(cpu0[name], cpu1[name], seconds) for name in pids}
    return _summary(reports, cpu, streams, seconds, slices, t0)


def _share(before: float | None, after: float | None, seconds: float) -> float | None:
    """CPU seconds used over a window, as a share of one core."""
    return None if before is None or after is None else round((after - before) / seconds, 3)


def _summary(reports: dict[str, Any], cpu: dict[str, float | None], streams: int,
             seconds: float, slices: list[tuple[int, int]], t0: int) -> dict[str, Any]:
    workers = [r for name, r in reports.items() if name.startswith("audio-workers")]
    calls = [r for name, r in reports.items() if name.startswith("audio-transports")]
    sent_in = sum(sum(r["sent"].values()) for r in calls)
    got_in = sum(sum(r["received"].values()) for r in workers)
    sent_out = sum(r["sent"] for r in workers)
    got_out = sum(sum(r["received"].values()) for r in calls)
    hops_in = sorted(h for r in workers for h in r["hops_us"])
    hops_out = sorted(h for r in calls for h in r["hops_us"])
    both = sorted(hops_in + hops_out)
    late = sorted(x for r in calls for x in r["late_us"])
    start, end = t0 // 1_000_000, (t0 + int(seconds * 1e9)) // 1_000_000
    in_window = sum(start <= t < end for r in workers + calls for t in r.pop("arrivals_ms"))

    def stats(v: list[int]) -> dict[str, float]:
        if not v:
            return {"n": 0}
        return {"p50_ms": percentile(v, 50) / 1e3, "p99_ms": percentile(v, 99) / 1e3,
                "max_ms": v[-1] / 1e3, "n": len(v)}

    return {
        "streams": streams, "seconds": seconds,
        "layout": {"calls_per_transport_process": [c for _, c in slices],
                   "voices_per_worker_process": [c for _, c in slices]},
        "hop": stats(both), "hop_in": stats(hops_in), "hop_out": stats(hops_out),
        "sent_in": sent_in, "received_in": got_in, "sent_out": sent_out, "received_out": got_out,
        "lost_in": sent_in - got_in, "lost_out": sent_out - got_out,
        "bus": {name: r["bus"] for name, r in reports.items()},
        "reordered": sum(r["reordered"] for r in workers + calls),
        "gaps": sum(r["gaps"] for r in workers + calls),
        "frames_per_s": in_window / seconds,  # delivered while the streams ran
        "send_late": stats(late), "drain_ms": max(r["drain_ms"] for r in calls),
        "cpu_share": cpu,
        # CPU of every process, Redis included, per frame delivered (one way): the library's
        # cost of carrying one frame across, whatever the machine.
        "cpu_us_per_frame": (sum(c for c in cpu.values() if c is not None) * 1e6
                             / max(1.0, in_window / seconds)),
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value < 10 else f"{value:,.0f} ms"


@benchmark("pipeline.audio_redis", group="pipeline",
           workload="200 audio streams both ways via Redis (16 kHz, 20 ms), p99 hop",
           unit="ms", target=Target("<=", 5))
def audio_redis(scale: Scale) -> Measurement:
    url = redis_url()
    r = _fresh(_audio(url, streams=scale.pick(200, 20), processes=2,
                      seconds=scale.budget(10, 2)))
    hop = r["hop"]
    lost = r["lost_in"] + r["lost_out"]
    bad = lost or r["reordered"]
    cpu = ", ".join(f"{name.replace('-server', '')} {share:.0%}"
                    for name, share in r["cpu_share"].items() if share is not None)
    offered = 2 * r["streams"] / FRAME_SECONDS
    dropped = sum(sum(b["dropped"].values()) for b in r["bus"].values())
    notes = (f"{r['streams']} streams: p50 {_ms(hop.get('p50_ms'))}, max {_ms(hop.get('max_ms'))}; "
             f"{r['frames_per_s']:,.0f} of {offered:,.0f} frames/s delivered; "
             f"{lost:,} undelivered 15 s after the end (bus drops: {dropped:,}), "
             f"{r['reordered']:,} reordered; CPU {cpu} "
             f"({r['cpu_us_per_frame']:.0f} µs per frame)")
    if not hop.get("n"):
        return Measurement(float("inf"), notes=notes, details=r, valid=False)
    return Measurement(hop["p99_ms"], notes=notes, details=r, valid=not bad)
