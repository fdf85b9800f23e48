"""Job options as ``params=`` (pipecat 1.14) beside keywords, cancellable groups and labels,
external cancellation with ``request_cancel_job_group``, and ``@job(answer="later")``.

Every behaviour test runs real workers on a real :class:`WorkerRunner` with the in-process bus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import warnings
from typing import Any

import pytest

from pipecat_workers import (
    BaseWorker,
    ConfigurationError,
    JobError,
    JobGroup,
    JobGroupError,
    JobGroupParams,
    JobGroupResponse,
    JobParams,
    JobStatus,
    Settings,
    WorkerState,
    WorkerStateError,
    job,
)
from pipecat_workers.bus.messages import (
    BusEndWorkerMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobStreamEndMessage,
)
from tests.helpers import eventually, hosting, leftover_tasks, settle, within


class Requester(BaseWorker):
    """Records the requester-side outcome hooks."""

    def __init__(self, name: str = "requester") -> None:
        super().__init__(name)
        self.completed: list[JobGroupResponse] = []
        self.errors: list[BusJobResponseMessage] = []

    async def on_job_completed(self, result: JobGroupResponse) -> None:
        await super().on_job_completed(result)
        self.completed.append(result)

    async def on_job_error(self, message: BusJobResponseMessage) -> None:
        await super().on_job_error(message)
        self.errors.append(message)


class Service(BaseWorker):
    """Handlers answering at once, on a gate, never, later, or with an error."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.held: dict[str, BusJobRequestMessage] = {}
        self.cancel_hooks: list[BusJobCancelMessage] = []
        self.cancelled_handlers: list[str] = []

    async def on_job_cancelled(self, message: BusJobCancelMessage) -> None:
        await super().on_job_cancelled(message)
        self.cancel_hooks.append(message)

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        await self.gate.wait()
        return {"echo": message.payload, "by": self.name}

    @job("block")
    async def block(self, message: BusJobRequestMessage) -> dict[str, Any]:
        self.held[message.job_id] = message
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled_handlers.append(message.job_id)
            raise
        return {"released": True}

    @job("boom")
    async def boom(self, message: BusJobRequestMessage) -> None:
        raise ValueError("kaboom")

    @job("later", answer="later")
    async def later(self, message: BusJobRequestMessage) -> None:
        self.held[message.job_id] = message  # answered by the test, from another task

    @job("later-dict", answer="later")
    async def later_dict(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"at_once": True}

    @job("later-boom", answer="later")
    async def later_boom(self, message: BusJobRequestMessage) -> None:
        self.held[message.job_id] = message
        raise RuntimeError("deferred kaboom")

    @job("on-return")
    async def on_return(self, message: BusJobRequestMessage) -> None:
        self.held[message.job_id] = message  # returns without answering: completes with {}

    def handler_returned(self, job_id: str) -> bool:
        return job_id in self.held and job_id not in self._job_tasks


async def entered(ctx: Any) -> Any:
    """Enter a job()/job_group() block, and wait for the answers on leaving it."""
    async with ctx:
        pass
    return ctx


# -- JobParams and JobGroupParams ---------------------------------------------------------


def test_params_defaults_and_frozen() -> None:
    params = JobGroupParams()
    assert (params.name, params.payload, params.timeout, params.label) == (None,) * 4
    assert params.cancellable is True and params.cancel_on_error is True
    assert isinstance(params, JobParams)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.timeout = 3  # type: ignore[misc]


