"""The values frames carry that are not frames: adapters for pipecat's types that are not
plain dataclasses or enums (``LLMContext``, ``ToolsSchema``, ``FunctionSchema``, ``NOT_GIVEN``,
pydantic models, the user-turn strategies) and :class:`RemoteError`, which stands for an
exception raised in another process. See :mod:`pipecat_workers.pipeline.wire` for the frames.
"""

from __future__ import annotations

from typing import Any

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.utils.security.redaction import redact_secrets
from pipecat.utils.types import NOT_GIVEN, NotGiven
from pydantic import BaseModel

from pipecat_workers.catalogue import register_adapter

# Modules whose enums, dataclasses and pydantic models frames carry (besides the frames).
VALUE_MODULES = (
    "pipecat.frames.frames",
    "pipecat.metrics.metrics",
    "pipecat.transcriptions.language",
    "pipecat.utils.errors",
    "pipecat.utils.text.base_text_aggregator",
    "pipecat.audio.dtmf.types",
    "pipecat.audio.vad.vad_analyzer",
    "pipecat.audio.turn.base_turn_analyzer",
    "pipecat.audio.turn.smart_turn.base_smart_turn",
    "pipecat.services.settings",
    "pipecat.turns.user_turn_completion_mixin",
    "pipecat.utils.context.llm_context_summarization",
    "pipecat.processors.aggregators.llm_context",
    "pipecat.adapters.llm.schemas.tools_schema",
    "pipecat.processors.frame_processor",
)
ENUMS_ONLY = frozenset({"pipecat.processors.frame_processor"})  # FrameDirection, not setups


class RemoteError(Exception):
    """An exception raised in another process, as an ``ErrorFrame`` brought it across the bus.

    Attributes:
        type_name: The original exception's type (``module.Qualname``; builtins unqualified).
        message: Its message, with credentials masked.
    """

    def __init__(self, type_name: str, message: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message

    @classmethod
    def from_exception(cls, exc: BaseException) -> RemoteError:
        """The remote form of ``exc`` (itself if it already is one)."""
        if isinstance(exc, RemoteError):
            return exc
        t = type(exc)
        name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
        return cls(name, redact_secrets(str(exc)))


def _fields(raw: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``raw`` checked to be a dict with every ``required`` key and no key outside both."""
    if type(raw) is not dict or not set(required) <= raw.keys() <= {*required, *optional}:
        raise ValueError("unexpected fields")
    return raw


def _encode_context(context: LLMContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    messages = context.get_messages()
    if messages:
        out["messages"] = messages
    if context.tools is not NOT_GIVEN:
        out["tools"] = context.tools
    if context.tool_choice is not NOT_GIVEN:
        out["tool_choice"] = context.tool_choice
    return out


def _decode_context(raw: Any) -> LLMContext:
    d = _fields(raw, (), ("messages", "tools", "tool_choice"))
    messages = d.get("messages", [])
    if type(messages) is not list:
        raise TypeError("messages must be a list")
    return LLMContext(messages, d.get("tools", NOT_GIVEN), d.get("tool_choice", NOT_GIVEN))


def _encode_tools(tools: ToolsSchema) -> dict[str, Any]:
    out: dict[str, Any] = {"standard_tools": list(tools.standard_tools)}
    if tools.custom_tools is not None:
        out["custom_tools"] = tools.custom_tools
    return out


def _decode_tools(raw: Any) -> ToolsSchema:
    d = _fields(raw, ("standard_tools",), ("custom_tools",))
    standard = d["standard_tools"]
    if type(standard) is not list or not all(isinstance(t, FunctionSchema) for t in standard):
        raise TypeError("standard_tools must be a list of FunctionSchema")
    return ToolsSchema(standard_tools=standard, custom_tools=d.get("custom_tools"))


def _encode_schema(schema: FunctionSchema) -> dict[str, Any]:
    return {"name": schema.name, "description": schema.description,
            "properties": schema.properties, "required": schema.required}


def _decode_schema(raw: Any) -> FunctionSchema:
    d = _fields(raw, ("name", "description", "properties", "required"))
    return FunctionSchema(d["name"], d["description"], d["properties"], d["required"])


def _decode_not_given(raw: Any) -> NotGiven:
    if raw is not None:
        raise ValueError("NOT_GIVEN carries nothing")
    return NOT_GIVEN


def _encode_remote_error(e: RemoteError) -> dict[str, Any]:
    return {"type": e.type_name, "message": e.message} if e.message else {"type": e.type_name}


def _decode_remote_error(raw: Any) -> RemoteError:
    d = _fields(raw, ("type",), ("message",))
    if type(d["type"]) is not str or type(d.get("message", "")) is not str:
        raise TypeError("type and message are strings")
    return RemoteError(d["type"], d.get("message", ""))


def _decode_strategies(raw: Any) -> ExternalUserTurnStrategies:
    d = _fields(raw, ("enable_interruptions",))
    if type(d["enable_interruptions"]) is not bool:
        raise TypeError("enable_interruptions is a bool")
    return ExternalUserTurnStrategies(enable_interruptions=d["enable_interruptions"])


def model_adapter(cls: type[BaseModel], prefix: str) -> None:
    """Let a pydantic model cross as its fields (built back without validation)."""
    names = tuple(cls.model_fields)
    extra_allowed = cls.model_config.get("extra") == "allow"

    def encode(model: BaseModel) -> dict[str, Any]:
        out = {n: getattr(model, n) for n in names}
        out.update(model.model_extra or {})
        return out

    def decode(raw: Any) -> BaseModel:
        if type(raw) is not dict or not (extra_allowed or raw.keys() <= set(names)):
            raise ValueError("unexpected fields")
        # Validation would coerce (an int default of a float field comes back as a float):
        # the values are already the sender's, exactly.
        return cls.model_construct(**raw)

    register_adapter(cls, encode=encode, decode=decode, name=prefix + cls.__name__)


def register_value_adapters(prefix: str) -> None:
    """Register the adapters of this module under ``prefix`` + the type's name."""
    register_adapter(NotGiven, encode=lambda _: None, decode=_decode_not_given,
                     name=prefix + "NOT_GIVEN")
    register_adapter(FunctionSchema, encode=_encode_schema, decode=_decode_schema,
                     name=prefix + "FunctionSchema")
    register_adapter(ToolsSchema, encode=_encode_tools, decode=_decode_tools,
                     name=prefix + "ToolsSchema")
    register_adapter(LLMContext, encode=_encode_context, decode=_decode_context,
                     name=prefix + "LLMContext")
    register_adapter(ExternalUserTurnStrategies,
                     encode=lambda s: {"enable_interruptions": s.enable_interruptions},
                     decode=_decode_strategies, name=prefix + "ExternalUserTurnStrategies")
    register_adapter(RemoteError, encode=_encode_remote_error, decode=_decode_remote_error,
                     name=prefix + "RemoteError")
