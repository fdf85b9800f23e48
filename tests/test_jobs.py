"""Jobs: requesting, answering, streaming, groups, cancellation, timeouts, departures, leaks.

Every test runs real workers on a real :class:`WorkerRunner` with the default in-process bus.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    ConfigurationError,
    JobError,
    JobEvent,
    JobEventType,
    JobGroupError,
    JobGroupEvent,
    JobGroupResponse,
    JobStatus,
    WorkerRunner,
    WorkerState,
    WorkerStateError,
    job,
)
from pipecat_workers.bus.messages import (
    SYSTEM_PRIORITY,
    BusCancelWorkerMessage,
    BusEndWorkerMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusJobUpdateUrgentMessage,
)
from tests.helpers import (
    TIMEOUT,
    settle,
    within,
)
from tests.helpers import eventually as wait_until
from tests.helpers import hosting as running


class Requester(BaseWorker):
    """Records every requester-side hook."""

    def __init__(self, name: str = "requester") -> None:
        super().__init__(name)
        self.responses: list[BusJobResponseMessage] = []
        self.updates: list[BusJobUpdateMessage] = []
        self.completed: list[JobGroupResponse] = []
        self.errors: list[BusJobResponseMessage] = []
        self.streams: list[tuple[str, Any]] = []

    async def on_job_response(self, message: BusJobResponseMessage) -> None:
        await super().on_job_response(message)
        self.responses.append(message)

    async def on_job_update(self, message: BusJobUpdateMessage) -> None:
        await super().on_job_update(message)
        self.updates.append(message)

    async def on_job_completed(self, result: JobGroupResponse) -> None:
        await super().on_job_completed(result)
        self.completed.append(result)

    async def on_job_error(self, message: BusJobResponseMessage) -> None:
        await super().on_job_error(message)
        self.errors.append(message)

    async def on_job_stream_start(self, message: BusJobStreamStartMessage) -> None:
        await super().on_job_stream_start(message)
        self.streams.append(("start", message))

    async def on_job_stream_data(self, message: BusJobStreamDataMessage) -> None:
        await super().on_job_stream_data(message)
        self.streams.append(("data", message))

    async def on_job_stream_end(self, message: BusJobStreamEndMessage) -> None:
        await super().on_job_stream_end(message)
        self.streams.append(("end", message))


class Worker(BaseWorker):
    """A worker with a handler for every situation the tests need."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[BusJobRequestMessage] = []
        self.cancelled_handlers: list[str] = []
        self.cancel_hooks: list[BusJobCancelMessage] = []
        self.update_requests: list[BusJobUpdateRequestMessage] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def on_job_cancelled(self, message: BusJobCancelMessage) -> None:
        await super().on_job_cancelled(message)
        self.cancel_hooks.append(message)

    async def on_job_update_requested(self, message: BusJobUpdateRequestMessage) -> None:
        await super().on_job_update_requested(message)
        self.update_requests.append(message)
        await self.send_job_update(message.job_id, {"progress": 50})

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        self.calls.append(message)
        return {"echo": message.payload, "by": self.name}

    @job("explicit")
    async def explicit(self, message: BusJobRequestMessage) -> None:
        self.calls.append(message)
        await self.send_job_response(message.job_id, {"explicit": True})

    @job("boom")
    async def boom(self, message: BusJobRequestMessage) -> None:
        self.calls.append(message)
        raise ValueError("kaboom")

    @job("fail")
    async def fail(self, message: BusJobRequestMessage) -> None:
        await self.send_job_response(message.job_id, {"why": "no stock"},
                                     status=JobStatus.FAILED)

    @job("give-up")
    async def give_up(self, message: BusJobRequestMessage) -> None:
        await self.send_job_response(message.job_id, {"why": "gave up"},
                                     status=JobStatus.CANCELLED)

    @job("wait")
    async def hold(self, message: BusJobRequestMessage) -> dict[str, Any]:
        """Runs until released or cancelled."""
        self.calls.append(message)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled_handlers.append(message.job_id)
            raise
        return {"released": True}

    @job("sleep")
    async def sleep(self, message: BusJobRequestMessage) -> dict[str, Any]:
        try:
            await asyncio.sleep((message.payload or {}).get("seconds", 0.1))
        except asyncio.CancelledError:
            self.cancelled_handlers.append(message.job_id)
            raise
        return {"slept": True}

    @job("updates")
    async def updates(self, message: BusJobRequestMessage) -> dict[str, Any]:
        await self.send_job_update(message.job_id, {"step": 1})
        await self.send_job_update(message.job_id, {"step": 2})
        return {"steps": 2}

    @job("stream")
    async def stream(self, message: BusJobRequestMessage) -> None:
        await self.send_job_stream_start(message.job_id, {"kind": "text"})
        await self.send_job_stream_data(message.job_id, {"chunk": "a"})
        await self.send_job_stream_data(message.job_id, {"chunk": "b"})
        await self.send_job_stream_end(message.job_id, {"text": "ab"})

    @job("urgent")
    async def urgent(self, message: BusJobRequestMessage) -> None:
        await self.send_job_update(message.job_id, {"urgent": "update"}, urgent=True)
        await self.send_job_response(message.job_id, {"urgent": "answer"}, urgent=True)


async def run_job(requester: BaseWorker, worker: str, **kwargs: Any) -> Any:
    async with requester.job(worker, **kwargs) as j:
        pass
    return j


async def run_group(requester: BaseWorker, *workers: str, **kwargs: Any) -> Any:
    async with requester.job_group(*workers, **kwargs) as g:
        pass
    return g


# -- requesting -------------------------------------------------------------------------------


async def test_request_job_sends_one_targeted_request_and_returns_its_id() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        job_id = await within(requester.request_job("w", name="echo", payload={"q": 1}))
        assert isinstance(job_id, str) and job_id
        await within(wait_until(lambda: requester.completed, "completion"))
        sent = h.observer.of(BusJobRequestMessage)
        assert len(sent) == 1
        request = sent[0]
        assert (request.source, request.target, request.job_id) == ("requester", "w", job_id)
        assert (request.job_name, request.payload) == ("echo", {"q": 1})
        assert requester.completed[0].job_id == job_id
        assert requester.completed[0].responses == {"w": {"echo": {"q": 1}, "by": "w"}}


