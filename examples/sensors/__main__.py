"""Run the sensor and its controller on the in-process bus: ``python -m examples.sensors``."""

from __future__ import annotations

import asyncio

from examples.sensors.controller import Controller
from examples.sensors.sensor import Sensor
from pipecat_workers import WorkerRunner


async def main() -> None:
    runner = WorkerRunner()
    # Fast readings and a limit, so the example ends on its own in a couple of seconds.
    await runner.add_workers(Sensor("sensor", interval=0.1, switch_delay=0.05),
                             Controller("controller", limit=20))
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main())
