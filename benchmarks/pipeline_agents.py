"""The hand-off's pieces, shared by ``pipeline_handoff.py`` and its peer process: two LLM
agents on the scripted model with the seeds' ``transfer_to_agent`` tool, and a transport with a
shared context (the seeds' shape), for ours and for the reference.

Imports pipecat: the benchmark process imports it only when a hand-off row runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import Frame, LLMFullResponseEndFrame, LLMTextFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from benchmarks.pipeline_kit import TRANSPORT, now


def agent_class(impl: str, report: Callable[..., None]) -> type:
    """An LLM worker on the scripted model with the seeds' hand-off tool, for ``impl``;
    ``report("TOOL", worker, target, t)`` as a tool hands off, ``report("ACTIVE", worker, t)``
    as a worker is activated."""
    from pipecat_workers.pipeline import ScriptedLLMService

    if impl == "ours":
        from pipecat_workers.pipeline import LLMWorker, LLMWorkerActivationArgs, tool
    else:
        from pipecat.workers.llm import LLMWorker, LLMWorkerActivationArgs, tool

    class Agent(LLMWorker):  # type: ignore[misc, valid-type]
        def __init__(self, name: str) -> None:
            llm = ScriptedLLMService(settings=ScriptedLLMService.Settings(
                system_instruction=f"You are {name.capitalize()}."))
            super().__init__(name, llm=llm, bridged=())

        async def on_activated(self, args: dict[str, Any] | None) -> None:
            report("ACTIVE", self.name, now())
            await super().on_activated(args)

        @tool(cancel_on_interruption=False)
        async def transfer_to_agent(self, params: Any, agent: str, reason: str) -> None:
            """Transfer the user to another agent.

            Args:
                agent: The target agent.
                reason: Why.
            """
            report("TOOL", self.name, agent, now())
            await params.result_callback({"transferred_to": agent})
            await self.activate_worker(agent, args=LLMWorkerActivationArgs(
                messages=[{"role": "developer", "content": reason}]), deactivate_self=True)

    return Agent

class Turns(FrameProcessor):
    """Below the bridge: collects the LLM's text into whole turns, (text, time at its end)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.turns: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._text: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self._text.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame) and self._text:
            self.turns.put_nowait(("".join(self._text), now()))
            self._text = []
        await self.push_frame(frame, direction)


def conversation(impl: str, bus: Any = None, name: str = TRANSPORT) -> tuple[Any, Any, Turns]:
    """A transport with a shared context, ``[user aggregator, bridge, turns, assistant
    aggregator]`` (as the seeds'); its bridge notes ``(source, time)`` of every frame it
    takes from the bus in ``arrivals``. Returns (worker, bridge, turns)."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair

    pair = LLMContextAggregatorPair(LLMContext())
    turns = Turns(name=f"{name}.turns")
    if impl == "ours":
        from pipecat_workers.pipeline import BusBridgeProcessor, PipelineWorker

        class OursBridge(BusBridgeProcessor):
            arrivals: list[tuple[str, int]]

            async def receive(self, message: Any) -> None:
                self.arrivals.append((message.source, now()))
                await super().receive(message)

        bridge = OursBridge(worker_name=name, name=f"{name}::BusBridge")
        worker = PipelineWorker(Pipeline([pair.user(), bridge, turns, pair.assistant()]),
                                name=name, idle_timeout_secs=None)
    else:
        from pipecat.bus.bridge_processor import BusBridgeProcessor as RefBridge
        from pipecat.bus.messages import BusFrameMessage
        from pipecat.pipeline.worker import PipelineWorker as RefWorker

        class Bridge(RefBridge):  # type: ignore[misc]
            arrivals: list[tuple[str, int]]

            async def on_bus_message(self, message: Any) -> None:
                if isinstance(message, BusFrameMessage) and message.source != name:
                    self.arrivals.append((message.source, now()))
                await super().on_bus_message(message)

        bridge = Bridge(bus=bus, worker_name=name, name=f"{name}::BusBridge")
        worker = RefWorker(Pipeline([pair.user(), bridge, turns, pair.assistant()]),
                           name=name, idle_timeout_secs=None, enable_rtvi=False)
    bridge.arrivals = []
    return worker, bridge, turns


def activation_args(impl: str, content: str) -> Any:
    """``LLMWorkerActivationArgs`` of ``impl`` with one developer message."""
    if impl == "ours":
        from pipecat_workers.pipeline import LLMWorkerActivationArgs
    else:
        from pipecat.workers.llm import LLMWorkerActivationArgs
    return LLMWorkerActivationArgs(messages=[{"role": "developer", "content": content}])


class Lines:
    """What the agents report, kept in order when they run in this process (a peer prints the
    same lines): ``expect(word)`` as :meth:`Peer.expect`."""

    def __init__(self) -> None:
        self.lines: list[list[str]] = []

    def __call__(self, *words: object) -> None:
        self.lines.append([str(w) for w in words])

    async def expect(self, word: str, timeout: float) -> list[str]:
        async with asyncio.timeout(timeout):
            while True:
                for i, words in enumerate(self.lines):
                    if words[0] == word:
                        del self.lines[: i + 1]
                        return words
                await asyncio.sleep(0.0005)
