"""Pipecat frames on the wire: every frame class round-trips exactly, with a fresh id; what
cannot cross is transformed as documented or refused at the sender; local copies match."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import AdapterType, ToolsSchema
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames import frames as F
from pipecat.metrics.metrics import (
    LLMTokenUsage,
    LLMUsageMetricsData,
    ProcessingMetricsData,
    TTFBMetricsData,
)
from pipecat.processors.aggregators.llm_context import NOT_GIVEN, LLMContext, LLMSpecificMessage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import LLMSettings, STTSettings
from pipecat.transcriptions.language import Language
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies, UserTurnStrategies
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.utils.types import NotGiven
from pipecat.utils.utils import obj_id
from pydantic import BaseModel

from pipecat_workers.bus.messages import BusFrameMessage
from pipecat_workers.bus.serializer import JSONMessageSerializer
from pipecat_workers.catalogue import adapter_for, register_message, registered
from pipecat_workers.errors import ConfigurationError, SerializationError
from pipecat_workers.pipeline.wire import RemoteError, copy_frame, register_frame

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

AUDIO = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms of 16 kHz mono s16


# -- frames to send ----------------------------------------------------------------------------


async def _handler(params: Any) -> None:
    """A tool handler: stays in its process."""


def weather_tool(handler: Any = None) -> FunctionSchema:
    return FunctionSchema(
        name="get_weather", description="The weather in a city.",
        properties={"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        required=["city"], handler=handler)


def tools() -> ToolsSchema:
    return ToolsSchema(standard_tools=[weather_tool(_handler)],
                       custom_tools={AdapterType.GEMINI: [{"google_search": {}}]})


def messages() -> list[Any]:
    return [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        LLMSpecificMessage(llm="anthropic", message={"role": "user", "content": "native"}),
    ]


def context() -> LLMContext:
    return LLMContext(messages=messages(), tools=tools(),
                      tool_choice={"type": "function", "function": {"name": "get_weather"}})


def image(cls: Any = F.OutputImageRawFrame, **kw: Any) -> Any:
    return cls(image=b"\x00\x7f\xff" * 4, size=(2, 2), format="RGB", **kw)


# Constructor arguments for the frames that matter most (and every frame that needs some).
TABLE: dict[str, Callable[[], F.Frame]] = {
    "InputAudioRawFrame": lambda: F.InputAudioRawFrame(audio=AUDIO, sample_rate=16000,
                                                       num_channels=1),
    "OutputAudioRawFrame": lambda: F.OutputAudioRawFrame(audio=AUDIO, sample_rate=24000,
                                                         num_channels=2),
    "TTSAudioRawFrame": lambda: F.TTSAudioRawFrame(audio=AUDIO, sample_rate=24000,
                                                   num_channels=1, context_id="ctx-1"),
    "SpeechOutputAudioRawFrame": lambda: F.SpeechOutputAudioRawFrame(
        audio=AUDIO, sample_rate=24000, num_channels=1),
    "UserAudioRawFrame": lambda: F.UserAudioRawFrame(audio=AUDIO, sample_rate=16000,
                                                     num_channels=1, user_id="u1"),
    "OutputImageRawFrame": image,
    "InputImageRawFrame": lambda: image(F.InputImageRawFrame),
    "URLImageRawFrame": lambda: image(F.URLImageRawFrame, url="https://x/y.png"),
    "AssistantImageRawFrame": lambda: image(F.AssistantImageRawFrame, original_data=b"png",
                                            original_mime_type="image/png"),
    "UserImageRawFrame": lambda: image(F.UserImageRawFrame, user_id="u1", text="what is it?",
                                       request=F.UserImageRequestFrame(user_id="u1")),
    "SpriteFrame": lambda: F.SpriteFrame(images=[image(), image()]),
    "InputFileRawFrame": lambda: F.InputFileRawFrame(file="data:x", type="bytes",
                                                     filename="a.pdf", format="application/pdf"),
    "UserFileRawFrame": lambda: F.UserFileRawFrame(file="https://x/a.pdf", type="url",
                                                   filename=None, format="application/pdf",
                                                   custom_options={"k": 1}),
    "TextFrame": lambda: F.TextFrame(text="Hello there, how can I help you today?"),
    "LLMTextFrame": lambda: F.LLMTextFrame(text="Hello"),
    "VisionTextFrame": lambda: F.VisionTextFrame(text="a cat"),
    "InputTextRawFrame": lambda: F.InputTextRawFrame(text="typed"),
    "LLMThoughtTextFrame": lambda: F.LLMThoughtTextFrame(text="hmm"),
    "AggregatedTextFrame": lambda: F.AggregatedTextFrame(text="Hi.", text_type="custom"),
    "TTSTextFrame": lambda: F.TTSTextFrame(text="Hi", text_type=TextType.WORD,
                                           context_id="c", segment_id=2),
    "AggregatedTextProgressFrame": lambda: F.AggregatedTextProgressFrame(
        segment_id=1, context_id=None, text="Hi", text_type=TextType.SENTENCE,
        accumulated_text="Hi", remaining_text=" there"),
    "TranscriptionFrame": lambda: F.TranscriptionFrame(
        text="hola", user_id="u1", timestamp="2026-01-01T00:00:00Z", language=Language.ES,
        result={"confidence": 0.93, "words": [("hola", 0.1)]}, finalized=True),
    "InterimTranscriptionFrame": lambda: F.InterimTranscriptionFrame(
        text="hol", user_id="u1", timestamp="t", language=Language.EN_US),
    "EagerTranscriptionFrame": lambda: F.EagerTranscriptionFrame(text="ho", user_id="u",
                                                                 timestamp="t"),
    "TranslationFrame": lambda: F.TranslationFrame(text="hello", user_id="u", timestamp="t",
                                                   language=Language.EN),
    "UserBackchannelFrame": lambda: F.UserBackchannelFrame(text="mhm", user_id="u",
                                                           timestamp="t"),
    "TTSSpeakFrame": lambda: F.TTSSpeakFrame(text="One moment.", append_to_context=False),
    "BotBackchannelFrame": lambda: F.BotBackchannelFrame(text="right"),
    "LLMMarkerFrame": lambda: F.LLMMarkerFrame(marker="●"),
    "LLMMarkerResponseFrame": lambda: F.LLMMarkerResponseFrame(raw="● yes", marker="●",
                                                               markers=["●"]),
    "LLMContextAssistantTimestampFrame": lambda: F.LLMContextAssistantTimestampFrame(
        timestamp="t"),
    "LLMContextAssistantTurnFrame": lambda: F.LLMContextAssistantTurnFrame(text="x",
                                                                           timestamp="t"),
    "LLMContextUserTurnFrame": lambda: F.LLMContextUserTurnFrame(text="x", timestamp="t"),
    "LLMThoughtStartFrame": lambda: F.LLMThoughtStartFrame(append_to_context=True,
                                                           llm="anthropic"),
    "LLMThoughtEndFrame": lambda: F.LLMThoughtEndFrame(signature="sig=="),
    "LLMMessagesAppendFrame": lambda: F.LLMMessagesAppendFrame(messages=messages(),
                                                               run_llm=True),
    "LLMMessagesUpdateFrame": lambda: F.LLMMessagesUpdateFrame(messages=messages()),
    "LLMSetToolsFrame": lambda: F.LLMSetToolsFrame(tools=tools()),
    "LLMSetToolChoiceFrame": lambda: F.LLMSetToolChoiceFrame(tool_choice="required"),
    "LLMEnablePromptCachingFrame": lambda: F.LLMEnablePromptCachingFrame(enable=True),
    "LLMConfigureOutputFrame": lambda: F.LLMConfigureOutputFrame(skip_tts=True),
    "LLMContextFrame": lambda: F.LLMContextFrame(context=context()),
    "LLMContextSummaryRequestFrame": lambda: F.LLMContextSummaryRequestFrame(
        request_id="r1", context=context(), min_messages_to_keep=2,
        target_context_tokens=500, summarization_prompt="Summarize."),
    "LLMContextSummaryResultFrame": lambda: F.LLMContextSummaryResultFrame(
        request_id="r1", summary="short", last_summarized_index=3),
    "FunctionCallsStartedFrame": lambda: F.FunctionCallsStartedFrame(function_calls=[
        F.FunctionCallFromLLM(function_name="get_weather", tool_call_id="call_1",
                              arguments={"city": "Paris"}, context=context())]),
    "FunctionCallInProgressFrame": lambda: F.FunctionCallInProgressFrame(
        function_name="get_weather", tool_call_id="call_1", arguments={"city": "Paris"},
        cancel_on_interruption=True, group_id="g1"),
    "FunctionCallResultFrame": lambda: F.FunctionCallResultFrame(
        function_name="get_weather", tool_call_id="call_1", arguments={"city": "Paris"},
        result={"celsius": 21.5, "sky": ("clear", None)}, run_llm=True,
        properties=F.FunctionCallResultProperties(run_llm=False, is_final=False)),
    "FunctionCallCancelFrame": lambda: F.FunctionCallCancelFrame(
        function_name="get_weather", tool_call_id="call_1"),
    "ExternalFunctionCallsStartedFrame": lambda: F.ExternalFunctionCallsStartedFrame(
        function_calls=[F.ExternalFunctionCall(function_name="f", tool_call_id="c")]),
    "ExternalFunctionCallInProgressFrame": lambda: F.ExternalFunctionCallInProgressFrame(
        function_name="f", tool_call_id="c", arguments=[1, 2]),
    "ExternalFunctionCallResultFrame": lambda: F.ExternalFunctionCallResultFrame(
        function_name="f", tool_call_id="c", arguments={}, result="ok", is_final=False),
    "ExternalFunctionCallCancelFrame": lambda: F.ExternalFunctionCallCancelFrame(
        function_name="f", tool_call_id="c"),
    "MetricsFrame": lambda: F.MetricsFrame(data=[
        TTFBMetricsData(processor="llm#0", model="gpt", value=0.25),
        ProcessingMetricsData(processor="tts#0", value=0.5),
        LLMUsageMetricsData(processor="llm#0", value=LLMTokenUsage(
            prompt_tokens=10, completion_tokens=5, total_tokens=15, reasoning_tokens=2))]),
    "ErrorFrame": lambda: F.ErrorFrame(error="the service said no",
                                       category=ErrorCategory.RATE_LIMIT),
    "FatalErrorFrame": lambda: F.FatalErrorFrame(error="gone"),
    "EndFrame": lambda: F.EndFrame(reason="done"),
    "CancelFrame": lambda: F.CancelFrame(reason={"why": "user left"}),
    "EndWorkerFrame": lambda: F.EndWorkerFrame(reason="bye"),
    "StartFrame": lambda: F.StartFrame(audio_in_sample_rate=8000, enable_metrics=True),
    "OutputDTMFFrame": lambda: F.OutputDTMFFrame(button=KeypadEntry.ONE),
    "OutputDTMFUrgentFrame": lambda: F.OutputDTMFUrgentFrame(
        buttons=[KeypadEntry.POUND, KeypadEntry.STAR]),
    "InputDTMFFrame": lambda: F.InputDTMFFrame(button=KeypadEntry.NINE),
    "VADUserStartedSpeakingFrame": lambda: F.VADUserStartedSpeakingFrame(start_secs=0.2),
    "VADUserStoppedSpeakingFrame": lambda: F.VADUserStoppedSpeakingFrame(stop_secs=0.8),
    "SpeechControlParamsFrame": lambda: F.SpeechControlParamsFrame(
        vad_params=VADParams(stop_secs=0.5), turn_params=SmartTurnParams(stop_secs=2)),
    "VADParamsUpdateFrame": lambda: F.VADParamsUpdateFrame(params=VADParams(confidence=0.5)),
    "LLMServiceMetadataFrame": lambda: F.LLMServiceMetadataFrame(
        service_name="openai-realtime",
        user_turn_strategies=ExternalUserTurnStrategies(enable_interruptions=False),
        is_realtime_service=True),
    "STTMetadataFrame": lambda: F.STTMetadataFrame(service_name="stt", ttfs_p99_latency=0.3),
    "ServiceMetadataFrame": lambda: F.ServiceMetadataFrame(service_name="tts"),
    "LLMUpdateSettingsFrame": lambda: F.LLMUpdateSettingsFrame(
        delta=LLMSettings(temperature=0.5, extra={"k": "v"})),
    "STTUpdateSettingsFrame": lambda: F.STTUpdateSettingsFrame(
        delta=STTSettings(language=Language.FR)),
    "TTSUpdateSettingsFrame": lambda: F.TTSUpdateSettingsFrame(settings={"voice": "v2"}),
    "InputTransportMessageFrame": lambda: F.InputTransportMessageFrame(
        message={"type": "app", "data": [1, {"x": None}]}),
    "OutputTransportMessageFrame": lambda: F.OutputTransportMessageFrame(message="hi"),
    "OutputTransportMessageUrgentFrame": lambda: F.OutputTransportMessageUrgentFrame(
        message={"n": 1}),
    "UserImageRequestFrame": lambda: F.UserImageRequestFrame(user_id="u1", text="look",
                                                             function_name="f"),
    "TTSStartedFrame": lambda: F.TTSStartedFrame(context_id="c1"),
    "TTSStoppedFrame": lambda: F.TTSStoppedFrame(context_id="c1"),
    "STTMuteFrame": lambda: F.STTMuteFrame(mute=True),
    "HeartbeatFrame": lambda: F.HeartbeatFrame(timestamp=123456789),
    "UserIdleTimeoutUpdateFrame": lambda: F.UserIdleTimeoutUpdateFrame(timeout=3.5),
    "FilterUpdateSettingsFrame": lambda: F.FilterUpdateSettingsFrame(settings={"a": 1}),
    "FilterEnableFrame": lambda: F.FilterEnableFrame(enable=False),
    "MixerUpdateSettingsFrame": lambda: F.MixerUpdateSettingsFrame(settings={"v": 0.5}),
    "MixerEnableFrame": lambda: F.MixerEnableFrame(enable=True),
    "VolumeFrame": lambda: F.VolumeFrame(volume=0.5),
    "VolumeGainFrame": lambda: F.VolumeGainFrame(gain=1.5),
    "LLMSummarizeContextFrame": lambda: F.LLMSummarizeContextFrame(),
    "PipelineFlushFrame": lambda: F.PipelineFlushFrame(origin="w", returning=True),
    "InterruptionFrame": F.InterruptionFrame,
    "UserStartedSpeakingFrame": F.UserStartedSpeakingFrame,
    "BotStartedSpeakingFrame": F.BotStartedSpeakingFrame,
}

# Need a processor, an event or a callable to be built at all: refused, tested below.
UNSENDABLE = {"FrameProcessorPauseFrame", "FrameProcessorResumeFrame",
              "FrameProcessorPauseUrgentFrame", "FrameProcessorResumeUrgentFrame",
              "ServiceSwitcherRequestMetadataFrame", "ManuallySwitchServiceFrame",
              "LLMMessagesTransformFrame"}


def frame_classes() -> list[type[F.Frame]]:
    return [c for c in vars(F).values() if isinstance(c, type) and issubclass(c, F.Frame)
            and dataclasses.is_dataclass(c) and c.__module__ == F.__name__]


def decorate(frame: F.Frame) -> F.Frame:
    """The fields no constructor takes, set as a pipeline would."""
    frame.pts = 1_250_000_000
    frame.metadata = {"turn": 3, "pair": (1, "a"), "raw": b"\x01"}
    frame.transport_source = "mic"
    frame.transport_destination = "speaker"
    frame.broadcast_sibling_id = 77
    return frame


# -- comparing ---------------------------------------------------------------------------------


def norm(v: Any) -> Any:
    """A comparable form that keeps types (and leaves out frame ids)."""
    if isinstance(v, F.Frame):
        return (type(v).__name__, {f.name: norm(getattr_quiet(v, f.name))
                                   for f in dataclasses.fields(v) if f.name != "id"})
    if isinstance(v, UserTurnStrategies):
        return (type(v).__name__, getattr(v, "enable_interruptions", None),
                [type(s).__name__ for s in v.start or []], [type(s).__name__ for s in v.stop or []])
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return (type(v).__name__, {f.name: norm(getattr(v, f.name))
                                   for f in dataclasses.fields(v)})
    if isinstance(v, LLMContext):
        return ("LLMContext", norm(v.get_messages()), norm(v.tools), norm(v.tool_choice))
    if isinstance(v, ToolsSchema):
        return ("ToolsSchema", norm(v.standard_tools), norm(v.custom_tools))
    if isinstance(v, FunctionSchema):
        return ("FunctionSchema", norm(v.to_default_dict()))
    if isinstance(v, BaseModel):
        return (type(v).__name__, norm(dict(v)))
    if isinstance(v, enum.Enum):
        return (type(v).__name__, v.value)
    if isinstance(v, dict):
        return ("dict", [(norm(k), norm(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [norm(x) for x in v])
    if isinstance(v, BaseException):
        return (type(v).__name__, str(v))
    if isinstance(v, NotGiven):
        return "NOT_GIVEN"
    return (type(v).__name__, v)


def getattr_quiet(frame: F.Frame, name: str) -> Any:
    """A field's value without StartFrame's deprecation warning on reads."""
    return object.__getattribute__(frame, name)


def ser() -> JSONMessageSerializer:
    return JSONMessageSerializer(secret="")


def send(frame: F.Frame, direction: Any = FrameDirection.UPSTREAM) -> BusFrameMessage:
    s = ser()
    data = s.serialize(BusFrameMessage(source="transport", target="greeter", frame=frame,
                                       direction=direction, bridge="voice"))
    message = s.deserialize(data)
    assert isinstance(message, BusFrameMessage), s.stats()
    return message


def assert_crossed(frame: F.Frame, received: Any) -> None:
    assert type(received) is type(frame)
    assert received.id != frame.id
    assert norm(received) == norm(frame)


# -- round trips -------------------------------------------------------------------------------


def test_every_frame_class_is_registered_under_its_pipecat_name() -> None:
    classes = frame_classes()
    assert len(classes) > 140
    names = registered()
    for cls in classes:
        assert names[f"pipecat.{cls.__name__}"] is cls
        adapter = adapter_for(cls)
        assert adapter is not None and adapter.name == f"pipecat.{cls.__name__}"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table_frames_cross_exactly_with_a_fresh_id(name: str) -> None:
    frame = decorate(TABLE[name]())
    before = obj_id()
    message = send(frame)
    received = message.frame
    assert_crossed(frame, received)
    assert received.id > before  # this process's counter: never the sender's (D32)
    assert received.name == frame.name and received.pts == frame.pts
    assert received.metadata == frame.metadata and type(received.metadata["pair"]) is tuple
    assert (received.transport_source, received.transport_destination) == ("mic", "speaker")
    assert received.broadcast_sibling_id == 77
    assert received.interruptible == frame.interruptible
    assert message.direction is FrameDirection.UPSTREAM and message.bridge == "voice"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_copy_frame_is_what_the_network_delivers(name: str) -> None:
    frame = decorate(TABLE[name]())
    copied = copy_frame(frame)
    assert_crossed(frame, copied)
    assert norm(copied) == norm(send(frame).frame)


def test_every_frame_without_required_arguments_crosses() -> None:
    swept = []
    for cls in frame_classes():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = cls()
        except TypeError:
            assert cls.__name__ in TABLE or cls.__name__ in UNSENDABLE, cls
            continue
        except ValueError:
            continue  # its __post_init__ wants arguments (OutputDTMFFrame)
        assert_crossed(frame, send(frame).frame)
        assert_crossed(frame, copy_frame(frame))
        swept.append(cls)
    assert len(swept) > 60


def test_bytes_enums_and_tuples_keep_their_types() -> None:
    audio = send(TABLE["InputAudioRawFrame"]()).frame
    assert type(audio.audio) is bytes and audio.audio == AUDIO and audio.num_frames == 320
    transcription = send(TABLE["TranscriptionFrame"]()).frame
    assert transcription.language is Language.ES  # a StrEnum, not a str (D19)
    assert transcription.result["words"] == [("hola", 0.1)]
    picture = send(image()).frame
    assert picture.size == (2, 2) and type(picture.size) is tuple
    tts = send(TABLE["TTSTextFrame"]()).frame
    assert tts.text_type is TextType.WORD
    assert send(F.AggregatedTextFrame(text="x", text_type="custom")).frame.text_type == "custom"
    dtmf = send(TABLE["OutputDTMFUrgentFrame"]()).frame
    assert dtmf.buttons == [KeypadEntry.POUND, KeypadEntry.STAR]
    assert all(type(b) is KeypadEntry for b in dtmf.buttons)
    error = send(TABLE["ErrorFrame"]()).frame
    assert error.category is ErrorCategory.RATE_LIMIT


def test_fields_no_constructor_takes_keep_non_default_values() -> None:
    text = F.TextFrame(text="x")
    text.skip_tts, text.append_to_context, text.interruptible = True, False, False
    received = send(text).frame
    assert (received.skip_tts, received.append_to_context, received.interruptible) == (
        True, False, False)
    end = send(F.EndFrame()).frame
    assert end.interruptible is False
    llm_text = send(F.LLMTextFrame(text="x")).frame
    assert llm_text.includes_inter_frame_spaces is True
    llm_text_off = F.LLMTextFrame(text="x")
    llm_text_off.includes_inter_frame_spaces = False
    assert send(llm_text_off).frame.includes_inter_frame_spaces is False


def test_llm_context_crosses_as_a_new_context() -> None:
    original = context()
    frame = F.LLMContextFrame(context=original)
    received = send(frame).frame.context
    assert received is not original and isinstance(received, LLMContext)
    assert received.get_messages()[:3] == original.get_messages()[:3]
    specific = received.get_messages()[3]
    assert type(specific) is LLMSpecificMessage and specific.llm == "anthropic"
    assert received.tool_choice == original.tool_choice
    schema = received.tools.standard_tools[0]
    assert schema.to_default_dict() == weather_tool().to_default_dict()
    assert schema.handler is None  # handlers stay where they were registered
    assert received.tools.custom_tools == {AdapterType.GEMINI: [{"google_search": {}}]}
    empty = send(F.LLMContextFrame(context=LLMContext())).frame.context
    assert empty.get_messages() == [] and empty.tools is NOT_GIVEN
    assert empty.tool_choice is NOT_GIVEN


def test_not_given_crosses_as_itself() -> None:
    delta = send(F.LLMUpdateSettingsFrame(delta=LLMSettings(temperature=0.2))).frame.delta
    assert type(delta) is LLMSettings and delta.temperature == 0.2
    assert delta.model is NOT_GIVEN and delta.top_p is NOT_GIVEN
    assert send(F.LLMSetToolsFrame(tools=NOT_GIVEN)).frame.tools is NOT_GIVEN


def test_nested_frames_get_fresh_ids_too() -> None:
    frame = TABLE["UserImageRawFrame"]()
    received = send(frame).frame
    assert type(received.request) is F.UserImageRequestFrame
    assert received.request.id != frame.request.id
    sprite = send(TABLE["SpriteFrame"]()).frame
    assert [type(i) for i in sprite.images] == [F.OutputImageRawFrame] * 2


# -- transformed and refused -------------------------------------------------------------------


class Boom(FrameProcessor):
    pass


def test_error_frame_exception_and_processor_are_transformed() -> None:
    frame = F.ErrorFrame(error="failed", processor=Boom(),
                         exception=ValueError("bad key sk-abcdefghijklmnopqrstuvwxyz123456"))
    for received in (send(frame).frame, copy_frame(frame)):
        assert received.processor is None
        assert type(received.exception) is RemoteError
        assert received.exception.type_name == "ValueError"
        assert "bad key" in received.exception.message
        assert received.error == "failed"
        again = send(received).frame  # a remote error crosses on as itself
        assert again.exception.type_name == "ValueError"
    assert frame.processor is not None and type(frame.exception) is ValueError


def test_raw_transcription_results_that_cannot_cross_arrive_as_none() -> None:
    class DeepgramResponse:
        pass

    frame = F.TranscriptionFrame(text="hi", user_id="u", timestamp="t",
                                 result=DeepgramResponse())
    assert send(frame).frame.result is None
    assert copy_frame(frame).result is None
    assert send(F.InterimTranscriptionFrame(text="h", user_id="u", timestamp="t",
                                            result=[float("nan")])).frame.result is None


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (lambda: F.FunctionCallResultFrame(
            function_name="f", tool_call_id="c", arguments={}, result=None,
            properties=F.FunctionCallResultProperties(on_context_updated=_handler)),
         ".frame.properties.on_context_updated"),
        (lambda: F.LLMMessagesTransformFrame(transform=lambda m: m), ".frame.transform"),
        (lambda: F.UserImageRequestFrame(user_id="u", result_callback=_handler),
         ".frame.result_callback"),
        (lambda: F.LLMSetToolsFrame(tools=[_handler]), ".frame.tools[0]"),
        (lambda: F.FrameProcessorPauseFrame(processor=Boom()), ".frame.processor"),
        (lambda: F.LLMUpdateSettingsFrame(service=Boom()), ".frame.service"),
        (lambda: F.ManuallySwitchServiceFrame(service=Boom()), ".frame.service"),
        (lambda: F.PipelineFlushFrame(event=asyncio.Event()), ".frame.event"),
        (lambda: F.ServiceMetadataFrame(service_name="s",
                                        user_turn_strategies=UserTurnStrategies()),
         ".frame.user_turn_strategies"),
        (lambda: _with_metadata({"when": object()}), ".frame.metadata['when']"),
    ],
)
def test_values_that_cannot_cross_fail_at_the_sender(make: Callable[[], F.Frame],
                                                     path: str) -> None:
    frame = make()
    with pytest.raises(SerializationError) as info:
        ser().serialize(BusFrameMessage(source="a", frame=frame))
    assert str(info.value).startswith(f"cannot encode BusFrameMessage{path}:"), str(info.value)
    with pytest.raises(SerializationError) as copied:
        copy_frame(frame)
    assert str(copied.value).startswith(f"cannot copy {type(frame).__name__}"
                                        f"{path.removeprefix('.frame')}:"), str(copied.value)


def _with_metadata(metadata: dict[str, Any]) -> F.Frame:
    frame = F.TextFrame(text="x")
    frame.metadata = metadata
    return frame


# -- the allow-list ----------------------------------------------------------------------------


def test_an_unknown_frame_type_drops_the_whole_message() -> None:
    s = ser()
    data = s.serialize(BusFrameMessage(source="a", frame=F.TextFrame(text="x")))
    unknown = data.replace(b'"pipecat.TextFrame"', b'"app.NotHereFrame"')
    assert s.decode(unknown) is None  # never delivered with frame=None (D17)
    assert s.stats()["unknown_type"] == 1 and sum(s.stats().values()) == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v.update(id=5),  # ids never cross
        lambda v: v.update(__class__="x"),
        lambda v: v.pop("text"),
        lambda v: v.update(text=["not", "a", "str"], evil=1),
    ],
)
def test_frames_with_unknown_or_missing_fields_are_malformed(change: Callable[[Any], Any]) -> None:
    s = ser()
    envelope = json.loads(s.serialize(BusFrameMessage(source="a", frame=F.TextFrame(text="x"))))
    change(envelope["body"]["frame"]["v"])
    assert s.decode(json.dumps(envelope).encode()) is None
    assert s.stats()["malformed"] == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v.update(text=123),
        lambda v: v.update(metadata=[1]),  # a field the constructor does not take
        lambda v: v.update(pts="soon"),
    ],
)
def test_frames_with_fields_of_the_wrong_type_are_malformed(
        change: Callable[[Any], Any]) -> None:
    s = ser()
    envelope = json.loads(s.serialize(BusFrameMessage(source="a", frame=F.TextFrame(text="x"))))
    change(envelope["body"]["frame"]["v"])
    assert s.decode(json.dumps(envelope).encode()) is None
    assert s.stats()["malformed"] == 1


def test_a_drain_probe_with_fields_of_the_wrong_type_never_reaches_a_bridge() -> None:
    from pipecat_workers.pipeline.drain import DrainProbeFrame

    s = ser()
    probe = DrainProbeFrame(drain_id="d1", origin="w", leg=1)
    envelope = json.loads(s.serialize(BusFrameMessage(source="a", frame=probe)))
    envelope["body"]["frame"]["v"].update(drain_id=[1], origin={"a": 1})
    assert s.decode(json.dumps(envelope).encode()) is None
    assert s.stats()["malformed"] == 1


def test_a_frame_class_from_main_needs_a_name() -> None:
    @dataclass
    class MainFrame(F.DataFrame):
        score: float = 0.0

    MainFrame.__module__ = "__main__"
    with pytest.raises(ConfigurationError, match="define MainFrame in a module that every "
                                                 r"process imports, or pass name=\.\.\."):
        register_frame(MainFrame)
    with pytest.raises(ConfigurationError, match="define MainFrame"):
        register_message(MainFrame)  # handed to register_frame
    register_frame(MainFrame, name="test.wire.main_frame")
    assert send(MainFrame(score=2.5)).frame.score == 2.5


def test_register_frame_refuses_what_is_not_a_frame() -> None:
    @dataclass
    class NotAFrame:
        a: int = 0

    with pytest.raises(ConfigurationError, match="dataclass subclass of pipecat's Frame"):
        register_frame(NotAFrame)  # type: ignore[type-var]


@register_message(name="test.wire.score")
@dataclass
class ScoreFrame(F.DataFrame):
    score: float
    tags: tuple[str, ...] = ()
    done: bool = field(default=False, init=False)


@register_frame(name="test.wire.slotted")
@dataclass(slots=True)
class SlottedFrame(F.SystemFrame):
    level: int = 0
    note: str = field(default="", init=False)


def test_user_frames_carry_every_field() -> None:
    frame = decorate(ScoreFrame(score=0.5, tags=("a", "b")))
    frame.done = True
    received = send(frame).frame
    assert_crossed(frame, received)
    assert received.done is True and received.tags == ("a", "b")
    assert register_frame(ScoreFrame) is ScoreFrame  # again, no name: keeps its name
    assert adapter_for(ScoreFrame).name == "test.wire.score"  # type: ignore[union-attr]
    slotted = decorate(SlottedFrame(level=3))
    slotted.note = "n"
    assert_crossed(slotted, send(slotted).frame)
    assert_crossed(slotted, copy_frame(slotted))


def test_frames_registered_before_the_pipeline_package_get_every_field() -> None:
    code = """if True:
        from dataclasses import dataclass
        from pipecat.frames.frames import DataFrame
        from pipecat_workers.catalogue import adapter_for, lookup, register_message
        @register_message(name="early.frame")
        @dataclass
        class Early(DataFrame):
            x: int = 0
        assert lookup("early.frame") is Early and adapter_for(Early) is None
        import pipecat_workers.pipeline.wire
        from pipecat_workers.bus.messages import BusFrameMessage
        from pipecat_workers.bus.serializer import JSONMessageSerializer
        assert lookup("early.frame") is None and adapter_for(Early).name == "early.frame"
        s = JSONMessageSerializer(secret="")
        f = Early(x=1)
        f.pts = 5
        print(s.deserialize(s.serialize(BusFrameMessage(source="a", frame=f))).frame.pts)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "5"


