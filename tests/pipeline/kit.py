"""Building blocks for the pipeline tests: recording and shaping processors, an LLM agent with
a hand-off tool, and a transport worker with a bridge between two recorders.

Import as ``from tests.pipeline.kit import ...``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import (
    DataFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
    TextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_workers import Settings
from pipecat_workers.pipeline import (
    BusBridgeProcessor,
    LLMWorker,
    LLMWorkerActivationArgs,
    PipelineWorker,
    ScriptedLLMService,
    tool,
)

FAST = Settings(heartbeat_interval=0.2, lost_after=3, end_grace=2.0, cancel_timeout=0.5)
TIMEOUT = 5.0


class Recorder(FrameProcessor):
    """Passes every frame on and remembers (frame, direction)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.frames: list[tuple[Frame, FrameDirection]] = []
        self._changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.frames.append((frame, direction))
        self._changed.set()
        await self.push_frame(frame, direction)

    def of(self, cls: type[Frame] | tuple[type[Frame], ...],
           direction: FrameDirection | None = None) -> list[Any]:
        """The recorded frames of a type (and direction), in order."""
        return [f for f, d in self.frames
                if isinstance(f, cls) and (direction is None or d is direction)]

    def texts(self, direction: FrameDirection | None = None) -> list[str]:
        """The text of the recorded ``TextFrame`` s that are not LLM output chunks."""
        return [f.text for f in self.of(TextFrame, direction) if type(f) is TextFrame]

    async def wait_for(self, check: Callable[[Recorder], bool], timeout: float = TIMEOUT,
                       ) -> None:
        """Wait until ``check(self)`` holds."""
        async def poll() -> None:
            while not check(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(poll(), timeout)


class Upper(FrameProcessor):
    """Upper-cases the text of downstream ``TextFrame`` s (shows a frame went through it)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if type(frame) is TextFrame and direction is FrameDirection.DOWNSTREAM:
            frame = TextFrame(frame.text.upper())
        await self.push_frame(frame, direction)


class Slow(FrameProcessor):
    """Takes ``delay`` seconds over each data frame (a slow model or speaker)."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, DataFrame):
            await asyncio.sleep(self.delay)
        await self.push_frame(frame, direction)


class Transport(PipelineWorker):
    """``[above, bridge, below]``: a stand-in for a transport worker's pipeline."""

    def __init__(self, name: str = "acme", *, bridge: str | None = None,
                 middle: list[FrameProcessor] | None = None, **kwargs: Any) -> None:
        self.above = Recorder(f"{name}.above")
        self.below = Recorder(f"{name}.below")
        self.bridge = BusBridgeProcessor(worker_name=name, bridge=bridge,
                                         name=f"{name}::BusBridge")
        kwargs.setdefault("idle_timeout_secs", None)
        super().__init__(Pipeline([self.above, self.bridge, *(middle or []), self.below]),
                         name=name, **kwargs)


class Helper(PipelineWorker):
    """A bridged worker whose pipeline is ``[Upper, seen]`` (``seen`` records what entered)."""

    def __init__(self, name: str, *, active: bool = False,
                 bridged: tuple[str, ...] = (), extra: list[FrameProcessor] | None = None,
                 **kwargs: Any) -> None:
        self.seen = Recorder(f"{name}.seen")
        kwargs.setdefault("idle_timeout_secs", None)
        super().__init__(Pipeline([self.seen, *(extra or []), Upper()]), name=name,
                         active=active, bridged=bridged, **kwargs)


class Agent(LLMWorker):
    """A bridged LLM worker on the scripted model, with the seeds' hand-off tool."""

    def __init__(self, name: str, persona: str, **kwargs: Any) -> None:
        llm = ScriptedLLMService(settings=ScriptedLLMService.Settings(system_instruction=persona))
        super().__init__(name, llm=llm, bridged=(), **kwargs)
        self.calls: list[dict[str, Any]] = []

    @tool(cancel_on_interruption=False)
    async def transfer_to_agent(self, params: Any, agent: str, reason: str) -> None:
        """Transfer the user to another agent.

        Args:
            agent: The target agent.
            reason: Why.
        """
        self.calls.append({"agent": agent, "reason": reason})
        await params.result_callback({"transferred_to": agent})
        await self.activate_worker(
            agent, args=LLMWorkerActivationArgs(messages=[{"role": "developer",
                                                           "content": reason}]),
            deactivate_self=True)


class Conversation(PipelineWorker):
    """A transport with a shared context: ``[user aggregator, bridge, spoken, assistant
    aggregator]``; ``say()`` is a user turn, ``reply()`` waits for the next bot turn."""

    def __init__(self, name: str = "acme", **kwargs: Any) -> None:
        self.context = LLMContext()
        pair = LLMContextAggregatorPair(self.context)
        self.spoken = Turns(f"{name}.spoken")
        kwargs.setdefault("idle_timeout_secs", None)
        super().__init__(Pipeline([pair.user(), BusBridgeProcessor(worker_name=name),
                                   self.spoken, pair.assistant()]), name=name, **kwargs)

    async def say(self, text: str) -> None:
        await self.queue_frame(LLMMessagesAppendFrame(
            messages=[{"role": "user", "content": text}], run_llm=True))

    async def reply(self, timeout: float = TIMEOUT) -> str:
        return await asyncio.wait_for(self.spoken.turns.get(), timeout)

    def spoken_frames(self) -> list[tuple[Frame, FrameDirection]]:
        """Every frame that passed below the bridge, in order."""
        return list(self.spoken.frames)


class Turns(FrameProcessor):
    """Collects the LLM's text into whole turns."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.turns: asyncio.Queue[str] = asyncio.Queue()
        self.frames: list[tuple[Frame, FrameDirection]] = []
        self._text: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.frames.append((frame, direction))
        if isinstance(frame, LLMTextFrame):
            self._text.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame) and self._text:
            await self.turns.put("".join(self._text))
            self._text = []
        await self.push_frame(frame, direction)
