"""LLMWorker on the in-process bus: activation, tools, frames a tool queues, hand-off and end
from a tool."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pipecat.frames.frames import (
    FunctionCallResultFrame,
    LLMMessagesAppendFrame,
    LLMSetToolsFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from pipecat_workers import BaseWorker, JobStatus, WorkerRunner
from pipecat_workers.pipeline import LLMWorker, LLMWorkerActivationArgs, ScriptedLLMService, tool
from tests.helpers import running, settle, wait_until
from tests.pipeline.kit import FAST, TIMEOUT, Agent, Conversation, Transport

DOWN = FrameDirection.DOWNSTREAM


def scripted(persona: str = "You are Support.") -> ScriptedLLMService:
    return ScriptedLLMService(settings=ScriptedLLMService.Settings(system_instruction=persona))


class Teller(LLMWorker):
    """Queues frames from inside its tools, then hands off, ends, or is slow."""

    def __init__(self, name: str = "teller", **kwargs: Any) -> None:
        super().__init__(name, llm=scripted("You are the teller."), bridged=(), **kwargs)

    @tool
    async def transfer_to_agent(self, params: Any, agent: str) -> None:
        """Say one moment, then hand over.

        Args:
            agent: Who.
        """
        await self.queue_frame(TTSSpeakFrame("one moment"))
        await params.result_callback({"ok": True})
        await self.activate_worker(agent, deactivate_self=True, args=LLMWorkerActivationArgs(
            messages=[{"role": "developer", "content": "Take over."}]))

    @tool
    async def end_call(self, params: Any, reason: str) -> None:
        """Say goodbye and end.

        Args:
            reason: Why.
        """
        await self.queue_frame(TTSSpeakFrame("goodbye"))
        await params.result_callback({"ok": True})
        await self.end(reason=reason)


async def tools_arrived(acme: Conversation, count: int = 1) -> None:
    """Wait until the activated worker's tools reached the context (they travel as a frame)."""
    await wait_until(lambda: sum(isinstance(f, LLMSetToolsFrame)
                                 for f, _ in acme.spoken_frames()) >= count, timeout=TIMEOUT)


async def conversation(*workers: LLMWorker) -> tuple[WorkerRunner, Conversation]:
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    acme = Conversation()
    await runner.add_workers(acme, *workers)
    return runner, acme


async def test_defaults_and_activation_frames() -> None:
    teller = Teller()
    assert (teller.active, teller.bridged) == (False, True)
    assert teller.params.enable_metrics and teller.params.enable_usage_metrics
    acme = Transport()
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(acme, teller)
    async with running(runner):
        args = LLMWorkerActivationArgs(messages=[{"role": "developer", "content": "Hi"}],
                                       run_llm=False)
        await acme.activate_worker("teller", args=args)
        await acme.below.wait_for(lambda r: bool(r.of(LLMMessagesAppendFrame)))
        tools = acme.below.of(LLMSetToolsFrame)
        assert [t.name for t in tools[0].tools.standard_tools] == ["transfer_to_agent",
                                                                    "end_call"]
        appended = acme.below.of(LLMMessagesAppendFrame)
        assert (appended[0].messages, appended[0].run_llm) == (
            [{"role": "developer", "content": "Hi"}], False)
        # The same activation again sends nothing more (D31).
        await acme.activate_worker("teller", args=args)
        await settle(0.1)
        assert len(acme.below.of(LLMMessagesAppendFrame)) == 1


async def test_jobs_reach_an_inactive_llm_worker() -> None:
    # D27: the reference dropped jobs to inactive workers (LLM workers start inactive).
    class Counter(LLMWorker):
        async def on_job_request(self, message: Any) -> None:
            await self.send_job_response(message.job_id, {"count": 3})

    counter = Counter("counter", llm=scripted())
    client = BaseWorker("client")
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(counter, client)
    async with running(runner):
        async with client.job("counter", name="count", timeout=TIMEOUT) as j:
            pass
        assert (j.status, j.response) == (JobStatus.COMPLETED, {"count": 3})
        assert not counter.active


