"""The transport worker of seed 002 (its main.py): owns the user's connection and the speech
services, and bridges the conversation to whichever LLM agent holds it.

Its pipeline is the seed's, ``[transport.input(), stt, user aggregator, bridge, tts,
transport.output(), assistant aggregator]``, on a :class:`~examples.voice.transport.
TextTransport` with the offline speech services. Once the client is connected and the greeter
is ready, it activates the greeter with "Welcome the user." (as the seed does); from then on
the agents hand the user to each other and the bridge follows.

With a ``script`` it plays the user: it says each line, waits for the bot's whole answer,
logs the conversation (``user: ...`` / ``<agent>: ...``), then hangs up, which ends the
session (so ``workers up`` exits 0). Without one it serves users through its ``chat`` job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)

from examples.console import show
from examples.voice.services import OfflineSTTService, OfflineTTSService
from examples.voice.transport import BotTurn, TextTransport, TransportClosedError
from pipecat_workers import ConfigurationError, WorkerReadyData, job
from pipecat_workers.bus import BusJobRequestMessage
from pipecat_workers.pipeline import (
    BusBridgeProcessor,
    LLMWorkerActivationArgs,
    PipelineParams,
    PipelineWorker,
)

logger = logging.getLogger("examples.voice")

WELCOME = "Welcome the user."


class TransportWorker(PipelineWorker):
    """The front of the voice app: a text transport, offline speech services and a bridge.

    Args:
        name: The worker's name on the bus (the seed's ``acme``).
        greeter: The agent activated once the client is connected and it is ready.
        script: User lines to play, then hang up; ``None`` serves the ``chat`` job instead.
        turn_timeout: Seconds the bot has to start answering a user turn.
        settle: Seconds of quiet that end the bot's answer.

    Jobs:
        ``chat`` ``{"text": str}``: says ``text`` as the user (connecting first, which gets
        the greeting) and streams the bot's answer, one ``{"agent": ..., "text": ...}`` per
        turn, then ``{"turns": n}``. An empty text only collects what the bot said.
    """

    def __init__(self, name: str = "acme", *, greeter: str = "greeter",
                 script: Sequence[str] | None = None, turn_timeout: float = 30.0,
                 settle: float = 0.5) -> None:
        if isinstance(script, str) or not all(isinstance(line, str) for line in script or ()):
            raise ConfigurationError(f"{name}: script must be a list of lines, got {script!r}")
        self.transport = TextTransport(name=f"{name}.transport")
        self.context = LLMContext()
        aggregators = LLMContextAggregatorPair(
            self.context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()))
        self.bridge = BusBridgeProcessor(worker_name=name, name=f"{name}::BusBridge")
        pipeline = Pipeline([
            self.transport.input(),
            OfflineSTTService(),
            aggregators.user(),
            self.bridge,
            OfflineTTSService(),
            self.transport.output(),
            aggregators.assistant(),
        ])
        # No idle timeout: an interactive user may think for a while.
        super().__init__(pipeline, name=name, idle_timeout_secs=None,
                         params=PipelineParams(enable_metrics=True, enable_usage_metrics=True))
        self.transport.speaker = lambda: self.bridge.peer
        self.transport.add_event_handler("on_client_connected", self._on_client_connected)
        self.transport.add_event_handler("on_client_disconnected", self._on_client_disconnected)
        self._greeter = greeter
        self._script = None if script is None else list(script)
        self._turn_timeout = turn_timeout
        self._settle_secs = settle
        self._connected = self._greeter_ready = self._welcomed = False
        self._chatting = asyncio.Lock()

    async def start(self) -> None:
        await super().start()
        await self.watch_workers(self._greeter)
        if self._script is not None:
            self.create_task(self._play(self._script), name=f"{self.name} script")

    # -- the seed's activation: client connected and greeter ready -------------------------

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        if data.worker_name == self._greeter:
            self._greeter_ready = True
            await self._maybe_welcome()

    async def _on_client_connected(self, transport: TextTransport, client: Any) -> None:
        self._connected = True
        await self._maybe_welcome()

    async def _on_client_disconnected(self, transport: TextTransport, client: Any) -> None:
        await self.end(reason="the user hung up")

    async def _maybe_welcome(self) -> None:
        # Once per session: a greeter that restarts later must not take the user back.
        if self._welcomed or not (self._connected and self._greeter_ready):
            return
        self._welcomed = True
        await self.activate_worker(self._greeter, args=LLMWorkerActivationArgs(
            messages=[{"role": "developer", "content": WELCOME}]))

    # -- scripted ---------------------------------------------------------------------------

    async def _play(self, script: list[str]) -> None:
        try:
            await self.transport.connect()
            async for _ in self._answer():
                pass
            for line in script:
                async for _ in self._exchange(line):
                    pass
        except (TimeoutError, TransportClosedError) as error:
            show(f"error: the conversation broke off: {error}")
            logger.error("%s: the conversation broke off: %s", self.name, error)
        await self.transport.disconnect()

    async def _exchange(self, text: str) -> AsyncIterator[BotTurn]:
        """Say ``text`` as the user and yield the bot's answer."""
        show(f"user: {text}")
        await self.transport.say(text)
        async for turn in self._answer():
            yield turn

    async def _answer(self) -> AsyncIterator[BotTurn]:
        """The bot's next whole answer, logged turn by turn."""
        try:
            async for turn in self.transport.answer(timeout=self._turn_timeout,
                                                    settle=self._settle_secs):
                show(f"{turn.speaker or 'bot'}: {turn.text}")
                yield turn
        except TimeoutError:
            raise TimeoutError(
                f"the bot did not answer within {self._turn_timeout:g} s") from None

    # -- interactive --------------------------------------------------------------------

    @job("chat")
    async def chat(self, message: BusJobRequestMessage) -> None:
        """Say the payload's ``text`` and stream the bot's answer, turn by turn."""
        if self._script is not None:
            raise ConfigurationError(f"{self.name} plays a script: it takes no chat")
        text = str((message.payload or {}).get("text") or "").strip()
        async with self._chatting:
            await self.send_job_stream_start(message.job_id, {"text": text})
            said = 0
            async for turn in self._chat(text):
                said += 1
                await self.send_job_stream_data(message.job_id,
                                                {"agent": turn.speaker, "text": turn.text})
            await self.send_job_stream_end(message.job_id, {"turns": said})

    async def _chat(self, text: str) -> AsyncIterator[BotTurn]:
        for turn in self.transport.pending():  # said while nobody listened
            show(f"{turn.speaker or 'bot'}: {turn.text}")
            yield turn
        if not self._connected:  # the first user: the greeter welcomes them
            await self.transport.connect()
            async for turn in self._answer():
                yield turn
        if text:
            async for turn in self._exchange(text):
                yield turn
