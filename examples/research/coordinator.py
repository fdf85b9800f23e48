"""A coordinator: fans a question out to researchers as one job group and aggregates.

It serves ``ask`` jobs, so a question can come from another worker or from a terminal
(``workers call coordinator --job ask --payload '{"topic": "solar"}'``); the findings stream
back to the caller as they arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from examples.console import say, show
from pipecat_workers import BaseWorker, JobGroupError, JobGroupEvent, job
from pipecat_workers.bus import BusJobRequestMessage

logger = logging.getLogger("examples.research")

# (researcher, finding) for each streamed finding; (researcher, done, of) for each that ends.
OnFinding = Callable[[str, str], Awaitable[None]]
OnFinished = Callable[[str, int, int], Awaitable[None]]


@dataclass(slots=True)
class Report:
    """What the researchers found about one topic."""

    topic: str
    findings: list[tuple[str, str]] = field(default_factory=list)
    summaries: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The summary returned to an ``ask`` caller (the findings were streamed already)."""
        return {"topic": self.topic, "findings": len(self.findings),
                "summaries": dict(self.summaries)}


class Coordinator(BaseWorker):
    """Asks every researcher at once and relays what they find.

    Args:
        name: The worker's name on the bus.
        researchers: The researchers' names (``researcher.1``... for replicas).
        ask_on_start: A topic to research as soon as the coordinator starts; the report
            is printed.
        end_when_done: End the session after the ``ask_on_start`` report; by default the
            coordinator keeps serving ``ask`` jobs until it is stopped.
        timeout: Seconds one question may take, waiting for the researchers included.

    Jobs:
        ``ask`` ``{"topic": str}`` streams ``{"researcher", "finding"}`` chunks, sends an
        update ``{"finished", "done", "of"}`` as each researcher ends, and ends with
        ``{"topic", "findings": int, "summaries": {researcher: summary}}``.
    """

    def __init__(self, name: str = "coordinator", *, researchers: Sequence[str],
                 ask_on_start: str | None = None, end_when_done: bool = False,
                 timeout: float = 30.0) -> None:
        super().__init__(name)
        if not researchers:
            raise ValueError("a coordinator needs at least one researcher")
        self._researchers = tuple(researchers)
        self._ask_on_start = ask_on_start
        self._end_when_done = end_when_done
        self._timeout = timeout
        self.reports: list[Report] = []
        """Every completed report, oldest first."""

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await super().on_activated(args)
        if self._ask_on_start:
            self.create_task(self._ask_once(self._ask_on_start))  # cancelled if we stop first
        elif self._end_when_done:
            await self.end(reason="nothing to ask")

    async def _ask_once(self, topic: str) -> None:
        say(self.name, f"researching {topic!r} with {', '.join(self._researchers)}")

        async def print_finding(researcher: str, finding: str) -> None:
            show(f"  {researcher:>12}: {finding}")

        try:
            report = await self.research(topic, on_finding=print_finding)
        except JobGroupError as error:
            logger.error("%s: researching %r failed: %s", self.name, topic, error)
            if self._end_when_done:
                await self.end(reason=f"research failed: {error}")
            return
        say(self.name, f"summaries on {topic!r}:")
        for researcher, summary in report.summaries.items():
            show(f"  {researcher:>12}: {summary}")
        if self._end_when_done:
            await self.end(reason="report ready")
        else:
            say(self.name, "ready for questions: job 'ask' with payload {\"topic\": ...}")

    @job("ask")
    async def ask(self, message: BusJobRequestMessage) -> None:
        topic = (message.payload or {}).get("topic")
        if not isinstance(topic, str) or not topic.strip():
            raise ValueError('the payload needs a topic, like {"topic": "solar"}')
        job_id = message.job_id
        say(self.name, f"{message.source} asks about {topic!r}")
        await self.send_job_stream_start(job_id, {"topic": topic,
                                                  "researchers": list(self._researchers)})

        async def relay(researcher: str, finding: str) -> None:
            await self.send_job_stream_data(job_id, {"researcher": researcher,
                                                     "finding": finding})

        async def progress(researcher: str, done: int, of: int) -> None:
            await self.send_job_update(job_id, {"finished": researcher, "done": done, "of": of})

        report = await self.research(topic, on_finding=relay, on_finished=progress)
        await self.send_job_stream_end(job_id, report.to_dict())
        say(self.name, f"answered {message.source}: {len(report.findings)} findings "
                       f"on {topic!r}")

    async def research(self, topic: str, *, on_finding: OnFinding | None = None,
                       on_finished: OnFinished | None = None) -> Report:
        """Ask every researcher about ``topic`` and collect what they stream.

        Raises:
            JobGroupError: if a researcher fails, goes away, or the question times out.
        """
        report = Report(topic)
        finished = 0
        async with self.job_group(*self._researchers, name="research",
                                  payload={"topic": topic}, timeout=self._timeout) as group:
            async for event in group:
                data = event.data or {}
                if event.type == JobGroupEvent.STREAM_DATA:
                    finding = str(data.get("finding"))
                    report.findings.append((event.worker_name, finding))
                    if on_finding is not None:
                        await on_finding(event.worker_name, finding)
                elif event.type == JobGroupEvent.STREAM_END:
                    finished += 1
                    if on_finished is not None:
                        await on_finished(event.worker_name, finished, len(self._researchers))
        # In the researchers' order, not in the order they happened to finish.
        report.summaries = {name: str(group.responses.get(name, {}).get("summary"))
                            for name in self._researchers}
        self.reports.append(report)
        return report
