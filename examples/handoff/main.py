"""The front of the conversation: plays the user's turns to whichever agent is active.

In a voice system this worker would own the transport and the speech services; here a short
script plays the user, so the example runs anywhere and ends by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from examples.console import show
from pipecat_workers import (
    BaseWorker,
    JobError,
    WorkerActivationArgs,
    WorkerReadyData,
    worker_ready,
)

logger = logging.getLogger("examples.handoff")


class TurnRefusedError(Exception):
    """Raised when an agent answers a turn without a reply (it was never activated)."""


SCRIPT = (
    "Hi there!",
    "I have a question about my invoice.",
    "It charges me twice for March.",
    "Thanks, that's all.",
)


class Conversation(BaseWorker):
    """Waits for the greeter, activates it, then sends each user turn to the active agent.

    When the script is over it ends the session, which ends every worker on the channel (in
    every process), so ``workers up`` exits by itself.

    Args:
        name: The worker's name on the bus.
        script: The user's lines, in order.
        turn_timeout: Seconds an agent has to answer one turn.
    """

    def __init__(self, name: str = "acme", *, script: Sequence[str] = SCRIPT,
                 turn_timeout: float = 5.0) -> None:
        super().__init__(name)
        self._script = tuple(script)
        self._turn_timeout = turn_timeout
        self._agent = "greeter"
        self._task: asyncio.Task[None] | None = None
        self.transcript: list[tuple[str, str]] = []
        """(speaker, text) pairs in order: who said what, for tests and post-mortems."""

    @worker_ready("greeter")
    async def on_greeter_ready(self, data: WorkerReadyData) -> None:
        if self._task is not None:
            return  # a restarted greeter: the conversation already runs
        await self.activate_worker(
            "greeter", args=WorkerActivationArgs(metadata={"note": "new customer"}))
        # The registry awaits watch handlers, so the conversation runs on its own.
        self._task = self.create_task(self._converse())

    async def _converse(self) -> None:
        try:
            for text in self._script:
                await self._turn(text)
        except (JobError, TurnRefusedError) as error:
            logger.error("%s: the conversation broke off: %s", self.name, error)
            await self.end(reason=f"conversation failed: {error}")
            return
        await self.end(reason="conversation over")

    async def _turn(self, text: str) -> None:
        agent = self._agent
        self._line("user", f"user -> {agent}: {text}", text)
        async with self.job(agent, name="turn", payload={"text": text},
                            timeout=self._turn_timeout) as j:
            pass
        reply = j.response.get("reply")
        if reply is None:
            raise TurnRefusedError(f"{agent}: {j.response.get('error', 'no reply')}")
        self._line(agent, f"{agent} -> user: {reply}", reply)
        self._agent = j.response.get("handoff", agent)

    def _line(self, speaker: str, line: str, text: str) -> None:
        self.transcript.append((speaker, text))
        show(line)
