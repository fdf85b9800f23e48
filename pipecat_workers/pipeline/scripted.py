"""A deterministic, scripted stand-in for an OpenAI-style LLM service: no key, no network.

:class:`ScriptedLLMService` is a real pipecat ``LLMService``. It answers every
``LLMContextFrame``, whichever way it travels, by streaming ``LLMTextFrame`` chunks between
``LLMFullResponseStartFrame`` and ``LLMFullResponseEndFrame`` downstream, and calls tools
through pipecat's own ``run_function_calls``, so handlers, result callbacks and the context
aggregators see exactly what a real provider would produce.

For each inference the first of these that applies decides the answer:

1. the first :class:`Rule` of ``script`` that matches;
2. the newest message is a tool result: ``"Okay, done."``;
3. the newest message is a developer or system message (a worker activated with
   instructions), or nobody has spoken yet: ``"Hello, <Name> here. <instruction>"``;
4. the user asks to be transferred ("transfer me to support", "can I talk to billing") and a
   tool has a string ``agent`` parameter (or ``agent_name``, ``worker``, ``target``...): it is
   called with the name the user gave, lower-cased (or the ``enum`` value the user named);
5. the user says goodbye and a tool named ``end*``, ``goodbye`` or ``hang_up`` exists: it is
   called;
6. otherwise ``"<Name> here. You said: <user text>"``.

Tools called by 4 and 5 get the user's words in their other required string parameters.
``<Name>`` is the persona's (``Settings.system_instruction``) word after "You are" (skipping
"the", "a", "an"), else its first word, else ``Assistant``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast

from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter, openai_is_given
from pipecat.frames.frames import (
    Frame,
    FunctionCallFromLLM,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext, standard_message_text
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.openai.base_llm import OpenAILLMSettings

__all__ = ["ACKNOWLEDGEMENT", "Decision", "Rule", "ScriptedLLMService"]

ToolCall: TypeAlias = tuple[str, Mapping[str, Any]]
ContextTest: TypeAlias = Callable[[LLMContext], bool]
CallFactory: TypeAlias = Callable[[LLMContext], ToolCall]
Source = Literal["script", "ack", "greet", "transfer", "goodbye", "reply"]

ACKNOWLEDGEMENT = "Okay, done."

_NAME = re.compile(r"\byou\s+are\s+(?:(?:the|an?)\s+)?([A-Za-z][\w-]*)", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z][\w-]*")
_TRANSFER = re.compile(
    r"\b(?:transfer|connect|put|talk|speak|switch|pass|hand)(?:s|ed|ing|red|ring)?\b"
    r"(?:\s+\w+){0,3}?\s+(?:to|with)\s+"
    r"(?:(?:the|an?|my|your)\s+)?([A-Za-z][\w-]*)",
    re.IGNORECASE,
)
_NOT_AGENTS = frozenset({"you", "me", "him", "her", "them", "us", "someone", "somebody"})
_AGENT_PARAMS = ("agent", "agent_name", "worker", "worker_name", "target", "destination", "to")
_GOODBYE = re.compile(r"\b(?:good\s*-?\s*bye|bye|farewell)\b", re.IGNORECASE)
_END_TOOL = re.compile(r"^(?:end\w*|goodbye|hang_?up)$", re.IGNORECASE)
_CHUNK = re.compile(r"\s*\S+")
# OpenAILLMService options that mean nothing here (its HTTP client, the deprecated model=...).
_IGNORED = frozenset({"base_url", "organization", "project", "default_headers", "service_tier"})
_IGNORED |= {"model", "params", "retry_timeout_secs", "retry_on_timeout"}


@dataclass(frozen=True)
class Rule:
    """One line of a script: when it applies, what to say and which tool to call.

    Args:
        when: A regular expression searched (case-insensitively) in the newest message when
            that message is the user's, or a function of the whole context (which also sees
            the inference that follows a tool result, so it must not match that one forever).
        say: Text to stream, or None to say nothing.
        call: ``(tool_name, arguments)`` to call after speaking, a function of the context
            returning one, or None. The tool goes through the service's registered handlers.

    Raises:
        re.error: If ``when`` is not a valid regular expression.

    Example::

        Rule(r"\\border\\b", say="Let me look.", call=("lookup_order", {"order_id": "42"}))
    """

    when: str | ContextTest
    say: str | None = None
    call: ToolCall | CallFactory | None = None

    def __post_init__(self) -> None:
        if isinstance(self.when, str):
            re.compile(self.when)

    def matches(self, context: LLMContext, user_turn: str | None) -> bool:
        """Whether the rule applies; ``user_turn`` is the newest message if it is the user's."""
        if isinstance(self.when, str):
            return user_turn is not None and bool(re.search(self.when, user_turn, re.IGNORECASE))
        return self.when(context)

    def tool_call(self, context: LLMContext) -> ToolCall | None:
        """The tool to call for this context, if any."""
        return self.call(context) if callable(self.call) else self.call


