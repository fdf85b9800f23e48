"""A dispatcher parent with transcoder children."""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat_workers import BaseWorker, WorkerErrorData, WorkerReadyData, job
from pipecat_workers.bus import BusJobRequestMessage


class Transcoder(BaseWorker):
    """Converts a clip; reports clips it cannot handle to its parent."""

    @job("transcode")
    async def transcode(self, message: BusJobRequestMessage) -> dict[str, Any]:
        clip = (message.payload or {}).get("clip", "")
        if not clip.endswith(".wav"):
            await self.send_bus_error_message(f"cannot transcode {clip!r}")
            return {"clip": clip, "skipped": True}
        await asyncio.sleep(0.01)
        return {"clip": clip.replace(".wav", ".opus")}


class Dispatcher(BaseWorker):
    """Creates its children up front; once all are ready, spreads the clips over them."""

    def __init__(self, name: str = "dispatcher", *, children: int, clips: list[str]) -> None:
        super().__init__(name)
        self._clips = clips
        self._ready: set[str] = set()
        self._expected = children
        self._kids = [Transcoder(f"{name}.transcoder-{i}") for i in range(children)]
        self.done: list[dict[str, Any]] = []

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await super().on_activated(args)
        # Children added while the runner runs start at once (added before, they start with it).
        await self.add_workers(*self._kids)

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        self._ready.add(data.worker_name)
        print(f"child ready: {data.worker_name}")
        if len(self._ready) == self._expected:
            self.create_task(self._dispatch())

    async def on_worker_failed(self, data: WorkerErrorData) -> None:
        await super().on_worker_failed(data)
        print(f"child {data.worker_name} reported: {data.error}")

    async def _dispatch(self) -> None:
        names = sorted(self._ready)
        jobs = [self.job(names[i % len(names)], name="transcode", payload={"clip": clip})
                for i, clip in enumerate(self._clips)]

        async def run(ctx: Any) -> dict[str, Any]:
            async with ctx:
                pass
            return dict(ctx.response)

        self.done = list(await asyncio.gather(*(run(j) for j in jobs)))
        for result in self.done:
            print(f"  {result}")
        await self.end(reason="all clips done")
