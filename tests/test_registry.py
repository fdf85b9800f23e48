"""Tests for WorkerRegistry: arrivals, departures, watches, waits, incarnations, digests."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pipecat_workers import WorkerLostData, WorkerReadyData, WorkerRegistry

LOCAL = "runner-local"


def ready(name: str, runner: str = LOCAL, incarnation: float = 1.0) -> WorkerReadyData:
    return WorkerReadyData(worker_name=name, runner=runner, incarnation=incarnation)


class Calls:
    """Async callables that record what they were called with."""

    def __init__(self) -> None:
        self.ready: list[WorkerReadyData] = []
        self.lost: list[WorkerLostData] = []
        self.log: list[tuple[str, str]] = []  # (event, worker name), across both kinds

    async def on_ready(self, data: WorkerReadyData) -> None:
        self.ready.append(data)
        self.log.append(("ready", data.worker_name))

    async def on_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)
        self.log.append(("lost", data.worker_name))


@pytest.fixture
def registry() -> WorkerRegistry:
    return WorkerRegistry(LOCAL, incarnation=1.0)


# -- arrivals -------------------------------------------------------------------------------


def test_runner_name_and_incarnation_echo_the_constructor():
    registry = WorkerRegistry("r1", incarnation=42.5)
    assert registry.runner_name == "r1"
    assert registry.incarnation == 42.5


async def test_register_local_worker(registry):
    assert await registry.register(ready("a")) is True
    assert registry.local_workers == ["a"]
    assert registry.remote_workers == []


async def test_register_remote_worker(registry):
    assert await registry.register(ready("a", runner="r2")) is True
    assert registry.local_workers == []
    assert registry.remote_workers == ["a"]
    assert registry.runners == ["r2"]


async def test_duplicate_registration_returns_false_and_lists_once(registry):
    assert await registry.register(ready("a")) is True
    assert await registry.register(ready("a")) is False
    assert registry.local_workers == ["a"]
    assert len(registry) == 1


async def test_get_returns_the_stored_object(registry):
    local, remote = ready("a"), ready("b", runner="r2")
    await registry.register(local)
    await registry.register(remote)
    assert registry.get("a") is local
    assert registry.get("b") is remote
    assert registry.get("nobody") is None


async def test_contains(registry):
    await registry.register(ready("a"))
    assert "a" in registry
    assert "b" not in registry


async def test_workers_of_several_remote_runners_are_all_listed(registry):
    await registry.register(ready("a", runner="r2"))
    await registry.register(ready("b", runner="r3"))
    assert sorted(registry.remote_workers) == ["a", "b"]
    assert len(registry) == 2
    assert registry.workers_of("r3") == [registry.get("b")]


# -- watches -------------------------------------------------------------------------------


async def test_watch_fires_on_registration(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready)
    assert calls.ready == []
    data = ready("a")
    await registry.register(data)
    assert calls.ready == [data] and calls.ready[0] is data


async def test_watch_is_idempotent_for_the_same_handler(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready)
    await registry.watch("a", calls.on_ready)  # an equal bound method, a new object
    assert registry.watch_count() == 1
    await registry.register(ready("a"))
    assert len(calls.ready) == 1


async def test_watch_ignores_other_workers(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready)
    await registry.register(ready("b"))
    assert calls.ready == []


async def test_watch_does_not_fire_on_a_duplicate_registration(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready)
    await registry.register(ready("a"))
    await registry.register(ready("a"))
    assert len(calls.ready) == 1


async def test_several_watchers_each_fire_once(registry):
    one, two = Calls(), Calls()
    await registry.watch("a", one.on_ready)
    await registry.watch("a", two.on_ready)
    await registry.register(ready("a"))
    assert len(one.ready) == 1 and len(two.ready) == 1


async def test_watch_fires_at_once_if_already_registered(registry):
    data = ready("a", runner="r2")
    await registry.register(data)
    calls = Calls()
    await registry.watch("a", calls.on_ready)
    assert calls.ready == [data]


async def test_unwatch_stops_notifications(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready, on_lost=calls.on_lost)
    registry.unwatch("a", calls.on_ready)
    assert registry.watch_count() == 0
    await registry.register(ready("a"))
    await registry.unregister("a")
    assert calls.ready == [] and calls.lost == []
    registry.unwatch("a", calls.on_ready)  # unknown: no error


async def test_failing_watch_handler_is_logged_and_others_still_run(registry, caplog):
    async def broken(data: WorkerReadyData) -> None:
        raise RuntimeError("boom")

    async def broken_lost(data: WorkerLostData) -> None:
        raise RuntimeError("boom lost")

    calls = Calls()
    await registry.watch("a", broken, on_lost=broken_lost)
    await registry.watch("a", calls.on_ready, on_lost=calls.on_lost)
    with caplog.at_level(logging.ERROR, logger="pipecat_workers.registry"):
        assert await registry.register(ready("a")) is True
        await registry.unregister("a")
    assert len(calls.ready) == 1 and len(calls.lost) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("'a'" in m and "watch handler" in m for m in messages)
    assert any("'a'" in m and "lost handler" in m for m in messages)


async def test_failing_handler_on_an_immediate_watch_is_logged_too(registry, caplog):
    await registry.register(ready("a"))

    async def broken(data: WorkerReadyData) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="pipecat_workers.registry"):
        await registry.watch("a", broken)  # must not raise into the caller
    assert any("'a'" in r.getMessage() for r in caplog.records)
    assert registry.watch_count() == 1


# -- departures -----------------------------------------------------------------------------


async def test_unregister_notifies_on_lost_and_departure_listeners(registry):
    watcher, listener = Calls(), Calls()
    await registry.watch("a", watcher.on_ready, on_lost=watcher.on_lost)
    registry.add_departure_listener(listener.on_lost)
    await registry.register(ready("a", runner="r2"))
    lost = await registry.unregister("a", reason="left")
    expected = WorkerLostData(worker_name="a", runner="r2", reason="left")
    assert lost == expected
    assert watcher.lost == [expected] and listener.lost == [expected]
    assert "a" not in registry and registry.remote_workers == [] and registry.runners == []


async def test_unregister_defaults_to_stopped_and_ignores_unknown_names(registry):
    listener = Calls()
    registry.add_departure_listener(listener.on_lost)
    await registry.register(ready("a"))
    assert (await registry.unregister("a")).reason == "stopped"
    assert await registry.unregister("a") is None
    assert await registry.unregister("never") is None
    assert len(listener.lost) == 1


async def test_removed_departure_listener_is_not_called(registry):
    listener = Calls()
    registry.add_departure_listener(listener.on_lost)
    registry.remove_departure_listener(listener.on_lost)
    await registry.register(ready("a"))
    await registry.unregister("a")
    assert listener.lost == []


async def test_failing_departure_listener_does_not_stop_the_others(registry, caplog):
    async def broken(data: WorkerLostData) -> None:
        raise RuntimeError("boom")

    calls = Calls()
    registry.add_departure_listener(broken)
    registry.add_departure_listener(calls.on_lost)
    await registry.watch("a", calls.on_ready, on_lost=calls.on_lost)
    await registry.register(ready("a"))
    with caplog.at_level(logging.ERROR, logger="pipecat_workers.registry"):
        await registry.unregister("a")
    assert len(calls.lost) == 2  # as listener and as watcher
    assert any("departure listener" in r.getMessage() for r in caplog.records)


async def test_re_registration_after_unregister_fires_the_watch_again(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready, on_lost=calls.on_lost)
    await registry.register(ready("a"))
    await registry.unregister("a")
    assert await registry.register(ready("a")) is True
    assert calls.log == [("ready", "a"), ("lost", "a"), ("ready", "a")]


async def test_remove_runner_removes_only_that_runners_workers(registry):
    calls = Calls()
    registry.add_departure_listener(calls.on_lost)
    for name, runner in (("a", "r2"), ("b", "r2"), ("c", "r3"), ("d", LOCAL)):
        await registry.register(ready(name, runner=runner))
    removed = await registry.remove_runner("r2", reason="lost")
    assert [(x.worker_name, x.runner, x.reason) for x in removed] == [
        ("a", "r2", "lost"), ("b", "r2", "lost")]
    assert calls.lost == removed
    assert "a" not in registry and "b" not in registry
    assert "c" in registry and "d" in registry
    assert registry.runners == ["r3", LOCAL]
    assert await registry.remove_runner("r2", reason="lost") == []


async def test_remove_runner_before_removes_only_older_incarnations(registry):
    await registry.register(ready("old", runner="r2", incarnation=1.0))
    await registry.register(ready("new", runner="r2", incarnation=2.0))
    removed = await registry.remove_runner("r2", reason="replaced", before=2.0)
    assert [x.worker_name for x in removed] == ["old"]
    assert "old" not in registry and "new" in registry


# -- incarnations and ownership ---------------------------------------------------------


async def test_newer_incarnation_replaces_the_older_entry(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready, on_lost=calls.on_lost)
    await registry.register(ready("a", runner="r2", incarnation=1.0))
    newer = ready("a", runner="r2", incarnation=2.0)
    assert await registry.register(newer) is True
    assert registry.get("a") is newer
    assert calls.log == [("ready", "a"), ("lost", "a"), ("ready", "a")]
    assert calls.lost[0].reason == "replaced"
    assert calls.ready[-1] is newer
    assert registry.remote_workers == ["a"]


async def test_older_incarnation_is_ignored(registry):
    calls = Calls()
    await registry.watch("a", calls.on_ready, on_lost=calls.on_lost)
    current = ready("a", runner="r2", incarnation=2.0)
    await registry.register(current)
    assert await registry.register(ready("a", runner="r2", incarnation=1.0)) is False
    assert registry.get("a") is current
    assert len(calls.ready) == 1 and calls.lost == []


async def test_name_owned_by_another_runner_is_refused(registry, caplog):
    calls = Calls()
    await registry.watch("a", calls.on_ready, on_lost=calls.on_lost)
    owner = ready("a", runner="r2")
    await registry.register(owner)
    with caplog.at_level(logging.WARNING, logger="pipecat_workers.registry"):
        assert await registry.register(ready("a", runner="r3", incarnation=5.0)) is False
    assert registry.get("a") is owner
    assert registry.workers_of("r3") == []
    assert len(calls.ready) == 1 and calls.lost == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'a'" in warnings[0] and "r3" in warnings[0]


# -- waiting ------------------------------------------------------------------------------


async def test_wait_for_returns_at_once_if_registered(registry):
    data = ready("a")
    await registry.register(data)
    assert await registry.wait_for("a", timeout=0.001) is data
    assert registry.watch_count() == 0


async def test_wait_for_waits_for_the_registration(registry):
    waiter = asyncio.ensure_future(registry.wait_for("a", timeout=2))
    await asyncio.sleep(0)
    assert not waiter.done()
    assert registry.watch_count() == 1
    data = ready("a")
    await registry.register(data)
    assert await asyncio.wait_for(waiter, 1) is data
    assert registry.watch_count() == 0


async def test_several_waiters_are_all_woken(registry):
    waiters = [asyncio.ensure_future(registry.wait_for("a")) for _ in range(3)]
    await asyncio.sleep(0)
    assert registry.watch_count() == 3
    data = ready("a")
    await registry.register(data)
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [data] * 3
    assert registry.watch_count() == 0


async def test_wait_for_times_out_and_leaves_no_waiter(registry):
    with pytest.raises(TimeoutError):
        await registry.wait_for("a", timeout=0.01)
    assert registry.watch_count() == 0


async def test_cancelled_wait_for_leaves_no_waiter(registry):
    waiter = asyncio.ensure_future(registry.wait_for("a"))
    other = asyncio.ensure_future(registry.wait_for("a"))
    await asyncio.sleep(0)
    assert registry.watch_count() == 2
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert registry.watch_count() == 1
    data = ready("a")
    await registry.register(data)  # the cancelled waiter must not break the live one
    assert await asyncio.wait_for(other, 1) is data
    assert registry.watch_count() == 0


async def test_many_waits_do_not_grow_the_registry(registry):
    for _ in range(100):
        with pytest.raises(TimeoutError):
            await registry.wait_for("a", timeout=0.0001)
    await registry.register(ready("a"))
    for _ in range(100):
        await registry.wait_for("a")
    assert registry.watch_count() == 0


# -- digest ---------------------------------------------------------------------------------


async def test_digest_changes_with_local_workers_only(registry):
    empty = registry.digest()
    assert registry.digest() == empty
    await registry.register(ready("a"))
    with_a = registry.digest()
    assert with_a != empty
    assert registry.digest() == with_a
    await registry.register(ready("x", runner="r2"))  # a remote worker
    assert registry.digest() == with_a
    await registry.register(ready("b"))
    with_ab = registry.digest()
    assert with_ab not in (empty, with_a)
    await registry.unregister("b")
    assert registry.digest() == with_a
    await registry.unregister("a")
    assert registry.digest() == empty


async def test_digest_ignores_registration_order_and_covers_remote_runners():
    one, two = WorkerRegistry("r1"), WorkerRegistry("r1")
    for name in ("a", "b", "c"):
        await one.register(ready(name, runner="r1"))
    for name in ("c", "a", "b"):
        await two.register(ready(name, runner="r1"))
    assert one.digest() == two.digest()
    remote = WorkerRegistry("r9")
    for name in ("b", "a", "c"):
        await remote.register(ready(name, runner="r1"))
    assert remote.digest("r1") == one.digest()
    assert remote.digest() != one.digest()