@pytest.mark.parametrize("cls", [JobParams, JobGroupParams])
@pytest.mark.parametrize(("field", "value", "words"), [
    ("timeout", 0, "'timeout' must be a positive"),
    ("timeout", -1.5, "'timeout' must be a positive"),
    ("timeout", math.nan, "'timeout' must be a positive"),
    ("timeout", True, "'timeout' must be a positive"),
    ("timeout", "5", "'timeout' must be a positive"),
    ("name", 3, "'name' must be a string"),
    ("payload", [1, 2], "'payload' must be a dict"),
    ("label", b"x", "'label' must be a string"),
    ("cancellable", 1, "'cancellable' must be a bool"),
])
def test_params_validate_on_construction(cls: type[JobParams], field: str, value: Any,
                                         words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        cls(**{field: value})
    message = str(info.value)
    assert message.startswith(f"job option {words}")
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_group_params_validate_cancel_on_error() -> None:
    with pytest.raises(ConfigurationError, match=r"^job option 'cancel_on_error' must be a bool"):
        JobGroupParams(cancel_on_error=None)  # type: ignore[arg-type]
    assert JobParams(timeout=math.inf).timeout == math.inf  # no deadline is still valid


# -- params= and keywords dispatch the same job -----------------------------------------------

METHODS = ["request_job", "job", "request_job_group", "job_group",
           "create_job_group_and_request_job"]
SINGLE = {"request_job", "job"}


async def dispatch(requester: Requester, method: str, workers: tuple[str, ...],
                   options: dict[str, Any]) -> tuple[JobGroup, Any]:
    """Send a job with ``method``; return its live group and the entered context, if any."""
    ctx = None
    if method == "request_job":
        job_id = await requester.request_job(workers[0], **options)
    elif method == "request_job_group":
        job_id = await requester.request_job_group(*workers, **options)
    elif method == "create_job_group_and_request_job":
        job_id = (await requester.create_job_group_and_request_job(
            list(workers), **options)).job_id
    else:
        ctx = (requester.job(workers[0], **options) if method == "job"
               else requester.job_group(*workers, **options))
        await ctx.__aenter__()
        job_id = ctx.job_id
    return requester.job_groups[job_id], ctx


async def snapshot(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """What the requester and the bus saw of one job sent with ``options``."""
    requester, a, b = Requester(), Service("a"), Service("b")
    workers = ("a",) if method in SINGLE else ("a", "b")
    async with hosting(requester, a, b) as h:
        group, ctx = await within(dispatch(requester, method, workers, options))
        seen: dict[str, Any] = {
            "group": (group.worker_names, group.label, group.cancellable,
                      group.cancel_on_error, group.timer is not None),
            "requests": [(m.target, m.job_name, m.payload)
                         for m in h.observer.of(BusJobRequestMessage)],
        }
        a.gate.set()
        b.gate.set()
        if ctx is not None:
            await within(ctx.__aexit__(None, None, None))
        seen["result"] = await within(group.wait())
        seen["result"].job_id = "-"  # ids differ between the two runs by design
        await eventually(lambda: requester.completed, "on_job_completed")
        return seen


@pytest.mark.parametrize("method", METHODS)
async def test_params_and_keywords_send_the_same_job(method: str) -> None:
    keywords: dict[str, Any] = dict(name="echo", payload={"q": 1}, timeout=5.0,
                                    label="Echo it", cancellable=False)
    if method not in SINGLE:
        keywords["cancel_on_error"] = False
    params = (JobParams if method in SINGLE else JobGroupParams)(**keywords)
    by_keywords = await snapshot(method, keywords)
    by_params = await snapshot(method, {"params": params})
    assert by_keywords == by_params
    assert by_keywords["group"][1:] == ("Echo it", False, method in SINGLE, True)
    assert all(r[1:] == ("echo", {"q": 1}) for r in by_keywords["requests"])
    assert len(by_keywords["requests"]) == (1 if method in SINGLE else 2)
    assert by_keywords["result"].responses["a"] == {"echo": {"q": 1}, "by": "a"}


KEYWORDS: list[dict[str, Any]] = [
    {"name": "echo"}, {"payload": {}}, {"timeout": 1.0}, {"label": "x"}, {"cancellable": True},
]


@pytest.mark.parametrize(("method", "keyword"), [
    (method, keyword) for method in METHODS
    for keyword in [*KEYWORDS, *([] if method in SINGLE else [{"cancel_on_error": True}])]
])
async def test_params_with_any_keyword_is_a_type_error(method: str,
                                                       keyword: dict[str, Any]) -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        with pytest.raises(TypeError, match=rf"either params= or {next(iter(keyword))}="):
            await within(dispatch(requester, method, ("a",),
                                  {"params": JobParams(name="echo"), **keyword}))
        assert h.observer.of(BusJobRequestMessage) == []
        assert requester.job_groups == {}


async def test_params_must_be_a_params_object() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        with pytest.raises(TypeError, match="params must be JobParams"):
            await within(requester.request_job("a", params={"name": "echo"}))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="params must be JobParams"):
            requester.job_group("a", params="echo")  # type: ignore[arg-type]
        assert h.observer.of(BusJobRequestMessage) == []


async def test_keywords_are_not_deprecated_and_are_validated_alike() -> None:
    requester, a = Requester(), Service("a")
    a.gate.set()
    async with hosting(requester, a):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            j = await within(entered(requester.job("a", name="echo", payload={"k": 1},
                                                   timeout=5)))
        assert j.response == {"echo": {"k": 1}, "by": "a"}
        with pytest.raises(ConfigurationError, match=r"'timeout' must be a positive"):
            await within(requester.request_job("a", name="echo", timeout=-1))
        with pytest.raises(ConfigurationError, match=r"'payload' must be a dict"):
            requester.job("a", name="echo", payload="text")  # type: ignore[arg-type]
        assert requester.job_groups == {}


async def test_a_single_job_honours_group_params_cancel_on_error() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a):
        with pytest.raises(JobError) as cancelled:
            await within(entered(requester.job("a", params=JobParams(name="boom"))))
        assert "answered error" in cancelled.value.reason
        assert len(requester.errors) == 1 and requester.completed == []

        with pytest.raises(JobError) as completed:
            await within(entered(requester.job(
                "a", params=JobGroupParams(name="boom", cancel_on_error=False))))
        assert "not every worker completed" in completed.value.reason
        assert len(requester.errors) == 1  # on_job_error did not fire again
        assert [r.statuses for r in requester.completed] == [{"a": JobStatus.ERROR}]


