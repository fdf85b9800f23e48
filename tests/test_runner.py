"""Tests for WorkerRunner: adding workers, running, graceful and bounded shutdown, signals,
stats, and what happens to a worker that stops."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipecat_workers import (
    BaseWorker,
    ConfigurationError,
    JobError,
    JobStatus,
    Settings,
    WorkerReadyData,
    WorkerRunner,
    WorkerState,
    WorkerStateError,
    job,
)
from pipecat_workers.bus import (
    BusCancelWorkerMessage,
    BusEndWorkerMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusMessage,
    BusWorkerStoppedMessage,
)
from tests.helpers import Recorder, drain, leftover_tasks, running, wait_until

FAST = Settings(end_grace=0.2, cancel_timeout=0.2)


# -- workers used by the tests --------------------------------------------------------------


class Service(BaseWorker):
    """Answers jobs: ``echo`` at once, ``slow`` after ``delay``, ``hang`` never; also ``fail``
    (a business failure) and ``boom`` (an exception). Logs the messages it handles."""

    def __init__(self, name: str, *, delay: float = 0.2, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.delay = delay
        self.started = asyncio.Event()
        self.handler_cancelled = 0
        self.handler_finished = 0
        self.handled: list[str] = []

    async def on_bus_message(self, message: BusMessage) -> None:
        self.handled.append(type(message).__name__)
        await super().on_bus_message(message)

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict:
        return {"echo": message.payload, "by": id(self)}

    @job("slow")
    async def slow(self, message: BusJobRequestMessage) -> dict:
        self.started.set()
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.handler_cancelled += 1
            raise
        self.handler_finished += 1
        return {"done": True}

    @job("hang")
    async def hang(self, message: BusJobRequestMessage) -> dict:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.handler_cancelled += 1
            raise
        return {}

    @job("fail")
    async def fail(self, message: BusJobRequestMessage) -> None:
        await self.send_job_response(message.job_id, {"why": "no"}, status=JobStatus.FAILED)

    @job("boom")
    async def boom(self, message: BusJobRequestMessage) -> dict:
        raise ValueError("kaput")


class Quitter(BaseWorker):
    """Ends itself right after it becomes active."""

    async def on_activated(self, args) -> None:
        await super().on_activated(args)
        await self.send_bus_message(BusEndWorkerMessage(source=self.name, target=self.name))


class Parent(BaseWorker):
    """Records which watched workers (its children) became ready."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready: list[str] = []

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        self.ready.append(data.worker_name)


async def ask(requester: BaseWorker, target: str, job_name: str, *, payload=None,
              timeout: float | None = None):
    """Send one job from ``requester`` and return (status, response)."""
    async with requester.job(target, name=job_name, payload=payload, timeout=timeout) as ctx:
        pass
    return ctx.status, ctx.response


def make_runner(**kwargs) -> WorkerRunner:
    kwargs.setdefault("handle_sigint", False)
    return WorkerRunner(**kwargs)


def is_cancel_to(name: str):
    return lambda m: isinstance(m, BusCancelWorkerMessage) and m.target == name


# -- adding workers ------------------------------------------------------------------------


async def test_workers_added_before_run_start_when_it_runs():
    runner = make_runner()
    a, b = Service("a"), Service("b")
    await runner.add_workers(a, b)
    assert a.state is WorkerState.CREATED and "a" not in runner.registry
    async with running(runner):
        assert a.state is WorkerState.READY and b.state is WorkerState.READY
        assert sorted(runner.registry.local_workers) == ["a", "b"]
        assert a.worker_runner is runner and a.bus is runner.bus


async def test_workers_added_during_run_start_at_once():
    runner = make_runner()
    client = BaseWorker("client")
    await runner.add_workers(client)
    async with running(runner):
        late = Service("late")
        await runner.add_workers(late)
        assert late.state is WorkerState.READY
        assert "late" in runner.registry
        status, response = await asyncio.wait_for(
            ask(client, "late", "echo", payload={"x": 1}), 2)
        assert status is JobStatus.COMPLETED and response["echo"] == {"x": 1}