async def test_request_job_group_sends_one_request_per_worker_with_one_id() -> None:
    requester, a, b, c = Requester(), Worker("a"), Worker("b"), Worker("c")
    async with running(requester, a, b, c) as h:
        job_id = await within(requester.request_job_group("a", "b", "c", name="echo",
                                                          payload={"x": 1}))
        await within(wait_until(lambda: requester.completed, "completion"))
        sent = h.observer.of(BusJobRequestMessage)
        assert [m.target for m in sent] == ["a", "b", "c"]
        assert {m.job_id for m in sent} == {job_id}
        assert all(m.source == "requester" and m.payload == {"x": 1} for m in sent)
        result = requester.completed[0]
        assert set(result.responses) == {"a", "b", "c"}
        assert result.ok


async def test_worker_names_must_be_strings_unique_and_present() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        with pytest.raises(TypeError):
            await within(requester.request_job_group("w", 3))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await within(run_group(requester, b"w"))  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError) as info:
            await within(requester.request_job_group("w", "w"))
        assert isinstance(info.value, ValueError)
        with pytest.raises(ConfigurationError):
            await within(requester.request_job_group())
        with pytest.raises(ConfigurationError):
            await within(run_group(requester))
        with pytest.raises(ConfigurationError):
            await within(requester.request_job("w", timeout=0))
        assert h.observer.of(BusJobRequestMessage) == []
        assert requester.job_groups == {}


# -- collecting -------------------------------------------------------------------------------


async def test_job_collects_response_and_status() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        async def go() -> Any:
            async with requester.job("w", name="echo", payload={"n": 7}) as j:
                assert isinstance(j.job_id, str) and j.job_id
                assert j.job_id in requester.job_groups
                inside = j.job_id
            return j, inside

        j, inside = await within(go())
        assert j.job_id == inside
        assert j.response == {"echo": {"n": 7}, "by": "w"}
        assert j.status is JobStatus.COMPLETED
        assert j.result.ok
        assert requester.job_groups == {}
        assert len(requester.completed) == 1  # on_job_completed also fires for job()
        sent = h.observer.of(BusJobRequestMessage)
        assert [(m.source, m.target) for m in sent] == [("requester", "w")]


async def test_job_response_sent_with_send_job_response() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        j = await within(run_job(requester, "w", name="explicit"))
        assert j.response == {"explicit": True}
        assert j.status is JobStatus.COMPLETED


async def test_job_group_collects_responses_and_statuses() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        g = await within(run_group(requester, "a", "b", name="echo", payload={"k": "v"}))
        assert g.responses == {"a": {"echo": {"k": "v"}, "by": "a"},
                               "b": {"echo": {"k": "v"}, "by": "b"}}
        assert g.statuses == {"a": JobStatus.COMPLETED, "b": JobStatus.COMPLETED}
        assert g.result.ok is True
        assert len(requester.completed) == 1
        assert requester.completed[0].job_id == g.job_id


async def test_requester_hooks_fire_with_the_right_arguments() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        job_id = await within(requester.request_job("w", name="updates"))
        await within(wait_until(lambda: requester.completed, "completion"))
        assert [(m.source, m.job_id, m.update) for m in requester.updates] == [
            ("w", job_id, {"step": 1}), ("w", job_id, {"step": 2})]
        assert len(requester.responses) == 1
        response = requester.responses[0]
        assert (response.source, response.job_id, response.status, response.response) == (
            "w", job_id, JobStatus.COMPLETED, {"steps": 2})
        assert requester.completed == [JobGroupResponse(
            job_id, {"w": {"steps": 2}}, {"w": JobStatus.COMPLETED})]
        assert requester.errors == []


async def test_event_handlers_fire_for_job_messages() -> None:
    requester, worker = Requester(), Worker("w")
    seen: list[str] = []
    for event in ("on_job_response", "on_job_update", "on_job_completed"):
        def make(event: str) -> Any:
            async def handler(w: BaseWorker, arg: Any) -> None:
                seen.append(event)
            return handler
        requester.add_event_handler(event, make(event))
    requests: list[BusJobRequestMessage] = []

    @worker.event_handler("on_job_request")
    async def on_request(w: Worker, message: BusJobRequestMessage) -> None:
        requests.append(message)

    async with running(requester, worker):
        await within(requester.request_job("w", name="updates"))
        await within(wait_until(lambda: len(seen) == 4, "events"))
        assert sorted(seen) == sorted(["on_job_update", "on_job_update", "on_job_response",
                                       "on_job_completed"])
        assert [m.job_name for m in requests] == ["updates"]


async def test_request_is_active_while_the_handler_runs() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        job_id = await within(requester.request_job("w", name="wait"))
        await within(worker.started.wait())
        assert list(worker.active_jobs) == [job_id]
        assert worker.active_jobs[job_id].source == "requester"
        assert job_id in requester.job_groups
        worker.release.set()
        await within(wait_until(lambda: requester.completed, "completion"))
        assert worker.active_jobs == {}
        assert requester.job_groups == {}


# -- events -----------------------------------------------------------------------------------


async def read_all(ctx: Any) -> tuple[Any, list[Any]]:
    """Enter a job()/job_group() block, read every event, and return the context and events."""
    events = []
    async with ctx:
        async for event in ctx:
            events.append(event)
    return ctx, events


async def test_job_iterates_updates_then_ends() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        j, events = await within(read_all(requester.job("w", name="updates")))
        assert events == [JobEvent(JobEvent.UPDATE, {"step": 1}),
                          JobEvent(JobEvent.UPDATE, {"step": 2})]
        assert all(isinstance(e, JobEvent) for e in events)
        assert j.response == {"steps": 2}


async def test_job_group_iterates_events_with_worker_names() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        g, events = await within(read_all(requester.job_group("a", "b", name="updates")))
        assert all(isinstance(e, JobGroupEvent) for e in events)
        for name in ("a", "b"):
            mine = [(e.type, e.data) for e in events if e.worker_name == name]
            assert mine == [(JobEventType.UPDATE, {"step": 1}),
                            (JobEventType.UPDATE, {"step": 2})]
        assert len(events) == 4
        assert g.responses == {"a": {"steps": 2}, "b": {"steps": 2}}


async def test_iteration_ends_when_the_group_ends_without_events() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        g, events = await within(read_all(requester.job_group("a", "b", name="echo")))
        assert events == []
        assert g.result.ok


