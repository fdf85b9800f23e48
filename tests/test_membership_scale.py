"""Membership under hostile input and at scale: bounded tables, presence, claims, supervision.

The runners here share one in-process bus. ``PresenceBus`` gives that bus a presence the test
controls, to exercise membership as it runs on the hub, Redis and PostgreSQL (no heartbeats;
the backend says who is there); the plain bus exercises the heartbeat protocol.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from pipecat_workers import Settings, WorkerRunner
from pipecat_workers.bus import (
    AsyncQueueBus,
    BusHeartbeatMessage,
    BusRegistryRequestMessage,
    BusRunnerLeaveMessage,
    BusWorkerRegistryMessage,
)
from pipecat_workers.bus.presence import Presence, PresenceListener
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.workers.peers import MAX_PEERS
from tests.helpers import Recorder, running, settle, wait_until
from tests.test_membership import FAST, Echo, Watcher, fake_runner

WINDOW = FAST.lost_after * FAST.heartbeat_interval  # 0.15 s


class FakePresence(Presence):
    """A presence the test drives: ``arrive``/``depart`` are what a backend would report."""

    def __init__(self) -> None:
        self.here: set[str] = set()
        self.listeners: list[PresenceListener] = []
        self.watched: list[str] = []
        self.gone_for_good: dict[str, bool] = {}

    async def join(self, listener: PresenceListener, interval: float) -> None:
        self.listeners.append(listener)
        for runner in self.here:
            listener.present(runner)

    async def leave(self) -> None:
        pass

    def watch(self, runner: str) -> None:
        self.watched.append(runner)
        for listener in self.listeners:
            if runner in self.here:
                listener.present(runner)
            else:
                listener.absent(runner, certain=False)

    def forget(self, runner: str) -> None:
        pass

    def is_present(self, runner: str) -> bool | None:
        return runner in self.here

    def arrive(self, runner: str) -> None:
        self.here.add(runner)
        for listener in self.listeners:
            listener.present(runner)

    def depart(self, runner: str, *, certain: bool) -> None:
        self.here.discard(runner)
        for listener in self.listeners:
            listener.absent(runner, certain=certain)


class PresenceBus(AsyncQueueBus):
    def __init__(self, presence: FakePresence) -> None:
        super().__init__()
        self._fake = presence
        self.probes: dict[str, bool | None] = {}

    @property
    def presence(self) -> Presence | None:
        return self._fake

    async def probe(self, runner: str) -> bool | None:
        return self.probes.get(runner)


@pytest.fixture
async def presence() -> FakePresence:
    return FakePresence()


@pytest.fixture
async def pbus(presence: FakePresence):
    bus = PresenceBus(presence)
    await bus.start()
    yield bus
    await bus.close()


@pytest.fixture
async def bus():
    shared = AsyncQueueBus()
    await shared.start()
    yield shared
    await shared.close()


def runner_on(bus: AsyncQueueBus, name: str, settings: Settings = FAST) -> WorkerRunner:
    runner = WorkerRunner(name=name, bus=bus, handle_sigint=False, settings=settings)
    if isinstance(bus, PresenceBus):
        bus._fake.here.add(name)
    return runner


def sent(runner: WorkerRunner, kind: str) -> int:
    return int(runner.stats()["messages"]["sent"].get(kind, 0))


# -- no input stops liveness ---------------------------------------------------------------


async def test_malformed_membership_messages_are_dropped_and_liveness_goes_on(bus) -> None:
    a = runner_on(bus, "runner-a")
    watcher = Watcher("watcher", "ghost-worker")
    await a.add_workers(watcher)
    bad: list[dict[str, Any]] = [
        {"runner": "x1", "incarnation": 1.0, "interval": "x"},
        {"runner": 5, "incarnation": 1.0},
        {"runner": "x2", "incarnation": "1"},
        {"runner": "x3", "incarnation": 1.0, "interval": math.inf},
        {"runner": "x4", "incarnation": math.nan, "interval": -1.0},
        {"runner": "x5", "incarnation": 1.0, "digest": 7, "stats": "junk"},
        {"runner": "x" * 5000, "incarnation": 1.0},
        {"runner": "x6", "incarnation": True},
        {"runner": "x7", "incarnation": 10 ** 400},
    ]
    async with running(a):
        for fields in bad:
            await bus.send(BusHeartbeatMessage(source="evil", **fields))
        for workers in ("abc", [{"name": 1}], [WorkerRegistryEntry(name=3)],  # type: ignore[arg-type]
                        [WorkerRegistryEntry(name="ok", started_at="soon")]):  # type: ignore[arg-type]
            await bus.send(BusWorkerRegistryMessage(source="evil", runner="x8", incarnation=1.0,
                                                    workers=workers))  # type: ignore[arg-type]
        await bus.send(BusRunnerLeaveMessage(source="evil", runner=None,  # type: ignore[arg-type]
                                             incarnation=1.0))
        await bus.send(BusRegistryRequestMessage(source="evil", runner=[1]))  # type: ignore[arg-type]
        await settle(0.1)
        # Liveness still works: a real (fake) runner that goes silent is lost on time.
        await fake_runner(bus, "ghost", 1.0, ["ghost-worker"])
        await wait_until(lambda: ("ready", "ghost-worker") in watcher.events)
        await wait_until(lambda: ("lost", "ghost-worker:lost") in watcher.events, timeout=2)
        stats = a.stats()
        assert stats["loops"] == {}  # nothing crashed
        dropped = stats["membership"]["dropped"]
        assert dropped["bad_runner"] >= 3 and dropped["bad_incarnation"] >= 3
        assert dropped["bad_workers"] >= 3
        # The interval of infinity was clamped: that peer expired like any other.
        assert set(a.peers) <= {"x1", "x5", "x8"} and "x3" not in a.peers
        await wait_until(lambda: not a.peers, timeout=5)


async def test_twenty_thousand_forged_heartbeats_leave_bounded_state_that_expires(bus) -> None:
    a = runner_on(bus, "runner-a")
    async with running(a):
        for i in range(20_000):
            await bus.send(BusHeartbeatMessage(source=f"f{i}", runner=f"f{i}", incarnation=1.0,
                                               digest="d", interval=1e9))
        await wait_until(lambda: bus.stats()["queued"] == 0, timeout=30)
        summary = a.stats()["membership"]
        assert len(a.peers) <= MAX_PEERS
        assert summary["refused"] >= 20_000 - MAX_PEERS
        await wait_until(lambda: not a.peers, timeout=10)  # intervals are capped: they expire
        # and a real newcomer is welcome again
        await fake_runner(bus, "real", 2.0, ["real-worker"])
        await wait_until(lambda: "real-worker" in a.registry)


async def test_forged_heartbeats_on_a_presence_bus_are_forgotten_within_a_window(
        pbus: PresenceBus, presence: FakePresence) -> None:
    a = runner_on(pbus, "runner-a")
    async with running(a):
        for i in range(20_000):
            await pbus.send(BusHeartbeatMessage(source=f"f{i}", runner=f"f{i}",
                                                incarnation=1.0, digest="d"))
        await wait_until(lambda: pbus.stats()["queued"] == 0, timeout=30)
        assert len(a.peers) <= MAX_PEERS
        await wait_until(lambda: not a.peers, timeout=2)
        assert sent(a, "BusRegistryRequestMessage") == 0  # nothing was sent to forgeries
        assert a.stats()["membership"]["doubtful"] == 0


async def test_a_crashing_membership_loop_is_restarted_and_counted(bus) -> None:
    a = runner_on(bus, "runner-a")
    membership = a._membership
    real = membership._expire
    calls = 0

    async def flaky(now: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        await real(now)

    membership._expire = flaky  # type: ignore[method-assign]
    async with running(a):
        await wait_until(lambda: "membership" in a.stats()["loops"])
        loop = a.stats()["loops"]["membership"]
        assert loop["failures"] == 1 and loop["failing"] is True
        assert loop["last_error"] == "RuntimeError: boom"
        await fake_runner(bus, "ghost", 1.0, ["gw"])  # and it still does its job
        await wait_until(lambda: "gw" in a.registry)
        await wait_until(lambda: "gw" not in a.registry, timeout=2)


# -- presence ---------------------------------------------------------------------------------


async def test_no_heartbeat_is_sent_with_a_presence_and_idle_runners_stay_quiet(
        pbus: PresenceBus) -> None:
    a, b = runner_on(pbus, "runner-a"), runner_on(pbus, "runner-b")
    await a.add_workers(Echo("echo-a"))
    await b.add_workers(Echo("echo-b"))
    async with running(a), running(b):
        await wait_until(lambda: "echo-b" in a.registry and "echo-a" in b.registry)
        await asyncio.sleep(0.2)
        before = sent(a, "BusHeartbeatMessage") + sent(a, "BusWorkerRegistryMessage")
        await asyncio.sleep(10 * FAST.heartbeat_interval)
        after = sent(a, "BusHeartbeatMessage") + sent(a, "BusWorkerRegistryMessage")
        assert after == before  # idle: nothing to say
        assert a.peers["runner-b"].stats is not None  # counters came with the greeting


async def test_a_runner_the_presence_says_is_gone_is_lost_at_once(
        pbus: PresenceBus, presence: FakePresence) -> None:
    a = runner_on(pbus, "runner-a")
    watcher = Watcher("watcher", "pw")
    await a.add_workers(watcher)
    async with running(a):
        presence.arrive("p")
        await fake_runner(pbus, "p", 1.0, ["pw"])
        await wait_until(lambda: ("ready", "pw") in watcher.events)
        loop = asyncio.get_running_loop()
        gone = loop.time()
        presence.depart("p", certain=True)
        await wait_until(lambda: "pw" not in a.registry)
        assert loop.time() - gone < WINDOW / 2
        assert watcher.events[-1] == ("lost", "pw:lost")


async def test_a_runner_only_missing_from_the_presence_has_a_window_to_come_back(
        pbus: PresenceBus, presence: FakePresence) -> None:
    a = runner_on(pbus, "runner-a")
    async with running(a):
        presence.arrive("p")
        await fake_runner(pbus, "p", 1.0, ["pw"])
        await wait_until(lambda: "pw" in a.registry)
        presence.depart("p", certain=False)
        await asyncio.sleep(WINDOW / 2)
        presence.arrive("p")  # back in time
        await asyncio.sleep(2 * WINDOW)
        assert "pw" in a.registry
        presence.depart("p", certain=False)
        await wait_until(lambda: "pw" not in a.registry, timeout=2)


async def test_certain_news_during_our_own_outage_is_doubted(
        pbus: PresenceBus, presence: FakePresence) -> None:
    a = runner_on(pbus, "runner-a")
    async with running(a):
        presence.arrive("p")
        await fake_runner(pbus, "p", 1.0, ["pw"])
        await wait_until(lambda: "pw" in a.registry)
        a._membership.bus_down()
        presence.depart("p", certain=True)  # a hub that restarted says so, say
        await asyncio.sleep(3 * WINDOW)
        assert "pw" in a.registry  # our own outage: excused
        a._membership.bus_up()
        presence.depart("p", certain=True)  # still settling: it may be reconnecting
        await asyncio.sleep(WINDOW / 2)
        presence.arrive("p")
        await asyncio.sleep(2 * WINDOW)
        assert "pw" in a.registry


async def test_a_newcomer_is_registered_before_the_presence_confirms_it(
        pbus: PresenceBus, presence: FakePresence) -> None:
    a = runner_on(pbus, "runner-a")
    peer = Recorder("p")
    pbus.subscribe(peer, role="runner")
    async with running(a):
        await fake_runner(pbus, "p", 1.0, ["pw"])  # not present yet: maybe forged
        await wait_until(lambda: "pw" in a.registry)
        await settle()
        assert not [m for m in peer.messages if m.target == "p"]  # nothing sent to it yet
        presence.arrive("p")
        greeting = await peer.wait_for(lambda m: isinstance(m, BusWorkerRegistryMessage)
                                       and m.target == "p")
        assert greeting.runner == "runner-a"
        await asyncio.sleep(2 * WINDOW)
        assert "pw" in a.registry


async def test_a_forged_leave_excludes_a_live_runner_only_for_a_while(
        pbus: PresenceBus) -> None:
    a, b = runner_on(pbus, "runner-a"), runner_on(pbus, "runner-b")
    watcher = Watcher("watcher", "echo-b")
    await a.add_workers(watcher)
    await b.add_workers(Echo("echo-b"))
    async with running(a), running(b):
        await wait_until(lambda: ("ready", "echo-b") in watcher.events)
        await pbus.send(BusRunnerLeaveMessage(source="evil", runner="runner-b",
                                              incarnation=b.incarnation))
        await wait_until(lambda: "echo-b" not in a.registry)
        await wait_until(lambda: "echo-b" in a.registry, timeout=3 * WINDOW + 1)
        assert watcher.events.count(("ready", "echo-b")) == 2


async def test_a_forged_leave_is_forgotten_once_the_runner_beats_again(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    await b.add_workers(Echo("echo-b"))
    async with running(a), running(b):
        await wait_until(lambda: "echo-b" in a.registry)
        await bus.send(BusRunnerLeaveMessage(source="evil", runner="runner-b",
                                             incarnation=b.incarnation))
        await wait_until(lambda: "echo-b" not in a.registry)
        await wait_until(lambda: "echo-b" in a.registry, timeout=3 * WINDOW + 1)
        assert not a._membership._book.left


# -- name claims -------------------------------------------------------------------------------


async def test_a_claim_is_granted_when_the_holder_is_lost_and_watchers_fire(bus) -> None:
    a = runner_on(bus, "runner-a")
    watcher = Watcher("watcher", "svc")
    await a.add_workers(watcher)
    async with running(a):
        await fake_runner(bus, "old", 1.0, ["svc"], interval=0.05)  # then silent: dies
        await wait_until(lambda: ("ready", "svc") in watcher.events)

        async def new_process() -> None:  # a new runner name, the same worker name
            for _ in range(40):
                await fake_runner(bus, "new", 2.0, ["svc"], digest="n")
                await asyncio.sleep(FAST.heartbeat_interval)

        beating = asyncio.ensure_future(new_process())
        try:
            await wait_until(lambda: a.registry.claims("svc") == ["new"])
            await wait_until(lambda: getattr(a.registry.get("svc"), "runner", None) == "new",
                             timeout=2)
            assert watcher.events == [("ready", "svc"), ("lost", "svc:lost"), ("ready", "svc")]
            assert a.registry.claim_count == 0
        finally:
            beating.cancel()


async def test_a_claim_on_the_name_of_a_runner_the_bus_says_is_gone_is_granted_at_once(
        pbus: PresenceBus, presence: FakePresence) -> None:
    a = runner_on(pbus, "runner-a")
    watcher = Watcher("watcher", "svc")
    await a.add_workers(watcher)
    async with running(a):
        presence.here.update({"old", "new"})
        await fake_runner(pbus, "old", 1.0, ["svc"])
        await wait_until(lambda: ("ready", "svc") in watcher.events)
        pbus.probes["old"] = False  # its process is gone; the presence has not said so yet
        loop = asyncio.get_running_loop()
        started = loop.time()
        await fake_runner(pbus, "new", 2.0, ["svc"])
        await wait_until(lambda: getattr(a.registry.get("svc"), "runner", None) == "new")
        assert loop.time() - started < WINDOW
        assert watcher.events[-2:] == [("lost", "svc:lost"), ("ready", "svc")]


async def test_a_claim_goes_with_its_runner_or_when_it_no_longer_lists_the_name(bus) -> None:
    a = runner_on(bus, "runner-a")
    async with running(a):
        await fake_runner(bus, "holder", 1.0, ["svc"], interval=10)
        await fake_runner(bus, "c1", 1.0, ["svc", "other"], interval=10)
        await fake_runner(bus, "c2", 1.0, ["svc"], interval=10)
        await wait_until(lambda: a.registry.claims("svc") == ["c1", "c2"])
        await fake_runner(bus, "c1", 1.0, ["other"], digest="e", interval=10)
        await wait_until(lambda: a.registry.claims("svc") == ["c2"])
        await bus.send(BusRunnerLeaveMessage(source="c2", runner="c2", incarnation=1.0))
        await wait_until(lambda: a.registry.claims("svc") == [])
        await bus.send(BusRunnerLeaveMessage(source="holder", runner="holder", incarnation=1.0))
        await wait_until(lambda: "svc" not in a.registry)


async def test_claims_are_bounded(bus) -> None:
    a = runner_on(bus, "runner-a")
    async with running(a):
        await fake_runner(bus, "holder", 1.0, ["svc"], interval=10)
        for i in range(50):
            await fake_runner(bus, f"c{i}", 1.0, ["svc"], interval=10)
        await settle(0.1)
        assert len(a.registry.claims("svc")) <= 8


async def test_the_registry_grants_a_claim_when_the_name_is_free_and_not_on_replacement(
        ) -> None:
    from pipecat_workers import WorkerReadyData, WorkerRegistry

    registry = WorkerRegistry("me")
    events: list[tuple[str, str]] = []

    async def ready(data: WorkerReadyData) -> None:
        events.append(("ready", data.runner))

    await registry.watch("svc", ready)
    assert await registry.register(WorkerReadyData(worker_name="svc", runner="old"))
    assert not await registry.register(WorkerReadyData(worker_name="svc", runner="new",
                                                       incarnation=5.0))
    assert registry.claims("svc") == ["new"] and registry.claimed_by("new") == ["svc"]
    # The holder restarts: its newer incarnation takes its place; the claim waits on.
    await registry.remove_runner("old", reason="replaced", before=2.0)
    assert "svc" not in registry and registry.claims("svc") == ["new"]
    await registry.grant_free_claims()
    assert registry.get("svc").runner == "new" and registry.claim_count == 0
    assert events == [("ready", "old"), ("ready", "new")]
    # A claim of an older incarnation goes when its runner is replaced.
    assert not await registry.register(WorkerReadyData(worker_name="svc", runner="x",
                                                       incarnation=1.0))
    registry.drop_claims("x", before=2.0)
    assert registry.claims("svc") == []


async def test_the_registry_keeps_a_bounded_number_of_remote_workers(monkeypatch) -> None:
    from pipecat_workers import WorkerReadyData, WorkerRegistry
    from pipecat_workers import registry as module

    monkeypatch.setattr(module, "_MAX_REMOTE", 10)
    registry = WorkerRegistry("me")
    for i in range(20):
        await registry.register(WorkerReadyData(worker_name=f"w{i}", runner="forger"))
    assert len(registry) == 10
    assert await registry.register(WorkerReadyData(worker_name="mine", runner="me"))