async def test_duplicate_name_raises():
    runner = make_runner()
    first = BaseWorker("a")
    await runner.add_workers(first)
    with pytest.raises(ConfigurationError, match="'a'"):
        await runner.add_workers(BaseWorker("a"))
    with pytest.raises(ConfigurationError):
        await runner.add_workers(BaseWorker(runner.name))  # the runner's own name is taken
    async with running(runner):
        with pytest.raises(ConfigurationError):
            await runner.add_workers(BaseWorker("a"))
        assert runner.get_worker("a") is first
        assert runner.registry.local_workers == ["a"]


async def test_get_worker():
    runner = make_runner()
    a = BaseWorker("a")
    await runner.add_workers(a)
    assert runner.get_worker("a") is a
    assert runner.get_worker("nobody") is None
    await runner.registry.register(WorkerReadyData(worker_name="remote", runner="elsewhere"))
    assert "remote" in runner.registry
    assert runner.get_worker("remote") is None


async def test_run_twice_at_once_is_refused():
    runner = make_runner()
    await runner.add_workers(BaseWorker("a"))
    async with running(runner):
        with pytest.raises(WorkerStateError):
            await runner.run()


# -- run and auto_end ----------------------------------------------------------------------


async def test_auto_end_returns_when_every_root_worker_stopped():
    runner = make_runner()
    rec = Recorder()
    runner.bus.subscribe(rec, role="observer")
    quitters = [Quitter("q1"), Quitter("q2")]
    await runner.add_workers(*quitters)
    await asyncio.wait_for(runner.run(auto_end=True), 5)
    assert all(q.state is WorkerState.STOPPED for q in quitters)
    assert not runner.running and not runner.bus.running
    await drain(runner.bus)
    assert rec.of_type(BusCancelWorkerMessage) == []


async def test_auto_end_waits_for_the_last_root_worker():
    runner = make_runner()
    stay = BaseWorker("stay")
    await runner.add_workers(Quitter("q"), stay)
    async with running(runner, auto_end=True) as task:
        await wait_until(lambda: runner.get_worker("q") is None)
        await asyncio.sleep(0.05)
        assert not task.done()
        await stay.stop()
        await asyncio.wait_for(task, 5)


async def test_without_auto_end_the_runner_runs_until_end():
    runner = make_runner()
    quitter = Quitter("q")
    await runner.add_workers(quitter)
    async with running(runner, auto_end=False) as task:
        await asyncio.wait_for(quitter.wait(), 2)
        await asyncio.sleep(0.05)
        assert not task.done() and runner.running
        await runner.end()
        await asyncio.wait_for(task, 5)


# -- graceful end ---------------------------------------------------------------------------


async def test_end_lets_a_running_job_finish_and_never_cancels():
    runner = make_runner()
    rec = Recorder()
    runner.bus.subscribe(rec, role="observer")
    service, client = Service("service", delay=0.2), BaseWorker("client")
    await runner.add_workers(service, client)
    async with running(runner) as task:
        asked = asyncio.ensure_future(ask(client, "service", "slow"))
        await asyncio.wait_for(service.started.wait(), 2)
        await runner.end(reason="closing time")
        await asyncio.wait_for(task, 5)
    await drain(runner.bus)  # the observer gets what was still queued when the bus stopped
    assert service.handler_finished == 1 and service.handler_cancelled == 0
    status, response = await asyncio.wait_for(asked, 1)
    assert status is JobStatus.COMPLETED and response == {"done": True}
    assert [m for m in rec.messages if is_cancel_to("service")(m)] == []
    assert "BusEndWorkerMessage" in service.handled
    assert "BusCancelWorkerMessage" not in service.handled
    assert service.state is WorkerState.STOPPED


