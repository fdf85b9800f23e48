"""The front of the conversation: plays the user's turns to whichever agent is active."""

from __future__ import annotations

import asyncio

from pipecat_workers import BaseWorker, WorkerActivationArgs, WorkerReadyData, worker_ready

SCRIPT = (
    "Hi there!",
    "I have a question about my invoice.",
    "It charges me twice for March.",
    "Thanks, that's all.",
)


class Conversation(BaseWorker):
    """Waits for the greeter, activates it, then sends each user turn to the active agent."""

    def __init__(self, name: str = "acme", *, script: tuple[str, ...] = SCRIPT) -> None:
        super().__init__(name)
        self._script = script
        self._agent = "greeter"
        self._task: asyncio.Task[None] | None = None

    @worker_ready("greeter")
    async def on_greeter_ready(self, data: WorkerReadyData) -> None:
        await self.activate_worker(
            "greeter", args=WorkerActivationArgs(metadata={"note": "new customer"}))
        if self._task is None:
            # The registry awaits watch handlers, so the conversation runs on its own.
            self._task = self.create_task(self._converse())

    async def _converse(self) -> None:
        for text in self._script:
            print(f"user -> {self._agent}: {text}")
            async with self.job(self._agent, name="turn", payload={"text": text}, timeout=5) as j:
                pass
            print(f"{self._agent} -> user: {j.response['reply']}")
            self._agent = j.response.get("handoff", self._agent)
        await self.end(reason="conversation over")