async def test_iteration_ends_when_the_group_fails() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        async def go() -> list[Any]:
            events = []
            async with requester.job("w", name="boom") as j:
                async for event in j:
                    events.append(event)
            return events

        with pytest.raises(JobError):
            await within(go())


async def test_not_iterating_still_works() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        g = await within(run_group(requester, "a", "b", name="updates"))
        assert g.responses == {"a": {"steps": 2}, "b": {"steps": 2}}
        assert len(requester.updates) == 4  # the hooks still saw them


async def test_stream_events_and_the_end_is_the_final_answer() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        j, events = await within(read_all(requester.job("w", name="stream")))
        assert events == [
            JobEvent(JobEvent.STREAM_START, {"kind": "text"}),
            JobEvent(JobEvent.STREAM_DATA, {"chunk": "a"}),
            JobEvent(JobEvent.STREAM_DATA, {"chunk": "b"}),
            JobEvent(JobEvent.STREAM_END, {"text": "ab"}),
        ]
        assert j.response == {"text": "ab"}
        assert j.status is JobStatus.COMPLETED
        assert worker.active_jobs == {}
        assert [(kind, m.data) for kind, m in requester.streams] == [
            ("start", {"kind": "text"}), ("data", {"chunk": "a"}), ("data", {"chunk": "b"}),
            ("end", {"text": "ab"})]
        assert all(m.job_id == j.job_id and m.source == "w" for _, m in requester.streams)
        assert requester.completed[0].responses == {"w": {"text": "ab"}}


async def test_job_group_stream_events_carry_worker_names() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        g, events = await within(read_all(requester.job_group("a", "b", name="stream")))
        for name in ("a", "b"):
            assert [e.type for e in events if e.worker_name == name] == [
                JobEventType.STREAM_START, JobEventType.STREAM_DATA,
                JobEventType.STREAM_DATA, JobEventType.STREAM_END]
        assert g.responses == {"a": {"text": "ab"}, "b": {"text": "ab"}}


async def test_cancel_after_stream_end_is_a_no_op() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        j = await within(run_job(requester, "w", name="stream"))
        await h.runner.bus.send(BusJobCancelMessage(source="requester", target="w",
                                                    job_id=j.job_id, reason="late"))
        await settle()
        assert worker.cancel_hooks == []
        assert h.observer.of(BusJobResponseMessage, job_id=j.job_id) == []


async def test_send_job_methods_raise_for_unknown_jobs() -> None:
    worker = Worker("w")
    async with running(worker) as h:
        senders = [
            worker.send_job_response("nope", {}),
            worker.send_job_update("nope", {}),
            worker.send_job_stream_start("nope"),
            worker.send_job_stream_data("nope", {"chunk": 1}),
            worker.send_job_stream_end("nope"),
        ]
        for coro in senders:
            with pytest.raises(WorkerStateError) as info:
                await within(coro)
            assert isinstance(info.value, RuntimeError)
            assert "nope" in str(info.value)
        await settle()
        sent = [m for m in h.observer.messages if getattr(m, "job_id", None) == "nope"]
        assert sent == []


async def test_send_after_the_final_answer_raises() -> None:
    done = asyncio.Event()
    errors: list[Exception] = []

    class Twice(BaseWorker):
        @job("twice")
        async def twice(self, message: BusJobRequestMessage) -> None:
            await self.send_job_response(message.job_id, {"first": True})
            try:
                await self.send_job_response(message.job_id, {"second": True})
            except WorkerStateError as exc:
                errors.append(exc)
            done.set()

    requester = Requester()
    async with running(requester, Twice("w")) as h:
        j = await within(run_job(requester, "w", name="twice"))
        await within(done.wait())
        assert j.response == {"first": True}
        assert len(errors) == 1
        assert len(h.observer.of(BusJobResponseMessage)) == 1


# -- urgent -----------------------------------------------------------------------------------


def test_urgent_messages_have_system_priority() -> None:
    assert BusJobResponseUrgentMessage.PRIORITY == SYSTEM_PRIORITY
    assert BusJobUpdateUrgentMessage.PRIORITY == SYSTEM_PRIORITY
    assert BusJobResponseMessage.PRIORITY != SYSTEM_PRIORITY
    assert BusJobUpdateMessage.PRIORITY != SYSTEM_PRIORITY


async def test_urgent_responses_and_updates_are_collected() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        j = await within(run_job(requester, "w", name="urgent"))
        assert j.response == {"urgent": "answer"}
        assert j.status is JobStatus.COMPLETED
        assert [m.update for m in requester.updates] == [{"urgent": "update"}]
        assert len(h.observer.of(BusJobResponseUrgentMessage)) == 1
        assert len(h.observer.of(BusJobUpdateUrgentMessage)) == 1
        assert h.observer.of(BusJobResponseMessage) == []


async def test_urgent_response_overtakes_data_waiting_behind_a_slow_hook() -> None:
    answered = asyncio.Event()
    seen_while_blocked: list[bool] = []

    class SlowRequester(Requester):
        async def on_job_update(self, message: BusJobUpdateMessage) -> None:
            await super().on_job_update(message)
            if len(self.updates) == 1:
                # The data lane is blocked here; only a system message can get through.
                try:
                    await asyncio.wait_for(answered.wait(), 2)
                    seen_while_blocked.append(True)
                except TimeoutError:
                    seen_while_blocked.append(False)

        async def on_job_response(self, message: BusJobResponseMessage) -> None:
            await super().on_job_response(message)
            answered.set()

    class Sender(BaseWorker):
        @job("go")
        async def go(self, message: BusJobRequestMessage) -> None:
            await self.send_job_update(message.job_id, {"n": 1})
            await self.send_job_update(message.job_id, {"n": 2})
            await self.send_job_response(message.job_id, {"done": True}, urgent=True)

    requester = SlowRequester()
    async with running(requester, Sender("w")):
        await within(requester.request_job("w", name="go"))
        await within(wait_until(lambda: len(requester.updates) == 2, "updates"))
        assert seen_while_blocked == [True]
        assert requester.completed[0].responses == {"w": {"done": True}}


async def test_urgent_error_response_triggers_on_job_error() -> None:
    class Urgent(BaseWorker):
        @job("bad")
        async def bad(self, message: BusJobRequestMessage) -> None:
            await self.send_job_response(message.job_id, {"error": "urgent failure"},
                                         status=JobStatus.ERROR, urgent=True)

    requester = Requester()
    async with running(requester, Urgent("w")):
        with pytest.raises(JobError) as info:
            await within(run_job(requester, "w", name="bad"))
        assert "urgent failure" in str(info.value)
        assert len(requester.errors) == 1


