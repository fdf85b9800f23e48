"""A pipecat transport for text: a program (or a test) plays the user, line by line.

:class:`TextTransport` is a real pipecat ``BaseTransport``. Its ``input()`` and ``output()``
go at the two ends of a voice pipeline where a WebRTC or telephony transport would, and it
fires ``on_client_connected`` and ``on_client_disconnected`` like those do, so a voice app
runs unchanged, with no microphone, speaker, network or API key.

Each user line enters as a finalized ``TranscriptionFrame``: what a speech-to-text service
pushes once a user has spoken. The user aggregator's default turn strategies start a turn on
a transcription and, with no voice activity or audio to wait for, end it at once, so the LLM
runs right away rather than after the aggregator's stop timeout. The output reads back what
the bot says (see :mod:`examples.voice.turns`).

Example::

    transport = TextTransport()
    ...  # a pipeline [transport.input(), ..., transport.output(), ...] runs meanwhile
    await transport.connect()
    greeting = await transport.reply()
    await transport.say("Hello!")
    answer = await transport.reply()
    await transport.disconnect()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    ClientConnectedFrame,
    EndFrame,
    Frame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.utils.time import time_now_iso8601

from examples.voice.turns import BotTurn, TurnCollector

__all__ = ["BotTurn", "TextTransport", "TransportClosedError"]


class TransportClosedError(Exception):
    """Raised when waiting for the bot on a transport whose pipeline has ended."""


class TextTransport(BaseTransport):
    """User lines in, bot turns out.

    Args:
        params: The transport's parameters; no audio in or out by default.
        user_id: The ``user_id`` of the transcriptions.
        name: The transport's name (and ``input_name``, ``output_name`` its processors').

    Attributes:
        speaker: Who serves the conversation now (a bridge's peer, say); asked when the bot
            starts a turn. While it answers ``None``, a hand-off is under way and
            :meth:`reply` waits for the next agent.
        transcript: ``(who, text)`` in order: ``"user"`` for the user, the speaker (or
            ``"bot"``) for each bot turn.

    Events:
        on_client_connected(transport, client), on_client_disconnected(transport, client).
    """

    def __init__(self, params: TransportParams | None = None, *, user_id: str = "user",
                 name: str | None = None, input_name: str | None = None,
                 output_name: str | None = None) -> None:
        super().__init__(name=name, input_name=input_name, output_name=output_name)
        self._params = params or TransportParams(audio_out_end_silence_secs=0)
        self._user_id = user_id
        self._input: TextInputTransport | None = None
        self._output: TextOutputTransport | None = None
        self._input_ready = asyncio.Event()
        self._turns: asyncio.Queue[BotTurn | None] = asyncio.Queue()
        self._collector = TurnCollector()
        self._closed = False
        self.speaker: Callable[[], str | None] | None = None
        self.transcript: list[tuple[str, str]] = []
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")

    def input(self) -> TextInputTransport:
        """The processor that pushes the user's lines (first in the pipeline)."""
        if self._input is None:
            self._input = TextInputTransport(self, self._params, name=self._input_name)
        return self._input

    def output(self) -> TextOutputTransport:
        """The processor that reads back what the bot says."""
        if self._output is None:
            self._output = TextOutputTransport(self, self._params, name=self._output_name)
        return self._output

    @property
    def busy(self) -> bool:
        """Whether the bot has more to say: a response or function call is under way, or
        nobody serves the conversation (see ``speaker``)."""
        return self._collector.busy or (self.speaker is not None and self.speaker() is None)

    # -- the user's side ----------------------------------------------------------------

    async def connect(self, client: Any = None, *, timeout: float = 30.0) -> None:
        """Connect a client once the pipeline runs: ``on_client_connected`` fires.

        Raises:
            TimeoutError: the pipeline did not start within ``timeout`` seconds.
        """
        await asyncio.wait_for(self._input_ready.wait(), timeout)
        await self.input().push_frame(ClientConnectedFrame())
        await self._call_event_handler("on_client_connected", client or self._user_id)

    async def disconnect(self, client: Any = None) -> None:
        """The client leaves: ``on_client_disconnected`` fires."""
        await self._call_event_handler("on_client_disconnected", client or self._user_id)

    async def say(self, text: str) -> None:
        """One user turn: ``text`` as a finalized transcription."""
        self.transcript.append(("user", text))
        await self.input().push_frame(TranscriptionFrame(
            text=text, user_id=self._user_id, timestamp=time_now_iso8601(), finalized=True))

    async def next_turn(self, timeout: float | None = None) -> BotTurn:
        """The next thing the bot says.

        Raises:
            TimeoutError: nothing within ``timeout`` seconds.
            TransportClosedError: the pipeline ended first.
        """
        if self._closed and self._turns.empty():
            raise TransportClosedError("the transport's pipeline has ended")
        turn = await asyncio.wait_for(self._turns.get(), timeout)
        if turn is None:
            raise TransportClosedError("the transport's pipeline has ended")
        return turn

    async def reply(self, *, timeout: float = 30.0, settle: float = 0.5) -> list[BotTurn]:
        """The bot's whole answer, as a list (see :meth:`answer`)."""
        return [turn async for turn in self.answer(timeout=timeout, settle=settle)]

    async def answer(self, *, timeout: float = 30.0,
                     settle: float = 0.5) -> AsyncIterator[BotTurn]:
        """The bot's whole answer, turn by turn: its next turn and every one that follows
        while the bot is busy, until it has been quiet for ``settle`` seconds (an agent that
        hands the user over may say something, then the next agent greets them).

        Raises:
            TimeoutError: the bot said nothing within ``timeout`` seconds.
            TransportClosedError: the pipeline ended before the bot said anything.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        yield await self.next_turn(timeout)
        while (remaining := deadline - loop.time()) > 0:
            try:
                turn = await self.next_turn(min(settle, remaining))
            except TransportClosedError:
                return
            except TimeoutError:
                if self.busy:
                    continue
                return
            yield turn

    def pending(self) -> list[BotTurn]:
        """What the bot said that nobody has read yet (taking it)."""
        turns: list[BotTurn] = []
        while not self._turns.empty():
            turn = self._turns.get_nowait()
            if turn is None:  # the end: keep it for the next reader
                self._turns.put_nowait(None)
                break
            turns.append(turn)
        return turns

    # -- the pipeline's side --------------------------------------------------------------

    def _started(self) -> None:
        self._input_ready.set()

    def _delivered(self, frame: Frame) -> None:
        turn = self._collector.observe(frame, self.speaker() if self.speaker else None)
        if turn is not None:
            self.transcript.append((turn.speaker or "bot", turn.text))
            self._turns.put_nowait(turn)
        if isinstance(frame, (EndFrame, CancelFrame)):
            self._closed = True
            self._turns.put_nowait(None)


class TextInputTransport(BaseInputTransport):
    """The input of a :class:`TextTransport`."""

    def __init__(self, transport: TextTransport, params: TransportParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._transport._started()


class TextOutputTransport(BaseOutputTransport):
    """The output of a :class:`TextTransport`: every frame it delivers is read back."""

    def __init__(self, transport: TextTransport, params: TransportParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def push_frame(self, frame: Frame,
                         direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            self._transport._delivered(frame)
        await super().push_frame(frame, direction)
