"""Scripted conversational agents that hand a conversation to one another.

They stand in for LLM agents: each answers a user turn from a small script and, when the
script says so, hands the conversation to another agent with ``deactivate_self=True`` so the
two are never active together. Each agent can run in a process of its own (``configs/
handoff.yaml``): nothing here assumes that a peer is already known when a message arrives.
"""

from __future__ import annotations

import asyncio
from typing import Any

from examples.console import show
from pipecat_workers import BaseWorker, WorkerActivationArgs, job
from pipecat_workers.bus import BusJobRequestMessage

ACTIVATION_WAIT = 2.0  # seconds a turn waits for a hand-off that is on its way


class ScriptedAgent(BaseWorker):
    """Answers ``turn`` jobs while active; hands off on a keyword.

    Args:
        name: The agent's name on the bus.
        persona: How the agent introduces itself.
        handoffs: Keyword -> agent to hand the conversation to.

    Jobs:
        ``turn`` ``{"text": str}`` -> ``{"reply": str}``, plus ``"handoff": agent`` when the
        conversation moves on to that agent.
    """

    def __init__(self, name: str, *, persona: str, handoffs: dict[str, str] | None = None) -> None:
        super().__init__(name, active=False)
        self._persona = persona
        self._handoffs = {keyword.lower(): target for keyword, target in (handoffs or {}).items()}
        self._is_active = asyncio.Event()

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await super().on_activated(args)
        self._is_active.set()
        note = ((args or {}).get("metadata") or {}).get("note")
        show(f"  [{self.name}] active{f' ({note})' if note else ''}")

    async def on_deactivated(self) -> None:
        await super().on_deactivated()
        self._is_active.clear()
        show(f"  [{self.name}] inactive")

    @job("turn")
    async def on_turn(self, message: BusJobRequestMessage) -> dict[str, Any]:
        text = str((message.payload or {}).get("text", ""))
        if not self.active:
            # Across processes the user's next turn may overtake the hand-off that activates
            # this agent (they come from different senders): give the hand-off a moment.
            try:
                await asyncio.wait_for(self._is_active.wait(), ACTIVATION_WAIT)
            except TimeoutError:
                return {"reply": None, "error": f"{self.name} is not active"}
        for keyword, target in self._handoffs.items():
            if keyword in text.lower():
                return await self._hand_off(target, text)
        return {"reply": f"{self._persona} You said: {text!r}."}

    async def _hand_off(self, target: str, text: str) -> dict[str, Any]:
        # Hand off only to an agent that is up: on a network bus, a message to a process
        # that has not joined yet is lost, and this agent would be left inactive for nothing.
        try:
            await self.registry.wait_for(target, ACTIVATION_WAIT)
        except TimeoutError:
            return {"reply": f"Sorry, {target} is not available right now."}
        await self.activate_worker(
            target,
            args=WorkerActivationArgs(metadata={"note": f"from {self.name}: {text}"}),
            deactivate_self=True,
        )
        return {"reply": f"Let me get you to {target}.", "handoff": target}
