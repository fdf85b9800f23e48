"""ScriptedLLMService in real pipecat pipelines: streaming, tools, scripts, interruptions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.workers.runner import WorkerRunner

from pipecat_workers.pipeline.scripted import ACKNOWLEDGEMENT, Decision, Rule, ScriptedLLMService

TIMEOUT = 5.0
SUPPORT = "You are Support, the help desk of Acme. Be brief."

TRANSFER = FunctionSchema(
    name="transfer_to_agent",
    description="Hand the conversation to another agent.",
    properties={
        "agent": {"type": "string", "description": "Who to hand over to."},
        "reason": {"type": "string", "description": "Why."},
    },
    required=["agent", "reason"],
)
END = FunctionSchema(
    name="end_conversation", description="End the call.", properties={}, required=[]
)


class Recorder(FrameProcessor):
    """Keeps every frame that travels downstream past it, and lets a test wait on them."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)

    def of(self, kind: type[Frame]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]

    def text(self) -> str:
        return "".join(f.text for f in self.of(LLMTextFrame))

    async def wait_for(self, ready: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def watch() -> None:
            while not ready():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(watch(), timeout)

    async def wait_responses(self, count: int) -> None:
        await self.wait_for(lambda: len(self.of(LLMFullResponseEndFrame)) >= count)


@asynccontextmanager
async def running(
    llm: ScriptedLLMService, context: LLMContext
) -> AsyncIterator[tuple[PipelineWorker, Recorder]]:
    """Run user aggregator, the service, a recorder and the assistant aggregator; end cleanly."""
    pair = LLMContextAggregatorPair(context)
    recorder = Recorder()
    pipeline = Pipeline([pair.user(), llm, recorder, pair.assistant()])
    worker = PipelineWorker(pipeline, cancel_on_idle_timeout=False, enable_rtvi=False)
    started = asyncio.Event()

    async def _started(_worker: PipelineWorker, _frame: Frame) -> None:
        started.set()

    worker.add_event_handler("on_pipeline_started", _started)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), TIMEOUT)
        yield worker, recorder
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(run), TIMEOUT)
    finally:
        if not run.done():
            await worker.cancel()
            await asyncio.wait_for(run, TIMEOUT)


def say(text: str) -> LLMMessagesAppendFrame:
    return LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=True)


def support(**kwargs: Any) -> ScriptedLLMService:
    settings = ScriptedLLMService.Settings(system_instruction=SUPPORT, model="scripted-1")
    return ScriptedLLMService(api_key=None, settings=settings, **kwargs)


@pytest.mark.parametrize(
    ("persona", "name"),
    [(SUPPORT, "Support"), ("You are the greeter of Acme.", "Greeter"), (None, "Assistant")],
)
async def test_reply_is_streamed_and_depends_on_persona(persona: str | None, name: str) -> None:
    llm = ScriptedLLMService(settings=ScriptedLLMService.Settings(system_instruction=persona))
    context = LLMContext()
    async with running(llm, context) as (worker, recorder):
        await worker.queue_frame(say("my router blinks red"))
        await recorder.wait_responses(1)

    expected = f"{name} here. You said: my router blinks red"
    response = (LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame)
    kinds = [type(f) for f in recorder.frames if isinstance(f, response)]
    texts = recorder.of(LLMTextFrame)
    assert kinds[0] is LLMFullResponseStartFrame and kinds[-1] is LLMFullResponseEndFrame
    assert kinds[1:-1] == [LLMTextFrame] * len(texts)
    assert len(texts) == len(expected.split()) > 3
    assert recorder.text() == expected
    assert context.messages[-1] == {"role": "assistant", "content": expected}
    assert llm.decisions == [Decision("reply", expected)]


async def test_transfer_calls_registered_handler_and_acknowledges_result() -> None:
    llm = support()
    received: list[FunctionCallParams] = []

    async def transfer(params: FunctionCallParams) -> None:
        received.append(params)
        await params.result_callback({"transferred_to": params.arguments["agent"]})

    llm.register_function("transfer_to_agent", transfer)
    context = LLMContext(tools=ToolsSchema(standard_tools=[TRANSFER, END]))
    async with running(llm, context) as (worker, recorder):
        await worker.queue_frame(say("Can I talk to Billing, please?"))
        await recorder.wait_responses(2)

    (params,) = received
    assert params.function_name == "transfer_to_agent"
    assert dict(params.arguments) == {
        "agent": "billing",
        "reason": "Can I talk to Billing, please?",
    }
    assert params.llm is llm
    assert [type(f) for f in recorder.frames if "FunctionCall" in type(f).__name__] == [
        FunctionCallsStartedFrame,
        FunctionCallInProgressFrame,
        FunctionCallResultFrame,
    ]
    assert recorder.text() == ACKNOWLEDGEMENT

    messages: list[Any] = context.messages
    call, result, ack = messages[-3:]
    assert call["role"] == "assistant"
    (tool_call,) = call["tool_calls"]
    assert tool_call["id"] == params.tool_call_id
    assert tool_call["function"]["name"] == "transfer_to_agent"
    assert json.loads(tool_call["function"]["arguments"])["agent"] == "billing"
    assert result["role"] == "tool" and result["tool_call_id"] == params.tool_call_id
    assert json.loads(result["content"]) == {"transferred_to": "billing"}
    assert ack == {"role": "assistant", "content": ACKNOWLEDGEMENT}
    assert [d.source for d in llm.decisions] == ["transfer", "ack"]


