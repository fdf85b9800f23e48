"""Run one worker of the hand-off example in this process, on a shared network bus.

Start the agents, then the conversation, each in its own terminal (or machine)::

    python -m examples.distributed greeter --redis redis://localhost:6379
    python -m examples.distributed support --redis redis://localhost:6379
    python -m examples.distributed acme    --redis redis://localhost:6379

or on PostgreSQL with PGMQ, with ``--pgmq postgresql://user@host/db`` instead. The processes
find each other through the bus; the worker code is the one of ``examples.handoff``.
``workers up configs/handoff.redis.yaml`` starts the same three processes in one command.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from examples.handoff.agents import ScriptedAgent
from examples.handoff.main import Conversation
from pipecat_workers import BaseWorker, WorkerRunner
from pipecat_workers.bus import WorkerBus

AGENTS: dict[str, Callable[[], BaseWorker]] = {
    "greeter": lambda: ScriptedAgent("greeter", persona="Welcome to Acme!",
                                     handoffs={"invoice": "support"}),
    "support": lambda: ScriptedAgent("support", persona="Billing support here.",
                                     handoffs={"that's all": "greeter"}),
    "acme": lambda: Conversation("acme"),
}


def make_bus(args: argparse.Namespace) -> WorkerBus:
    if args.redis:
        from pipecat_workers.bus import RedisBus

        redis: WorkerBus = RedisBus(args.redis, channel=args.channel)
        return redis
    from pipecat_workers.bus import PgmqBus

    pgmq: WorkerBus = PgmqBus(args.pgmq, channel=args.channel)
    return pgmq


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.distributed")
    parser.add_argument("worker", choices=sorted(AGENTS))
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis", metavar="URL", help="redis://host:port/db")
    where.add_argument("--pgmq", metavar="DSN", help="postgresql://user@host/db")
    parser.add_argument("--channel", default="acme-support")
    args = parser.parse_args()

    runner = WorkerRunner(name=f"{args.worker}-runner", bus=make_bus(args))
    worker: BaseWorker = AGENTS[args.worker]()
    await runner.add_workers(worker)
    # The conversation ends the session when it is over: every runner on the channel ends.
    await runner.run(auto_end=True)


if __name__ == "__main__":
    asyncio.run(main())
