"""What the bot says, as whole turns: the frames that reach a transport's output, read back.

A turn is what one TTS response spoke (``TTSStartedFrame`` ... ``TTSTextFrame`` ...
``TTSStoppedFrame``) or, in a pipeline without a TTS, the ``LLMTextFrame`` s of one LLM
response. The collector also knows whether the bot is still busy: an LLM response is under
way or a function call has not returned, so more may be said.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text


@dataclass(frozen=True, slots=True)
class BotTurn:
    """One thing the bot said.

    Attributes:
        text: The words, as the user heard (or read) them.
        speaker: Who said it (the agent serving the transport then), if the transport knows.
        interrupted: The user cut the bot off: ``text`` is what was said until then.
    """

    text: str
    speaker: str | None = None
    interrupted: bool = False


class TurnCollector:
    """Reads frames in the order the output delivers them and returns each finished turn."""

    def __init__(self) -> None:
        self._spoken: list[TextPartForConcatenation] | None = None  # a TTS response is open
        self._written: list[TextPartForConcatenation] = []  # LLM text that no TTS spoke
        self._speaker: str | None = None
        self._responses = 0
        self._calls: set[str] = set()

    @property
    def busy(self) -> bool:
        """Whether more is coming: a response or a function call is under way."""
        return self._responses > 0 or bool(self._calls) or self._spoken is not None

    def observe(self, frame: Frame, speaker: str | None = None) -> BotTurn | None:
        """Take the next delivered frame; the turn it finishes, if it finishes one.

        Args:
            frame: A frame the output pushed on.
            speaker: Who serves the conversation now; remembered when a turn starts.
        """
        if isinstance(frame, TTSStartedFrame):
            self._open(speaker)
        elif isinstance(frame, TTSTextFrame):
            spoken = self._spoken if self._spoken is not None else self._open(speaker)
            spoken.append(_part(frame))
        elif isinstance(frame, TTSStoppedFrame):
            return self._close_spoken(interrupted=False)
        elif isinstance(frame, LLMTextFrame):
            if not self._written:
                self._speaker = speaker
            self._written.append(_part(frame))
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._responses += 1
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._responses = max(0, self._responses - 1)
            return self._close_written(interrupted=False)
        elif isinstance(frame, FunctionCallInProgressFrame):
            self._calls.add(frame.tool_call_id)
        elif isinstance(frame, (FunctionCallResultFrame, FunctionCallCancelFrame)):
            self._calls.discard(frame.tool_call_id)
        elif isinstance(frame, (InterruptionFrame, EndFrame)):
            self._responses = 0
            interrupted = isinstance(frame, InterruptionFrame)
            return self._close_spoken(interrupted) or self._close_written(interrupted)
        return None

    def _open(self, speaker: str | None) -> list[TextPartForConcatenation]:
        self._spoken = []
        self._speaker = speaker
        return self._spoken

    def _close_spoken(self, interrupted: bool) -> BotTurn | None:
        parts, self._spoken = self._spoken, None
        return self._turn(parts or [], interrupted)

    def _close_written(self, interrupted: bool) -> BotTurn | None:
        parts, self._written = self._written, []
        return self._turn(parts, interrupted)

    def _turn(self, parts: list[TextPartForConcatenation], interrupted: bool) -> BotTurn | None:
        text = concatenate_aggregated_text(parts).strip()
        return BotTurn(text, self._speaker, interrupted) if text else None


def _part(frame: LLMTextFrame | TTSTextFrame) -> TextPartForConcatenation:
    return TextPartForConcatenation(frame.text, frame.includes_inter_frame_spaces)