# -- handler outcomes ---------------------------------------------------------------------


async def test_raising_handler_answers_error_with_the_message() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        ctx = requester.job("w", name="boom")

        async def go() -> None:
            async with ctx:
                pass

        with pytest.raises(JobError) as info:
            await within(go())
        assert not isinstance(info.value, JobGroupError)
        assert "kaboom" in str(info.value)
        assert info.value.job_id == ctx.job_id
        assert info.value.statuses == {"w": JobStatus.ERROR}
        assert "kaboom" in info.value.responses["w"]["error"]
        assert ctx.status is JobStatus.ERROR
        assert "ValueError" in ctx.response["error"]
        answers = h.observer.of(BusJobResponseMessage, source="w")
        assert [a.status for a in answers] == [JobStatus.ERROR]
        assert worker.active_jobs == {}


async def test_unknown_job_name_answers_error() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        with pytest.raises(JobError) as info:
            await within(run_job(requester, "w", name="x"))
        assert "no handler for job 'x'" in str(info.value)
        assert info.value.statuses == {"w": JobStatus.ERROR}
        assert "no handler for job 'x'" in info.value.responses["w"]["error"]
        assert worker.active_jobs == {}


async def test_unnamed_job_without_on_job_request_answers_error() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        with pytest.raises(JobError) as info:
            await within(run_job(requester, "w", payload={"a": 1}))
        assert "no handler" in str(info.value)
        assert info.value.statuses == {"w": JobStatus.ERROR}


async def test_on_job_request_override_handles_unnamed_and_unknown_jobs() -> None:
    class Generic(BaseWorker):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.active_during: list[bool] = []

        async def on_job_request(self, message: BusJobRequestMessage) -> None:
            await super().on_job_request(message)
            self.active_during.append(message.job_id in self.active_jobs)
            await self.send_job_response(message.job_id, {"name": message.job_name,
                                                          "payload": message.payload})

        @job("named")
        async def named(self, message: BusJobRequestMessage) -> dict[str, Any]:
            return {"named": True}

    requester, worker = Requester(), Generic("g")
    async with running(requester, worker):
        unnamed = await within(run_job(requester, "g", payload={"p": 1}))
        assert unnamed.response == {"name": None, "payload": {"p": 1}}
        unknown = await within(run_job(requester, "g", name="whatever"))
        assert unknown.response == {"name": "whatever", "payload": None}
        named = await within(run_job(requester, "g", name="named"))
        assert named.response == {"named": True}
        assert worker.active_during == [True, True]


async def test_on_job_request_override_can_return_a_dict() -> None:
    class Returning(BaseWorker):
        async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
            return {"returned": message.payload}

    requester = Requester()
    async with running(requester, Returning("r")):
        j = await within(run_job(requester, "r", payload={"x": 2}))
        assert j.response == {"returned": {"x": 2}}
        assert j.status is JobStatus.COMPLETED


async def test_handler_returning_a_dict_completes() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        j = await within(run_job(requester, "w", name="echo", payload={"a": [1, 2]}))
        assert j.status is JobStatus.COMPLETED
        assert j.response == {"echo": {"a": [1, 2]}, "by": "w"}
        answers = h.observer.of(BusJobResponseMessage, source="w")
        assert len(answers) == 1 and answers[0].status is JobStatus.COMPLETED


# -- sequential and concurrent handlers ---------------------------------------------------


