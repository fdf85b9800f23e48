"""Run the parent-and-children example on the in-process bus: ``python -m examples.family``."""

from __future__ import annotations

import asyncio

from examples.family.workers import Dispatcher
from pipecat_workers import WorkerRunner

CLIPS = ["intro.wav", "chapter-1.wav", "cover.png", "chapter-2.wav", "outro.wav"]


async def main() -> None:
    runner = WorkerRunner()
    await runner.add_workers(Dispatcher(children=3, clips=CLIPS))
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main())