def test_registered_values_round_trip() -> None:
    s = ser()
    values: list[Any] = [member for cls in (Language, TextType, KeypadEntry, ErrorCategory,
                                            AdapterType, FrameDirection) for member in cls]
    values += [VADParams(), SmartTurnParams(), LLMTokenUsage(prompt_tokens=1,
               completion_tokens=1, total_tokens=2), F.FunctionCallResultProperties(),
               STTSettings(), RemoteError("KeyError", "'x'"), ExternalUserTurnStrategies()]
    frame = F.InputTransportMessageFrame(message=values)
    received = s.deserialize(s.serialize(BusFrameMessage(source="a", frame=frame)))
    assert isinstance(received, BusFrameMessage)
    assert norm(received.frame.message) == norm(values)


def test_every_registered_pipecat_class_is_a_known_kind() -> None:
    for name, cls in registered().items():
        if name.startswith("pipecat."):
            assert (issubclass(cls, (F.Frame, enum.Enum, BaseModel, LLMContext, ToolsSchema,
                                     FunctionSchema, NotGiven, RemoteError, UserTurnStrategies))
                    or dataclasses.is_dataclass(cls)), name
            assert inspect.isclass(cls)


# -- sizes -------------------------------------------------------------------------------------


def test_sizes_on_the_wire(capsys: pytest.CaptureFixture[str]) -> None:
    s = ser()
    audio = F.InputAudioRawFrame(audio=AUDIO, sample_rate=16000, num_channels=1)
    text = F.TextFrame(text="Hello there, how can I help you today?")
    sizes = {
        "InputAudioRawFrame 20 ms 16 kHz (ref 1,331)": len(s.serialize(BusFrameMessage(
            source="transport", target="greeter", frame=audio))),
        "TextFrame 38 chars (ref 469)": len(s.serialize(BusFrameMessage(
            source="transport", target="greeter", frame=text))),
        "LLMTextFrame 'Hello' (ref 441)": len(s.serialize(BusFrameMessage(
            source="greeter", target="transport", frame=F.LLMTextFrame(text="Hello")))),
    }
    with capsys.disabled():
        for label, size in sizes.items():
            print(f"\n  wire size, {label}: {size} bytes", end="")
    assert sizes["InputAudioRawFrame 20 ms 16 kHz (ref 1,331)"] < 1331
    assert sizes["TextFrame 38 chars (ref 469)"] < 469


def test_encoding_a_start_frame_reads_no_deprecated_field() -> None:
    frame = F.StartFrame(enable_metrics=True, enable_usage_metrics=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        received = send(frame).frame
        copy_frame(frame)
    assert caught == []
    assert object.__getattribute__(received, "enable_metrics") is True
