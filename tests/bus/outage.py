"""One outage scenario for every network bus: the server stops mid-session and comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pipecat_workers import BaseWorker, BusConnectionError, JobError, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage
from tests.helpers import running, wait_until


class Echo(BaseWorker):
    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, str]:
        return {"by": self.name}

    @job("slow")
    async def slow(self, message: BusJobRequestMessage) -> dict[str, str]:
        await asyncio.sleep(0.3)  # answers while the server is down
        return {"by": self.name}


async def ask(client: BaseWorker, name: str, timeout: float | None,
              job_name: str = "echo") -> dict[str, Any]:
    async with client.job(name, name=job_name, timeout=timeout) as j:
        pass
    return j.response


async def survive_a_restart(a: WorkerRunner, b: WorkerRunner, stop: Callable[[], None],
                            start: Callable[[], None], *, patience: float = 10) -> None:
    """Runner ``a`` (workers ``client`` and ``near``) and ``b`` (``far``) share a server that
    ``stop`` and ``start`` restart. While it is down, ``a``'s workers keep talking and a job to
    ``far`` fails in bounded time; once it is back, the bus reconnects and jobs work again,
    and nothing sent before the outage is left hanging."""
    client = BaseWorker("client")
    await a.add_workers(client, Echo("near"))
    await b.add_workers(Echo("far"))
    events: list[str] = []

    async def on_down(bus: object) -> None:
        events.append("down")

    async def on_up(bus: object) -> None:
        events.append("up")

    a.bus.add_event_handler("on_disconnected", on_down)  # type: ignore[attr-defined]
    a.bus.add_event_handler("on_reconnected", on_up)  # type: ignore[attr-defined]
    async with running(a), running(b):
        await wait_until(lambda: "far" in a.registry, timeout=patience)
        assert (await ask(client, "far", timeout=5)) == {"by": "far"}
        in_flight = asyncio.ensure_future(ask(client, "far", timeout=None, job_name="slow"))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(stop)
        await wait_until(lambda: events[-1:] == ["down"], timeout=patience)
        assert (await ask(client, "near", timeout=2)) == {"by": "near"}
        with pytest.raises((BusConnectionError, JobError)):
            await asyncio.wait_for(ask(client, "far", timeout=2), patience)
        await asyncio.to_thread(start)
        await wait_until(lambda: events[-1:] == ["up"], timeout=patience)
        await wait_until(lambda: "far" in a.registry, timeout=patience)
        assert (await asyncio.wait_for(ask(client, "far", timeout=5), patience)) == {"by": "far"}
        # Its answer was most likely lost with the server: the job check gets it again.
        done, _ = await asyncio.wait({in_flight}, timeout=patience)
        assert done, "a job sent before the outage is still waiting"
        error = in_flight.exception()
        assert error is None or "lost" in str(error), error
