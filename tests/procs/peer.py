"""A runner in its own process, for the multi-process tests.

    python tests/procs/peer.py --backend redis --url URL --channel CH --name RUNNER w1 w2 ...

``--backend hub`` takes the hub's socket path as ``--url``.

Hosts one :class:`Peer` worker per name (``agent:NAME`` hosts a bridged LLM agent on the
scripted model instead, see ``tests/pipeline/kit.py``) and prints ``READY <runner>`` once they
are all registered; ``--spans FILE`` records its spans there (JSON lines). Runs until it
receives SIGTERM (or is killed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from pipecat_workers import BaseWorker, Settings, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage, JSONMessageSerializer, WorkerBus


class Peer(BaseWorker):
    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"echo": message.payload, "by": self.name, "pid": os.getpid()}

    @job("hang")
    async def hang(self, message: BusJobRequestMessage) -> None:
        await self.send_job_stream_start(message.job_id, {"pid": os.getpid()})
        await asyncio.Event().wait()


def make_bus(args: argparse.Namespace) -> WorkerBus:
    serializer = JSONMessageSerializer(secret=args.secret) if args.secret else None
    if args.backend == "hub":
        from pipecat_workers.bus import HubBus

        return HubBus(args.url, channel=args.channel, serializer=serializer)
    if args.backend == "redis":
        from pipecat_workers.bus import RedisBus

        return RedisBus(args.url, channel=args.channel, serializer=serializer)
    from pipecat_workers.bus import PgmqBus

    return PgmqBus(args.url, channel=args.channel, serializer=serializer)


def make_worker(spec: str) -> BaseWorker:
    if spec.startswith("agent:"):
        from tests.pipeline.kit import Agent

        name = spec.removeprefix("agent:")
        return Agent(name, f"You are {name}.")
    return Peer(spec)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["hub", "redis", "pgmq"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--secret", default=None)
    parser.add_argument("--heartbeat", type=float, default=0.25)
    parser.add_argument("--spans", default=None, help="write spans to this JSON-lines file")
    parser.add_argument("workers", nargs="*")
    args = parser.parse_args()
    if args.spans:
        from pipecat_workers.tracing import JsonLinesSpanExporter, tracer

        tracer.add_exporter(JsonLinesSpanExporter(args.spans, runner=args.name))
    runner = WorkerRunner(name=args.name, bus=make_bus(args), handle_sigint=True,
                          handle_sigterm=True,
                          settings=Settings(heartbeat_interval=args.heartbeat, end_grace=2.0))
    await runner.add_workers(*(make_worker(spec) for spec in args.workers))

    async def announce(_runner: WorkerRunner) -> None:
        print(f"READY {args.name}", flush=True)

    runner.add_event_handler("on_ready", announce)
    await runner.run(auto_end=False)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    asyncio.run(main())
    sys.exit(0)