# -- label and cancellable ----------------------------------------------------------------


async def test_label_and_cancellable_are_recorded_on_the_group() -> None:
    requester, a, b = Requester(), Service("a"), Service("b")
    async with hosting(requester, a, b):
        plain = await within(requester.request_job("a", name="block"))
        labelled = await within(requester.request_job_group(
            "a", "b", name="block", label="Both", cancellable=False))
        by_params = await within(requester.request_job(
            "b", params=JobParams(name="block", label="One", cancellable=False)))
        groups = requester.job_groups
        assert (groups[plain].label, groups[plain].cancellable) == (None, True)
        assert (groups[labelled].label, groups[labelled].cancellable) == ("Both", False)
        assert (groups[by_params].label, groups[by_params].cancellable) == ("One", False)
        a.gate.set()
        b.gate.set()
        await eventually(lambda: requester.job_groups == {}, "every job answered")


# -- request_cancel_job_group ---------------------------------------------------------------


async def test_request_cancel_cancels_a_cancellable_job() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        ctx = requester.job("a", name="block")
        waiting = asyncio.create_task(entered(ctx))
        await eventually(lambda: a.held, "handler running")
        job_id = next(iter(a.held))
        assert await within(requester.request_cancel_job_group(job_id, reason="user said stop"))
        with pytest.raises(JobError) as info:
            await within(waiting)
        assert not isinstance(info.value, JobGroupError)
        assert info.value.reason == "user said stop" and info.value.job_id == job_id
        assert requester.job_groups == {}
        await eventually(lambda: a.cancel_hooks, "cancel reached the worker")
        assert a.cancelled_handlers == [job_id]
        cancels = h.observer.of(BusJobCancelMessage, job_id=job_id)
        assert [(m.target, m.reason) for m in cancels] == [("a", "user said stop")]
        # Ended now: asking again is refused.
        assert await within(requester.request_cancel_job_group(job_id)) is False


async def test_request_cancel_cancels_a_cancellable_group() -> None:
    requester, a, b = Requester(), Service("a"), Service("b")
    async with hosting(requester, a, b) as h:
        ctx = requester.job_group("a", "b", name="block")
        waiting = asyncio.create_task(entered(ctx))
        await eventually(lambda: a.held and b.held, "handlers running")
        job_id = next(iter(a.held))
        assert await within(requester.request_cancel_job_group(job_id)) is True
        with pytest.raises(JobGroupError, match="cancelled"):
            await within(waiting)
        cancels = h.observer.of(BusJobCancelMessage, job_id=job_id)
        assert sorted(m.target for m in cancels) == ["a", "b"]