async def test_end_lets_a_job_from_outside_the_runner_finish():
    """The runner side of graceful end, with a requester that is not ended with it."""
    runner = make_runner()
    tester = Recorder("tester")
    runner.bus.subscribe(tester)
    service = Service("service", delay=0.2)
    await runner.add_workers(service)
    async with running(runner) as task:
        await runner.bus.send(BusJobRequestMessage(
            source="tester", target="service", job_id="j1", job_name="slow"))
        await asyncio.wait_for(service.started.wait(), 2)
        await runner.end()
        await asyncio.wait_for(task, 5)
    await drain(runner.bus)
    answers = tester.of_type(BusJobResponseMessage)
    assert [(a.job_id, a.status, a.response) for a in answers] == [
        ("j1", JobStatus.COMPLETED, {"done": True})]
    assert service.handler_finished == 1 and service.handler_cancelled == 0
    assert "BusEndWorkerMessage" in service.handled
    assert "BusCancelWorkerMessage" not in service.handled


async def test_end_grace_is_bounded():
    """A job that outlasts the grace is cancelled by the worker's own end, not by the runner."""
    runner = make_runner(settings=FAST)
    rec, tester = Recorder(), Recorder("tester")
    runner.bus.subscribe(rec, role="observer")
    runner.bus.subscribe(tester)
    service = Service("service")
    await runner.add_workers(service)
    async with running(runner) as task:
        await runner.bus.send(BusJobRequestMessage(
            source="tester", target="service", job_id="j1", job_name="hang"))
        await asyncio.wait_for(service.started.wait(), 2)
        await runner.end()
        await asyncio.wait_for(task, 5)
    assert service.handler_cancelled == 1
    assert service.state is WorkerState.STOPPED
    await drain(runner.bus)
    answers = tester.of_type(BusJobResponseMessage)
    assert [(a.job_id, a.status, a.response) for a in answers] == [
        ("j1", JobStatus.CANCELLED, {"reason": "worker 'service' ended"})]
    assert [m for m in rec.messages if is_cancel_to("service")(m)] == []
    assert "BusCancelWorkerMessage" not in service.handled


def stubborn_worker(release: asyncio.Event) -> type[BaseWorker]:
    """A worker class whose ``stubborn`` job ignores the first cancel and ends on ``release``."""

    class Stubborn(BaseWorker):
        @job("stubborn")
        async def stubborn(self, message):
            try:
                await release.wait()
            except asyncio.CancelledError:
                await release.wait()  # ignores the first cancel
            return {}

    return Stubborn


async def test_end_is_bounded_even_if_a_handler_ignores_cancellation():
    release = asyncio.Event()
    Stubborn = stubborn_worker(release)

    runner = make_runner(settings=FAST)
    tester = Recorder("tester")
    runner.bus.subscribe(tester)
    worker = Stubborn("stubborn")
    await runner.add_workers(worker)
    try:
        async with running(runner) as task:
            await runner.bus.send(BusJobRequestMessage(
                source="tester", target="stubborn", job_id="j1", job_name="stubborn"))
            await wait_until(lambda: worker.active_jobs)
            await runner.end()
            await asyncio.wait_for(task, 5)
        assert worker.state is WorkerState.STOPPED
        await drain(runner.bus)
        answers = tester.of_type(BusJobResponseMessage)
        assert [(a.job_id, a.status) for a in answers] == [("j1", JobStatus.CANCELLED)]
    finally:
        release.set()


# -- cancel -----------------------------------------------------------------------------


async def test_cancel_cancels_running_handlers_and_the_requester_does_not_hang():
    runner = make_runner()
    service, client = Service("service"), BaseWorker("client")
    await runner.add_workers(service, client)
    async with running(runner) as task:
        asked = asyncio.ensure_future(ask(client, "service", "hang"))
        await asyncio.wait_for(service.started.wait(), 2)
        await runner.cancel(reason="abort")
        await asyncio.wait_for(task, 5)
    assert service.handler_cancelled == 1
    with pytest.raises(JobError, match="cancelled"):
        await asyncio.wait_for(asked, 2)
    assert service.state is WorkerState.STOPPED and client.state is WorkerState.STOPPED