class Scheduling(BaseWorker):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.log: list[str] = []
        self.running = 0
        self.max_running: dict[str, int] = {}
        self.gates: dict[str, asyncio.Event] = {}

    async def _work(self, kind: str, message: BusJobRequestMessage) -> dict[str, Any]:
        tag = (message.payload or {})["tag"]
        self.running += 1
        self.max_running[kind] = max(self.max_running.get(kind, 0), self.running)
        self.log.append(f"start {tag}")
        try:
            await self.gates.setdefault(tag, asyncio.Event()).wait()
        finally:
            self.running -= 1
        self.log.append(f"end {tag}")
        return {"tag": tag}

    @job("seq", sequential=True)
    async def seq(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return await self._work("seq", message)

    @job("seq2", sequential=True)
    async def seq2(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return await self._work("seq2", message)

    @job("par")
    async def par(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return await self._work("par", message)

    def open(self, tag: str) -> None:
        self.gates.setdefault(tag, asyncio.Event()).set()


async def test_sequential_jobs_run_one_at_a_time_in_order() -> None:
    requester, worker = Requester(), Scheduling("s")
    async with running(requester, worker):
        for tag in ("1", "2", "3"):
            await within(requester.request_job("s", name="seq", payload={"tag": tag}))
        await within(wait_until(lambda: worker.log == ["start 1"], "first start"))
        await settle()
        assert worker.log == ["start 1"]  # 2 and 3 wait
        worker.open("3")  # opening a later gate first must not let 3 jump the queue
        worker.open("2")
        await settle()
        assert worker.log == ["start 1"]
        worker.open("1")
        await within(wait_until(lambda: len(requester.completed) == 3, "all done"))
        assert worker.log == ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]
        assert worker.max_running == {"seq": 1}
        assert [r.responses["s"]["tag"] for r in requester.completed] == ["1", "2", "3"]


async def test_sequential_locks_are_per_job_name() -> None:
    requester, worker = Requester(), Scheduling("s")
    async with running(requester, worker):
        await within(requester.request_job("s", name="seq", payload={"tag": "a"}))
        await within(requester.request_job("s", name="seq2", payload={"tag": "b"}))
        await within(wait_until(lambda: sorted(worker.log) == ["start a", "start b"],
                                "both running"))
        assert worker.running == 2
        worker.open("a")
        worker.open("b")
        await within(wait_until(lambda: len(requester.completed) == 2, "done"))


async def test_jobs_run_concurrently_by_default() -> None:
    requester, worker = Requester(), Scheduling("s")
    async with running(requester, worker):
        for tag in ("x", "y", "z"):
            await within(requester.request_job("s", name="par", payload={"tag": tag}))
        await within(wait_until(lambda: worker.running == 3, "all three running"))
        assert worker.max_running == {"par": 3}
        for tag in ("x", "y", "z"):
            worker.open(tag)
        await within(wait_until(lambda: len(requester.completed) == 3, "done"))


# -- groups and errors ------------------------------------------------------------------------


class QuickOrHold(Worker):
    """Answers ``mixed`` at once if ``quick``, else holds the job until cancelled."""

    def __init__(self, name: str, *, quick: bool = False) -> None:
        super().__init__(name)
        self.quick = quick

    @job("mixed")
    async def mixed(self, message: BusJobRequestMessage) -> dict[str, Any]:
        if self.quick:
            return {"quick": True}
        return await self.hold(message)



async def test_cancel_on_error_cancels_the_other_members() -> None:
    class Member(Worker):
        @job("mixed")
        async def mixed(self, message: BusJobRequestMessage) -> dict[str, Any]:
            if self.name == "bad":
                await within(wait_until(lambda: slow1.started.is_set()
                                        and slow2.started.is_set(), "others to start"))
                raise RuntimeError("member exploded")
            return await self.hold(message)

    requester = Requester()
    bad, slow1, slow2 = Member("bad"), Member("slow1"), Member("slow2")
    async with running(requester, bad, slow1, slow2) as h:
        ctx = requester.job_group("bad", "slow1", "slow2", name="mixed")

        async def go() -> None:
            async with ctx:
                pass

        with pytest.raises(JobGroupError) as info:
            await within(go())
        job_id = ctx.job_id
        assert "'bad'" in str(info.value) and "member exploded" in str(info.value)
        assert "member exploded" in info.value.responses["bad"]["error"]
        assert info.value.statuses["bad"] is JobStatus.ERROR
        assert ctx.responses["bad"] == info.value.responses["bad"]
        cancels = h.observer.of(BusJobCancelMessage, job_id=job_id)
        assert sorted((m.target, m.source) for m in cancels) == [
            ("slow1", "requester"), ("slow2", "requester")]
        await within(wait_until(lambda: slow1.cancelled_handlers == [job_id]
                                and slow2.cancelled_handlers == [job_id], "handler cancels"))
        assert [m.job_id for m in slow1.cancel_hooks] == [job_id]
        assert len(requester.errors) == 1 and requester.errors[0].source == "bad"
        assert requester.errors[0].status is JobStatus.ERROR
        assert requester.completed == []
        assert requester.job_groups == {}


async def test_cancel_on_error_with_a_forged_error_from_a_member() -> None:
    requester, slow1, slow2 = Requester(), Worker("slow1"), Worker("slow2")
    async with running(requester, slow1, slow2) as h:
        ctx = requester.job_group("slow1", "slow2", name="wait")

        async def go() -> None:
            async with ctx:
                await within(wait_until(lambda: slow1.started.is_set()
                                        and slow2.started.is_set(), "handlers running"))
                await h.runner.bus.send(BusJobResponseMessage(
                    source="slow1", target="requester", job_id=ctx.job_id,
                    status=JobStatus.ERROR, response={"error": "slow1 broke"}))

        with pytest.raises(JobGroupError) as info:
            await within(go())
        assert "slow1 broke" in str(info.value)
        assert info.value.responses["slow1"] == {"error": "slow1 broke"}
        # slow1 already answered (as far as the requester knows): only slow2 is cancelled.
        cancels = h.observer.of(BusJobCancelMessage, job_id=ctx.job_id)
        assert [m.target for m in cancels] == ["slow2"]
        assert len(requester.errors) == 1


async def test_on_job_error_fires_once_when_two_members_error() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        with pytest.raises(JobGroupError):
            await within(run_group(requester, "a", "b", name="boom"))
        await within(wait_until(lambda: len(requester.responses) == 2, "both answers"))
        await settle()
        assert len(requester.errors) == 1


async def test_failed_status_counts_as_error_for_cancel_on_error() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        ctx = requester.job_group("a", "b", name="fail")
        with pytest.raises(JobGroupError) as info:
            async with asyncio.timeout(TIMEOUT):
                async with ctx:
                    pass
        assert "failed" in str(info.value)
        assert len(requester.errors) == 1
        assert JobStatus.FAILED in info.value.statuses.values()


async def test_without_cancel_on_error_the_group_completes_but_is_not_a_success() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")

    class Member(Worker):
        @job("mixed")
        async def mixed(self, message: BusJobRequestMessage) -> dict[str, Any]:
            if self.name == "a":
                raise RuntimeError("a failed")
            await asyncio.sleep(0.05)
            return {"ok": self.name}

    a, b = Member("a"), Member("b")
    async with running(requester, a, b) as h:
        ctx = requester.job_group("a", "b", name="mixed", cancel_on_error=False)

        async def go() -> None:
            async with ctx:
                pass

        with pytest.raises(JobGroupError) as info:
            await within(go())
        assert info.value.statuses == {"a": JobStatus.ERROR, "b": JobStatus.COMPLETED}
        assert info.value.responses["b"] == {"ok": "b"}
        assert "a failed" in info.value.responses["a"]["error"]
        assert h.observer.of(BusJobCancelMessage) == []  # b was left to finish
        assert requester.errors == []
        assert len(requester.completed) == 1
        result = requester.completed[0]
        assert result.ok is False
        assert result.statuses == {"a": JobStatus.ERROR, "b": JobStatus.COMPLETED}
        assert ctx.result.ok is False


async def test_a_cancelled_member_makes_the_group_fail() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b):
        with pytest.raises(JobGroupError) as info:
            async with asyncio.timeout(TIMEOUT):
                async with requester.job_group("a", "b", name="give-up"):
                    pass
        assert info.value.statuses == {"a": JobStatus.CANCELLED, "b": JobStatus.CANCELLED}
        assert requester.completed and requester.completed[0].ok is False

        class OneGivesUp(Worker):
            @job("mixed")
            async def mixed(self, message: BusJobRequestMessage) -> None:
                status = JobStatus.CANCELLED if self.name == "quitter" else JobStatus.COMPLETED
                await self.send_job_response(message.job_id, {}, status=status)

    requester2 = Requester("requester2")
    async with running(requester2, OneGivesUp("quitter"), OneGivesUp("doer")):
        with pytest.raises(JobGroupError) as info:
            await within(run_group(requester2, "quitter", "doer", name="mixed"))
        assert info.value.statuses == {"quitter": JobStatus.CANCELLED,
                                       "doer": JobStatus.COMPLETED}


# -- cancelling -------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["changed my mind", None])
async def test_cancel_job_group_fails_the_waiters(reason: str | None) -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b) as h:
        ids: list[str] = []

        async def go() -> None:
            async with requester.job_group("a", "b", name="wait") as g:
                ids.append(g.job_id)
                await within(wait_until(lambda: a.started.is_set() and b.started.is_set(),
                                        "both running"))
                await requester.cancel_job_group(g.job_id, reason=reason)

        with pytest.raises(JobGroupError) as info:
            await within(go())
        assert (reason or "cancelled") in str(info.value)
        cancels = h.observer.of(BusJobCancelMessage, job_id=ids[0])
        assert sorted(m.target for m in cancels) == ["a", "b"]
        assert all(m.source == "requester" for m in cancels)
        assert requester.job_groups == {}


