"""Runners sharing one bus find each other's workers, and forget them when they go.

Two runners on one in-process bus stand in for two processes: the protocol (heartbeats,
digests, snapshots, leave, loss, incarnations) is the one the network buses carry.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    ConfigurationError,
    JobContext,
    JobError,
    JobEventType,
    JobStatus,
    Settings,
    WorkerLostData,
    WorkerReadyData,
    WorkerRegistryEntry,
    WorkerRunner,
    job,
)
from pipecat_workers.bus import (
    AsyncQueueBus,
    BusHeartbeatMessage,
    BusJobCheckMessage,
    BusJobRequestMessage,
    BusJobResponseAgainMessage,
    BusJobResponseMessage,
    BusJobStreamEndMessage,
    BusMessage,
    BusRegistryRequestMessage,
    BusRunnerLeaveMessage,
    BusWorkerRegistryMessage,
)
from pipecat_workers.bus.messages import MAX_CHECKED_JOBS
from tests.helpers import Recorder, running, settle, wait_until

FAST = Settings(heartbeat_interval=0.05, lost_after=3, end_grace=1.0, cancel_timeout=0.5)


class Echo(BaseWorker):
    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, str]:
        return {"from": self.name}

    @job("hang")
    async def hang(self, message: BusJobRequestMessage) -> None:
        await asyncio.Event().wait()


class Watcher(BaseWorker):
    def __init__(self, name: str, watch: str) -> None:
        super().__init__(name)
        self.target = watch
        self.events: list[tuple[str, str]] = []

    async def on_activated(self, args: object) -> None:
        await self.watch_workers(self.target)

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        self.events.append(("ready", data.worker_name))

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.events.append(("lost", f"{data.worker_name}:{data.reason}"))


@pytest.fixture
async def bus():
    shared = AsyncQueueBus()
    await shared.start()  # started here, so no runner stops it under the others
    yield shared
    await shared.close()


def runner_on(bus: AsyncQueueBus, name: str, settings: Settings = FAST) -> WorkerRunner:
    return WorkerRunner(name=name, bus=bus, handle_sigint=False, settings=settings)


async def test_two_runners_discover_each_other_and_run_jobs_across(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    client = BaseWorker("client")
    await a.add_workers(client, Echo("echo-a"))
    await b.add_workers(Echo("echo-b"))
    async with running(a), running(b):
        await wait_until(lambda: "echo-b" in a.registry and "echo-a" in b.registry)
        assert a.registry.get("echo-b").runner == "runner-b"
        assert b.registry.get("client").runner == "runner-a"
        assert sorted(a.registry.remote_workers) == ["echo-b"]
        async with client.job("echo-b", name="echo", timeout=2) as j:
            pass
        assert j.response == {"from": "echo-b"}


async def test_a_newcomer_started_right_after_its_peers_is_never_lost(bus) -> None:
    for round_ in range(20):
        a, b = runner_on(bus, f"a{round_}"), runner_on(bus, f"b{round_}")
        await a.add_workers(Echo(f"wa{round_}"))
        await b.add_workers(Echo(f"wb{round_}"))
        async with running(a), running(b):
            await wait_until(
                lambda a=a, b=b, n=round_: f"wb{n}" in a.registry and f"wa{n}" in b.registry,
                timeout=1.0)


async def test_a_runner_that_leaves_is_forgotten_at_once_and_its_jobs_end(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    watcher = Watcher("watcher", "remote")
    await a.add_workers(watcher)
    await b.add_workers(Echo("remote"))
    async with running(a):
        b_task = asyncio.get_running_loop().create_task(b.run(auto_end=False))
        await wait_until(lambda: ("ready", "remote") in watcher.events)
        pending = asyncio.ensure_future(watcher.job("remote", name="hang").__aenter__())
        job_ctx = await asyncio.wait_for(pending, 2)
        started = asyncio.get_running_loop().time()
        await b.cancel(reason="going away")
        await asyncio.wait_for(b_task, 5)
        with pytest.raises(JobError, match="remote"):
            await asyncio.wait_for(job_ctx.__aexit__(None, None, None), 2)
        assert asyncio.get_running_loop().time() - started < 2
        assert "remote" not in a.registry
        assert watcher.events[-1][0] == "lost"
        assert job_ctx.status in (JobStatus.ERROR, JobStatus.CANCELLED)


# -- jobs whose messages are lost ---------------------------------------------------------
# Network buses deliver at most once. A job that has waited lost_after intervals (0.15 s here)
# on a worker of another runner is checked: that worker sends its answer again, or says it
# has no record of the job.


class Slow(Echo):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.runs = 0

    @job("slow")
    async def slow(self, message: BusJobRequestMessage) -> dict[str, str]:
        self.runs += 1
        await asyncio.sleep(0.6)
        return {"from": self.name}


class Loses(BaseWorker):
    """Its first outgoing message of type ``kind`` never reaches the bus (kept in ``lost``)."""

    def __init__(self, name: str, kind: type[BusMessage]) -> None:
        super().__init__(name)
        self.kind = kind
        self.lost: list[BusMessage] = []

    async def send_bus_message(self, message: BusMessage) -> None:
        if type(message) is self.kind and not self.lost:
            self.lost.append(message)
            return
        await super().send_bus_message(message)


class LosesItsAnswer(Loses, Echo):
    def __init__(self, name: str) -> None:
        super().__init__(name, BusJobResponseMessage)


async def ask(client: BaseWorker, worker: str, job_name: str) -> JobContext:
    async with client.job(worker, name=job_name, timeout=None) as j:
        pass
    return j


async def test_a_job_whose_answer_was_lost_gets_it_again(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    client, far = BaseWorker("client"), LosesItsAnswer("far")
    responses: list[BusJobResponseMessage] = []
    client.add_event_handler("on_job_response", lambda w, m: _append(responses, m))
    await a.add_workers(client)
    await b.add_workers(far)
    async with running(a), running(b):
        await wait_until(lambda: "far" in a.registry)
        j = await asyncio.wait_for(ask(client, "far", "echo"), 5)  # within two windows
        assert len(far.lost) == 1
        assert (j.status, j.response) == (JobStatus.COMPLETED, {"from": "far"})
        assert [type(m) for m in responses] == [BusJobResponseAgainMessage]


async def test_a_job_whose_request_was_lost_ends_and_never_runs_late(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    far = Slow("far")

    class LosesItsRequest(Loses):
        def __init__(self, name: str) -> None:
            super().__init__(name, BusJobRequestMessage)

    client = LosesItsRequest("client")
    responses: list[BusJobResponseMessage] = []
    client.add_event_handler("on_job_response", lambda w, m: _append(responses, m))
    await a.add_workers(client)
    await b.add_workers(far)
    async with running(a), running(b):
        await wait_until(lambda: "far" in a.registry)
        with pytest.raises(JobError, match=r"'far' has no record of this job"):
            await asyncio.wait_for(ask(client, "far", "slow"), 5)
        assert len(responses) == 1
        # Another requester's big check must not push that refusal out of far's memory.
        await bus.send(BusJobCheckMessage(source="other", target="far",
                                          job_ids=[f"x{i}" for i in range(MAX_CHECKED_JOBS)]))
        # The request was only late (a redelivery, say): it must not run now.
        seen = Recorder()
        bus.subscribe(seen, role="observer")
        await bus.send(client.lost[0])
        answer = await seen.wait_for(lambda m: isinstance(m, BusJobResponseMessage)
                                     and m.job_id == client.lost[0].job_id)
        assert answer.status == JobStatus.CANCELLED and far.runs == 0
        await settle()
        assert len(responses) == 1  # the refusal reaches no hook: the job had ended


class LosesItsStreamEnd(Loses):
    def __init__(self, name: str) -> None:
        super().__init__(name, BusJobStreamEndMessage)

    @job("count")
    async def count(self, message: BusJobRequestMessage) -> None:
        await self.send_job_stream_start(message.job_id)
        for n in range(3):
            await self.send_job_stream_data(message.job_id, {"n": n})
        await self.send_job_stream_end(message.job_id, {"total": 3})


async def test_a_stream_whose_end_was_lost_gets_its_end_again(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    client, far = BaseWorker("client"), LosesItsStreamEnd("far")
    await a.add_workers(client)
    await b.add_workers(far)
    async with running(a), running(b):
        await wait_until(lambda: "far" in a.registry)

        async def read() -> list[tuple[JobEventType, Any]]:
            async with client.job("far", name="count", timeout=None) as j:
                return [(event.type, event.data) async for event in j]

        events = await asyncio.wait_for(read(), 5)
        assert len(far.lost) == 1
        assert events[-1] == (JobEventType.STREAM_END, {"total": 3})
        assert [d for t, d in events if t is JobEventType.STREAM_DATA] == [
            {"n": 0}, {"n": 1}, {"n": 2}]


async def test_an_answer_sent_again_after_the_first_arrived_is_ignored(bus) -> None:
    a = runner_on(bus, "runner-a")
    client = BaseWorker("client")
    responses: list[BusJobResponseMessage] = []
    client.add_event_handler("on_job_response", lambda w, m: _append(responses, m))
    await a.add_workers(client)
    async with running(a):
        await bus.send(BusJobResponseAgainMessage(source="far", target="client", job_id="j1"))
        await bus.send(BusJobResponseMessage(source="far", target="client", job_id="j2"))
        await wait_until(lambda: len(responses) == 1)
        await settle()
        assert [m.job_id for m in responses] == ["j2"]  # a late first answer still reaches hooks


async def test_long_jobs_on_another_runner_are_checked_in_one_message_and_go_on(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    client = BaseWorker("client")
    seen = Recorder()
    bus.subscribe(seen, role="observer")
    near, far = Slow("near"), Slow("far")
    await a.add_workers(client, near)
    await b.add_workers(far)
    async with running(a), running(b):
        await wait_until(lambda: "far" in a.registry)
        jobs = await asyncio.gather(*(ask(client, "far", "slow") for _ in range(5)),
                                    ask(client, "near", "slow"))
        assert all(j.status == JobStatus.COMPLETED for j in jobs)
        assert far.runs == 5 and near.runs == 1
        checks = seen.of_type(BusJobCheckMessage)
        assert checks, "no job was checked"
        assert all(m.target == "far" for m in checks)  # never a worker of the same runner
        assert any(len(m.job_ids) == 5 for m in checks)  # one message for all five
        assert not seen.of_type(BusJobResponseAgainMessage)  # running jobs: nothing to say


async def test_a_malformed_or_huge_check_gets_bounded_answers(bus) -> None:
    a = runner_on(bus, "runner-a")
    await a.add_workers(Echo("far"))
    seen = Recorder()
    bus.subscribe(seen, role="observer")
    async with running(a):
        await bus.send(BusJobCheckMessage(source="x", target="far", job_ids="abc"))  # type: ignore[arg-type]
        await bus.send(BusJobCheckMessage(source="x", target="far", job_ids=[1, "j"]))  # type: ignore[list-item]
        await bus.send(BusJobCheckMessage(source="x", target="far",
                                          job_ids=[f"k{i}" for i in range(3000)]))
        await seen.wait_for(lambda m: getattr(m, "job_id", None) == f"k{MAX_CHECKED_JOBS - 1}")
        await settle()
        answers = [m.job_id for m in seen.of_type(BusJobResponseAgainMessage)]
        assert answers == ["j", *(f"k{i}" for i in range(MAX_CHECKED_JOBS))]


async def _append(into: list[BusJobResponseMessage], message: BusJobResponseMessage) -> None:
    into.append(message)


async def fake_runner(bus: AsyncQueueBus, name: str, incarnation: float, workers: list[str],
                      *, digest: str = "d", interval: float = 0.05) -> None:
    await bus.send(BusWorkerRegistryMessage(
        source=name, runner=name, incarnation=incarnation, digest=digest,
        workers=[WorkerRegistryEntry(name=w) for w in workers]))
    await bus.send(BusHeartbeatMessage(source=name, runner=name, incarnation=incarnation,
                                       digest=digest, interval=interval))


async def test_a_silent_runner_is_lost_after_three_intervals(bus) -> None:
    a = runner_on(bus, "runner-a")
    watcher = Watcher("watcher", "ghost-worker")
    await a.add_workers(watcher)
    async with running(a):
        await fake_runner(bus, "ghost", 1.0, ["ghost-worker"])
        await wait_until(lambda: ("ready", "ghost-worker") in watcher.events)
        loop = asyncio.get_running_loop()
        silent_since = loop.time()
        await wait_until(lambda: "ghost-worker" not in a.registry, timeout=2)
        assert loop.time() - silent_since >= 3 * 0.05 * 0.9
        assert watcher.events[-1] == ("lost", "ghost-worker:lost")
        assert "ghost" not in a._membership.peers


async def ghost_heard_then_bus_down(bus: AsyncQueueBus, a: WorkerRunner) -> float:
    """A peer 'ghost' beating every 0.2 s is heard once; then ``a``'s connection drops.
    Returns when the ghost was heard."""
    await fake_runner(bus, "ghost", 1.0, ["ghost-worker"], interval=0.2)
    await wait_until(lambda: "ghost-worker" in a.registry)
    heard = asyncio.get_running_loop().time()
    a._membership.bus_down()
    return heard


async def test_silence_while_its_own_bus_is_down_is_excused_once(bus) -> None:
    # The ghost's window is 3 x 0.2 s. Our connection drops at once and comes back after
    # 0.9 s: without the excuse the ghost would be lost by then; with it (capped at one
    # window, 0.6 s) it is lost 0.6 s after its last heartbeat plus 0.6 s.
    a = runner_on(bus, "runner-a")
    async with running(a):
        loop = asyncio.get_running_loop()
        heard = await ghost_heard_then_bus_down(bus, a)
        await asyncio.sleep(0.9)
        assert "ghost-worker" in a.registry
        a._membership.bus_up()
        await asyncio.sleep(0.1)
        assert "ghost-worker" in a.registry
        await wait_until(lambda: "ghost-worker" not in a.registry, timeout=2)
        assert loop.time() - heard >= 1.2 * 0.95


async def test_an_outage_that_does_not_end_excuses_no_more_than_the_grace(bus) -> None:
    # The grace is 10 s by default (an outage that short loses no peer); 0.6 s here.
    a = runner_on(bus, "runner-a")
    a._membership.outage_grace = 0.6
    async with running(a):
        loop = asyncio.get_running_loop()
        heard = await ghost_heard_then_bus_down(bus, a)  # and never up again
        await wait_until(lambda: "ghost-worker" not in a.registry, timeout=3)
        assert loop.time() - heard >= 1.2 * 0.95


async def test_a_ten_second_outage_excuses_the_silence(bus) -> None:
    a = runner_on(bus, "runner-a")
    async with running(a):
        await ghost_heard_then_bus_down(bus, a)  # window 0.6 s, never heard again
        await asyncio.sleep(1.5)
        assert "ghost-worker" in a.registry  # excused: our own bus is down
        assert a._membership._excused(0.0, 0.2, 100.0) <= 10.0


async def test_a_new_incarnation_replaces_the_old_and_watches_fire_again(bus) -> None:
    a = runner_on(bus, "runner-a")
    watcher = Watcher("watcher", "w")
    await a.add_workers(watcher)
    async with running(a):
        await fake_runner(bus, "peer", 1.0, ["w"], digest="one")
        await wait_until(lambda: ("ready", "w") in watcher.events)
        await fake_runner(bus, "peer", 2.0, ["w"], digest="two")
        await wait_until(lambda: watcher.events.count(("ready", "w")) == 2)
        assert ("lost", "w:replaced") in watcher.events
        assert a.registry.get("w").incarnation == 2.0
        # the old incarnation is not heard any more
        await bus.send(BusWorkerRegistryMessage(source="peer", runner="peer", incarnation=1.0,
                                                workers=[WorkerRegistryEntry(name="old")]))
        await bus.send(BusRunnerLeaveMessage(source="peer", runner="peer", incarnation=1.0))
        await asyncio.sleep(0.02)
        assert "old" not in a.registry and "w" in a.registry


async def test_a_snapshot_sent_before_a_goodbye_and_arriving_after_it_brings_nobody_back(
        bus) -> None:
    # A runner that leaves while it answers our registry request: its answer can come after
    # its goodbye. Its workers must not come back (to be declared "lost" once it is gone).
    a = runner_on(bus, "runner-a")
    async with running(a):
        await bus.send(BusRunnerLeaveMessage(source="quick", runner="quick", incarnation=1.0))
        await bus.send(BusWorkerRegistryMessage(source="quick", runner="quick", incarnation=1.0,
                                                workers=[WorkerRegistryEntry(name="qw")]))
        await asyncio.sleep(0.05)
        assert "qw" not in a.registry and "quick" not in a.peers
        # Its next incarnation is welcome.
        await fake_runner(bus, "quick", 2.0, ["qw"], digest="again")
        await wait_until(lambda: "qw" in a.registry)


async def test_an_unknown_digest_asks_for_the_full_snapshot(bus) -> None:
    a = runner_on(bus, "runner-a", Settings(heartbeat_interval=10))
    peer = Recorder("peer")
    bus.subscribe(peer, role="runner")
    async with running(a):
        await bus.send(BusHeartbeatMessage(source="peer", runner="peer", incarnation=1.0,
                                           digest="new", interval=10))
        request = await peer.wait_for(lambda m: isinstance(m, BusRegistryRequestMessage))
        assert request.target == "peer" and request.runner == "runner-a"
        # the snapshot that answers it reconciles: listed workers added, others removed
        await fake_runner(bus, "peer", 1.0, ["x", "y"], digest="new")
        await wait_until(lambda: "x" in a.registry and "y" in a.registry)
        await fake_runner(bus, "peer", 1.0, ["y"], digest="newer")
        await wait_until(lambda: "x" not in a.registry)
        assert "y" in a.registry


async def test_a_registry_request_is_answered_with_a_snapshot(bus) -> None:
    a = runner_on(bus, "runner-a", Settings(heartbeat_interval=10))
    await a.add_workers(Echo("e1"), Echo("e2"))
    peer = Recorder("peer")
    bus.subscribe(peer, role="runner")
    async with running(a):
        await bus.send(BusRegistryRequestMessage(source="peer", target="runner-a", runner="peer"))
        snapshot = await peer.wait_for(
            lambda m: isinstance(m, BusWorkerRegistryMessage) and m.target == "peer")
        assert sorted(e.name for e in snapshot.workers) == ["e1", "e2"]
        assert snapshot.digest == a.registry.digest()
        assert snapshot.incarnation == a.incarnation


async def test_a_worker_stopping_in_a_peer_leaves_this_registry(bus) -> None:
    a, b = runner_on(bus, "runner-a"), runner_on(bus, "runner-b")
    watcher = Watcher("watcher", "remote")
    remote = Echo("remote")
    await a.add_workers(watcher)
    await b.add_workers(remote, Echo("other"))
    async with running(a), running(b):
        await wait_until(lambda: ("ready", "remote") in watcher.events)
        await remote.stop()
        await wait_until(lambda: "remote" not in a.registry)
        assert watcher.events[-1] == ("lost", "remote:stopped")
        assert "other" in a.registry


async def test_a_name_taken_on_another_runner_is_refused_before_it_starts(bus) -> None:
    a = runner_on(bus, "runner-a")
    async with running(a):
        await fake_runner(bus, "elsewhere", 1.0, ["taken"])
        await wait_until(lambda: "taken" in a.registry)
        with pytest.raises(ConfigurationError, match="already runs on runner 'elsewhere'"):
            await a.add_workers(Echo("taken"))


async def test_two_live_workers_with_one_name_stop_the_newcomer_and_tell_both() -> None:
    # Two buses joined by hand stand for two processes that started at the same moment.
    left_bus, right_bus = AsyncQueueBus(), AsyncQueueBus()
    a = WorkerRunner(name="runner-a", bus=left_bus, handle_sigint=False, settings=FAST)
    b = WorkerRunner(name="runner-b", bus=right_bus, handle_sigint=False, settings=FAST)
    errors: dict[str, list[str]] = {"runner-a": [], "runner-b": []}
    for runner in (a, b):
        async def on_error(r: WorkerRunner, data: object) -> None:
            errors[r.name].append(data.error)  # type: ignore[attr-defined]
        runner.add_event_handler("on_error", on_error)
    old, new = Echo("same"), Echo("same")
    await a.add_workers(old)
    await b.add_workers(new)
    async with running(a):
        await asyncio.sleep(0.02)  # old starts first
        async with running(b):
            await wait_until(lambda: new.started_at is not None)
            # exchange snapshots the way a network would
            for src, dst in ((a, right_bus), (b, left_bus)):
                await dst.send(BusWorkerRegistryMessage(
                    source=src.name, runner=src.name, incarnation=src.incarnation,
                    digest="x", workers=src._registry_entries()))
            await wait_until(lambda: new.state.value == "stopped", timeout=2)
            await wait_until(lambda: errors["runner-a"] and errors["runner-b"], timeout=2)
            assert old.state.value == "ready"
            assert "newcomer on 'runner-b'" in errors["runner-a"][0]


# -- the presence's news waits for what arrived before it ---------------------------------


class _Blocked:
    """A runner's mailbox whose handler holds the first message until released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = asyncio.Event()
        self.handled: list[BusMessage] = []

    async def on_bus_message(self, message: BusMessage) -> None:
        await self.release.wait()
        self.handled.append(message)


