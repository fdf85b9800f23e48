"""Run the research fan-out on the in-process bus: ``python -m examples.research``."""

from __future__ import annotations

import asyncio

from examples.research.workers import Coordinator, Researcher
from pipecat_workers import WorkerRunner

ANGLES = ["history", "economics", "science"]


async def main() -> None:
    runner = WorkerRunner()
    researchers = [Researcher(angle, angle=angle) for angle in ANGLES]
    await runner.add_workers(
        *researchers,
        Coordinator(researchers=ANGLES, ask_on_start="the printing press",
                    end_when_done=True),
    )
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main())