async def test_cancel_job_group_with_no_reason_fails_request_job_groups_too() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        job_id = await within(requester.request_job("w", name="wait"))
        group = requester.job_groups[job_id]
        await within(requester.cancel_job_group(job_id))
        with pytest.raises(JobGroupError) as info:
            await within(group.wait())
        assert "cancelled" in str(info.value)


async def test_cancel_only_goes_to_pending_members() -> None:
    requester, fast, slow = Requester(), QuickOrHold("fast", quick=True), QuickOrHold("slow")
    async with running(requester, fast, slow) as h:
        job_id = await within(requester.request_job_group("fast", "slow", name="mixed"))
        group = requester.job_groups[job_id]
        await within(wait_until(lambda: "fast" in group.responses, "fast answer"))
        await within(requester.cancel_job_group(job_id, reason="enough"))
        cancels = h.observer.of(BusJobCancelMessage, job_id=job_id)
        assert [(m.target, m.reason) for m in cancels] == [("slow", "enough")]


async def test_cancel_interrupts_the_running_handler() -> None:
    requester, worker = Requester(), Worker("w")
    hook_events: list[BusJobCancelMessage] = []

    @worker.event_handler("on_job_cancelled")
    async def cancelled(w: BaseWorker, message: BusJobCancelMessage) -> None:
        hook_events.append(message)

    async with running(requester, worker) as h:
        job_id = await within(requester.request_job("w", name="wait"))
        await within(worker.started.wait())
        await within(requester.cancel_job_group(job_id, reason="stop it"))
        await within(wait_until(lambda: requester.responses, "cancelled answer"))
        await settle()
        assert worker.cancelled_handlers == [job_id]
        assert [(m.job_id, m.reason, m.source) for m in worker.cancel_hooks] == [
            (job_id, "stop it", "requester")]
        await within(wait_until(lambda: hook_events, "event"))
        assert [(r.status, r.job_id) for r in requester.responses] == [
            (JobStatus.CANCELLED, job_id)]
        answers = h.observer.of(BusJobResponseMessage, job_id=job_id)
        assert len(answers) == 1 and answers[0].status is JobStatus.CANCELLED
        assert len(h.observer.of(BusJobCancelMessage, job_id=job_id)) == 1
        assert worker.active_jobs == {}


async def test_cancel_from_someone_who_is_not_the_requester_is_ignored() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        job_id = await within(requester.request_job("w", name="wait"))
        await within(worker.started.wait())
        await h.runner.bus.send(BusJobCancelMessage(source="mallory", target="w",
                                                    job_id=job_id, reason="evil"))
        await settle()
        assert worker.cancelled_handlers == []
        assert worker.cancel_hooks == []
        assert job_id in worker.active_jobs
        worker.release.set()
        await within(wait_until(lambda: requester.completed, "completion"))
        assert requester.completed[0].responses == {"w": {"released": True}}


# -- timeouts and readiness -----------------------------------------------------------------


async def test_timeout_fails_the_job_and_cancels_the_worker() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        with pytest.raises(JobError) as info:
            await within(run_job(requester, "w", name="wait", timeout=0.1))
        assert "timeout" in str(info.value)
        await within(wait_until(lambda: worker.cancelled_handlers, "handler cancel"))
        cancels = h.observer.of(BusJobCancelMessage)
        assert len(cancels) == 1
        assert cancels[0].target == "w" and "timeout" in cancels[0].reason
        assert requester.job_groups == {}


async def test_group_timeout_fails_the_group() -> None:
    requester, a, b = Requester(), QuickOrHold("a", quick=True), QuickOrHold("b")
    async with running(requester, a, b) as h:
        with pytest.raises(JobGroupError) as info:
            await within(run_group(requester, "a", "b", name="mixed", timeout=0.1))
        assert "timeout" in str(info.value)
        assert info.value.responses == {"a": {"quick": True}}
        cancels = h.observer.of(BusJobCancelMessage)
        assert [m.target for m in cancels] == ["b"]


async def test_answer_before_the_timeout_prevents_the_cancel() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        j = await within(run_job(requester, "w", name="echo", timeout=0.15))
        assert j.status is JobStatus.COMPLETED
        await settle(0.25)
        assert h.observer.of(BusJobCancelMessage) == []
        assert worker.cancel_hooks == []


async def test_no_timer_without_a_timeout() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        without = await within(requester.request_job("w", name="wait"))
        with_timeout = await within(requester.request_job("w", name="wait", timeout=5))
        assert requester.job_groups[without].timer is None
        assert requester.job_groups[with_timeout].timer is not None
        worker.release.set()
        await within(wait_until(lambda: len(requester.completed) == 2, "done"))


async def test_job_waits_for_a_worker_that_registers_later() -> None:
    requester = Requester()
    async with running(requester) as h:
        task = asyncio.create_task(run_job(requester, "late", name="echo", payload={"v": 1}))
        await settle()
        assert not task.done()
        assert h.observer.of(BusJobRequestMessage) == []
        await h.runner.add_workers(Worker("late"))
        j = await within(task)
        assert j.response == {"echo": {"v": 1}, "by": "late"}


async def test_never_registered_worker_fails_not_ready_within_the_timeout() -> None:
    requester = Requester()
    async with running(requester) as h:
        baseline = h.runner.registry.watch_count()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(JobError) as info:
            await within(run_job(requester, "ghost", name="echo", timeout=0.1))
        assert type(info.value) is JobError  # job() speaks of one job, not of a group
        assert loop.time() - started < 2.0
        assert "not ready" in str(info.value) and "ghost" in str(info.value)
        with pytest.raises(JobGroupError):
            await within(requester.request_job_group("ghost", "phantom", timeout=0.1))
        assert h.observer.of(BusJobRequestMessage) == []
        assert requester.job_groups == {}
        assert h.runner.registry.watch_count() == baseline


