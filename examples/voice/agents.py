"""The seed's LLM agents as workers: a greeter and support that hand the user to each other.

Each agent is an :class:`~pipecat_workers.pipeline.LLMWorker` spliced into the transport
worker's bridge while it holds the conversation. Its model is OpenAI's when
``OPENAI_API_KEY`` is set (``OPENAI_BASE_URL`` and ``OPENAI_MODEL`` point it at a local
OpenAI-compatible server and model), else the scripted model of
:class:`~pipecat_workers.pipeline.ScriptedLLMService`, which needs nothing.
"""

from __future__ import annotations

import os
from typing import Any

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.frames.frames import FunctionCallResultProperties
from pipecat.services.llm_service import FunctionCallParams, LLMService

from examples.console import show
from pipecat_workers.pipeline import (
    LLMWorker,
    LLMWorkerActivationArgs,
    ScriptedLLMService,
    tool,
)

__all__ = ["AcmeAgent", "make_llm"]


def make_llm(persona: str) -> LLMService[Any]:
    """The LLM service of an agent whose system instruction is ``persona``.

    OpenAI's when ``OPENAI_API_KEY`` is set (a local OpenAI-compatible server needs some
    value too), honouring ``OPENAI_BASE_URL`` and ``OPENAI_MODEL``; else the scripted model.
    """
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        return ScriptedLLMService(settings=ScriptedLLMService.Settings(
            system_instruction=persona))
    from pipecat.services.openai.llm import OpenAILLMService

    settings = OpenAILLMService.Settings(system_instruction=persona)
    model = os.environ.get("OPENAI_MODEL")
    if model:
        settings.model = model
    return OpenAILLMService(api_key=api_key, base_url=os.environ.get("OPENAI_BASE_URL") or None,
                            settings=settings)


class AcmeAgent(LLMWorker):
    """An agent that can transfer the user to one of its siblings (seed 002's llm.py).

    Args:
        name: The agent's name on the bus.
        persona: Its system instruction.
        siblings: The agents it may transfer the user to; it watches them, and the
            ``agent`` parameter of its tool names only them.
    """

    def __init__(self, name: str, *, persona: str, siblings: list[str]) -> None:
        super().__init__(name, llm=make_llm(persona), bridged=())
        self._siblings = list(siblings)

    async def start(self) -> None:
        """Watch the siblings, so that a transfer knows whether its target is there."""
        await super().start()
        await self.watch_workers(*self._siblings)

    def build_tools(self) -> list[Any]:
        """The tools, with ``agent`` limited to the siblings."""
        return [_with_agents(schema, self._siblings) for schema in super().build_tools()]

    @tool(cancel_on_interruption=False)
    async def transfer_to_agent(self, params: FunctionCallParams, agent: str,
                                reason: str) -> None:
        """Transfer the user to another agent.

        Args:
            agent: The target agent.
            reason: Why the user is transferred, for the next agent.
        """
        if agent not in self._siblings or agent not in self.registry:
            await params.result_callback(
                {"error": f"'{agent}' is not available; agents: {', '.join(self._siblings)}"})
            return
        show(f"  [{self.name}] transferring the user to {agent}: {reason}")
        # No new LLM run here: the next agent speaks next.
        await params.result_callback({"transferred_to": agent},
                                     properties=FunctionCallResultProperties(run_llm=False))
        await self.activate_worker(
            agent,
            args=LLMWorkerActivationArgs(messages=[{"role": "developer", "content": reason}]),
            deactivate_self=True,
        )


def _with_agents(schema: Any, agents: list[str]) -> Any:
    if not isinstance(schema, FunctionSchema) or "agent" not in schema.properties:
        return schema
    agent = {**schema.properties["agent"], "enum": list(agents)}
    return FunctionSchema(name=schema.name, description=schema.description,
                          properties={**schema.properties, "agent": agent},
                          required=schema.required)