async def test_cancel_answers_cancelled_to_a_requester_outside_the_runner():
    runner = make_runner()
    tester = Recorder("tester")
    runner.bus.subscribe(tester)
    service = Service("service")
    await runner.add_workers(service)
    async with running(runner) as task:
        await runner.bus.send(BusJobRequestMessage(
            source="tester", target="service", job_id="j1", job_name="hang"))
        await asyncio.wait_for(service.started.wait(), 2)
        await runner.cancel(reason="abort")
        await asyncio.wait_for(task, 5)
    await drain(runner.bus)
    answers = tester.of_type(BusJobResponseMessage)
    assert [(a.job_id, a.status) for a in answers] == [("j1", JobStatus.CANCELLED)]
    assert "BusCancelWorkerMessage" in service.handled


async def test_cancel_cuts_a_graceful_end_short():
    runner = make_runner(settings=Settings(end_grace=30, cancel_timeout=0.2))
    runner.bus.subscribe(Recorder("tester"))
    service = Service("service")
    await runner.add_workers(service)
    async with running(runner) as task:
        await runner.bus.send(BusJobRequestMessage(
            source="tester", target="service", job_id="j1", job_name="hang"))
        await asyncio.wait_for(service.started.wait(), 2)
        await runner.end()
        await asyncio.sleep(0.05)
        assert not task.done()  # the end waits for the job
        await runner.cancel(reason="now")
        await asyncio.wait_for(task, 3)
    assert service.handler_cancelled == 1
    assert service.state is WorkerState.STOPPED


async def test_a_workers_end_ends_the_runner():
    runner = make_runner()
    rec = Recorder()
    runner.bus.subscribe(rec, role="observer")
    a, b = BaseWorker("a"), BaseWorker("b")
    await runner.add_workers(a, b)
    async with running(runner) as task:
        await a.end(reason="bye")
        await asyncio.wait_for(task, 5)
    await drain(runner.bus)
    ends = rec.of_type(BusEndWorkerMessage)
    assert sorted(m.target for m in ends) == ["a", "b"]
    assert all(m.reason == "bye" and m.source == runner.name for m in ends)
    assert a.state is WorkerState.STOPPED and b.state is WorkerState.STOPPED


async def test_a_workers_cancel_cancels_the_runner():
    runner = make_runner()
    rec = Recorder()
    runner.bus.subscribe(rec, role="observer")
    a, b = BaseWorker("a"), BaseWorker("b")
    await runner.add_workers(a, b)
    async with running(runner) as task:
        await a.cancel(reason="stop")
        await asyncio.wait_for(task, 5)
    await drain(runner.bus)
    cancels = [m for m in rec.of_type(BusCancelWorkerMessage) if m.reason == "stop"]
    assert sorted(m.target for m in cancels) == ["a", "b"]
    assert rec.of_type(BusEndWorkerMessage) == []
    assert a.state is WorkerState.STOPPED and b.state is WorkerState.STOPPED


# -- signals ------------------------------------------------------------------------------


def loop_signal_handlers() -> dict:
    return getattr(asyncio.get_running_loop(), "_signal_handlers", {})


