"""The other process of the network benchmarks: ``python -m benchmarks.peers MODE ...``.

Modes (each prints ``READY`` on stdout once it can be used, and exits when its stdin closes,
so a peer never outlives a benchmark process that died):

``pingpong --url URL --ping X --pong Y``
    Raw redis-py (``redis.asyncio``), no pipecat-workers: subscribes to channel X and
    republishes every message it reads there to channel Y. The floor of a Redis round trip.

``hub --path PATH``
    A :class:`BusHub` on the Unix socket PATH (the supervisor's part under ``workers up``).
    SIGTERM stops it (removing its socket).

``hubpong --path PATH --channel CH``
    Raw hub protocol, no pipecat-workers runner: joins CH as runner ``pong`` and sends every
    payload it receives back on CH. The floor of a round trip through the hub.

``runner --backend hub|redis|pgmq --url URL --channel CH --name RUNNER WORKER ...``
    One :class:`WorkerRunner` hosting a :class:`PeerWorker` per name, with the library's
    default :class:`Settings` (what users get). SIGTERM cancels its workers and exits.

``newcomers --backend hub|redis|pgmq --url URL --channel CH``
    Imported and connected to nothing until told: each ``go NAME`` line on stdin builds and
    runs a new runner (``NAME-runner``) hosting one worker ``NAME`` and prints
    ``STARTED NAME <t_go> <t_run>`` (``time.monotonic_ns()`` when the line was read and just
    before ``run()``; CLOCK_MONOTONIC, comparable across processes of one machine) and, once
    the runner is ready, ``UP NAME <t>``. ``stop NAME`` ends that runner and prints
    ``STOPPED NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any

from pipecat_workers import BaseWorker, Settings, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage, WorkerBus


class PeerWorker(BaseWorker):
    """``echo`` answers with its payload; ``hang`` starts a stream and never ends."""

    @job("echo")
    async def echo(self, message: BusJobRequestMessage) -> None:
        await self.send_job_response(message.job_id, message.payload)

    @job("hang")
    async def hang(self, message: BusJobRequestMessage) -> None:
        await self.send_job_stream_start(message.job_id, {"pid": os.getpid()})
        await asyncio.Event().wait()


def say(*words: object) -> None:
    print(*words, flush=True)


def stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of stdin, read by a daemon thread; ``None`` once stdin closes."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line.strip())
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:  # the loop closed first: the process is exiting anyway
            pass

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return lines


def make_bus(backend: str, url: str, channel: str) -> WorkerBus:
    if backend == "hub":  # url: the hub's socket
        from pipecat_workers.bus import HubBus

        return HubBus(url, channel=channel)
    if backend == "redis":
        from pipecat_workers.bus import RedisBus

        return RedisBus(url, channel=channel)  # type: ignore[no-any-return]
    from pipecat_workers.bus import PgmqBus

    return PgmqBus(url, channel=channel)  # type: ignore[no-any-return]


async def pingpong(args: argparse.Namespace) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(args.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(args.ping)
    lines = stdin_lines()

    async def bounce() -> None:
        publish, pong = client.publish, args.pong
        async for item in pubsub.listen():
            if item["type"] == "message":
                await publish(pong, item["data"])

    task = asyncio.create_task(bounce())
    say("READY")
    eof = asyncio.create_task(_until_eof(lines))
    await asyncio.wait({task, eof}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await client.aclose()


async def hub(args: argparse.Namespace) -> None:
    from pipecat_workers.bus import BusHub

    loop = asyncio.get_running_loop()
    eof = asyncio.create_task(_until_eof(stdin_lines()))
    loop.add_signal_handler(signal.SIGTERM, eof.cancel)
    async with BusHub(args.path):
        say("READY")
        with contextlib.suppress(asyncio.CancelledError):
            await eof


async def hubpong(args: argparse.Namespace) -> None:
    from pipecat_workers.bus.hub_wire import OP_PAYLOAD, frame, hello, read_frame

    reader, writer = await asyncio.open_unix_connection(args.path)
    writer.write(hello(args.channel, "pong", 1.0))
    await read_frame(reader)  # WELCOME

    async def bounce() -> None:
        while True:
            op, body = await read_frame(reader)
            if op == OP_PAYLOAD:
                writer.write(frame(OP_PAYLOAD, body))

    task = asyncio.create_task(bounce())
    say("READY")
    eof = asyncio.create_task(_until_eof(stdin_lines()))
    await asyncio.wait({task, eof}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    writer.close()


async def _until_eof(lines: asyncio.Queue[str | None]) -> None:
    while await lines.get() is not None:
        pass


async def runner(args: argparse.Namespace) -> None:
    runner = WorkerRunner(name=args.name, bus=make_bus(args.backend, args.url, args.channel),
                          handle_sigint=True, handle_sigterm=True, settings=Settings())
    await runner.add_workers(*(PeerWorker(name) for name in args.workers))

    async def ready(_runner: WorkerRunner) -> None:
        say("READY", args.name)

    runner.add_event_handler("on_ready", ready)
    lines = stdin_lines()
    task = asyncio.create_task(runner.run(auto_end=False))
    eof = asyncio.create_task(_until_eof(lines))
    await asyncio.wait({task, eof}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        await runner.cancel("stdin closed")
    await task


async def newcomers(args: argparse.Namespace) -> None:
    # "Already imported": the backend module and its driver are imported on first use, which
    # is interpreter start-up work (about 40 ms for redis.asyncio), not discovery.
    make_bus(args.backend, args.url, args.channel)
    lines = stdin_lines()
    running: dict[str, tuple[WorkerRunner, asyncio.Task[None]]] = {}
    say("READY")
    while (line := await lines.get()) is not None:
        command, _, name = line.partition(" ")
        if command == "go":
            t_go = time.monotonic_ns()
            new = WorkerRunner(name=f"{name}-runner", bus=make_bus(args.backend, args.url,
                                                                   args.channel),
                               handle_sigint=False, settings=Settings())
            await new.add_workers(PeerWorker(name))

            async def up(_runner: WorkerRunner, name: str = name) -> None:
                say("UP", name, time.monotonic_ns())

            new.add_event_handler("on_ready", up)
            t_run = time.monotonic_ns()
            task = asyncio.create_task(new.run(auto_end=False))
            running[name] = (new, task)
            say("STARTED", name, t_go, t_run)
        elif command == "stop" and name in running:
            old, task = running.pop(name)
            await old.end()
            await task
            say("STOPPED", name)
    for old, task in running.values():
        await old.cancel("stdin closed")
        await task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    modes = parser.add_subparsers(dest="mode", required=True)
    pp = modes.add_parser("pingpong")
    pp.add_argument("--url", required=True)
    pp.add_argument("--ping", required=True)
    pp.add_argument("--pong", required=True)
    hb = modes.add_parser("hub")
    hb.add_argument("--path", required=True)
    hp = modes.add_parser("hubpong")
    hp.add_argument("--path", required=True)
    hp.add_argument("--channel", required=True)
    for mode in ("runner", "newcomers"):
        p = modes.add_parser(mode)
        p.add_argument("--backend", choices=["hub", "redis", "pgmq"], required=True)
        p.add_argument("--url", required=True)
        p.add_argument("--channel", required=True)
        if mode == "runner":
            p.add_argument("--name", required=True)
            p.add_argument("workers", nargs="*")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    modes: dict[str, Any] = {"pingpong": pingpong, "runner": runner, "newcomers": newcomers,
                             "hub": hub, "hubpong": hubpong}
    asyncio.run(modes[args.mode](args))


if __name__ == "__main__":
    main()
    sys.exit(0)
