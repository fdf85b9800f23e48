"""A researcher: streams a few findings on a topic from its own angle, then a summary."""

from __future__ import annotations

import asyncio

from examples.console import say
from pipecat_workers import BaseWorker, job
from pipecat_workers.bus import BusJobRequestMessage

ANGLES = ("history", "economics", "science", "engineering", "policy")


def replica_index(name: str) -> int | None:
    """The replica number in a name like ``researcher.2`` (``workers`` names replicas so)."""
    _, dot, suffix = name.rpartition(".")
    return int(suffix) if dot and suffix.isdigit() else None


def default_angle(name: str) -> str:
    """An angle for a researcher that was given none: replicas share their args, so each
    takes the angle of its replica number and together they cover several angles."""
    index = replica_index(name)
    return ANGLES[(index - 1) % len(ANGLES)] if index else name


class Researcher(BaseWorker):
    """Answers ``research`` jobs with a stream of findings.

    Args:
        name: The worker's name on the bus.
        angle: What the researcher looks at; by default one of :data:`ANGLES`, picked by
            the replica number in the name (``researcher.1`` looks at history).
        findings: How many findings each job streams.
        delay: Seconds per finding, standing in for a search or an LLM call.

    Jobs:
        ``research`` ``{"topic": str}`` streams ``{"finding": str}`` chunks and ends with
        ``{"angle": str, "summary": str}``.
    """

    def __init__(self, name: str, *, angle: str | None = None, findings: int = 3,
                 delay: float = 0.05) -> None:
        super().__init__(name)
        self._angle = angle or default_angle(name)
        self._findings = findings
        self._delay = delay

    @property
    def angle(self) -> str:
        """What this researcher looks at."""
        return self._angle

    @job("research")
    async def research(self, message: BusJobRequestMessage) -> None:
        topic = str((message.payload or {}).get("topic", "?"))
        say(self.name, f"researching {topic!r} ({self._angle}) for {message.source}")
        await self.send_job_stream_start(message.job_id, {"angle": self._angle})
        for n in range(1, self._findings + 1):
            await asyncio.sleep(self._delay)
            await self.send_job_stream_data(
                message.job_id, {"finding": f"{self._angle} of {topic}, point {n}"})
        await self.send_job_stream_end(message.job_id, {
            "angle": self._angle, "summary": f"{self._findings} points on the {self._angle}"})