async def test_request_cancel_refuses_a_non_cancellable_group_which_keeps_running() -> None:
    requester, a, b = Requester(), Service("a"), Service("b")
    async with hosting(requester, a, b) as h:
        ctx = requester.job_group("a", "b", name="block", cancellable=False)
        waiting = asyncio.create_task(entered(ctx))
        await eventually(lambda: a.held and b.held, "handlers running")
        job_id = next(iter(a.held))
        assert await within(requester.request_cancel_job_group(job_id, reason="no")) is False
        await settle()
        assert job_id in requester.job_groups and not waiting.done()
        assert h.observer.of(BusJobCancelMessage) == []
        assert list(a.active_jobs) == [job_id] and list(b.active_jobs) == [job_id]
        a.gate.set()
        b.gate.set()
        g = await within(waiting)
        assert g.statuses == {"a": JobStatus.COMPLETED, "b": JobStatus.COMPLETED}


async def test_request_cancel_of_an_unknown_job_is_false() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        assert await within(requester.request_cancel_job_group("no-such-job")) is False
        assert h.observer.of(BusJobCancelMessage) == []


async def test_cancels_the_requester_makes_itself_ignore_cancellable() -> None:
    requester, a, b = Requester(), Service("a"), Service("b")
    async with hosting(requester, a, b) as h:
        # Its own code.
        own = await within(requester.request_job("a", name="block", cancellable=False))
        await within(requester.cancel_job_group(own, reason="changed my mind"))
        assert own not in requester.job_groups
        await eventually(lambda: own in a.cancelled_handlers, "handler cancelled")
        # A timeout.
        with pytest.raises(JobError, match="timeout"):
            await within(entered(requester.job("b", name="block", timeout=0.2,
                                               cancellable=False)))
        # cancel_on_error: a's error cancels b.
        with pytest.raises(JobGroupError, match="answered error"):
            await within(entered(requester.job_group(
                "b", "a", params=JobGroupParams(name="boom", cancellable=False))))
        # Shutdown.
        last = await within(requester.request_job("a", name="block", cancellable=False))
        await eventually(lambda: last in a.held, "handler running")
        await within(requester.stop())
        await eventually(lambda: last in a.cancelled_handlers, "handler cancelled at stop")
        cancels = h.observer.of(BusJobCancelMessage, job_id=last)
        assert [m.target for m in cancels] == ["a"]


# -- @job(answer="later") ---------------------------------------------------------------------


def test_answer_mode_is_checked_and_recorded() -> None:
    with pytest.raises(ConfigurationError, match="answer must be one of on_return, later"):
        job("x", answer="someday")  # type: ignore[arg-type]
    assert Service._job_handlers["later"].answer == "later"
    assert Service._job_handlers["echo"].answer == "on_return"


async def test_later_job_is_answered_from_another_task() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        before = asyncio.all_tasks()
        ctx = requester.job("a", name="later", payload={"n": 1})
        waiting = asyncio.create_task(entered(ctx))
        await eventually(lambda: a.held, "handler ran")
        job_id = next(iter(a.held))
        await eventually(lambda: a.handler_returned(job_id), "handler returned")
        await settle()
        assert list(a.active_jobs) == [job_id]
        assert not waiting.done()
        assert h.observer.of(BusJobResponseMessage, source="a") == []

        answering = asyncio.create_task(a.send_job_response(job_id, {"answer": 42}))
        j = await within(waiting)
        await within(answering)
        assert (j.status, j.response) == (JobStatus.COMPLETED, {"answer": 42})
        assert a.active_jobs == {} and a._job_tasks == {}
        assert await leftover_tasks(before) == set()
        with pytest.raises(WorkerStateError):  # answered once, and only once
            await a.send_job_response(job_id, {"again": True})


async def test_later_job_can_end_with_a_stream() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        waiting = asyncio.create_task(entered(requester.job("a", name="later")))
        await eventually(lambda: a.held, "handler ran")
        job_id = next(iter(a.held))
        await eventually(lambda: a.handler_returned(job_id), "handler returned")
        await a.send_job_stream_start(job_id)
        await a.send_job_stream_end(job_id, {"text": "done"})
        j = await within(waiting)
        assert j.response == {"text": "done"} and a.active_jobs == {}
        assert len(h.observer.of(BusJobStreamEndMessage, source="a")) == 1