async def test_timeout_is_one_budget_for_readiness_and_work() -> None:
    requester = Requester()
    async with running(requester) as h:
        async def register_late() -> None:
            await asyncio.sleep(0.1)
            await h.runner.add_workers(Worker("late"))

        adder = asyncio.create_task(register_late())
        # Readiness takes ~0.1 s and the work ~0.15 s: each fits in 0.2 s, the sum does not.
        with pytest.raises(JobError) as info:
            await within(run_job(requester, "late", name="sleep", payload={"seconds": 0.15},
                                 timeout=0.2))
        await within(adder)
        assert "timeout" in str(info.value)
        assert "not ready" not in str(info.value)
        assert h.observer.of(BusJobRequestMessage)  # it was sent, then timed out
        assert h.observer.of(BusJobCancelMessage)


# -- leaving the block early ------------------------------------------------------------------


@pytest.mark.parametrize("group", [False, True])
async def test_exception_in_the_block_cancels_the_job_and_propagates(group: bool) -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        async def go() -> None:
            ctx = (requester.job_group("w", name="wait") if group
                   else requester.job("w", name="wait"))
            async with ctx:
                await within(worker.started.wait())
                raise ValueError("caller gave up")

        with pytest.raises(ValueError, match="caller gave up"):
            await within(go())
        cancels = h.observer.of(BusJobCancelMessage)
        assert [(m.target, m.reason) for m in cancels] == [("w", "context exited with error")]
        await within(wait_until(lambda: worker.cancelled_handlers, "handler cancel"))
        assert requester.job_groups == {}


@pytest.mark.parametrize("group", [False, True])
async def test_cancelled_block_cancels_the_job(group: bool) -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        async def go() -> None:
            ctx = (requester.job_group("w", name="wait") if group
                   else requester.job("w", name="wait"))
            async with ctx:
                await asyncio.Event().wait()

        task = asyncio.create_task(go())
        await within(worker.started.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)
        cancels = h.observer.of(BusJobCancelMessage)
        assert [(m.target, m.reason) for m in cancels] == [("w", "context exited with error")]
        await within(wait_until(lambda: worker.cancelled_handlers, "handler cancel"))
        assert requester.job_groups == {}


async def test_cancelled_while_waiting_on_exit_cancels_the_job() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        task = asyncio.create_task(run_job(requester, "w", name="wait"))
        await within(worker.started.wait())
        await settle()
        task.cancel()  # the block is empty: the task is waiting in __aexit__
        with pytest.raises(asyncio.CancelledError):
            await within(task)
        await within(wait_until(lambda: worker.cancelled_handlers, "handler cancel"))
        cancels = h.observer.of(BusJobCancelMessage)
        assert [m.target for m in cancels] == ["w"]
        assert requester.job_groups == {}


# -- membership and departures ----------------------------------------------------------------


async def test_responses_from_non_members_are_ignored() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        job_id = await within(requester.request_job("w", name="wait"))
        await within(worker.started.wait())
        for status in (JobStatus.COMPLETED, JobStatus.ERROR):
            await h.runner.bus.send(BusJobResponseMessage(
                source="intruder", target="requester", job_id=job_id, status=status,
                response={"forged": True}))
        await settle()
        group = requester.job_groups[job_id]
        assert "intruder" not in group.responses
        assert group.pending == {"w": None}
        assert requester.responses == [] and requester.errors == []
        assert h.observer.of(BusJobCancelMessage) == []
        worker.release.set()
        await within(wait_until(lambda: requester.completed, "completion"))
        assert requester.completed[0].responses == {"w": {"released": True}}
        assert requester.completed[0].ok


async def test_job_to_a_worker_that_stops_ends_at_once_with_error() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        task = asyncio.create_task(run_job(requester, "w", name="wait"))  # no timeout
        await within(worker.started.wait())
        await h.runner.bus.send(BusCancelWorkerMessage(source="test", target="w"))
        with pytest.raises(JobError) as info:
            await within(task, timeout=2.0)
        assert "'w'" in str(info.value)
        assert info.value.statuses == {"w": JobStatus.ERROR}
        assert "'w'" in info.value.responses["w"]["error"]
        # The stopping worker cancelled its handler and answered cancelled.
        assert worker.cancelled_handlers
        answers = h.observer.of(BusJobResponseMessage, source="w")
        assert [a.status for a in answers] == [JobStatus.CANCELLED]
        assert requester.job_groups == {}


async def test_job_to_a_worker_stopped_directly_ends_with_error() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker):
        task = asyncio.create_task(run_job(requester, "w", name="wait"))
        await within(worker.started.wait())
        await within(worker.stop())
        with pytest.raises(JobError) as info:
            await within(task, timeout=2.0)
        assert "'w'" in str(info.value)


async def test_group_member_that_stops_is_an_error_in_statuses() -> None:
    requester = Requester()

    class Member(Worker):
        @job("mixed")
        async def mixed(self, message: BusJobRequestMessage) -> dict[str, Any]:
            if self.name == "stays":
                await within(wait_until(lambda: leaving.state is WorkerState.STOPPED,
                                        "leaver gone"))
                return {"stayed": True}
            return await self.hold(message)

    leaving, stays = Member("leaving"), Member("stays")
    async with running(requester, leaving, stays):
        ctx = requester.job_group("leaving", "stays", name="mixed", cancel_on_error=False)

        async def go() -> None:
            async with ctx:
                await within(leaving.started.wait())
                await leaving.stop()

        with pytest.raises(JobGroupError) as info:
            await within(go())
        assert info.value.statuses == {"leaving": JobStatus.ERROR,
                                       "stays": JobStatus.COMPLETED}
        assert "'leaving'" in info.value.responses["leaving"]["error"]
        assert info.value.responses["stays"] == {"stayed": True}
        assert requester.completed[0].ok is False