def test_importing_the_package_installs_no_signal_handler():
    code = (
        "import signal\n"
        "before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}\n"
        "import pipecat_workers, pipecat_workers.bus\n"
        "after = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}\n"
        "assert before == after, (before, after)\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=30)


async def test_constructing_a_runner_installs_no_signal_handler():
    before = signal.getsignal(signal.SIGINT)
    runner = WorkerRunner(handle_sigint=True, handle_sigterm=True)
    await runner.add_workers(BaseWorker("a"))
    assert signal.getsignal(signal.SIGINT) is before
    assert loop_signal_handlers() == {}


async def test_sigint_handler_is_installed_only_during_run():
    before = signal.getsignal(signal.SIGINT)
    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(BaseWorker("a"))
    async with running(runner) as task:
        assert signal.SIGINT in loop_signal_handlers()
        assert signal.SIGTERM not in loop_signal_handlers()
        await runner.end()
        await asyncio.wait_for(task, 5)
    assert loop_signal_handlers() == {}
    assert signal.getsignal(signal.SIGINT) is before


async def test_no_signal_handler_when_not_asked():
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(BaseWorker("a"))
    async with running(runner):
        assert loop_signal_handlers() == {}


async def test_sigint_during_run_cancels_the_workers(caplog):
    runner = WorkerRunner(handle_sigint=True)
    tester = Recorder("tester")
    runner.bus.subscribe(tester)
    service = Service("service")
    await runner.add_workers(service)
    with caplog.at_level(logging.INFO, logger="pipecat_workers.runner"):
        async with running(runner) as task:
            await runner.bus.send(BusJobRequestMessage(
                source="tester", target="service", job_id="j1", job_name="hang"))
            await asyncio.wait_for(service.started.wait(), 2)
            assert signal.SIGINT in loop_signal_handlers()  # or the kill would end pytest
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(task, 5)
    assert service.handler_cancelled == 1
    assert service.state is WorkerState.STOPPED
    await drain(runner.bus)
    answers = tester.of_type(BusJobResponseMessage)
    assert [(a.job_id, a.status) for a in answers] == [("j1", JobStatus.CANCELLED)]
    assert any("SIGINT" in r.getMessage() for r in caplog.records)
    assert loop_signal_handlers() == {}


# -- stats --------------------------------------------------------------------------------


async def test_stats_report_jobs_and_workers():
    runner = make_runner()
    service, client = Service("service"), BaseWorker("client")
    idle = BaseWorker("idle", active=False)
    await runner.add_workers(service, client, idle)
    async with running(runner):
        assert (await ask(client, "service", "echo"))[0] is JobStatus.COMPLETED
        with pytest.raises(JobError):
            await ask(client, "service", "fail")
        with pytest.raises(JobError):
            await ask(client, "service", "boom")
        job_id = await client.request_job("service", name="hang")
        await asyncio.wait_for(service.started.wait(), 2)
        stats = runner.stats()
        assert stats["jobs"]["running"] == 1
        assert stats["workers"]["service"]["jobs"] == 1
        await client.cancel_job_group(job_id, reason="changed my mind")
        await wait_until(lambda: runner.stats()["jobs"]["cancelled"] == 1)
        assert service.handler_cancelled == 1
        stats = runner.stats()
        assert stats["runner"] == runner.name
        assert stats["jobs"] == {"requested": 4, "running": 0, "completed": 1, "failed": 1,
                                 "errored": 1, "cancelled": 1, "events_dropped": 0}
        assert stats["workers"]["service"] == {"state": "ready", "active": True,
                                               "parent": None, "jobs": 0}
        assert stats["workers"]["idle"]["active"] is False
        assert stats["messages"]["sent"]["BusJobRequestMessage"] == 4
        assert set(stats["workers"]) == {"service", "client", "idle"}


async def test_cancelling_the_task_that_waits_for_a_job_cancels_the_job():
    """A job whose waiter goes away must not run on (and stay counted as running) forever."""
    runner = make_runner()
    service, client = Service("service"), BaseWorker("client")
    await runner.add_workers(service, client)
    async with running(runner):
        waiting = asyncio.ensure_future(ask(client, "service", "hang"))
        await asyncio.wait_for(service.started.wait(), 2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await wait_until(lambda: runner.stats()["jobs"]["cancelled"] == 1)
        assert service.handler_cancelled == 1
        assert client.job_groups == {} and service.active_jobs == {}
        assert runner.stats()["jobs"]["running"] == 0


# -- a stopped worker ---------------------------------------------------------------------


async def test_a_stopped_worker_leaves_and_its_name_can_be_reused():
    runner = make_runner()
    rec = Recorder()
    runner.bus.subscribe(rec, role="observer")
    old, client = Service("service"), BaseWorker("client")
    await runner.add_workers(old, client)
    async with running(runner):
        status, response = await ask(client, "service", "echo")
        assert status is JobStatus.COMPLETED and response["by"] == id(old)

        await runner.bus.send(BusEndWorkerMessage(source="test", target="service"))
        await asyncio.wait_for(old.wait(), 2)
        assert old.state is WorkerState.STOPPED
        assert "service" not in runner.registry
        assert not runner.bus.is_local("service")
        assert runner.get_worker("service") is None
        await rec.wait_for(lambda m: isinstance(m, BusWorkerStoppedMessage))
        assert [m.source for m in rec.of_type(BusWorkerStoppedMessage)] == ["service"]

        handled = len(old.handled)
        with pytest.raises(JobError, match="not ready"):
            await ask(client, "service", "echo", timeout=0.2)
        assert len(old.handled) == handled  # it does not answer any more

        new = Service("service")
        await runner.add_workers(new)
        assert new.state is WorkerState.READY and runner.get_worker("service") is new
        status, response = await asyncio.wait_for(ask(client, "service", "echo"), 2)
        assert status is JobStatus.COMPLETED and response["by"] == id(new)
        assert len(old.handled) == handled


async def test_a_cancel_that_arrives_while_a_worker_ends_still_stops_it_completely():
    """Cancel during the end's own cleanup must not leave a half-stopped worker behind."""
    release = asyncio.Event()
    Stubborn = stubborn_worker(release)

    runner = make_runner(settings=Settings(end_grace=0.05, cancel_timeout=0.5))
    tester = Recorder("tester")
    runner.bus.subscribe(tester)
    worker = Stubborn("stubborn")
    await runner.add_workers(worker, BaseWorker("other"))
    try:
        async with running(runner):
            await runner.bus.send(BusJobRequestMessage(
                source="tester", target="stubborn", job_id="j1", job_name="stubborn"))
            await wait_until(lambda: worker.active_jobs)
            await runner.bus.send(BusEndWorkerMessage(source="test", target="stubborn"))
            await wait_until(lambda: worker.state is WorkerState.STOPPING)
            await runner.bus.send(BusCancelWorkerMessage(source="test", target="stubborn"))
            await asyncio.wait_for(worker.wait(), 5)
            await tester.wait_for(lambda m: isinstance(m, BusJobResponseMessage))
            assert "stubborn" not in runner.registry
            assert not runner.bus.is_local("stubborn")
            assert worker.active_jobs == {}
            answers = tester.of_type(BusJobResponseMessage)
            assert [(a.job_id, a.status) for a in answers] == [("j1", JobStatus.CANCELLED)]
    finally:
        release.set()


# -- children ------------------------------------------------------------------------------


async def test_children_added_before_run_start():
    runner = make_runner()
    parent = Parent("parent")
    early, later = BaseWorker("early"), BaseWorker("later")
    await parent.add_workers(early)  # before the parent has a runner
    await runner.add_workers(parent)
    await parent.add_workers(later)  # the parent has a runner, which is not running yet
    async with running(runner) as task:
        await wait_until(lambda: later.state is WorkerState.READY)
        assert early.state is WorkerState.READY
        assert early.parent == "parent" and later.parent == "parent"
        assert runner.get_worker("early") is early and runner.get_worker("later") is later
        assert {"early", "later"} <= set(runner.registry.local_workers)
        await wait_until(lambda: sorted(parent.ready) == ["early", "later"])
        await runner.end()
        await asyncio.wait_for(task, 5)
    assert all(w.state is WorkerState.STOPPED for w in (parent, early, later))


# -- scale ----------------------------------------------------------------------------------


async def test_a_thousand_idle_workers_start_and_end_cleanly():
    await asyncio.sleep(0)
    before = asyncio.all_tasks()
    runner = make_runner()
    workers = [BaseWorker(f"w{i}") for i in range(1000)]
    await runner.add_workers(*workers)
    async with running(runner, timeout=30) as task:
        assert len(runner.registry.local_workers) == 1000
        assert all(w.state is WorkerState.READY for w in workers)
        await wait_until(lambda: runner.bus.stats()["queued"] == 0, timeout=10)
        # Idle workers cost no tasks: only the run task (and at most a stray event task).
        assert len(asyncio.all_tasks() - before) <= 2
        await runner.end()
        await asyncio.wait_for(task, 30)
    assert all(w.state is WorkerState.STOPPED for w in workers)
    assert len(runner.registry) == 0
    assert runner.bus.stats()["subscribers"] == 1  # the runner itself
    assert await leftover_tasks(before) == set()
