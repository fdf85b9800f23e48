"""Run the hand-off example on the in-process bus: ``python -m examples.handoff``."""

from __future__ import annotations

import asyncio

from examples.handoff.agents import ScriptedAgent
from examples.handoff.main import Conversation
from pipecat_workers import WorkerRunner


async def main() -> None:
    runner = WorkerRunner()
    await runner.add_workers(
        Conversation("acme"),
        ScriptedAgent("greeter", persona="Welcome to Acme!", handoffs={"invoice": "support"}),
        ScriptedAgent("support", persona="Billing support here.",
                      handoffs={"that's all": "greeter"}),
    )
    await runner.run()
    jobs = runner.stats()["jobs"]
    print(f"done: {jobs['completed']} turns answered, {jobs['errored']} errors")


if __name__ == "__main__":
    asyncio.run(main())