async def test_stopped_requester_cancels_the_groups_it_launched() -> None:
    requester, a, b = Requester(), Worker("a"), Worker("b")
    async with running(requester, a, b) as h:
        job_id = await within(requester.request_job_group("a", "b", name="wait"))
        group = requester.job_groups[job_id]
        await within(wait_until(lambda: a.started.is_set() and b.started.is_set(), "running"))
        await within(requester.stop())
        await within(wait_until(lambda: a.cancelled_handlers and b.cancelled_handlers,
                                "handlers cancelled"))
        cancels = h.observer.of(BusJobCancelMessage, job_id=job_id)
        assert sorted(m.target for m in cancels) == ["a", "b"]
        assert all("requester" in m.reason for m in cancels)
        assert [m.job_id for m in a.cancel_hooks] == [job_id]
        assert requester.job_groups == {}
        with pytest.raises(JobGroupError):
            await within(group.wait())
        assert a.active_jobs == {} and b.active_jobs == {}


async def test_ending_worker_finishes_running_jobs_but_takes_no_new_ones() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        first = asyncio.create_task(run_job(requester, "w", name="wait"))
        await within(worker.started.wait())
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="w"))
        await within(wait_until(lambda: worker.state is WorkerState.ENDING, "ending"))
        with pytest.raises(JobError) as info:
            await within(run_job(requester, "w", name="echo"))
        assert info.value.statuses == {"w": JobStatus.CANCELLED}
        assert "ending" in info.value.responses["w"]["reason"]
        assert [m.job_name for m in worker.calls] == ["wait"]  # the echo handler never ran
        worker.release.set()
        j = await within(first)
        assert j.response == {"released": True}
        await within(worker.wait())


async def test_stopping_worker_runs_no_new_handler() -> None:
    class Unwinding(Worker):
        @job("slow-unwind")
        async def slow_unwind(self, message: BusJobRequestMessage) -> None:
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0.2)
                raise

    requester, worker = Requester(), Unwinding("w")
    async with running(requester, worker) as h:
        await within(requester.request_job("w", name="slow-unwind"))
        await within(worker.started.wait())
        stopping = asyncio.create_task(worker.stop())
        await within(wait_until(lambda: worker.state is WorkerState.STOPPING, "stopping"))
        await h.runner.bus.send(BusJobRequestMessage(source="requester", target="w",
                                                     job_id="late-1", job_name="echo"))
        await within(stopping)
        await settle(0.1)
        assert worker.calls == []  # no handler started for the late request
        late = h.observer.of(BusJobResponseMessage, job_id="late-1")
        assert [m.status for m in late] == [JobStatus.CANCELLED]


# -- update requests ----------------------------------------------------------------------


async def test_request_job_update_round_trip() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        job_id = await within(requester.request_job("w", name="wait"))
        await within(worker.started.wait())
        await within(requester.request_job_update(job_id, "w"))
        await within(wait_until(lambda: requester.updates, "update"))
        assert [(m.job_id, m.source) for m in worker.update_requests] == [(job_id, "requester")]
        assert [(m.job_id, m.source, m.update) for m in requester.updates] == [
            (job_id, "w", {"progress": 50})]
        sent = h.observer.of(BusJobUpdateRequestMessage)
        assert [(m.source, m.target, m.job_id) for m in sent] == [("requester", "w", job_id)]
        worker.release.set()
        await within(wait_until(lambda: requester.completed, "done"))
        # After the job ended, an update request reaches no hook.
        await within(requester.request_job_update(job_id, "w"))
        await settle()
        assert len(worker.update_requests) == 1


# -- bookkeeping does not grow ------------------------------------------------------------


def departure_listeners(runner: WorkerRunner) -> int:
    return len(runner.registry._departure_listeners)


async def test_registry_watches_do_not_grow_with_sequential_jobs() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        await within(run_job(requester, "w", name="echo"))
        watches = h.runner.registry.watch_count()
        listeners = departure_listeners(h.runner)

        async def many() -> None:
            for i in range(1000):
                async with requester.job("w", name="echo", payload={"i": i}, timeout=5):
                    pass

        await within(many(), timeout=30)
        assert h.runner.registry.watch_count() == watches
        assert departure_listeners(h.runner) == listeners
        assert requester.job_groups == {}
        assert len(requester.completed) == 1001


async def test_registry_watches_do_not_grow_with_concurrent_jobs() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        watches = h.runner.registry.watch_count()
        listeners = departure_listeners(h.runner)
        ids = [await within(requester.request_job("w", name="wait")) for _ in range(100)]
        await within(wait_until(lambda: len(worker.active_jobs) == 100, "all running"))
        # One listener per requester, not one per job.
        assert departure_listeners(h.runner) <= listeners + 1
        assert h.runner.registry.watch_count() == watches
        worker.release.set()
        await within(wait_until(lambda: len(requester.completed) == 100, "all done"))
        assert {r.job_id for r in requester.completed} == set(ids)
        assert h.runner.registry.watch_count() == watches
        assert departure_listeners(h.runner) == listeners


async def test_waiting_for_readiness_leaves_nothing_behind() -> None:
    requester = Requester()
    async with running(requester) as h:
        watches = h.runner.registry.watch_count()
        tasks = [asyncio.create_task(run_job(requester, "late", name="echo", payload={"i": i}))
                 for i in range(100)]
        await settle()
        await h.runner.add_workers(Worker("late"))
        results = await within(asyncio.gather(*tasks))
        assert sorted(j.response["echo"]["i"] for j in results) == list(range(100))
        assert h.runner.registry.watch_count() == watches
        assert departure_listeners(h.runner) == 0


# -- counters -------------------------------------------------------------------------------


async def test_runner_stats_count_jobs() -> None:
    requester, worker = Requester(), Worker("w")
    async with running(requester, worker) as h:
        for _ in range(3):
            await within(run_job(requester, "w", name="echo"))
        with pytest.raises(JobError):
            await within(run_job(requester, "w", name="boom"))
        with pytest.raises(JobError):
            await within(run_job(requester, "w", name="unknown"))
        with pytest.raises(JobError):
            await within(run_job(requester, "w", name="fail"))
        job_id = await within(requester.request_job("w", name="wait"))
        await within(worker.started.wait())
        assert h.runner.stats()["jobs"]["running"] == 1
        await within(requester.cancel_job_group(job_id, reason="stop"))
        await within(wait_until(lambda: worker.active_jobs == {}, "cancelled"))
        jobs = h.runner.stats()["jobs"]
        assert jobs == {"requested": 7, "running": 0, "completed": 3, "failed": 1,
                        "errored": 2, "cancelled": 1, "events_dropped": 0}
