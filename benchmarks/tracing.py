"""What tracing costs: job round trips with nothing recording spans, with spans kept in
memory (an exporter that does no I/O: the cost of making spans), and with spans written to a
JSON-lines file (what every worker under ``workers up`` does).

All three run in one process and one event loop per bus, A B C A B C..., so machine drift
hits each alike; the rows are ratios to the untraced round trip of the same run. On Redis both
runners are in this process, each with its own connection, so every message crosses the
server. (Whether carrying trace context costs anything when nothing records is measured
against an older checkout with ``python -m benchmarks.compare``: see benchmarks/README.md.)
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.core import Measurement, Scale, benchmark, percentile
from benchmarks.harness import Client, Echo, Session, round_trips
from benchmarks.network import make_bus, redis_url
from pipecat_workers.tracing import (
    InMemorySpanExporter,
    JsonLinesSpanExporter,
    SpanExporter,
    tracer,
)

GROUP = "tracing"
MODES = ("off", "memory", "file")


def _us(ns: float) -> float:
    return ns / 1_000


async def _interleaved(make_sessions: Callable[[], tuple[Session, Session]], rounds: int,
                       n: int, warmup: int, budget: float) -> dict[str, Any]:
    client = Client("client")
    first, second = make_sessions()
    await first.add(client)
    await second.add(Echo("echo"))
    await second.start()
    await first.start()
    await first.runner.registry.wait_for("echo", 10)
    samples: dict[str, list[int]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as directory:
        exporters: dict[str, SpanExporter | None] = {
            "off": None, "memory": InMemorySpanExporter(limit=10_000),
            "file": JsonLinesSpanExporter(Path(directory) / "spans.jsonl")}
        try:
            await round_trips(client, "echo", iterations=0, warmup=warmup, budget=budget)
            for _ in range(rounds):
                for mode in MODES:
                    exporter = exporters[mode]
                    if exporter is not None:
                        tracer.add_exporter(exporter)
                    try:
                        samples[mode] += await round_trips(
                            client, "echo", iterations=n, warmup=n // 10,
                            budget=budget / rounds / len(MODES))
                    finally:
                        if exporter is not None:
                            tracer.remove_exporter(exporter)
        finally:
            await first.stop()
            await second.stop()
    result: dict[str, Any] = {}
    for mode, values in samples.items():
        values.sort()
        result[mode] = {"p50_us": _us(percentile(values, 50)),
                        "p99_us": _us(percentile(values, 99)), "n": len(values)}
    return result


_measured: dict[tuple[str, bool], dict[str, Any]] = {}


def _local(scale: Scale) -> dict[str, Any]:
    key = ("local", scale.quick)
    if key not in _measured:
        gc.collect()
        _measured[key] = asyncio.run(_interleaved(
            lambda: _shared_local(), rounds=scale.pick(5, 2), n=scale.pick(4_000, 500),
            warmup=scale.pick(2_000, 200), budget=scale.budget(20, 3)))
    return _measured[key]


def _shared_local() -> tuple[Session, Session]:
    session = Session()
    return session, _SameSession(session)


class _SameSession(Session):
    """The one local session, seen as the echo's side (adds to it, starts nothing)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def add(self, *workers: Any) -> None:
        await self._session.add(*workers)

    async def start(self) -> None:
        return None

    async def stop(self, timeout: float = 60.0) -> None:
        return None


def _redis(scale: Scale) -> dict[str, Any]:
    key = ("redis", scale.quick)
    if key not in _measured:
        url = redis_url()
        channel = f"pw-bench-{uuid.uuid4().hex[:8]}"
        gc.collect()
        _measured[key] = asyncio.run(_interleaved(
            lambda: (Session(bus=make_bus("redis", url, channel), name="client-side"),
                     Session(bus=make_bus("redis", url, channel), name="echo-side")),
            rounds=scale.pick(5, 2), n=scale.pick(600, 100), warmup=scale.pick(300, 50),
            budget=scale.budget(20, 3)))
    return _measured[key]


def _row(result: dict[str, Any], mode: str) -> Measurement:
    off, traced = result["off"]["p50_us"], result[mode]["p50_us"]
    ratio = traced / off
    return Measurement(ratio, display=f"{traced:.1f} µs ({ratio:.3f}× untraced {off:.1f})",
                       notes=f"p99 {result[mode]['p99_us']:.0f} µs vs "
                             f"{result['off']['p99_us']:.0f}; n={result[mode]['n']:,}; "
                             "rounds interleaved off/memory/file",
                       details=result)


@benchmark("tracing.local_memory", group=GROUP, unit="×", target=None,
           workload="local job round trip p50, spans to memory / untraced")
def local_memory(scale: Scale) -> Measurement:
    return _row(_local(scale), "memory")


@benchmark("tracing.local_file", group=GROUP, unit="×", target=None,
           workload="local job round trip p50, spans to a file (workers up) / untraced")
def local_file(scale: Scale) -> Measurement:
    return _row(_local(scale), "file")


@benchmark("tracing.redis_memory", group=GROUP, unit="×", target=None,
           workload="Redis job round trip p50, spans to memory / untraced")
def redis_memory(scale: Scale) -> Measurement:
    return _row(_redis(scale), "memory")


@benchmark("tracing.redis_file", group=GROUP, unit="×", target=None,
           workload="Redis job round trip p50, spans to a file (workers up) / untraced")
def redis_file(scale: Scale) -> Measurement:
    return _row(_redis(scale), "file")