async def test_script_rule_wins_over_defaults() -> None:
    looked_up: list[dict[str, Any]] = []

    async def lookup(params: FunctionCallParams) -> None:
        looked_up.append(dict(params.arguments))
        await params.result_callback(None)

    def order_call(context: LLMContext) -> tuple[str, dict[str, Any]]:
        return ("lookup_order", {"messages": len(context.messages)})

    llm = support(
        script=[
            Rule(r"\bweather\b", say="Sunny all week."),
            Rule(lambda context: "order" in str(context.messages[-1]), call=order_call),
        ]
    )
    llm.register_function("lookup_order", lookup)
    context = LLMContext(tools=[TRANSFER])
    async with running(llm, context) as (worker, recorder):
        await worker.queue_frame(say("Transfer me to support and tell me the WEATHER"))
        await recorder.wait_responses(1)
        await worker.queue_frame(say("where is my order?"))
        await recorder.wait_for(lambda: bool(looked_up))

    assert recorder.text() == "Sunny all week."
    assert looked_up == [{"messages": 3}]
    assert llm.decisions == [
        Decision("script", "Sunny all week."),
        Decision("script", None, ("lookup_order", {"messages": 3})),
    ]


async def test_goodbye_calls_end_tool() -> None:
    ended: list[str] = []

    async def end(params: FunctionCallParams) -> None:
        ended.append(params.function_name)
        await params.result_callback(None)

    llm = support()
    llm.register_function("end_conversation", end)
    context = LLMContext(tools=[TRANSFER, END])
    async with running(llm, context) as (worker, recorder):
        await worker.queue_frame(say("Thanks, that's all. Bye!"))
        await recorder.wait_for(lambda: bool(ended))
        await recorder.wait_responses(1)

    assert ended == ["end_conversation"]
    assert recorder.of(LLMTextFrame) == []
    assert llm.decisions == [Decision("goodbye", None, ("end_conversation", {}))]


async def test_activation_instruction_gets_a_greeting() -> None:
    llm = support()
    context = LLMContext()
    instruction = "The user was transferred to you about a broken router."
    async with running(llm, context) as (worker, recorder):
        await worker.queue_frame(
            LLMMessagesAppendFrame([{"role": "developer", "content": instruction}], run_llm=True)
        )
        await recorder.wait_responses(1)

    assert recorder.text() == f"Hello, Support here. {instruction}"


async def test_context_arriving_upstream_is_answered_downstream() -> None:
    llm = support()
    context = LLMContext([{"role": "user", "content": "hello from below"}])
    async with running(llm, context) as (worker, recorder):
        await worker.queue_frame(LLMContextFrame(context), FrameDirection.UPSTREAM)
        await recorder.wait_responses(1)

    assert recorder.text() == "Support here. You said: hello from below"
    assert recorder.of(LLMContextFrame) == []


async def test_interruption_stops_a_slow_stream() -> None:
    words = "one two three four five six seven eight nine ten"
    llm = support(script=[Rule("count", say=words)], chunk_delay=0.1)
    context = LLMContext()
    async with running(llm, context) as (worker, recorder):
        await worker.queue_frame(say("count for me"))
        await recorder.wait_for(lambda: len(recorder.of(LLMTextFrame)) >= 2)
        await worker.queue_frame(InterruptionFrame())
        await recorder.wait_for(lambda: bool(recorder.of(InterruptionFrame)))
        streamed = len(recorder.of(LLMTextFrame))
        await asyncio.sleep(0.5)
        assert len(recorder.of(LLMTextFrame)) == streamed < len(words.split())

        # The service answers again afterwards: its frame task was replaced, not lost.
        await worker.queue_frame(say("still there?"))
        await recorder.wait_for(lambda: recorder.text().endswith("You said: still there?"))

    assert not recorder.text().startswith(words)
    assert [t for t in asyncio.all_tasks() if not t.done()] == [asyncio.current_task()]


async def test_run_inference_and_drop_in_constructor() -> None:
    assert ScriptedLLMService.Settings is OpenAILLMService.Settings
    llm = ScriptedLLMService(
        "sk-unused",
        settings=OpenAILLMService.Settings(system_instruction=SUPPORT, temperature=0.2),
        base_url="http://unused.invalid",
    )
    context = LLMContext([{"role": "user", "content": "ping"}])
    assert await llm.run_inference(context) == "Support here. You said: ping"
    assert await llm.run_inference(context, system_instruction="You are Sales.") == (
        "Sales here. You said: ping"
    )
    assert llm.decisions == []


def test_rule_rejects_a_bad_pattern() -> None:
    with pytest.raises(Exception, match=r"missing \)|unterminated"):
        Rule("(oops")
