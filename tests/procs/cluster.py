"""Runner processes on a network bus for a test: this test's runner plus peer processes
(``peer.py``), all on one fresh channel of the embedded hub, Redis or PGMQ."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from pathlib import Path

from pipecat_workers import BaseWorker, Settings, WorkerRunner
from pipecat_workers.bus import HubBus, JSONMessageSerializer, WorkerBus
from tests.helpers import running
from tests.procs.control import PeerProcess

SETTINGS = Settings(heartbeat_interval=0.5, lost_after=3, end_grace=2.0, cancel_timeout=0.5)


class Cluster:
    """This test's runner plus peer processes, all on one fresh channel."""

    def __init__(self, backend: str, url: str, log_dir: Path, stack: AsyncExitStack) -> None:
        self.backend = backend
        self.url = url
        self.channel = f"mp-{uuid.uuid4().hex[:10]}"
        self.log_dir = log_dir
        self.stack = stack

    def bus(self, secret: str | None = None) -> WorkerBus:
        serializer = JSONMessageSerializer(secret=secret) if secret else None
        if self.backend == "hub":
            return HubBus(self.url, channel=self.channel, serializer=serializer)
        if self.backend == "redis":
            from pipecat_workers.bus import RedisBus

            return RedisBus(self.url, channel=self.channel, serializer=serializer)
        from pipecat_workers.bus import PgmqBus

        return PgmqBus(self.url, channel=self.channel, serializer=serializer)

    async def local(self, *workers: BaseWorker, secret: str | None = None) -> WorkerRunner:
        runner = WorkerRunner(name=f"test-{uuid.uuid4().hex[:6]}", bus=self.bus(secret),
                              handle_sigint=False, settings=SETTINGS)
        await runner.add_workers(*workers)
        await self.stack.enter_async_context(running(runner))
        return runner

    async def peer(self, *workers: str, secret: str | None = None,
                   wait: bool = True, spans: Path | None = None) -> PeerProcess:
        args = ["--backend", self.backend, "--url", self.url, "--channel", self.channel,
                "--name", f"peer-{uuid.uuid4().hex[:6]}", "--heartbeat", "0.5"]
        if secret:
            args += ["--secret", secret]
        if spans is not None:
            args += ["--spans", str(spans)]
        process = await PeerProcess.start(self.log_dir, *args, *workers)
        self.stack.push_async_callback(process.stop)
        if wait:
            await process.ready()
        return process
