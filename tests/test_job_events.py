"""Intermediate job events under load: a slow reader slows the sender instead of losing
chunks; a block that does not read keeps a bounded backlog and counts what it drops; and
handlers that return without answering still end their job."""

from __future__ import annotations

import asyncio

from pipecat_workers import BaseWorker, JobEvent, JobStatus, Settings, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage
from tests.helpers import running


class Streamer(BaseWorker):
    @job("stream")
    async def stream(self, message: BusJobRequestMessage) -> None:
        count = message.payload["count"]
        await self.send_job_stream_start(message.job_id)
        for i in range(count):
            await self.send_job_stream_data(message.job_id, {"i": i})
        await self.send_job_stream_end(message.job_id, {"sent": count})


class Client(BaseWorker):
    pass


def make_runner(**settings: float) -> tuple[WorkerRunner, Client]:
    runner = WorkerRunner(handle_sigint=False, settings=Settings(**settings))  # type: ignore[arg-type]
    return runner, Client("client")


async def test_a_slow_reader_gets_every_chunk_in_order() -> None:
    runner, client = make_runner(event_queue_size=50)
    await runner.add_workers(Streamer("streamer"), client)
    async with running(runner):
        received = []
        async with client.job("streamer", name="stream", payload={"count": 3_000}) as j:
            async for event in j:
                if event.type == JobEvent.STREAM_DATA:
                    received.append(event.data["i"])
                await asyncio.sleep(0)  # a reader slower than the sender
        assert received == list(range(3_000))
        assert j.events_dropped == 0
        assert j.response == {"sent": 3_000}
        assert runner.stats()["jobs"]["events_dropped"] == 0


async def test_a_block_that_does_not_read_keeps_a_bounded_backlog_and_counts_drops() -> None:
    runner, client = make_runner(event_queue_size=10)
    await runner.add_workers(Streamer("streamer"), client)
    async with running(runner):
        async with client.job("streamer", name="stream", payload={"count": 100}) as j:
            pass
        # start + 100 chunks + end = 102 events, 10 kept
        assert j.events_dropped == 92
        assert j.status is JobStatus.COMPLETED and j.response == {"sent": 100}
        assert runner.stats()["jobs"]["events_dropped"] == 92


async def test_a_stuck_reader_delays_the_stream_only_for_a_bounded_time() -> None:
    runner, client = make_runner(event_queue_size=5, event_wait=0.05)
    await runner.add_workers(Streamer("streamer"), client)
    async with running(runner):
        async with client.job("streamer", name="stream", payload={"count": 20}) as j:
            async for _ in j:
                await asyncio.sleep(0.3)  # stuck long enough for the sender to give up
                break
        assert j.status is JobStatus.COMPLETED
        assert 0 < j.events_dropped < 22


class Quiet(BaseWorker):
    @job("nothing")
    async def nothing(self, message: BusJobRequestMessage) -> None:
        return None

    async def on_job_request(self, message: BusJobRequestMessage) -> None:
        # answers later, from elsewhere: returning must not answer for it
        answer = self.send_job_response(message.job_id, {"late": 1})
        asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future, answer)


class Louder(Quiet):
    async def nothing(self, message: BusJobRequestMessage) -> dict[str, str]:  # no decorator
        return {"from": "override"}


async def test_a_job_handler_that_returns_without_answering_completes_the_job() -> None:
    runner = WorkerRunner(handle_sigint=False)
    client = Client("client")
    await runner.add_workers(Quiet("quiet"), client)
    async with running(runner):
        async with client.job("quiet", name="nothing", timeout=2) as j:
            pass
        assert j.status is JobStatus.COMPLETED and j.response == {}
        async with client.job("quiet", timeout=2) as j:
            pass
        assert j.response == {"late": 1}


async def test_overriding_a_job_handler_without_the_decorator_keeps_it_a_handler() -> None:
    assert Louder._job_handlers["nothing"].attribute == "nothing"
    runner = WorkerRunner(handle_sigint=False)
    client = Client("client")
    await runner.add_workers(Louder("louder"), client)
    async with running(runner):
        async with client.job("louder", name="nothing", timeout=2) as j:
            pass
        assert j.response == {"from": "override"}
