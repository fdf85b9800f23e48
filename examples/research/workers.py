"""Researchers that stream findings, and a coordinator that fans a question out to them."""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat_workers import BaseWorker, JobGroupEvent, job
from pipecat_workers.bus import BusJobRequestMessage


class Researcher(BaseWorker):
    """Streams a few findings about a topic from its own angle, then a summary."""

    def __init__(self, name: str, *, angle: str, findings: int = 3, delay: float = 0.05) -> None:
        super().__init__(name)
        self._angle = angle
        self._findings = findings
        self._delay = delay

    @job("research")
    async def research(self, message: BusJobRequestMessage) -> None:
        topic = (message.payload or {}).get("topic", "?")
        await self.send_job_stream_start(message.job_id, {"angle": self._angle})
        for n in range(1, self._findings + 1):
            await asyncio.sleep(self._delay)  # stands in for a search or an LLM call
            await self.send_job_stream_data(
                message.job_id, {"finding": f"{self._angle} of {topic}, point {n}"})
        await self.send_job_stream_end(
            message.job_id, {"summary": f"{self._findings} points on the {self._angle}"})


class Coordinator(BaseWorker):
    """Sends one question to every researcher and prints their findings as they stream in."""

    def __init__(self, name: str = "coordinator", *, researchers: list[str], topic: str) -> None:
        super().__init__(name)
        self._researchers = researchers
        self._topic = topic
        self.report: dict[str, Any] = {}

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await super().on_activated(args)
        self.create_task(self._run())  # owned by the worker: cancelled if it stops first

    async def _run(self) -> None:
        print(f"researching {self._topic!r} with {', '.join(self._researchers)}")
        async with self.job_group(*self._researchers, name="research",
                                  payload={"topic": self._topic}, timeout=10) as group:
            async for event in group:
                if event.type == JobGroupEvent.STREAM_DATA:
                    print(f"  {event.worker_name:>10}: {(event.data or {})['finding']}")
        self.report = group.responses
        print("summaries:")
        for name, response in group.responses.items():
            print(f"  {name:>10}: {response['summary']}")
        await self.end(reason="report ready")
