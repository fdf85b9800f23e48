"""BaseWorker: properties, lifecycle, activation and hand-off, watching, children, end/cancel,
errors, custom messages and the ``@job``/``@worker_ready`` decorators.

Every test runs real workers on a real :class:`WorkerRunner` with the default in-process bus.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    ConfigurationError,
    JobError,
    JobStatus,
    Settings,
    WorkerActivationArgs,
    WorkerErrorData,
    WorkerLostData,
    WorkerReadyData,
    WorkerRunner,
    WorkerState,
    WorkerStateError,
    job,
    worker_ready,
)
from pipecat_workers.bus.messages import (
    BusActivateWorkerMessage,
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusMessage,
    BusWorkerErrorMessage,
    BusWorkerLocalErrorMessage,
)
from tests.helpers import (
    SETTINGS,
    TIMEOUT,
    settle,
    within,
)
from tests.helpers import eventually as wait_until
from tests.helpers import hosting as running


class Recorder(BaseWorker):
    """Records every lifecycle hook it gets."""

    def __init__(self, name: str | None = None, *, active: bool = True,
                 log: list[tuple[Any, ...]] | None = None) -> None:
        super().__init__(name, active=active)
        self.log: list[tuple[Any, ...]] = log if log is not None else []
        self.activations: list[dict[str, Any] | None] = []
        self.deactivations = 0
        self.ready: list[WorkerReadyData] = []
        self.lost: list[WorkerLostData] = []
        self.failed: list[WorkerErrorData] = []

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await super().on_activated(args)
        self.activations.append(args)
        self.log.append(("activated", self.name))

    async def on_deactivated(self) -> None:
        await super().on_deactivated()
        self.deactivations += 1
        self.log.append(("deactivated", self.name))

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        self.ready.append(data)
        self.log.append(("ready", self.name, data.worker_name))

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        await super().on_worker_lost(data)
        self.lost.append(data)
        self.log.append(("lost", self.name, data.worker_name))

    async def on_worker_failed(self, data: WorkerErrorData) -> None:
        await super().on_worker_failed(data)
        self.failed.append(data)


# -- properties -------------------------------------------------------------------------------


def test_bus_registry_and_runner_raise_before_attach() -> None:
    worker = BaseWorker("lonely")
    for attribute in ("bus", "registry", "worker_runner"):
        with pytest.raises(WorkerStateError) as info:
            getattr(worker, attribute)
        assert isinstance(info.value, RuntimeError)
        assert "lonely" in str(info.value)


async def test_send_bus_message_before_attach_raises() -> None:
    worker = BaseWorker("lonely")
    with pytest.raises(WorkerStateError) as info:
        await worker.send_bus_message(BusEndMessage(source="lonely"))
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(WorkerStateError):
        await worker.end()


async def test_properties_after_attach() -> None:
    worker = BaseWorker("w")
    runner = WorkerRunner(handle_sigint=False, settings=SETTINGS)
    await runner.add_workers(worker)
    assert worker.bus is runner.bus
    assert worker.registry is runner.registry
    assert worker.worker_runner is runner
    assert runner.get_worker("w") is worker
    assert runner.get_worker("nobody") is None
    # Attached but not started: nothing announced yet.
    assert worker.state is WorkerState.CREATED
    assert worker.started_at is None
    assert "w" not in runner.registry


def test_initial_properties() -> None:
    worker = BaseWorker("w")
    assert worker.name == "w"
    assert worker.active is False
    assert worker.activation_args is None
    assert worker.parent is None
    assert worker.children == []
    assert worker.started_at is None
    assert worker.bridged is False
    assert worker.active_jobs == {}
    assert worker.job_groups == {}
    assert worker.state is WorkerState.CREATED


def test_auto_names_are_class_name_and_counter() -> None:
    class Anonymous(BaseWorker):
        pass

    first, second, third = Anonymous(), Anonymous(), Anonymous()
    numbers = []
    for worker in (first, second, third):
        match = re.fullmatch(r"Anonymous#(\d+)", worker.name)
        assert match is not None, worker.name
        numbers.append(int(match.group(1)))
    assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2]
    assert BaseWorker("explicit").name == "explicit"


async def test_started_at_is_set_when_the_worker_starts() -> None:
    worker = BaseWorker("w")
    assert worker.started_at is None
    before = time.time()
    async with running(worker) as h:
        assert worker.started_at is not None
        assert before <= worker.started_at <= time.time()
        assert worker.state is WorkerState.READY
        assert "w" in h.runner.registry


# -- activation -------------------------------------------------------------------------------


async def test_active_worker_is_activated_once_after_start_with_no_args() -> None:
    class Probe(Recorder):
        async def on_activated(self, args: dict[str, Any] | None) -> None:
            # Activation comes after start: the worker is registered and has a start time.
            self.seen_state = (self.state, self.started_at, self.name in self.registry)
            await super().on_activated(args)

    worker = Probe("w")
    async with running(worker):
        await within(wait_until(lambda: worker.activations, "activation"))
        await settle()
        assert worker.activations == [None]
        assert worker.active is True
        assert worker.activation_args is None
        state, started_at, registered = worker.seen_state
        assert state is WorkerState.READY and started_at is not None and registered


async def test_inactive_worker_waits_for_activate_worker() -> None:
    caller = Recorder("caller")
    sleeper = Recorder("sleeper", active=False)
    async with running(caller, sleeper):
        await settle()
        assert sleeper.activations == []
        assert sleeper.active is False
        await within(caller.activate_worker(
            "sleeper", args=WorkerActivationArgs(metadata={"topic": "billing"})))
        await within(wait_until(lambda: sleeper.activations, "activation"))
        assert sleeper.activations == [{"metadata": {"topic": "billing"}}]
        assert sleeper.active is True
        assert sleeper.activation_args == {"metadata": {"topic": "billing"}}
        # The caller did not hand off: it stays active.
        assert caller.active is True


async def test_activation_args_cleared_on_deactivation() -> None:
    caller = Recorder("caller")
    target = Recorder("target", active=False)
    async with running(caller, target):
        await caller.activate_worker("target", args=WorkerActivationArgs(metadata={"n": 1}))
        await within(wait_until(lambda: target.active, "activation"))
        assert target.activation_args == {"metadata": {"n": 1}}
        await caller.deactivate_worker("target")
        await within(wait_until(lambda: target.deactivations == 1, "deactivation"))
        assert target.active is False
        assert target.activation_args is None
        # A second activation without args: args are None again, not the old ones.
        await caller.activate_worker("target")
        await within(wait_until(lambda: len(target.activations) == 2, "re-activation"))
        assert target.activations[-1] is None
        assert target.activation_args is None


async def test_activation_sent_before_start_is_applied_at_start() -> None:
    target = Recorder("target", active=False)

    async def activate_early(runner: WorkerRunner) -> None:
        await runner.bus.send(BusActivateWorkerMessage(
            source="test", target="target", args={"metadata": {"early": True}}))

    async with running(target, before_run=activate_early):
        await within(wait_until(lambda: target.activations, "activation"))
        await settle()
        assert target.activations == [{"metadata": {"early": True}}]
        assert target.active is True


async def test_hand_off_never_has_both_workers_active() -> None:
    log: list[tuple[Any, ...]] = []
    workers: dict[str, Recorder] = {}

    def both() -> tuple[bool, bool]:
        return workers["greeter"].active, workers["support"].active

    class Greeter(Recorder):
        async def on_activated(self, args: dict[str, Any] | None) -> None:
            await super().on_activated(args)
            if len(self.activations) == 1:
                await self.activate_worker(
                    "support", args=WorkerActivationArgs(metadata={"from": "greeter"}),
                    deactivate_self=True)
                log.append(("after-call", self.active))

        async def on_deactivated(self) -> None:
            log.append(("greeter-deactivated", *both()))
            await super().on_deactivated()

    class Support(Recorder):
        async def on_activated(self, args: dict[str, Any] | None) -> None:
            log.append(("support-activated", *both()))
            await super().on_activated(args)

    greeter = Greeter("greeter")
    support = Support("support", active=False)
    workers.update(greeter=greeter, support=support)
    sends: list[tuple[str, str | None, bool, bool]] = []

    async def record_sends(runner: WorkerRunner) -> None:
        original = runner.bus.send

        async def send(message: BusMessage) -> None:
            if isinstance(message, (BusActivateWorkerMessage, BusDeactivateWorkerMessage)):
                sends.append((type(message).__name__, message.target, *both()))
            await original(message)

        runner.bus.send = send  # type: ignore[method-assign]

    async with running(greeter, support, before_run=record_sends):
        await within(wait_until(lambda: support.activations and greeter.deactivations,
                                "hand-off"))
        await settle()
    # Exactly one deactivate (to itself) then one activate (to the target), and the greeter
    # was already inactive when each was sent.
    assert sends == [
        ("BusDeactivateWorkerMessage", "greeter", False, False),
        ("BusActivateWorkerMessage", "support", False, False),
    ]
    assert ("after-call", False) in log
    # When the target's hook ran, the sender was already inactive.
    activated = [e for e in log if e[0] == "support-activated"]
    assert activated == [("support-activated", False, True)]
    deactivated = [e for e in log if e[0] == "greeter-deactivated"]
    assert len(deactivated) == 1 and deactivated[0][1] is False
    for entry in log:
        if len(entry) == 3:
            assert not (entry[1] and entry[2]), f"both active at {entry}"
    assert support.activations == [{"metadata": {"from": "greeter"}}]
    assert greeter.activations == [None]


async def test_deactivate_self_is_ignored_when_not_active() -> None:
    caller = Recorder("caller", active=False)
    target = Recorder("target", active=False)
    async with running(caller, target) as h:
        await caller.activate_worker("target", deactivate_self=True)
        await within(wait_until(lambda: target.active, "activation"))
        await settle()
        assert h.observer.of(BusDeactivateWorkerMessage) == []
        assert caller.deactivations == 0


async def test_self_hand_off_ends_active() -> None:
    class Loop(Recorder):
        async def on_activated(self, args: dict[str, Any] | None) -> None:
            await super().on_activated(args)
            if len(self.activations) == 1:
                await self.activate_worker(self.name, deactivate_self=True,
                                           args=WorkerActivationArgs(metadata={"again": 1}))

    worker = Loop("solo")
    async with running(worker):
        await within(wait_until(lambda: len(worker.activations) == 2, "second activation"))
        await settle()
        assert worker.active is True
        assert worker.activations == [None, {"metadata": {"again": 1}}]
        assert worker.deactivations == 1
        assert worker.log == [("activated", "solo"), ("deactivated", "solo"),
                              ("activated", "solo")]
        assert worker.activation_args == {"metadata": {"again": 1}}


async def test_deactivate_worker_deactivates_target() -> None:
    boss = Recorder("boss")
    target = Recorder("target")
    async with running(boss, target) as h:
        await within(wait_until(lambda: target.active, "activation"))
        await boss.deactivate_worker("target")
        await within(wait_until(lambda: target.deactivations == 1, "deactivation"))
        assert target.active is False
        assert boss.active is True
        sent = h.observer.of(BusDeactivateWorkerMessage)
        assert [(m.source, m.target) for m in sent] == [("boss", "target")]


# -- events -----------------------------------------------------------------------------------


async def test_event_handlers_run_beside_hooks() -> None:
    worker = Recorder("w", active=False)
    seen: list[tuple[str, Any]] = []

    @worker.event_handler("on_activated")
    async def activated(w: BaseWorker, args: dict[str, Any] | None) -> None:
        seen.append(("activated", w, args))

    @worker.event_handler("on_deactivated")
    async def deactivated(w: BaseWorker) -> None:
        seen.append(("deactivated", w))

    caller = Recorder("caller")
    async with running(worker, caller):
        await caller.activate_worker("w", args=WorkerActivationArgs(metadata={"x": 1}))
        await within(wait_until(lambda: len(seen) == 1, "event"))
        await caller.deactivate_worker("w")
        await within(wait_until(lambda: len(seen) == 2, "event"))
    assert seen == [("activated", worker, {"metadata": {"x": 1}}), ("deactivated", worker)]


async def test_failing_event_handler_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Recorder("w")
    good: list[Any] = []

    @worker.event_handler("on_activated")
    async def bad(w: BaseWorker, args: Any) -> None:
        raise RuntimeError("handler exploded")

    @worker.event_handler("on_activated")
    async def fine(w: BaseWorker, args: Any) -> None:
        good.append(args)

    caplog.set_level(logging.ERROR)
    async with running(worker) as h:
        await within(wait_until(lambda: good, "good handler"))
        await within(wait_until(lambda: any(
            "on_activated" in r.getMessage() for r in caplog.records), "error log"))
        # The worker keeps working: it still answers a job.
        asker = BaseWorker("asker")
        await h.runner.add_workers(asker)
        await within(wait_until(lambda: asker.state is WorkerState.READY, "asker"))
    record = next(r for r in caplog.records if "on_activated" in r.getMessage())
    assert record.exc_info is not None and "handler exploded" in str(record.exc_info[1])
    assert good == [None]
    assert worker.activations == [None]
    assert not h.task.cancelled() and h.task.exception() is None


def test_unknown_event_name_raises_configuration_error() -> None:
    worker = BaseWorker("w")
    with pytest.raises(ConfigurationError) as info:
        @worker.event_handler("on_no_such_event")
        async def handler(w: BaseWorker) -> None:
            pass
    assert isinstance(info.value, ValueError)
    assert "on_no_such_event" in str(info.value)


# -- watching ---------------------------------------------------------------------------------


async def test_watch_workers_fires_now_for_ready_and_later_for_late_workers() -> None:
    watcher = Recorder("watcher")
    early = BaseWorker("early")
    async with running(watcher, early) as h:
        await within(watcher.watch_workers("early", "late"))
        # Already ready: fired during the call.
        assert [d.worker_name for d in watcher.ready] == ["early"]
        assert watcher.ready[0].runner == h.runner.name
        late = BaseWorker("late")
        await h.runner.add_workers(late)
        await within(wait_until(lambda: len(watcher.ready) == 2, "late ready"))
        assert [d.worker_name for d in watcher.ready] == ["early", "late"]
        await settle()
        assert len(watcher.ready) == 2  # once each


async def test_watch_before_start_is_installed_at_start() -> None:
    watcher = Recorder("watcher")
    await watcher.watch_workers("peer")
    peer = BaseWorker("peer")
    async with running(watcher, peer):
        await within(wait_until(lambda: watcher.ready, "peer ready"))
        await settle()
        assert [d.worker_name for d in watcher.ready] == ["peer"]


async def test_on_worker_ready_only_for_watched_workers() -> None:
    watcher = Recorder("watcher")
    other = BaseWorker("other")
    async with running(watcher, other) as h:
        await h.runner.add_workers(BaseWorker("unwatched"))
        await settle()
        assert watcher.ready == []


async def test_worker_ready_decorator_runs_before_hook_and_fires_again_on_return() -> None:
    order: list[str] = []

    class Watcher(Recorder):
        @worker_ready("target")
        async def on_target_ready(self, data: WorkerReadyData) -> None:
            order.append(f"decorated:{data.worker_name}")

        async def on_worker_ready(self, data: WorkerReadyData) -> None:
            order.append(f"hook:{data.worker_name}")
            await super().on_worker_ready(data)

        async def on_worker_lost(self, data: WorkerLostData) -> None:
            order.append(f"lost:{data.worker_name}:{data.reason}")
            await super().on_worker_lost(data)

    watcher = Watcher("watcher")
    events: list[str] = []

    @watcher.event_handler("on_worker_ready")
    async def ready_event(w: BaseWorker, data: WorkerReadyData) -> None:
        events.append(f"event:{data.worker_name}")

    @watcher.event_handler("on_worker_lost")
    async def lost_event(w: BaseWorker, data: WorkerLostData) -> None:
        events.append(f"lost-event:{data.worker_name}")

    async with running(watcher) as h:
        first = BaseWorker("target")
        await h.runner.add_workers(first)
        await within(wait_until(lambda: events == ["event:target"], "first ready"))
        assert order == ["decorated:target", "hook:target"]

        await within(first.stop())
        await within(wait_until(lambda: "lost-event:target" in events, "lost"))
        assert order[-1] == "lost:target:stopped"

        second = BaseWorker("target")
        await h.runner.add_workers(second)
        await within(wait_until(lambda: events.count("event:target") == 2, "second ready"))
        assert order == ["decorated:target", "hook:target", "lost:target:stopped",
                         "decorated:target", "hook:target"]


async def test_on_worker_lost_when_a_watched_worker_stops() -> None:
    watcher = Recorder("watcher")
    target = BaseWorker("target")
    async with running(watcher, target) as h:
        await watcher.watch_workers("target")
        await within(target.stop())
        await within(wait_until(lambda: watcher.lost, "lost"))
        assert watcher.lost == [WorkerLostData(worker_name="target", runner=h.runner.name,
                                               reason="stopped")]
        assert "target" not in h.runner.registry


async def test_stopped_watcher_no_longer_gets_ready_or_lost() -> None:
    watcher = Recorder("watcher")
    target = BaseWorker("target")
    async with running(watcher, target) as h:
        await watcher.watch_workers("target")
        assert len(watcher.ready) == 1
        baseline = h.runner.registry.watch_count()
        await within(watcher.stop())
        await within(target.stop())
        await h.runner.add_workers(BaseWorker("target"))
        await settle()
        assert len(watcher.ready) == 1
        assert watcher.lost == []
        # The stopped watcher's watch is gone, not leaked.
        assert h.runner.registry.watch_count() < baseline


# -- stop, leave, re-join ------------------------------------------------------------------


async def test_stopped_worker_leaves_bus_registry_and_runner() -> None:
    calls: list[str] = []

    class Answering(BaseWorker):
        @job("ping")
        async def ping(self, message: BusJobRequestMessage) -> dict[str, Any]:
            calls.append(message.job_id)
            return {"pong": True}

    worker = Answering("w")
    async with running(worker) as h:
        await within(worker.stop())
        assert worker.state is WorkerState.STOPPED
        assert worker.active is False
        assert "w" not in h.runner.registry
        assert not h.runner.bus.is_local("w")
        await within(wait_until(lambda: h.runner.get_worker("w") is None, "runner to forget"))
        await h.runner.bus.send(BusJobRequestMessage(source="test", target="w", job_id="j-1",
                                                     job_name="ping"))
        await settle()
        assert calls == []
        assert worker.active_jobs == {}
        assert h.observer.of(BusJobResponseMessage) == []


async def test_stop_is_idempotent_and_wait_returns() -> None:
    worker = BaseWorker("w")
    async with running(worker):
        await within(asyncio.gather(worker.stop(), worker.stop()))
        await within(worker.stop())
        await within(worker.wait())
        assert worker.state is WorkerState.STOPPED


async def test_name_can_be_reused_after_stop() -> None:
    first = Recorder("same")
    async with running(first) as h:
        # No wait_for here: it would add loop turns that hide a name freed too late.
        async with asyncio.timeout(TIMEOUT):
            await first.stop()
            second = Recorder("same")
            await h.runner.add_workers(second)
        await within(wait_until(lambda: second.active, "second activation"))
        assert h.runner.get_worker("same") is second
        assert h.runner.registry.get("same") is not None


async def test_duplicate_name_while_running_is_rejected() -> None:
    first = BaseWorker("same")
    async with running(first) as h:
        with pytest.raises(ConfigurationError):
            await h.runner.add_workers(BaseWorker("same"))
        assert h.runner.get_worker("same") is first


# -- children ---------------------------------------------------------------------------------


async def test_add_workers_sets_parent_and_children() -> None:
    parent = Recorder("parent")
    one, two = BaseWorker("one"), BaseWorker("two")
    await parent.add_workers(one, two)
    assert one.parent == "parent" and two.parent == "parent"
    assert parent.children == [one, two]
    # The list is a copy: callers cannot corrupt the worker's own.
    parent.children.clear()
    assert parent.children == [one, two]


async def test_children_added_before_run_start_with_parent() -> None:
    parent = Recorder("parent")
    child = Recorder("child")
    await parent.add_workers(child)  # before the parent has a runner
    async with running(parent) as h:
        await within(wait_until(lambda: child.state is WorkerState.READY, "child start"))
        assert h.runner.get_worker("child") is child
        assert "child" in h.runner.registry
        assert h.runner.registry.get("child").parent == "parent"
        await within(wait_until(lambda: parent.ready, "parent notified"))
        assert [d.worker_name for d in parent.ready] == ["child"]
        assert parent.ready[0].parent == "parent"


async def test_children_added_after_attach_but_before_run_start() -> None:
    parent = Recorder("parent")
    child = Recorder("child")

    async def add_child(runner: WorkerRunner) -> None:
        await parent.add_workers(child)  # attached, runner not running yet

    async with running(parent, before_run=add_child) as h:
        await within(wait_until(lambda: child.state is WorkerState.READY, "child start"))
        assert h.runner.get_worker("child") is child
        await within(wait_until(lambda: parent.ready, "parent notified"))
        assert [d.worker_name for d in parent.ready] == ["child"]


async def test_children_added_during_run_start_and_parent_is_notified() -> None:
    class Parent(Recorder):
        async def on_activated(self, args: dict[str, Any] | None) -> None:
            await super().on_activated(args)
            await self.add_workers(child)

    parent = Parent("parent")
    child = Recorder("child")
    async with running(parent) as h:
        await within(wait_until(lambda: child.state is WorkerState.READY, "child start"))
        await within(wait_until(lambda: parent.ready, "parent notified"))
        assert parent.ready[0].worker_name == "child"
        assert parent.ready[0].parent == "parent"
        assert child.parent == "parent"
        assert parent.children == [child]
        assert child.active is True
        add = h.observer.of(BusAddWorkerMessage)
        assert len(add) == 1 and add[0].worker is child and add[0].source == "parent"


async def test_add_workers_with_watch_false_does_not_notify() -> None:
    parent = Recorder("parent")
    child = BaseWorker("child")
    await parent.add_workers(child, watch=False)
    async with running(parent):
        await within(wait_until(lambda: child.state is WorkerState.READY, "child start"))
        await settle()
        assert parent.ready == []


async def test_child_with_a_parent_already_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    first = Recorder("first")
    second = Recorder("second")
    child = BaseWorker("child")
    await first.add_workers(child)
    caplog.set_level(logging.WARNING)
    await second.add_workers(child)
    assert child.parent == "first"
    assert second.children == []
    assert first.children == [child]
    assert any("child" in r.getMessage() and "first" in r.getMessage() for r in caplog.records)


async def test_end_propagates_to_children_and_parent_waits_for_them() -> None:
    release = asyncio.Event()
    stopped: list[str] = []

    class Busy(BaseWorker):
        @job("work")
        async def work(self, message: BusJobRequestMessage) -> dict[str, Any]:
            await release.wait()
            return {"done": True}

    parent = Recorder("parent")
    child = Busy("child")
    requester = BaseWorker("requester")
    await parent.add_workers(child)
    async with running(parent, requester) as h:
        for w in (parent, child):
            w.add_done_callback(lambda w: stopped.append(w.name))

        async def ask() -> Any:
            async with requester.job("child", name="work") as j:
                pass
            return j

        asking = asyncio.create_task(ask())
        await within(wait_until(lambda: child.active_jobs, "job running"))
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="parent",
                                                    reason="bye"))
        await within(wait_until(lambda: h.observer.of(BusEndWorkerMessage, target="child"),
                                "end forwarded"))
        forwarded = h.observer.of(BusEndWorkerMessage, target="child")
        assert forwarded[0].source == "parent" and forwarded[0].reason == "bye"
        await settle(0.1)
        # Both wait: the child for its job, the parent for the child.
        assert child.state is WorkerState.ENDING
        assert parent.state is WorkerState.ENDING
        assert stopped == []
        release.set()
        j = await within(asking)
        await within(parent.wait())
        await settle()
        assert j.status is JobStatus.COMPLETED and j.response == {"done": True}
        assert stopped == ["child", "parent"]
        assert requester.state is WorkerState.READY


async def test_end_of_a_worker_is_bounded_by_end_grace() -> None:
    class Stuck(BaseWorker):
        @job("forever")
        async def forever(self, message: BusJobRequestMessage) -> None:
            self.cancelled = False
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    worker = Stuck("stuck")
    requester = BaseWorker("requester")
    settings = Settings(end_grace=0.2, cancel_timeout=0.5)
    async with running(worker, requester, settings=settings) as h:
        await requester.request_job("stuck", name="forever")
        await within(wait_until(lambda: worker.active_jobs, "job running"))
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="stuck"))
        await within(worker.wait(), timeout=2.0)
        assert worker.cancelled is True
        cancelled = h.observer.of(BusJobResponseMessage, source="stuck")
        assert [m.status for m in cancelled] == [JobStatus.CANCELLED]


async def test_ending_requester_waits_for_the_answers_to_its_jobs() -> None:
    release = asyncio.Event()

    class Service(BaseWorker):
        @job("work")
        async def work(self, message: BusJobRequestMessage) -> dict[str, Any]:
            await release.wait()
            return {"done": True}

    service, requester = Service("service"), BaseWorker("requester")
    async with running(service, requester) as h:
        async def ask() -> Any:
            async with requester.job("service", name="work") as j:
                pass
            return j

        asking = asyncio.create_task(ask())
        await within(wait_until(lambda: service.active_jobs, "job running"))
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="requester"))
        await settle(0.1)
        assert requester.state is WorkerState.ENDING  # waits for its answer
        release.set()
        j = await within(asking)
        assert j.status is JobStatus.COMPLETED and j.response == {"done": True}
        await within(requester.wait())
        assert h.observer.of(BusJobCancelMessage) == []


async def test_ending_requester_cancels_unanswered_jobs_after_the_grace() -> None:
    class Service(BaseWorker):
        @job("hang")
        async def hang(self, message: BusJobRequestMessage) -> None:
            await asyncio.Event().wait()

    service, requester = Service("service"), BaseWorker("requester")
    settings = Settings(end_grace=0.1, cancel_timeout=0.5)
    async with running(service, requester, settings=settings) as h:
        job_id = await within(requester.request_job("service", name="hang"))
        await within(wait_until(lambda: service.active_jobs, "job running"))
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="requester"))
        await within(requester.wait(), timeout=2.0)
        cancels = h.observer.of(BusJobCancelMessage, job_id=job_id)
        assert [(m.source, m.target) for m in cancels] == [("requester", "service")]
        await within(wait_until(lambda: not service.active_jobs, "service job cancelled"))


class SlowUnwind(BaseWorker):
    """Its job runs until cancelled, then takes a while to clean up."""

    @job("forever")
    async def forever(self, message: BusJobRequestMessage) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)
            raise


async def test_cancel_during_a_graceful_end_still_leaves_cleanly() -> None:
    worker = SlowUnwind("w")
    watcher = Recorder("watcher")
    requester = BaseWorker("requester")
    settings = Settings(end_grace=0.1, cancel_timeout=1.0)
    async with running(worker, watcher, requester, settings=settings) as h:
        await watcher.watch_workers("w")
        ended: list[BaseException] = []

        async def ask() -> None:
            try:
                async with requester.job("w", name="forever"):
                    pass
            except JobError as exc:
                ended.append(exc)

        asking = asyncio.create_task(ask())
        await within(wait_until(lambda: worker.active_jobs, "job running"))
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="w"))
        # The grace runs out and stop() starts unwinding the handler; then a cancel arrives.
        await within(wait_until(lambda: worker.state is WorkerState.STOPPING, "stopping"))
        await h.runner.bus.send(BusCancelWorkerMessage(source="test", target="w"))
        await within(worker.wait())
        await within(asking)
        assert "w" not in h.runner.registry
        assert not h.runner.bus.is_local("w")
        assert [d.worker_name for d in watcher.lost] == ["w"]
        assert len(ended) == 1 and isinstance(ended[0], JobError)
        assert requester.job_groups == {}


async def test_interrupted_stop_still_leaves_registry_and_bus() -> None:
    worker = SlowUnwind("w")
    requester = BaseWorker("requester")
    async with running(worker, requester) as h:
        await requester.request_job("w", name="forever")
        await within(wait_until(lambda: worker.active_jobs, "job running"))
        stopping = asyncio.create_task(worker.stop())
        await within(wait_until(lambda: worker.state is WorkerState.STOPPING, "stopping"))
        await settle()
        stopping.cancel()  # e.g. a bounded stop that timed out
        with pytest.raises(asyncio.CancelledError):
            await within(stopping)
        assert worker.state is WorkerState.STOPPED
        assert "w" not in h.runner.registry
        assert not h.runner.bus.is_local("w")
        # The requester's job did not stay stranded on the half-stopped worker.
        assert requester.job_groups == {}


async def test_cancel_propagates_to_children() -> None:
    saw_cancel = asyncio.Event()

    class Busy(BaseWorker):
        @job("work")
        async def work(self, message: BusJobRequestMessage) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                saw_cancel.set()
                raise

    parent = Recorder("parent")
    child = Busy("child")
    grandchild = BaseWorker("grandchild")
    await parent.add_workers(child)
    await child.add_workers(grandchild)
    requester = BaseWorker("requester")
    async with running(parent, requester) as h:
        await within(wait_until(lambda: grandchild.state is WorkerState.READY, "grandchild"))
        await requester.request_job("child", name="work")
        await within(wait_until(lambda: child.active_jobs, "job running"))
        await h.runner.bus.send(BusCancelWorkerMessage(source="test", target="parent",
                                                       reason="abort"))
        await within(asyncio.gather(parent.wait(), child.wait(), grandchild.wait()))
        assert saw_cancel.is_set()
        for name, source in (("child", "parent"), ("grandchild", "child")):
            sent = h.observer.of(BusCancelWorkerMessage, target=name)
            assert [(m.source, m.reason) for m in sent] == [(source, "abort")]
        assert requester.state is WorkerState.READY


async def test_runner_end_ends_children_through_their_parent() -> None:
    parent = Recorder("parent")
    child = Recorder("child")
    await parent.add_workers(child)
    async with running(parent) as h:
        await within(wait_until(lambda: child.state is WorkerState.READY, "child"))
        await h.runner.end(reason="done")
        await within(h.task)
        assert child.state is WorkerState.STOPPED and parent.state is WorkerState.STOPPED
        to_child = h.observer.of(BusEndWorkerMessage, target="child")
        assert [m.source for m in to_child] == ["parent"]
        # The runner ended the child through the parent, never with a cancel.
        assert h.observer.of(BusCancelWorkerMessage) == []


# -- errors -----------------------------------------------------------------------------------


async def test_child_error_reaches_parent_on_worker_failed() -> None:
    parent = Recorder("parent")
    child = BaseWorker("child")
    stranger = Recorder("stranger")
    events: list[WorkerErrorData] = []

    @parent.event_handler("on_worker_failed")
    async def failed(w: BaseWorker, data: WorkerErrorData) -> None:
        events.append(data)

    await parent.add_workers(child)
    async with running(parent, stranger) as h:
        await within(wait_until(lambda: child.state is WorkerState.READY, "child"))
        await child.send_bus_error_message("disk full")
        await within(wait_until(lambda: events, "failure event"))
        expected = WorkerErrorData(worker_name="child", error="disk full")
        assert parent.failed == [expected]
        assert events == [expected]
        sent = h.observer.of(BusWorkerLocalErrorMessage)
        assert [(m.source, m.target, m.error) for m in sent] == [("child", "parent",
                                                                  "disk full")]
        assert h.observer.of(BusWorkerErrorMessage) == []
        await settle()
        assert stranger.failed == []


async def test_root_error_is_a_broadcast() -> None:
    root = Recorder("root")
    other = Recorder("other")
    seen: list[BusMessage] = []

    @other.event_handler("on_bus_message")
    async def on_message(w: BaseWorker, message: BusMessage) -> None:
        if isinstance(message, BusWorkerErrorMessage):
            seen.append(message)

    async with running(root, other) as h:
        await root.send_bus_error_message("broken")
        await within(wait_until(lambda: seen, "broadcast"))
        sent = h.observer.of(BusWorkerErrorMessage)
        assert len(sent) == 1
        assert (sent[0].source, sent[0].target, sent[0].error) == ("root", None, "broken")
        assert h.observer.of(BusWorkerLocalErrorMessage) == []
        await settle()
        # Not a child of anybody: nobody's on_worker_failed fires.
        assert other.failed == [] and root.failed == []


# -- custom messages --------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Ping(BusDataMessage):
    text: str


async def test_on_bus_message_override_receives_custom_messages() -> None:
    class Listener(Recorder):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.pings: list[Ping] = []

        async def on_bus_message(self, message: BusMessage) -> None:
            await super().on_bus_message(message)
            if isinstance(message, Ping):
                self.pings.append(message)

    listener = Listener("listener")
    sender = Recorder("sender")
    events: list[BusMessage] = []

    @listener.event_handler("on_bus_message")
    async def on_message(w: BaseWorker, message: BusMessage) -> None:
        events.append(message)

    async with running(listener, sender):
        await sender.send_bus_message(Ping(source="sender", target="listener", text="hi"))
        await within(wait_until(lambda: listener.pings, "ping"))
        assert [p.text for p in listener.pings] == ["hi"]
        await within(wait_until(lambda: any(isinstance(m, Ping) for m in events), "event"))
        # Built-in handling still happens for messages the base knows.
        await sender.deactivate_worker("listener")
        await within(wait_until(lambda: listener.deactivations == 1, "deactivate"))
        await sender.send_bus_message(Ping(source="sender", text="all"))
        await within(wait_until(lambda: len(listener.pings) == 2, "broadcast ping"))
        assert listener.pings[1].text == "all"


# -- session end / cancel ---------------------------------------------------------------------


async def test_worker_end_sends_session_end_and_runner_ends() -> None:
    worker = Recorder("w")
    async with running(worker) as h:
        await within(worker.end(reason="all done"))
        await within(h.task)
        sent = h.observer.of(BusEndMessage)
        assert [(m.source, m.target, m.reason) for m in sent] == [("w", None, "all done")]
        assert worker.state is WorkerState.STOPPED
        # Graceful: the worker got an end, not a cancel.
        assert h.observer.of(BusEndWorkerMessage, target="w")
        assert h.observer.of(BusCancelWorkerMessage) == []


async def test_worker_cancel_sends_session_cancel_and_runner_stops() -> None:
    worker = Recorder("w")
    other = Recorder("other")
    async with running(worker, other) as h:
        await within(worker.cancel(reason="abort"))
        await within(h.task)
        sent = h.observer.of(BusCancelMessage)
        assert [(m.source, m.target, m.reason) for m in sent] == [("w", None, "abort")]
        assert worker.state is WorkerState.STOPPED and other.state is WorkerState.STOPPED
        assert {m.target for m in h.observer.of(BusCancelWorkerMessage)} == {"w", "other"}


# -- decorators -------------------------------------------------------------------------------


def test_duplicate_job_names_raise_at_class_creation() -> None:
    with pytest.raises(ConfigurationError) as info:
        class Twice(BaseWorker):
            @job("x")
            async def first(self, message: BusJobRequestMessage) -> None: ...

            @job("x")
            async def second(self, message: BusJobRequestMessage) -> None: ...
    assert isinstance(info.value, ValueError)
    assert "'x'" in str(info.value)


def test_duplicate_job_names_across_the_hierarchy_raise() -> None:
    class Base(BaseWorker):
        @job("x")
        async def first(self, message: BusJobRequestMessage) -> None: ...

    with pytest.raises(ConfigurationError):
        class Sub(Base):
            @job("x")
            async def other_method(self, message: BusJobRequestMessage) -> None: ...


def test_duplicate_worker_ready_names_raise() -> None:
    with pytest.raises(ConfigurationError):
        class Twice(BaseWorker):
            @worker_ready("peer")
            async def a(self, data: WorkerReadyData) -> None: ...

            @worker_ready("peer")
            async def b(self, data: WorkerReadyData) -> None: ...


def test_decorators_need_a_name() -> None:
    with pytest.raises(ConfigurationError):
        job("")
    with pytest.raises(ConfigurationError):
        worker_ready("")


async def test_subclass_overriding_a_job_method_replaces_it() -> None:
    class Base(BaseWorker):
        @job("greet")
        async def greet(self, message: BusJobRequestMessage) -> dict[str, Any]:
            return {"by": "base"}

        @job("other")
        async def other(self, message: BusJobRequestMessage) -> dict[str, Any]:
            return {"by": "base-other"}

    class Sub(Base):
        @job("greet")
        async def greet(self, message: BusJobRequestMessage) -> dict[str, Any]:
            return {"by": "sub"}

    worker = Sub("sub")
    base = Base("base")
    requester = BaseWorker("requester")
    async with running(worker, base, requester):
        async def ask(target: str, name: str) -> dict[str, Any]:
            async with requester.job(target, name=name) as j:
                pass
            return j.response

        assert await within(ask("sub", "greet")) == {"by": "sub"}
        assert await within(ask("sub", "other")) == {"by": "base-other"}  # inherited
        assert await within(ask("base", "greet")) == {"by": "base"}


async def test_tasks_a_worker_creates_are_cancelled_when_it_stops() -> None:
    worker = BaseWorker("owner")
    cancelled: list[str] = []

    async def forever(tag: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(tag)
            raise

    async def quick() -> int:
        return 7

    async with running(worker):
        done = worker.create_task(quick())
        assert await within(done) == 7
        tasks = [worker.create_task(forever(tag)) for tag in ("a", "b")]
        await asyncio.sleep(0)
        await within(worker.stop())
        assert sorted(cancelled) == ["a", "b"]
        assert all(t.cancelled() for t in tasks)
        assert not worker._tasks  # finished tasks are forgotten, none kept alive


def test_a_name_no_peer_would_accept_is_refused_where_it_is_made() -> None:
    from pipecat_workers import ConfigurationError, WorkerRunner
    from pipecat_workers.jobs.params import JobParams
    from pipecat_workers.validate import MAX_NAME_LENGTH

    BaseWorker("w" * MAX_NAME_LENGTH)  # the longest name that travels
    with pytest.raises(ConfigurationError, match="worker name must be at most 1,024"):
        BaseWorker("w" * (MAX_NAME_LENGTH + 1))
    with pytest.raises(ConfigurationError, match="worker name must be a non-empty string"):
        BaseWorker("")
    with pytest.raises(ConfigurationError, match="runner name must be at most"):
        WorkerRunner(name="r" * (MAX_NAME_LENGTH + 1), handle_sigint=False)
    with pytest.raises(ConfigurationError, match="'name' must be at most"):
        JobParams(name="j" * (MAX_NAME_LENGTH + 1))
