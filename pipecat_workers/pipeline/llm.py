"""LLMWorker: a pipeline worker around an LLM service, whose ``@tool`` methods are its tools.

Tools are registered on the LLM when the worker is built and advertised (an
``LLMSetToolsFrame``) each time it is activated, with the activation's messages. A tool call
runs through the service's own function-calling path, so the context records it as with any
provider. What a tool does to the conversation waits until the call is over:

* frames it queues are held, then queued behind its result (the transport hears the result's
  consequences first); ``end()`` from a tool keeps them too (D11);
* a hand-off (``activate_worker(..., deactivate_self=True)``) or an end that it asks for runs
  once the call has returned; a call that is cancelled after asking still hands off or ends:
  it asked, and the log says so (D10).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    Frame,
    FunctionCallResultProperties,
    LLMMessagesAppendFrame,
    LLMSetToolsFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import FunctionCallParams, LLMService

from pipecat_workers.pipeline.runtime import PipelineParams
from pipecat_workers.pipeline.tools import ToolSpec, collect_tools
from pipecat_workers.pipeline.worker import PipelineWorker
from pipecat_workers.types import WorkerActivationArgs

logger = logging.getLogger("pipecat_workers.pipeline")

ResultCallback = Callable[..., Awaitable[None]]

# The worker whose tool is running in this task (and what it awaits); a context variable, so a
# frame queued from anywhere else, the bus included, is never mistaken for a tool's.
_IN_TOOL: contextvars.ContextVar[LLMWorker | None] = contextvars.ContextVar(
    "pipecat_workers_in_tool", default=None)


@dataclass(slots=True)
class LLMWorkerActivationArgs(WorkerActivationArgs):
    """Activation arguments of an :class:`LLMWorker`.

    Attributes:
        messages: Appended to the context on activation (e.g. a developer instruction).
        run_llm: Whether the LLM runs after the messages are appended; True when ``messages``
            is set and this is ``None``.
    """

    messages: list[dict[str, Any]] | None = None
    run_llm: bool | None = None


class LLMWorker(PipelineWorker):
    """A worker whose pipeline is an LLM service (``[llm]`` unless given), with tools.

    Args:
        name: The worker's name on the bus.
        llm: The LLM service; this worker's ``@tool`` methods are registered on it.
        pipeline: A pipeline around the LLM (it must contain ``llm``).
        active: Whether it activates when it starts (LLM workers usually wait for a
            hand-off).
        bridged: As for :class:`PipelineWorker`; ``()`` to splice it into a transport's
            bridge.
        defer_tool_frames: Hold frames a tool queues until the call is over.
        **kwargs: Other :class:`PipelineWorker` options. The idle timeout is off by default
            and metrics are on.

    Example::

        class Greeter(LLMWorker):
            @tool
            async def transfer(self, params, agent: str):
                \"\"\"Transfer the user.

                Args:
                    agent: Who to transfer to.
                \"\"\"
                await params.result_callback({"ok": True})
                await self.activate_worker(agent, deactivate_self=True)
    """

    def __init__(
        self, name: str | None = None, *, llm: LLMService[Any], pipeline: Pipeline | None = None,
        active: bool = False, bridged: tuple[str, ...] | None = None,
        defer_tool_frames: bool = True, **kwargs: Any,
    ) -> None:
        kwargs.setdefault("idle_timeout_secs", None)
        kwargs.setdefault("params", PipelineParams(enable_metrics=True, enable_usage_metrics=True))
        super().__init__(pipeline if pipeline is not None else Pipeline([llm]), name=name,
                         active=active, bridged=bridged, **kwargs)
        self._llm = llm
        self._defer = defer_tool_frames
        self._tools: dict[str, ToolSpec] = collect_tools(type(self))
        self._calls = 0
        self._held: list[tuple[Frame, FrameDirection]] = []
        self._parked: Callable[[], Awaitable[None]] | None = None
        self._closing = False
        self._last_activation: dict[str, Any] | None = None
        for spec in self._tools.values():
            llm.register_function(spec.name, self._tracked(spec),
                                  cancel_on_interruption=spec.options.cancel_on_interruption,
                                  timeout_secs=spec.options.timeout_secs)

    @property
    def llm(self) -> LLMService[Any]:
        """The LLM service."""
        return self._llm

    @property
    def tool_call_active(self) -> bool:
        """Whether a tool call is running."""
        return self._calls > 0

    def build_tools(self) -> list[Any]:
        """The tool schemas advertised on activation; override to change them."""
        return [spec.schema for spec in self._tools.values()]

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        """Advertise the tools and append the activation's messages.

        Activating a worker that is already active with the same arguments sends nothing again
        (the reference appended the messages twice, D31).
        """
        await super().on_activated(args)
        if args is not None and args == self._last_activation:
            return
        self._last_activation = args
        activation = LLMWorkerActivationArgs.from_dict(args)
        assert isinstance(activation, LLMWorkerActivationArgs)
        tools = self.build_tools()
        if tools:
            await self.queue_frame(LLMSetToolsFrame(tools=ToolsSchema(standard_tools=tools)))
        if activation.messages:
            run_llm = True if activation.run_llm is None else activation.run_llm
            messages: Any = activation.messages
            await self.queue_frame(LLMMessagesAppendFrame(messages=messages, run_llm=run_llm))

    async def on_deactivated(self) -> None:
        await super().on_deactivated()
        self._last_activation = None

    async def queue_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        """Queue a frame; one queued by this worker's running tool waits for the call to end."""
        if self._defer and not self._closing and _IN_TOOL.get() is self:
            self._held.append((frame, direction))
            return
        await super().queue_frame(frame, direction)

    async def process_deferred_tool_frames(
        self, frames: list[tuple[Frame, FrameDirection]]
    ) -> list[tuple[Frame, FrameDirection]]:
        """Look at (or change) the frames tools held, before they are queued."""
        return frames

    async def activate_worker(
        self, worker_name: str, *, args: WorkerActivationArgs | None = None,
        deactivate_self: bool = False, messages: list[dict[str, Any]] | None = None,
        result_callback: ResultCallback | None = None,
    ) -> None:
        """Activate (or, with ``deactivate_self``, hand off to) a worker; from a tool, once
        the call has returned.

        ``result_callback`` (the tool's ``params.result_callback``) settles the call with no
        result and no new LLM run; ``messages`` are appended and spoken first. Both are the
        older form: prefer calling ``params.result_callback(result)`` yourself before this.
        """
        await self._settle_call(result_callback, messages)
        await self._after_calls(lambda: PipelineWorker.activate_worker(
            self, worker_name, args=args, deactivate_self=deactivate_self))

    async def end(
        self, *, reason: str | None = None, messages: list[dict[str, Any]] | None = None,
        result_callback: ResultCallback | None = None,
    ) -> None:
        """End the session (as :meth:`PipelineWorker.end`); from a tool, once the call has
        returned, after the frames it queued."""
        await self._settle_call(result_callback, messages)
        await self._after_calls(self._end_now(reason))

    def _end_now(self, reason: str | None) -> Callable[[], Awaitable[None]]:
        async def end() -> None:
            await self._release_held()
            self._closing = True
            await PipelineWorker.end(self, reason=reason)

        return end

    async def _settle_call(self, result_callback: ResultCallback | None,
                           messages: Any) -> None:
        if messages:
            await PipelineWorker.queue_frame(self, LLMMessagesAppendFrame(messages=messages,
                                                                          run_llm=True))
            await self.flush_pipeline()
        if result_callback is not None:
            await result_callback(None, properties=FunctionCallResultProperties(run_llm=False))

    async def _after_calls(self, action: Callable[[], Awaitable[None]]) -> None:
        if self._calls and _IN_TOOL.get() is self:
            self._parked = action
        else:
            await action()

    def _tracked(self, spec: ToolSpec) -> Callable[[FunctionCallParams], Awaitable[None]]:
        method = getattr(self, spec.attr)
        signature = inspect.signature(method)

        async def call(params: FunctionCallParams) -> None:
            try:
                bound = signature.bind(params, **dict(params.arguments))
            except TypeError as error:
                await params.result_callback({"error": f"bad arguments for {spec.name}: {error}"})
                return
            self._calls += 1
            token = _IN_TOOL.set(self)
            cancelled = True
            try:
                await method(*bound.args, **bound.kwargs)
                cancelled = False
            finally:
                _IN_TOOL.reset(token)
                self._calls -= 1
                if self._calls == 0:
                    await self._calls_over(spec.name, cancelled)

        return call

    async def _calls_over(self, tool: str, cancelled: bool) -> None:
        action, self._parked = self._parked, None
        if action is None and not self._held:
            return
        if cancelled and action is not None:
            logger.info("%s: tool '%s' was cancelled after asking to hand off or end; doing it "
                        "anyway", self.name, tool)
        # In a task of the worker's own, not in the call's: the LLM service cancels (and
        # awaits) call tasks, and a hand-off cut in half would leave the bridge with nobody.
        self.create_task(self._after_tool(action), name=f"{self.name} after '{tool}'")

    async def _after_tool(self, action: Callable[[], Awaitable[None]] | None) -> None:
        await self._release_held()
        if action is not None:
            await action()

    async def _release_held(self) -> None:
        """Queue what tools held, behind their results (a drain puts it there)."""
        held, self._held = self._held, []
        if not held:
            return
        await self.flush_pipeline()
        for frame, direction in await self.process_deferred_tool_frames(held):
            await self._inject(frame, direction)  # dropped, not raised, once ending
