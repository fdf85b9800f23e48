"""Text-only stand-ins for a voice app's speech services: no API key, no network, no audio.

They take the arguments of the cloud services they replace (``api_key=...``,
``settings=Service.Settings(...)``), so a program swaps them in by changing an import::

    from examples.voice.services import OfflineSTTService as DeepgramSTTService
    from examples.voice.services import OfflineTTSService as CartesiaTTSService

* :class:`OfflineSTTService` passes the transcriptions of a text transport on, as an STT
  service passes on what it heard.
* :class:`OfflineTTSService` "speaks" the LLM's text: for each response it pushes
  ``TTSStartedFrame``, one ``TTSTextFrame`` per sentence and ``TTSStoppedFrame``, in place of
  the LLM's text frames, as a TTS service does. With ``audio=True`` and ``espeak-ng``
  installed, each sentence is also real speech (``TTSAudioRawFrame``), for a pipeline with a
  real audio transport; without espeak-ng it stays text.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import shutil
import uuid
import wave
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["OfflineSTTService", "OfflineTTSService", "ServiceSettings"]

logger = logging.getLogger("examples.voice")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class ServiceSettings:
    """What the cloud services are configured with; kept, and otherwise unused."""

    model: str | None = None
    voice: str | None = None
    language: str | None = None


class OfflineSTTService(FrameProcessor):
    """A speech-to-text stand-in: the transport already delivers transcriptions.

    Args:
        api_key: Accepted and ignored.
        settings: Accepted and kept.
        **kwargs: Options of the real services (``sample_rate``, ...) are accepted and ignored.
    """

    Settings = ServiceSettings

    def __init__(self, *, api_key: str | None = None, settings: ServiceSettings | None = None,
                 name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name)
        self.settings = settings or ServiceSettings()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class OfflineTTSService(FrameProcessor):
    """A text-to-speech stand-in that speaks in text frames.

    LLM text is spoken sentence by sentence as it streams; the rest of a response is spoken
    at its end. A ``TTSSpeakFrame`` is spoken as one utterance. An interruption drops what
    was not spoken yet.

    Args:
        api_key: Accepted and ignored.
        settings: Accepted and kept (``voice=...``).
        audio: Also speak, with ``espeak-ng`` (if it is installed).
        espeak_voice: The espeak-ng voice (``espeak-ng --voices`` lists them).
        **kwargs: Options of the real services are accepted and ignored.
    """

    Settings = ServiceSettings

    def __init__(self, *, api_key: str | None = None, settings: ServiceSettings | None = None,
                 audio: bool = False, espeak_voice: str = "en", name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name)
        self.settings = settings or ServiceSettings()
        self._espeak = shutil.which("espeak-ng") if audio else None
        if audio and self._espeak is None:
            logger.warning("%s: espeak-ng is not installed: speaking text only", self.name)
        self._voice = espeak_voice
        self._context_id: str | None = None
        self._pending = ""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and not frame.skip_tts:
            await self._speak_sentences(frame.text)
        elif isinstance(frame, TTSSpeakFrame):
            await self._speak_sentences(frame.text)
            await self._finish()
        elif isinstance(frame, (LLMFullResponseEndFrame, EndFrame)):
            await self._finish()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            self._context_id, self._pending = None, ""
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _speak_sentences(self, text: str) -> None:
        *sentences, self._pending = _SENTENCE_END.split(self._pending + text)
        for sentence in sentences:
            await self._speak(sentence)

    async def _speak(self, sentence: str) -> None:
        if not sentence.strip():
            return
        if self._context_id is None:
            self._context_id = f"offline-{uuid.uuid4().hex[:12]}"
            await self.push_frame(TTSStartedFrame(context_id=self._context_id))
        await self.push_frame(TTSTextFrame(sentence.strip(), text_type="sentence",
                                           context_id=self._context_id))
        if self._espeak is not None:
            audio = await self._synthesize(self._espeak, sentence.strip())
            if audio is not None:
                await self.push_frame(audio)

    async def _synthesize(self, espeak: str, sentence: str) -> TTSAudioRawFrame | None:
        try:
            process = await asyncio.create_subprocess_exec(
                espeak, "--stdout", "-v", self._voice, "--", sentence,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await process.communicate()
            if process.returncode != 0:
                raise ValueError(err.decode(errors="replace").strip() or process.returncode)
            with wave.open(io.BytesIO(out)) as speech:
                # espeak-ng cannot seek back on a pipe: the header's length is a placeholder.
                return TTSAudioRawFrame(speech.readframes(speech.getnframes()),
                                        speech.getframerate(), speech.getnchannels(),
                                        context_id=self._context_id)
        except (OSError, ValueError, EOFError, wave.Error) as error:
            logger.warning("%s: espeak-ng failed, speaking text only: %s", self.name, error)
            return None

    async def _finish(self) -> None:
        rest, self._pending = self._pending, ""
        await self._speak(rest)
        if self._context_id is not None:
            await self.push_frame(TTSStoppedFrame(context_id=self._context_id))
            self._context_id = None