async def test_certain_news_of_a_gone_peer_waits_until_what_it_sent_before_is_taken(
        caplog: pytest.LogCaptureFixture) -> None:
    # A busy runner (one slow message ahead in its mailbox) hears from the presence that a
    # peer is gone while that peer's goodbye still waits behind the slow message. The news
    # must wait for the goodbye, however long the mailbox takes (within lost_after).
    from pipecat_workers.registry import WorkerRegistry
    from pipecat_workers.workers.liveness import Liveness
    from pipecat_workers.workers.peers import Peer

    shared = AsyncQueueBus()
    settings = Settings(heartbeat_interval=0.05, lost_after=40)
    mailbox = _Blocked("me")
    shared.subscribe(mailbox, role="runner")
    await shared.start()
    try:
        liveness = Liveness(runner="me", bus=shared, registry=WorkerRegistry("me"),
                            settings=settings, outage_grace=0.0)
        now = asyncio.get_running_loop().time()
        liveness._book.peers["quick"] = Peer(incarnation=1.0, last_seen=now, interval=0.05)
        await shared.send(BusHeartbeatMessage(source="other", runner="other",
                                              incarnation=1.0))
        await shared.send(BusRunnerLeaveMessage(source="quick", runner="quick",
                                                incarnation=1.0))
        await settle()
        mark = shared.mailbox_mark("me")
        assert mark == 2 and not shared.taken_up_to("me", mark)
        liveness.absent("quick", certain=True)
        for _ in range(10):  # four intervals and more: the old rule gave up after one
            await liveness._apply_news()
            await asyncio.sleep(0.05)
        assert "quick" in liveness.peers, "declared gone before its goodbye was taken"
        mailbox.release.set()
        await wait_until(lambda: shared.taken_up_to("me", mark))
        await liveness._apply_news()
        assert "quick" not in liveness.peers
    finally:
        await shared.close()