async def test_a_job_answered_on_return_cannot_be_answered_later() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a):
        j = await within(entered(requester.job("a", name="on-return")))
        assert (j.status, j.response) == (JobStatus.COMPLETED, {})
        with pytest.raises(WorkerStateError):
            await a.send_job_response(j.job_id, {"too": "late"})


async def test_later_handler_returning_a_dict_answers_with_it() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a):
        j = await within(entered(requester.job("a", name="later-dict")))
        assert (j.status, j.response) == (JobStatus.COMPLETED, {"at_once": True})
        assert a.active_jobs == {}


async def test_later_handler_that_raises_answers_error() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        with pytest.raises(JobError, match="deferred kaboom") as info:
            await within(entered(requester.job("a", name="later-boom")))
        assert info.value.statuses == {"a": JobStatus.ERROR}
        assert a.active_jobs == {} and a._job_tasks == {}
        answers = h.observer.of(BusJobResponseMessage, source="a")
        assert [m.status for m in answers] == [JobStatus.ERROR]


async def test_unanswered_later_job_ends_at_the_requesters_timeout() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        with pytest.raises(JobError, match="timeout") as info:
            await within(entered(requester.job("a", name="later", timeout=0.2)))
        job_id = info.value.job_id
        await eventually(lambda: a.cancel_hooks, "on_job_cancelled")
        assert a.active_jobs == {} and a._job_tasks == {}
        answers = h.observer.of(BusJobResponseMessage, source="a")
        assert [(m.job_id, m.status) for m in answers] == [(job_id, JobStatus.CANCELLED)]


async def test_unanswered_later_job_ends_cancelled_when_requester_cancels() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        job_id = await within(requester.request_job("a", name="later"))
        await eventually(lambda: a.handler_returned(job_id), "handler returned")
        assert await within(requester.request_cancel_job_group(job_id)) is True
        await eventually(lambda: not a.active_jobs, "job ended on the worker")
        assert [m.job_id for m in a.cancel_hooks] == [job_id]
        answers = h.observer.of(BusJobResponseMessage, source="a")
        assert [m.status for m in answers] == [JobStatus.CANCELLED]
        with pytest.raises(WorkerStateError):  # whoever was to answer is too late
            await a.send_job_response(job_id, {"late": True})


async def test_unanswered_later_job_ends_cancelled_when_the_worker_stops() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a) as h:
        waiting = asyncio.create_task(entered(requester.job("a", name="later")))
        await eventually(lambda: a.held, "handler ran")
        job_id = next(iter(a.held))
        await eventually(lambda: a.handler_returned(job_id), "handler returned")
        await within(a.stop())
        with pytest.raises(JobError):
            await within(waiting)
        assert a.active_jobs == {}
        answers = h.observer.of(BusJobResponseMessage, source="a")
        assert [(m.job_id, m.status) for m in answers] == [(job_id, JobStatus.CANCELLED)]


async def test_graceful_end_waits_for_a_later_answer() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a, settings=Settings(end_grace=5.0, cancel_timeout=0.5)) as h:
        job_id = await within(requester.request_job("a", name="later"))
        await eventually(lambda: a.handler_returned(job_id), "handler returned")
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="a"))
        await eventually(lambda: a.state is WorkerState.ENDING, "worker ending")
        await settle()
        assert a.state is WorkerState.ENDING and list(a.active_jobs) == [job_id]
        await a.send_job_response(job_id, {"finished": "in time"})
        await within(a.wait())
        await eventually(lambda: requester.completed, "completion")
        assert requester.completed[0].responses == {"a": {"finished": "in time"}}
        assert requester.completed[0].ok


async def test_graceful_end_cancels_a_later_job_nobody_answers() -> None:
    requester, a = Requester(), Service("a")
    async with hosting(requester, a, settings=Settings(end_grace=0.1, cancel_timeout=0.5)) as h:
        job_id = await within(requester.request_job("a", name="later"))
        await eventually(lambda: a.handler_returned(job_id), "handler returned")
        await h.runner.bus.send(BusEndWorkerMessage(source="test", target="a"))
        await within(a.wait())
        assert a.active_jobs == {}
        answers = h.observer.of(BusJobResponseMessage, source="a")
        assert [(m.job_id, m.status) for m in answers] == [(job_id, JobStatus.CANCELLED)]