async def test_frames_a_tool_queues_follow_its_result_and_the_handoff_waits() -> None:
    teller, support = Teller(), Agent("support", "You are Support.")
    runner, acme = await conversation(teller, support)
    async with running(runner):
        await acme.activate_worker("teller")
        await tools_arrived(acme)
        await acme.say("transfer me to support")
        assert await acme.reply() == "Okay, done."
        assert await acme.reply() == "Hello, Support here. Take over."
        spoken = [type(f).__name__ for f, _ in acme.spoken_frames()
                  if isinstance(f, (FunctionCallResultFrame, TTSSpeakFrame))]
        # Held until the call was over: after the function call result, not before.
        assert spoken.index("TTSSpeakFrame") > spoken.index("FunctionCallResultFrame")
        assert support.active and not teller.active


async def test_end_from_a_tool_keeps_what_the_tool_queued() -> None:
    # D11: the reference threw the held "goodbye" away.
    teller = Teller()
    runner, acme = await conversation(teller)
    async with running(runner) as task:
        await acme.activate_worker("teller")
        await tools_arrived(acme)
        await acme.say("goodbye")
        await asyncio.wait_for(task, TIMEOUT)  # the session ended
    assert "goodbye" in [f.text for f, _ in acme.spoken_frames() if isinstance(f, TTSSpeakFrame)]


async def test_a_cancelled_tool_still_hands_off() -> None:
    # D10: a tool cancelled after asking for a hand-off does not lose it.
    class Interrupted(LLMWorker):
        @tool
        async def transfer_to_agent(self, params: Any, agent: str) -> None:
            """Hand over, then get cancelled.

            Args:
                agent: Who.
            """
            await self.activate_worker(agent, deactivate_self=True)
            raise asyncio.CancelledError

    teller = Interrupted("teller", llm=scripted(), bridged=())
    support = Agent("support", "You are Support.")
    runner, acme = await conversation(teller, support)
    async with running(runner):
        await acme.activate_worker("teller")
        await tools_arrived(acme)
        await acme.say("transfer me to support")
        await wait_until(lambda: support.active and not teller.active, timeout=TIMEOUT)


async def test_the_older_result_callback_form_settles_the_call() -> None:
    class Old(LLMWorker):
        @tool(cancel_on_interruption=False)
        async def transfer_to_agent(self, params: Any, agent: str) -> None:
            """Hand over the old way.

            Args:
                agent: Who.
            """
            await self.activate_worker(agent, deactivate_self=True,
                                       result_callback=params.result_callback,
                                       args=LLMWorkerActivationArgs(messages=[
                                           {"role": "developer", "content": "Take over."}]))

    old = Old("old", llm=scripted("You are the old one."), bridged=())
    support = Agent("support", "You are Support.")
    runner, acme = await conversation(old, support)
    async with running(runner):
        await acme.activate_worker("old")
        await tools_arrived(acme)
        await acme.say("transfer me to support")
        # No second reply from the old worker: the call settled with run_llm=False.
        assert await acme.reply() == "Hello, Support here. Take over."
        tool_messages = [m for m in acme.context.get_messages()
                         if isinstance(m, dict) and m.get("role") == "tool"]
        assert tool_messages[0]["content"] == "COMPLETED"


async def test_bad_arguments_from_the_model_get_an_error_result() -> None:
    teller = Teller()
    runner, acme = await conversation(teller)
    async with running(runner):
        await acme.activate_worker("teller")
        await wait_until(lambda: teller.active, timeout=TIMEOUT)
        params = _params(teller, {"nobody": "x"})
        await teller._tracked(teller._tools["transfer_to_agent"])(params)
        assert "bad arguments for transfer_to_agent" in params.results[0]["error"]


class _Params:
    def __init__(self, arguments: dict[str, Any]) -> None:
        self.arguments = arguments
        self.results: list[Any] = []

    async def result_callback(self, result: Any, **kwargs: Any) -> None:
        self.results.append(result)


def _params(worker: LLMWorker, arguments: dict[str, Any]) -> Any:
    return _Params(arguments)


pytestmark = pytest.mark.timeout(30)
