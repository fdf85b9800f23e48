"""Tests for the bus core and the in-process bus: delivery, priorities, routing, bounds."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from pipecat_workers.bus import (
    AsyncQueueBus,
    BusCancelWorkerMessage,
    BusDataMessage,
    BusEndMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusLocalMessage,
    BusMessage,
    BusSystemMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    WorkerBus,
)
from pipecat_workers.errors import BusClosedError, ConfigurationError
from tests.helpers import Recorder, wait_until


@dataclass(kw_only=True, slots=True)
class Note(BusDataMessage):
    """An application data message."""

    n: int = 0


@dataclass(kw_only=True, slots=True)
class Alarm(BusSystemMessage):
    """An application system message."""

    n: int = 0


@dataclass(kw_only=True, slots=True)
class LocalNote(BusLocalMessage, BusDataMessage):
    """A message that never leaves the process."""

    n: int = 0


class RecordingBus(WorkerBus):
    """A bus whose 'network' is a list: shows what would leave the process."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.published: list[BusMessage] = []

    async def _publish(self, message: BusMessage) -> None:
        self.published.append(message)


class Gated(Recorder):
    """Records messages, but blocks in the handler for data messages until released."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.cancelled = False

    async def on_bus_message(self, message: BusMessage) -> None:
        await super().on_bus_message(message)
        if isinstance(message, BusDataMessage):
            self.blocked.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise


class Failing(Recorder):
    """Raises on every message whose ``n`` is 0; records the others."""

    async def on_bus_message(self, message: BusMessage) -> None:
        if getattr(message, "n", None) == 0:
            raise RuntimeError("boom")
        await super().on_bus_message(message)


@pytest.fixture
async def bus():
    bus = AsyncQueueBus()
    await bus.start()
    yield bus
    await bus.close()


def nums(recorder: Recorder) -> list[int]:
    return [m.n for m in recorder.messages]  # type: ignore[attr-defined]


# -- delivery ----------------------------------------------------------------------------


async def test_delivers_the_identical_object(bus):
    rec = Recorder("a")
    bus.subscribe(rec)
    sent = Note(source="x", target="a", n=1)
    await bus.send(sent)
    await rec.wait_count(1)
    assert rec.messages[0] is sent


async def test_data_messages_arrive_in_send_order(bus):
    rec = Recorder("a")
    bus.subscribe(rec)
    sent = [Note(source="x", target="a", n=i) for i in range(5)]
    for message in sent:
        await bus.send(message)
    await rec.wait_count(5)
    assert all(got is want for got, want in zip(rec.messages, sent, strict=True))


async def test_messages_sent_while_stopped_are_delivered_after_start():
    bus = AsyncQueueBus()
    rec = Recorder("a")
    bus.subscribe(rec)
    await bus.send(Note(source="x", target="a", n=1))
    await asyncio.sleep(0.01)
    assert rec.messages == []
    await bus.start()
    assert bus.running
    await rec.wait_count(1)

    await bus.stop()
    assert not bus.running
    await bus.send(Note(source="x", target="a", n=2))
    await asyncio.sleep(0.01)
    assert nums(rec) == [1]
    await bus.start()
    await rec.wait_count(2)
    assert nums(rec) == [1, 2]
    await bus.close()


async def test_start_and_stop_are_idempotent(bus):
    rec = Recorder("a")
    bus.subscribe(rec)
    await bus.start()
    await bus.send(Note(source="x", target="a", n=1))
    await rec.wait_count(1)
    await bus.stop()
    await bus.stop()
    assert not bus.running
    await bus.start()
    await bus.send(Note(source="x", target="a", n=2))
    await rec.wait_count(2)
    assert nums(rec) == [1, 2]


async def test_restart_right_after_send_still_delivers():
    """A drain task cancelled before it ever ran must not wedge the mailbox."""
    bus = AsyncQueueBus()
    rec = Recorder("a")
    bus.subscribe(rec)
    await bus.start()
    await bus.send(Note(source="x", target="a", n=1))
    await bus.send(Alarm(source="x", target="a", n=2))
    await bus.stop()  # no yield in between: the drain tasks never got to run
    await bus.start()
    await rec.wait_count(2)
    assert sorted(nums(rec)) == [1, 2]
    await bus.send(Note(source="x", target="a", n=3))
    await rec.wait_count(3)
    await bus.close()


async def test_every_subscriber_gets_a_broadcast_once(bus):
    a, b = Recorder("a"), Recorder("b")
    bus.subscribe(a)
    bus.subscribe(b)
    sent = Note(source="x", n=1)
    await bus.send(sent)
    await a.wait_count(1)
    await b.wait_count(1)
    await asyncio.sleep(0.01)
    assert a.messages == [sent] and b.messages == [sent]
    assert a.messages[0] is sent and b.messages[0] is sent


async def test_subscribing_the_same_object_twice_is_a_no_op(bus):
    rec = Recorder("a")
    bus.subscribe(rec)
    bus.subscribe(rec)
    await bus.send(Note(source="x", n=1))
    await rec.wait_count(1)
    await asyncio.sleep(0.01)
    assert len(rec.messages) == 1
    assert bus.stats()["subscribers"] == 1


async def test_a_second_object_under_a_used_name_is_refused(bus):
    bus.subscribe(Recorder("a"))
    with pytest.raises(ConfigurationError, match="'a'"):
        bus.subscribe(Recorder("a"))


async def test_unsubscribe_stops_delivery_and_frees_the_name(bus):
    first = Recorder("a")
    bus.subscribe(first)
    await bus.send(Note(source="x", target="a", n=1))
    await first.wait_count(1)
    bus.unsubscribe(first)
    assert not bus.is_local("a")
    await bus.send(Note(source="x", target="a", n=2))
    await bus.send(Note(source="x", n=3))
    await asyncio.sleep(0.01)
    assert nums(first) == [1]

    second = Recorder("a")
    bus.subscribe(second)
    await bus.send(Note(source="x", target="a", n=4))
    await second.wait_count(1)
    assert nums(second) == [4]
    assert nums(first) == [1]


async def test_unsubscribe_discards_what_is_still_queued():
    """Messages queued behind the one being handled are not delivered after unsubscribe."""
    bus = AsyncQueueBus()

    class Leaver(Recorder):
        async def on_bus_message(self, message: BusMessage) -> None:
            await super().on_bus_message(message)
            bus.unsubscribe(self)

    rec = Leaver("a")
    bus.subscribe(rec)
    for i in range(3):
        await bus.send(Note(source="x", target="a", n=i))
    await bus.start()
    await rec.wait_count(1)
    await asyncio.sleep(0.01)
    assert nums(rec) == [0]
    await bus.close()


async def test_slow_subscriber_does_not_block_others(bus):
    slow, fast = Gated("slow"), Recorder("fast")
    bus.subscribe(slow)
    bus.subscribe(fast)
    await bus.send(Note(source="x", n=1))
    await asyncio.wait_for(slow.blocked.wait(), 1)
    await bus.send(Note(source="x", n=2))
    await fast.wait_count(2)
    assert nums(fast) == [1, 2]
    assert nums(slow) == [1]  # still stuck on the first one
    slow.release.set()
    await slow.wait_count(2)


# -- priorities ----------------------------------------------------------------------------


async def test_system_messages_queued_before_start_are_handled_before_data():
    bus = AsyncQueueBus()
    rec = Recorder("a")
    bus.subscribe(rec)
    for i in range(5):
        await bus.send(Note(source="x", target="a", n=i))
    await bus.send(BusCancelWorkerMessage(source="x", target="a", reason="stop"))
    await bus.send(Alarm(source="x", target="a", n=100))
    await bus.send(Note(source="x", target="a", n=5))
    await bus.send(BusJobCancelMessage(source="x", target="a", job_id="j"))
    await bus.start()
    await rec.wait_count(9)
    kinds = [type(m).__name__ for m in rec.messages]
    assert kinds[:3] == ["BusCancelWorkerMessage", "Alarm", "BusJobCancelMessage"]
    assert [m.n for m in rec.messages[3:]] == [0, 1, 2, 3, 4, 5]
    await bus.close()


async def test_system_message_never_waits_behind_a_slow_data_handler(bus):
    rec = Gated("a")
    bus.subscribe(rec)
    await bus.send(Note(source="x", target="a", n=1))
    await asyncio.wait_for(rec.blocked.wait(), 1)
    await bus.send(Note(source="x", target="a", n=2))
    await bus.send(Alarm(source="x", target="a", n=3))
    await rec.wait_for(lambda m: isinstance(m, Alarm))
    assert nums(rec) == [1, 3]  # the alarm overtook the queued note
    rec.release.set()
    await rec.wait_count(3)
    assert nums(rec) == [1, 3, 2]


async def test_system_messages_keep_fifo_order():
    bus = AsyncQueueBus()
    rec = Recorder("a")
    bus.subscribe(rec)
    for i in range(20):
        await bus.send(Alarm(source="x", target="a", n=i))
    await bus.start()
    await rec.wait_count(20)
    assert nums(rec) == list(range(20))
    await bus.close()


async def test_handler_exception_does_not_stop_either_lane(bus, caplog):
    rec = Failing("a")
    bus.subscribe(rec)
    with caplog.at_level(logging.ERROR, logger="pipecat_workers.bus"):
        await bus.send(Note(source="x", target="a", n=0))
        await bus.send(Note(source="x", target="a", n=1))
        await bus.send(Alarm(source="x", target="a", n=0))
        await bus.send(Alarm(source="x", target="a", n=2))
        await rec.wait_count(2)
    assert sorted(nums(rec)) == [1, 2]
    assert sum("failed to handle" in r.getMessage() for r in caplog.records) == 2


# -- routing ------------------------------------------------------------------------------


async def test_targeted_message_reaches_only_its_target_and_observers(bus):
    target, other, runner, observer = (Recorder("t"), Recorder("o"), Recorder("r"),
                                       Recorder("obs"))
    bus.subscribe(target)
    bus.subscribe(other)
    bus.subscribe(runner, role="runner")
    bus.subscribe(observer, role="observer")
    sent = BusJobRequestMessage(source="x", target="t", job_id="1")
    await bus.send(sent)
    await target.wait_count(1)
    await observer.wait_count(1)
    await asyncio.sleep(0.01)
    assert target.messages == [sent] and observer.messages == [sent]
    assert observer.messages[0] is sent
    assert other.messages == [] and runner.messages == []


async def test_application_broadcast_reaches_every_subscriber(bus):
    recs = [Recorder("w1"), Recorder("w2")]
    runner, observer = Recorder("r"), Recorder("obs")
    for rec in recs:
        bus.subscribe(rec)
    bus.subscribe(runner, role="runner")
    bus.subscribe(observer, role="observer")
    sent = Note(source="x", n=1)
    await bus.send(sent)
    for rec in (*recs, runner, observer):
        await rec.wait_count(1)
    await asyncio.sleep(0.01)
    for rec in (*recs, runner, observer):
        assert rec.messages == [sent]


@pytest.mark.parametrize("message", [
    BusWorkerReadyMessage(source="w", runner="r"),
    BusEndMessage(source="w", reason="bye"),
    BusWorkerRegistryMessage(source="r2", runner="r2"),
], ids=lambda m: type(m).__name__)
async def test_control_broadcast_reaches_runners_and_observers_only(bus, message):
    worker, runner, observer = Recorder("w1"), Recorder("r"), Recorder("obs")
    bus.subscribe(worker)
    bus.subscribe(runner, role="runner")
    bus.subscribe(observer, role="observer")
    await bus.send(message)
    await runner.wait_count(1)
    await observer.wait_count(1)
    await asyncio.sleep(0.01)
    assert runner.messages == [message] and observer.messages == [message]
    assert worker.messages == []


async def test_a_subscriber_receives_its_own_broadcasts(bus):
    rec = Recorder("a")
    bus.subscribe(rec)
    await bus.send(Note(source="a", n=1))
    await rec.wait_count(1)


async def test_idle_subscribers_cost_no_tasks(bus):
    await asyncio.sleep(0)
    before = len(asyncio.all_tasks())
    recs = [Recorder(f"w{i}") for i in range(1000)]
    for rec in recs:
        bus.subscribe(rec)
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == before
    await bus.send(Note(source="x", target="w7", n=1))
    await recs[7].wait_count(1)
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == before  # the drain task is gone once the mailbox is empty


async def test_targeted_send_touches_one_mailbox_among_a_thousand():
    bus = AsyncQueueBus()  # stopped, so what was enqueued stays visible
    recs = [Recorder(f"w{i}") for i in range(1000)]
    for rec in recs:
        bus.subscribe(rec)
    await bus.send(Note(source="x", target="w500", n=1))
    pending = {name: mb.pending for name, mb in bus._mailboxes.items()}
    assert pending.pop("w500") == 1
    assert set(pending.values()) == {0}
    assert bus.stats()["queued"] == 1
    await bus.start()
    await recs[500].wait_count(1)
    assert bus.stats()["queued"] == 0
    await bus.close()


async def test_targeted_send_to_a_live_bus_creates_one_drain_task(bus):
    recs = [Recorder(f"w{i}") for i in range(1000)]
    for rec in recs:
        bus.subscribe(rec)
    await asyncio.sleep(0)
    before = asyncio.all_tasks()
    await bus.send(Note(source="x", target="w999", n=1))
    assert len(asyncio.all_tasks() - before) == 1
    await recs[999].wait_count(1)


# -- local and remote ----------------------------------------------------------------------


async def test_local_messages_are_delivered_but_never_published():
    bus = RecordingBus()
    a, b = Recorder("a"), Recorder("b")
    bus.subscribe(a)
    bus.subscribe(b)
    await bus.start()
    targeted = LocalNote(source="x", target="a", n=1)
    broadcast = LocalNote(source="x", n=2)
    await bus.send(targeted)
    await bus.send(broadcast)
    await a.wait_count(2)
    await b.wait_count(1)
    assert a.messages == [targeted, broadcast] and b.messages == [broadcast]
    assert a.messages[0] is targeted
    assert bus.published == []
    await bus.close()


async def test_only_broadcasts_and_remote_targets_are_published():
    bus = RecordingBus()
    bus.subscribe(Recorder("a"))
    await bus.start()
    to_local = Note(source="x", target="a", n=1)
    to_remote = Note(source="x", target="elsewhere", n=2)
    broadcast = Note(source="x", n=3)
    for message in (to_local, to_remote, broadcast):
        await bus.send(message)
    assert bus.published == [to_remote, broadcast]
    await bus.close()


async def test_deliver_hands_remote_messages_to_local_subscribers_and_counts_them():
    bus = RecordingBus()
    a, b, runner = Recorder("a"), Recorder("b"), Recorder("r")
    bus.subscribe(a)
    bus.subscribe(b)
    bus.subscribe(runner, role="runner")
    await bus.start()
    bus.deliver(Note(source="remote", target="a", n=1))
    bus.deliver(Note(source="remote", n=2))
    bus.deliver(BusEndMessage(source="remote"))
    bus.deliver(Note(source="remote", target="nobody-here", n=3))
    await a.wait_count(2)
    await b.wait_count(1)
    await runner.wait_count(2)
    assert nums(a) == [1, 2] and nums(b) == [2]
    assert [type(m) for m in runner.messages] == [Note, BusEndMessage]
    stats = bus.stats()
    assert stats["received"] == {"BusEndMessage": 1, "Note": 3}
    assert stats["sent"] == {}
    assert bus.published == []  # nothing from the network goes back out
    await bus.close()


# -- bounds ---------------------------------------------------------------------------------


async def test_full_data_lane_drops_counts_and_logs(caplog):
    bus = AsyncQueueBus(data_queue_size=5)
    rec = Recorder("a")
    bus.subscribe(rec)
    with caplog.at_level(logging.WARNING, logger="pipecat_workers.bus"):
        for i in range(8):
            await bus.send(Note(source="x", target="a", n=i))
    await bus.start()
    await rec.wait_count(5)
    await asyncio.sleep(0.01)
    assert nums(rec) == [0, 1, 2, 3, 4]
    assert bus.stats()["dropped"] == {"Note": 3}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "'a'" in warnings[0].getMessage() and "full" in warnings[0].getMessage()
    await bus.close()


async def test_deliver_drops_on_a_full_data_lane():
    bus = RecordingBus(data_queue_size=2)
    rec = Recorder("a")
    bus.subscribe(rec)
    for i in range(4):
        bus.deliver(Note(source="remote", target="a", n=i))
    await bus.start()
    await rec.wait_count(2)
    await asyncio.sleep(0.01)
    assert nums(rec) == [0, 1]
    assert bus.stats()["dropped"] == {"Note": 2}
    await bus.close()


async def test_observer_overflow_on_targeted_messages_is_counted_too(caplog):
    bus = RecordingBus(data_queue_size=2)
    observer = Recorder("obs")
    bus.subscribe(observer, role="observer")
    with caplog.at_level(logging.WARNING, logger="pipecat_workers.bus"):
        for i in range(3):
            await bus.send(Note(source="x", target="elsewhere", n=i))
        bus.deliver(Note(source="remote", target="elsewhere", n=3))
    await bus.start()
    await observer.wait_count(2)
    await asyncio.sleep(0.01)
    assert nums(observer) == [0, 1]
    assert bus.stats()["dropped"] == {"Note": 2}
    assert any("'obs'" in r.getMessage() for r in caplog.records)
    await bus.close()


async def test_system_messages_are_never_dropped():
    bus = AsyncQueueBus(data_queue_size=5)
    rec = Recorder("a")
    bus.subscribe(rec)
    for i in range(50):
        await bus.send(Alarm(source="x", target="a", n=i))
    for i in range(5):
        await bus.send(Note(source="x", target="a", n=100 + i))
    await bus.start()
    await rec.wait_count(55)
    assert nums(rec) == [*range(50), 100, 101, 102, 103, 104]
    assert bus.stats()["dropped"] == {}
    await bus.close()


async def test_sender_outpacing_a_live_receiver_yields_instead_of_dropping():
    bus = AsyncQueueBus(data_queue_size=10)
    rec = Recorder("a")
    bus.subscribe(rec)
    await bus.start()
    for i in range(1000):
        await bus.send(Note(source="x", target="a", n=i))
    await rec.wait_count(1000)
    assert nums(rec) == list(range(1000))
    assert bus.stats()["dropped"] == {}
    await bus.close()


async def test_data_queue_size_must_be_positive():
    with pytest.raises(ConfigurationError):
        AsyncQueueBus(data_queue_size=0)


# -- closing -------------------------------------------------------------------------------


async def test_close_makes_send_raise_and_is_idempotent():
    bus = AsyncQueueBus()
    await bus.start()
    await bus.close()
    await bus.close()
    assert not bus.running
    with pytest.raises(BusClosedError):
        await bus.send(Note(source="x", n=1))
    with pytest.raises(BusClosedError):
        await bus.start()


async def test_bus_is_an_async_context_manager():
    rec = Recorder("a")
    async with AsyncQueueBus() as bus:
        assert bus.running
        bus.subscribe(rec)
        await bus.send(Note(source="x", n=1))
        await rec.wait_count(1)
    with pytest.raises(BusClosedError):
        await bus.send(Note(source="x", n=2))


async def test_stop_cancels_drain_tasks_and_leaves_no_task_behind():
    before = asyncio.all_tasks()
    bus = AsyncQueueBus()
    rec = Gated("a")
    bus.subscribe(rec)
    await bus.start()
    await bus.send(Note(source="x", target="a", n=1))
    await bus.send(Note(source="x", target="a", n=2))
    await asyncio.wait_for(rec.blocked.wait(), 1)
    assert len(asyncio.all_tasks() - before) == 1
    await bus.stop()
    assert rec.cancelled
    assert asyncio.all_tasks() - before == set()
    # The message whose handler was interrupted is gone; the one behind it waits for start.
    rec.release.set()
    await bus.start()
    await rec.wait_count(2)
    assert nums(rec) == [1, 2]
    await bus.close()
    assert asyncio.all_tasks() - before == set()


async def test_stats_count_sent_messages_by_type(bus):
    bus.subscribe(Recorder("a"), role="observer")
    await bus.send(Note(source="x", n=1))
    await bus.send(Note(source="x", target="a", n=2))
    await bus.send(Alarm(source="x", n=3))
    stats = bus.stats()
    assert stats["sent"] == {"Alarm": 1, "Note": 2}
    assert stats["observers"] == 1 and stats["subscribers"] == 0
    await wait_until(lambda: bus.stats()["queued"] == 0)
