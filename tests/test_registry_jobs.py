"""Registry entries carry each worker's job names (issue 13): announced with the worker, kept by
every peer, checked before anyone sees them, and optional, so that older peers still count."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    ConfigurationError,
    Settings,
    WorkerReadyData,
    WorkerRegistry,
    WorkerRunner,
    job,
)
from pipecat_workers.bus import AsyncQueueBus, BusJobRequestMessage, JSONMessageSerializer
from pipecat_workers.bus.messages import BusWorkerRegistryMessage
from pipecat_workers.monitor import BusMonitor
from pipecat_workers.types import MAX_JOB_NAMES, WorkerRegistryEntry
from pipecat_workers.validate import MAX_NAME_LENGTH
from pipecat_workers.workers.peers import entries_of
from tests.bus.outage import Echo
from tests.helpers import running, wait_until
from tests.hostile import ENTRY, raw_envelope

SETTINGS = Settings(heartbeat_interval=0.25, lost_after=3, end_grace=1.0, cancel_timeout=0.5)


class Catchall(BaseWorker):
    """Takes any job: it overrides on_job_request."""

    @job("named")
    async def named(self, message: BusJobRequestMessage) -> None:
        pass

    async def on_job_request(self, message: BusJobRequestMessage) -> None:
        await self.send_job_response(message.job_id, {})


# -- the worker and its own runner ---------------------------------------------------------------


def test_a_worker_lists_its_job_names_sorted() -> None:
    assert Echo("e").job_names == ("echo", "slow")
    assert BaseWorker("plain").job_names == ()
    assert Echo("e").handles_any_job is False
    assert Catchall("c").handles_any_job is True


def test_a_job_name_no_peer_would_take_is_refused_where_it_is_declared() -> None:
    with pytest.raises(ConfigurationError, match="at most 1,024 characters"):
        job("j" * (MAX_NAME_LENGTH + 1))


async def test_the_runner_registers_and_announces_its_workers_job_names() -> None:
    runner = WorkerRunner(name="r", bus=AsyncQueueBus(), handle_sigint=False)
    await runner.add_workers(Echo("echo"), Catchall("any"), BaseWorker("plain"))
    async with running(runner):
        registry = runner.registry
        echo = registry.get("echo")
        assert echo is not None and echo.jobs == ("echo", "slow") and not echo.any_job
        catchall = registry.get("any")
        assert catchall is not None and catchall.jobs == ("named",) and catchall.any_job
        plain = registry.get("plain")
        assert plain is not None and plain.jobs == ()
        entries = {e.name: e for e in runner._registry_entries()}
        assert entries["echo"].jobs == ["echo", "slow"]
        assert entries["any"].any_job is True


# -- the registry ------------------------------------------------------------------------------


async def test_the_digest_covers_job_names() -> None:
    one, two = WorkerRegistry("r", incarnation=1.0), WorkerRegistry("r", incarnation=1.0)
    await one.register(WorkerReadyData("w", "r", 1.0, jobs=("a",)))
    await two.register(WorkerReadyData("w", "r", 1.0, jobs=("a", "b")))
    assert one.digest() != two.digest()


async def test_a_snapshot_with_other_job_names_updates_the_entry_without_a_new_arrival() -> None:
    registry = WorkerRegistry("local", incarnation=1.0)
    arrivals: list[WorkerReadyData] = []

    async def arrived(data: WorkerReadyData) -> None:
        arrivals.append(data)

    await registry.watch("w", arrived)
    await registry.register(WorkerReadyData("w", "peer", 2.0))
    assert await registry.register(WorkerReadyData("w", "peer", 2.0, jobs=("x",))) is False
    entry = registry.get("w")
    assert entry is not None and entry.jobs == ("x",)
    assert len(arrivals) == 1


# -- from the wire -------------------------------------------------------------------------------


def snapshot(*entries: dict[str, Any], runner: str = "ghost") -> bytes:
    return raw_envelope("registry.snapshot", {
        "source": runner, "target": None, "runner": runner, "workers": list(entries),
        "incarnation": 2.0, "digest": "d"})


def entry(**fields: Any) -> dict[str, Any]:
    return {"$t": ENTRY, "v": {"name": "w", **fields}}


def test_job_names_are_checked_before_anyone_sees_them() -> None:
    s = JSONMessageSerializer(secret="")
    good = s.decode(snapshot(entry(jobs=["a", "b"], any_job=True)))
    assert good is not None and isinstance(good.message, BusWorkerRegistryMessage)
    assert good.message.workers == [WorkerRegistryEntry(name="w", jobs=["a", "b"], any_job=True)]
    old = s.decode(snapshot(entry()))  # a peer of an older version: no such field
    assert old is not None and isinstance(old.message, BusWorkerRegistryMessage)
    assert old.message.workers[0].jobs is None
    bad = [entry(jobs="echo"), entry(jobs=[5]), entry(jobs=[None]), entry(jobs={"a": 1}),
           entry(jobs=["j" * (MAX_NAME_LENGTH + 1)]),
           entry(jobs=[f"j{i}" for i in range(MAX_JOB_NAMES + 1)]), entry(any_job="yes")]
    for one in bad:
        assert s.decode(snapshot(one)) is None, one
    assert s.stats()["invalid"] == len(bad)


def test_membership_rechecks_job_names_it_did_not_decode() -> None:
    """A snapshot built in process (the embedded bus) skips the decoder: membership's own
    check refuses what the decoder would have."""
    fine = entries_of([WorkerRegistryEntry(name="w", jobs=["b", "a", "b"])])
    assert fine is not None and fine[0].jobs == ["a", "b"]
    assert entries_of([WorkerRegistryEntry(name="w")]) == [WorkerRegistryEntry(name="w")]
    for jobs in (["", "a"], [3], "ab", ["j"] * (MAX_JOB_NAMES + 1)):
        assert entries_of([WorkerRegistryEntry(name="w", jobs=jobs)]) is None  # type: ignore[arg-type]


# -- across a real Redis bus ---------------------------------------------------------------------


def redis_bus(url: str, channel: str):  # type: ignore[no-untyped-def]
    from pipecat_workers.bus import RedisBus

    return RedisBus(url, channel=channel)


@pytest.mark.redis
async def test_peers_and_monitors_on_redis_see_the_job_names(redis_url: str) -> None:
    channel = f"jobs-{uuid.uuid4().hex[:8]}"
    host = WorkerRunner(name="host", bus=redis_bus(redis_url, channel), handle_sigint=False,
                        settings=SETTINGS)
    await host.add_workers(Echo("echo"), Catchall("any"))
    peer = WorkerRunner(name="peer", bus=redis_bus(redis_url, channel), handle_sigint=False,
                        settings=SETTINGS)
    await peer.add_workers(BaseWorker("client"))
    async with running(host), running(peer):
        seen = await peer.registry.wait_for("echo", timeout=5)
        assert seen.runner == "host" and seen.jobs == ("echo", "slow") and not seen.any_job
        other = await peer.registry.wait_for("any", timeout=5)
        assert other.jobs == ("named",) and other.any_job
        async with BusMonitor(redis_bus(redis_url, channel), settings=SETTINGS) as monitor:
            watched = await monitor.registry.wait_for("echo", timeout=5)
            assert watched.jobs == ("echo", "slow")


@pytest.mark.redis
async def test_on_redis_an_old_peer_counts_and_a_hostile_one_is_dropped(redis_url: str) -> None:
    import redis.asyncio as aioredis

    channel = f"jobs-{uuid.uuid4().hex[:8]}"
    bus = redis_bus(redis_url, channel)
    runner = WorkerRunner(name="victim", bus=bus, handle_sigint=False, settings=SETTINGS)
    await runner.add_workers(BaseWorker("client"))
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with running(runner):
            hostile = snapshot(entry(name="evil", jobs=[{"$t": ENTRY, "v": {"name": "x"}}]),
                               runner="mallory")
            await client.publish(bus.channel, hostile)
            await client.publish(bus.channel, snapshot(entry(name="old"), runner="elder"))
            await wait_until(lambda: "old" in runner.registry, timeout=5)
            old = runner.registry.get("old")
            assert old is not None and old.jobs is None and not old.any_job
            await asyncio.sleep(0.1)
            assert "evil" not in runner.registry
            assert bus.stats()["wire_dropped"].get("invalid", 0) >= 1
    finally:
        await client.aclose()
