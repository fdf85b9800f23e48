"""Run the research fan-out on the in-process bus: ``python -m examples.research``."""

from __future__ import annotations

import asyncio

from examples.research.workers import Coordinator, Researcher
from pipecat_workers import WorkerRunner

ANGLES = {"history": "history", "economics": "economics", "science": "science"}


async def main() -> None:
    runner = WorkerRunner()
    researchers = [Researcher(name, angle=angle) for name, angle in ANGLES.items()]
    await runner.add_workers(
        *researchers,
        Coordinator(researchers=list(ANGLES), topic="the printing press"),
    )
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main())
