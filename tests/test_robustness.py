"""Hard cases: hooks that wait on each other, full queues, stray cancellations, late and
out-of-order membership messages. Each was a way for work to hang or vanish."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipecat_workers import (
    BaseWorker,
    JobStatus,
    Settings,
    WorkerRegistryEntry,
    WorkerRunner,
    job,
)
from pipecat_workers.bus import (
    AsyncQueueBus,
    BusDataMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusRunnerLeaveMessage,
    BusWorkerRegistryMessage,
    BusWorkerStoppedMessage,
)
from tests.helpers import Recorder, running, wait_until


class Echo(BaseWorker):
    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"by": self.name}


class Boss(BaseWorker):
    """Asks its helper for something as soon as it is activated."""

    def __init__(self, name: str, helper: str) -> None:
        super().__init__(name)
        self.helper = helper
        self.answer: dict[str, Any] | None = None

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        async with self.job(self.helper, name="echo", timeout=5) as j:
            pass
        self.answer = j.response


async def test_a_hook_may_wait_for_a_worker_that_starts_after_it() -> None:
    runner = WorkerRunner(handle_sigint=False)
    boss = Boss("boss", "helper")
    await runner.add_workers(boss, Echo("helper"))  # the boss starts first
    async with running(runner):
        await wait_until(lambda: boss.answer is not None, timeout=3)
        assert boss.answer == {"by": "helper"}


async def test_a_child_may_wait_for_a_sibling_added_after_it() -> None:
    runner = WorkerRunner(handle_sigint=False)
    parent = BaseWorker("parent")
    await runner.add_workers(parent)
    async with running(runner) as task:
        boss = Boss("child-boss", "child-helper")
        await parent.add_workers(boss)
        await parent.add_workers(Echo("child-helper"))
        await wait_until(lambda: boss.answer is not None, timeout=3)
        await parent.cancel(reason="done")  # a session cancel still gets through
        await asyncio.wait_for(task, 5)


class SlowRequester(BaseWorker):
    async def on_job_response(self, message: BusJobResponseMessage) -> None:
        await asyncio.sleep(0.005)


async def test_final_answers_are_never_dropped_from_a_full_queue() -> None:
    runner = WorkerRunner(handle_sigint=False, settings=Settings(data_queue_size=8))
    requester = SlowRequester("requester")
    members = [Echo(f"m{i}") for i in range(30)]
    await runner.add_workers(requester, *members)
    async with running(runner):
        async with requester.job_group(*(m.name for m in members), name="echo",
                                       timeout=10) as group:
            pass
        assert group.result.ok and len(group.responses) == 30
        assert "BusJobResponseMessage" not in runner.stats()["messages"]["dropped"]


class Flaky:
    """A subscriber whose first handling raises CancelledError (it awaited a dead task)."""

    name = "flaky"

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def on_bus_message(self, message: Any) -> None:
        self.seen.append(message.n)
        if message.n == 1:
            raise asyncio.CancelledError()


async def test_a_handler_raising_cancelled_error_does_not_stall_its_queue(caplog) -> None:
    from dataclasses import dataclass

    @dataclass(kw_only=True, slots=True)
    class Note(BusDataMessage):
        n: int

    bus = AsyncQueueBus()
    flaky = Flaky()
    bus.subscribe(flaky)
    for n in (1, 2, 3):
        await bus.send(Note(source="x", target="flaky", n=n))
    with caplog.at_level(logging.ERROR, logger="pipecat_workers.bus"):
        await bus.start()
        await wait_until(lambda: flaky.seen == [1, 2, 3], timeout=2)
    assert any("cancelled" in r.getMessage() for r in caplog.records)
    await bus.close()


async def test_a_cancel_that_overtakes_its_request_still_cancels_it() -> None:
    bus = AsyncQueueBus()
    runner = WorkerRunner(handle_sigint=False, bus=bus)
    ran: list[str] = []

    class Worker(BaseWorker):
        @job("work")
        async def work(self, message: BusJobRequestMessage) -> None:
            ran.append(message.job_id)

    requester = Recorder("requester")
    bus.subscribe(requester)
    await runner.add_workers(Worker("worker"))
    # Queued while the bus is stopped, the (system) cancel is delivered before the request.
    await bus.send(BusJobRequestMessage(source="requester", target="worker", job_id="j1",
                                        job_name="work"))
    await bus.send(BusJobCancelMessage(source="requester", target="worker", job_id="j1",
                                       reason="never mind"))
    async with running(runner):
        answer = await requester.wait_for(lambda m: isinstance(m, BusJobResponseMessage))
        assert answer.status is JobStatus.CANCELLED and answer.response == {
            "reason": "never mind"}
        assert ran == []


async def test_a_reader_that_stopped_reading_costs_one_wait_not_one_per_event() -> None:
    class Streamer(BaseWorker):
        @job("stream")
        async def stream(self, message: BusJobRequestMessage) -> None:
            for i in range(20):
                await self.send_job_stream_data(message.job_id, {"i": i})
            await self.send_job_stream_end(message.job_id, {})

    runner = WorkerRunner(handle_sigint=False,
                          settings=Settings(event_queue_size=2, event_wait=0.3))
    client = BaseWorker("client")
    await runner.add_workers(Streamer("streamer"), client)
    async with running(runner):
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with client.job("streamer", name="stream", timeout=10) as j:
            async for _ in j:
                break  # read one, then do something else while the stream goes on
            await asyncio.sleep(0.05)
        assert j.status is JobStatus.COMPLETED
        assert loop.time() - started < 2.0  # one 0.3 s wait, not one per dropped event


async def peer_snapshot(bus: AsyncQueueBus, incarnation: float, workers: list[str]) -> None:
    await bus.send(BusWorkerRegistryMessage(
        source="peer", runner="peer", incarnation=incarnation, digest=str(incarnation),
        workers=[WorkerRegistryEntry(name=w) for w in workers]))


async def test_a_stop_notice_from_an_old_incarnation_removes_nothing() -> None:
    bus = AsyncQueueBus()
    await bus.start()
    runner = WorkerRunner(name="me", bus=bus, handle_sigint=False)
    async with running(runner):
        await peer_snapshot(bus, 1.0, ["w"])
        await peer_snapshot(bus, 2.0, ["w"])
        await wait_until(lambda: "w" in runner.registry
                         and runner.registry.get("w").incarnation == 2.0)
        await bus.send(BusWorkerStoppedMessage(source="w", runner="peer", incarnation=1.0))
        await asyncio.sleep(0.05)
        assert "w" in runner.registry
    await bus.close()


async def test_a_runner_that_left_does_not_come_back_with_a_late_snapshot() -> None:
    bus = AsyncQueueBus()
    await bus.start()
    runner = WorkerRunner(name="me", bus=bus, handle_sigint=False)
    async with running(runner):
        await peer_snapshot(bus, 1.0, ["w"])
        await wait_until(lambda: "w" in runner.registry)
        await bus.send(BusRunnerLeaveMessage(source="peer", runner="peer", incarnation=1.0))
        await wait_until(lambda: "w" not in runner.registry)
        await peer_snapshot(bus, 1.0, ["w"])  # sent before the leave, arriving after it
        await asyncio.sleep(0.05)
        assert "w" not in runner.registry
        await peer_snapshot(bus, 3.0, ["w"])  # a new incarnation is welcome
        await wait_until(lambda: "w" in runner.registry)
    await bus.close()


async def test_a_message_to_nobody_is_counted_and_logged_once(caplog) -> None:
    runner = WorkerRunner(handle_sigint=False)
    sender = BaseWorker("sender")
    await runner.add_workers(sender)
    async with running(runner):
        with caplog.at_level(logging.WARNING, logger="pipecat_workers.bus"):
            await sender.activate_worker("typo")
            await sender.activate_worker("typo")
        assert runner.stats()["messages"]["dropped"] == {"BusActivateWorkerMessage": 2}
        assert [r.getMessage() for r in caplog.records].count(
            "no worker named 'typo' on this bus: dropped BusActivateWorkerMessage") == 1
