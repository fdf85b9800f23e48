"""Scripted conversational agents that hand a conversation to one another.

They stand in for LLM agents: each answers a user turn from a small script and, when the
script says so, hands the conversation to another agent with ``deactivate_self=True`` so the
two are never active together.
"""

from __future__ import annotations

from typing import Any

from pipecat_workers import BaseWorker, WorkerActivationArgs, job
from pipecat_workers.bus import BusJobRequestMessage


class ScriptedAgent(BaseWorker):
    """Answers ``turn`` jobs while active; hands off on a keyword.

    Args:
        name: The agent's name on the bus.
        persona: How the agent introduces itself.
        handoffs: Keyword -> agent to hand the conversation to.
    """

    def __init__(self, name: str, *, persona: str, handoffs: dict[str, str] | None = None) -> None:
        super().__init__(name, active=False)
        self._persona = persona
        self._handoffs = handoffs or {}

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await super().on_activated(args)
        note = ((args or {}).get("metadata") or {}).get("note")
        print(f"  [{self.name}] active{f' ({note})' if note else ''}")

    async def on_deactivated(self) -> None:
        await super().on_deactivated()
        print(f"  [{self.name}] inactive")

    @job("turn")
    async def on_turn(self, message: BusJobRequestMessage) -> dict[str, Any]:
        text = (message.payload or {}).get("text", "")
        if not self.active:
            return {"reply": None, "error": f"{self.name} is not active"}
        for keyword, target in self._handoffs.items():
            if keyword in text.lower():
                await self.activate_worker(
                    target,
                    args=WorkerActivationArgs(metadata={"note": f"from {self.name}: {text}"}),
                    deactivate_self=True,
                )
                return {"reply": f"Let me get you to {target}.", "handoff": target}
        return {"reply": f"{self._persona} You said: {text!r}."}