@dataclass(frozen=True)
class Decision:
    """What the model did for one inference: why, what it said and which tool it called."""

    source: Source
    say: str | None = None
    call: ToolCall | None = None


class ScriptedLLMService(LLMService[OpenAILLMAdapter]):
    """A scripted LLM service, constructed like ``OpenAILLMService`` so the import can be swapped.

    Args:
        api_key: Accepted for compatibility and ignored.
        settings: ``ScriptedLLMService.Settings(system_instruction=..., model=...)``; the
            system instruction is the persona. Same class as ``OpenAILLMService.Settings``.
        script: Rules tried, in order, before the built-in behaviour.
        chunk_delay: Seconds to wait before each streamed chunk, to play a slow model.
        **kwargs: Passed to ``LLMService``; options only ``OpenAILLMService`` knows
            (``base_url`` and the like) are accepted and ignored.

    Attributes:
        decisions: One :class:`Decision` per in-pipeline inference, oldest first.
    """

    Settings = OpenAILLMSettings
    _settings: OpenAILLMSettings
    adapter_class = OpenAILLMAdapter

    def __init__(
        self,
        api_key: str | None = None,
        *,
        settings: OpenAILLMSettings | None = None,
        script: Sequence[Rule] | None = None,
        chunk_delay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        store = OpenAILLMSettings(
            model="scripted",
            system_instruction=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            temperature=None,
            top_p=None,
            top_k=None,
            max_tokens=None,
            max_completion_tokens=None,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
        )
        if settings is not None:
            store.apply_update(settings)
        for key in _IGNORED & kwargs.keys():
            del kwargs[key]
        super().__init__(settings=store, **kwargs)
        self._script = tuple(script or ())
        self._chunk_delay = chunk_delay
        self.decisions: list[Decision] = []

    def can_generate_metrics(self) -> bool:
        """Processing and TTFB metrics are reported like a real provider's."""
        return True

    async def decide(self, context: LLMContext, system_instruction: str | None = None) -> Decision:
        """Decide the answer to ``context`` (read through the OpenAI adapter), pushing nothing.

        ``system_instruction``, if given, replaces the persona of the settings.
        """
        instruction = system_instruction or self._settings.system_instruction
        params = await self.get_llm_adapter().get_llm_invocation_params(
            context,
            system_instruction=instruction if isinstance(instruction, str) else None,
            convert_developer_to_user=False,
        )
        messages = cast(list[Mapping[str, Any]], params["messages"])
        tools = params["tools"]
        functions = [
            cast(Mapping[str, Any], tool).get("function") or {}
            for tool in (tools if openai_is_given(tools) else [])
        ]
        return _decide(messages, functions, context, self._script)

    async def run_inference(
        self,
        context: LLMContext,
        max_tokens: int | None = None,
        system_instruction: str | None = None,
        response_schema: dict[str, Any] | None = None,
    ) -> str | None:
        """Out-of-band inference: the text the scripted model would say, tool calls left out."""
        return (await self.decide(context, system_instruction)).say

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Answer context frames; pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            # An assistant aggregator sends the context upstream after a tool result; the
            # answer goes downstream all the same, as from any provider.
            await self._respond(frame.context)
        else:
            await self.push_frame(frame, direction)

    async def _respond(self, context: LLMContext) -> None:
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await self.start_ttfb_metrics()
        try:
            decision = await self.decide(context)
            self.decisions.append(decision)
            if decision.say:
                await self._stream(decision.say)
            if decision.call is not None:
                await self.stop_ttfb_metrics()
                name, arguments = decision.call
                call_id = f"call_{uuid.uuid4().hex[:24]}"
                await self.run_function_calls(
                    [FunctionCallFromLLM(name, call_id, dict(arguments), context=context)]
                )
        except Exception as e:
            await self.push_error(error_msg=f"Scripted model failed: {e}", exception=e)
        finally:
            # Also on an interruption, which cancels this task mid-stream.
            await self.stop_processing_metrics()
            await self.push_frame(LLMFullResponseEndFrame())

    async def _stream(self, text: str) -> None:
        for chunk in _CHUNK.findall(text):
            # Always yields, even with no delay, so an interruption can land between chunks.
            await asyncio.sleep(self._chunk_delay)
            await self.stop_ttfb_metrics()
            await self._push_llm_text(chunk)


def _decide(
    messages: Sequence[Mapping[str, Any]],
    functions: Sequence[Mapping[str, Any]],
    context: LLMContext,
    script: Sequence[Rule],
) -> Decision:
    has_persona = bool(messages) and messages[0].get("role") == "system"
    persona = _text(messages[0]) if has_persona else ""
    rest = messages[1:] if has_persona else messages
    role = rest[-1].get("role") if rest else None
    last_text = _text(rest[-1]) if rest else ""
    for rule in script:
        if rule.matches(context, last_text if role == "user" else None):
            return Decision("script", rule.say, rule.tool_call(context))
    name = _persona_name(persona)
    if role == "tool":
        return Decision("ack", ACKNOWLEDGEMENT)
    user = next((m for m in reversed(rest) if m.get("role") == "user"), None)
    if user is None or role in ("developer", "system"):
        instruction = last_text if role in ("developer", "system") else ""
        return Decision("greet", f"Hello, {name} here. {instruction}".strip())
    text = _text(user)
    return (
        _transfer(text, functions)
        or _goodbye(text, functions)
        or Decision("reply", f"{name} here. You said: {text}")
    )


def _transfer(text: str, functions: Sequence[Mapping[str, Any]]) -> Decision | None:
    match = _TRANSFER.search(text)
    if match is None or match.group(1).lower() in _NOT_AGENTS:
        return None
    wanted = match.group(1).lower()
    for function in functions:
        properties, required = _parameters(function)
        key = next((k for k in _AGENT_PARAMS if _is_string(properties.get(k))), None)
        if key is None:
            continue
        agent = wanted
        choices = [str(c) for c in properties[key].get("enum") or []]
        if choices:
            named = [c for c in choices if re.search(rf"\b{re.escape(c)}\b", text, re.IGNORECASE)]
            if not named:
                continue
            agent = next((c for c in named if c.lower() == wanted), named[0])
        arguments = _fill(properties, required, text) | {key: agent}
        return Decision("transfer", call=(str(function.get("name")), arguments))
    return None


def _goodbye(text: str, functions: Sequence[Mapping[str, Any]]) -> Decision | None:
    if not _GOODBYE.search(text):
        return None
    for function in functions:
        name = str(function.get("name", ""))
        if _END_TOOL.match(name):
            return Decision("goodbye", call=(name, _fill(*_parameters(function), text)))
    return None


def _parameters(function: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str]]:
    schema = function.get("parameters") or {}
    return schema.get("properties") or {}, list(schema.get("required") or [])


def _is_string(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "string"


def _fill(properties: Mapping[str, Any], required: list[str], text: str) -> dict[str, Any]:
    return {name: text for name in required if _is_string(properties.get(name))}


def _persona_name(persona: str) -> str:
    match = _NAME.search(persona) or _WORD.search(persona)
    word = match.group(match.lastindex or 0) if match else "Assistant"
    return word[:1].upper() + word[1:]


def _text(message: Mapping[str, Any]) -> str:
    return standard_message_text(cast(Any, message)).strip()
