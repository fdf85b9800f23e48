"""Hostile peers on real buses (issue 11): hypothesis generates bodies of every framework message
type with wrong types, missing and unknown fields, NaN, infinity, huge values and nested junk;
each is published as raw bytes on the hub, Redis and PGMQ, to this test's runner and to a runner
in another process. Each must be dropped and counted, none may reach a handler or stop a loop,
and liveness must still work afterwards: a job to a SIGKILLed worker ends within 3 s.

Hypothesis runs in a thread of its own (each example waits for the drop on the test's event
loop), derandomized and without a database, so every run sends the same bodies.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings

from pipecat_workers import BaseWorker, JobError, JobEvent, WorkerLostData, WorkerRunner
from pipecat_workers.bus import BusMessage
from pipecat_workers.catalogue import type_name
from tests.helpers import Recorder, wait_until
from tests.hostile import (
    attacker,
    fields_of,
    framework_types,
    hostile_bodies,
    junk_for,
    raw_envelope,
)
from tests.procs.cluster import Cluster

EXAMPLES = 200
DROPPED = {"invalid", "malformed", "unknown_type"}


class Watcher(BaseWorker):
    def __init__(self, name: str = "watcher") -> None:
        super().__init__(name)
        self.lost: list[WorkerLostData] = []

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)


def drops(runner: WorkerRunner) -> dict[str, int]:
    counts: dict[str, int] = runner.stats()["messages"]["wire_dropped"]
    return counts


def fuzz(loop: asyncio.AbstractEventLoop,
         publish: Callable[[bytes], Coroutine[Any, Any, None]]) -> Counter[str]:
    """Send hostile bodies of each type in turn, each once the previous one was dropped; how
    many of each type."""
    sent: Counter[str] = Counter()
    types = framework_types()
    for cls in types:
        @settings(max_examples=-(-EXAMPLES // len(types)), deadline=None, derandomize=True,
                  database=None, suppress_health_check=list(HealthCheck))
        @given(hostile_bodies([cls]))
        @example(all_wrong(cls))
        def one(hostile: tuple[str, dict[str, Any]]) -> None:
            asyncio.run_coroutine_threadsafe(publish(raw_envelope(*hostile)), loop).result(10)
            sent[hostile[0]] += 1

        one()
    return sent


def all_wrong(cls: type[BusMessage]) -> tuple[str, dict[str, Any]]:
    """A body of ``cls`` with a wrong value in every field."""
    body = {name: junk_for(kind, optional)[0][0]
            for name, (kind, optional, _) in fields_of(cls).items()}
    return type_name(cls) or "", body


async def test_fuzzed_bodies_are_dropped_and_a_killed_worker_still_ends_its_job(
        cluster: Cluster) -> None:
    watcher = Watcher()
    runner = await cluster.local(watcher)
    seen = Recorder("seen")
    runner.bus.subscribe(seen, role="observer")
    peer = await cluster.peer("doomed")
    await watcher.watch_workers("doomed")
    loop = asyncio.get_running_loop()

    async with attacker(cluster.bus()) as send:
        async def publish(data: bytes) -> None:
            before = sum(drops(runner).values())
            await send(data)
            try:
                await wait_until(lambda: sum(drops(runner).values()) > before, timeout=5)
            except TimeoutError:
                raise AssertionError(f"not dropped: {data[:300]!r}") from None

        sent = await asyncio.to_thread(fuzz, loop, publish)

    counts = drops(runner)
    assert set(sent) == {type_name(cls) for cls in framework_types()}, sent
    assert sum(sent.values()) >= EXAMPLES and sum(counts.values()) == sum(sent.values())
    assert set(counts) <= DROPPED, counts
    # What the fuzzer sends names no real worker: none of it reached the observer either.
    assert all(type(m.source) is str and not m.source.startswith(("fuzz", "n" * 100))
               for m in seen.messages)
    assert "doomed" in runner.registry and not watcher.lost  # both runners' loops went on
    async with watcher.job("doomed", name="echo", payload={"after": "fuzz"}, timeout=5) as j:
        pass
    assert j.response is not None and j.response["pid"] == peer.pid

    ctx = watcher.job("doomed", name="hang")
    await asyncio.wait_for(ctx.__aenter__(), 5)
    first = await asyncio.wait_for(ctx.__anext__(), 5)
    assert first.type == JobEvent.STREAM_START
    killed_at = loop.time()
    peer.kill()
    with pytest.raises(JobError, match="doomed"):
        await asyncio.wait_for(ctx.__aexit__(None, None, None), 10)
    assert loop.time() - killed_at <= 3.0
    assert [(d.worker_name, d.reason) for d in watcher.lost] == [("doomed", "lost")]


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("process tests use Linux signals")
