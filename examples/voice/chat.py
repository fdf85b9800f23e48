"""Talk to a running voice app from a terminal: ``python -m examples.voice.chat``.

Start the app without a script first (``workers up -d configs/voice.chat.yaml``). Each line
you type is sent to the transport worker as its ``chat`` job, exactly as
``workers call acme --job chat --payload '{"text": "..."}'`` sends it, and the agents' answer
is printed as it streams back. Ctrl-D (or Ctrl-C) leaves.

The project's bus is found as ``workers call`` finds it (``-f FILE`` / ``-p NAME``, else the
project under this directory; ``--url`` and ``--channel`` join any bus).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from pipecat_workers_cli.commands.channel import Where, joined, locate

from pipecat_workers import BaseWorker, JobError, JobEvent, WorkerRunner, WorkersError


class ChatClient(BaseWorker):
    """The terminal's stand-in on the bus: sends ``chat`` jobs to the transport worker."""

    def __init__(self, name: str, *, worker: str, timeout: float) -> None:
        super().__init__(name)
        self._worker = worker
        self._timeout = timeout

    async def say(self, text: str) -> AsyncIterator[dict[str, Any]]:
        """Send one line (``""`` only collects what the bot said) and yield the bot's turns,
        ``{"agent": ..., "text": ...}``, as they stream in."""
        async with self.job(self._worker, name="chat", payload={"text": text},
                            timeout=self._timeout) as job:
            async for event in job:
                if event.type == JobEvent.STREAM_DATA and event.data:
                    yield event.data


async def chat(where: Where, worker: str, timeout: float) -> None:
    """Run the prompt on the bus at ``where`` until the input ends."""
    name = f"voice-chat-{os.getpid()}"
    bus = where.bus()
    runner = WorkerRunner(name=f"{name}-runner", bus=bus, handle_sigint=False)
    client = ChatClient(name, worker=worker, timeout=timeout)
    await runner.add_workers(client)
    async with joined(where, bus):
        run = asyncio.ensure_future(runner.run(auto_end=False))
        try:
            await client.wait_registered()
            await _show(client.say(""))  # connects: the greeter welcomes us
            lines = await _stdin()
            prompt = "you> " if sys.stdin.isatty() else ""
            while True:
                print(prompt, end="", flush=True)
                line = (await lines.readline()).decode()
                if not line:
                    print(end="\n" if prompt else "")
                    break
                if line.strip():
                    try:
                        await _show(client.say(line.strip()))
                    except JobError as error:
                        print(f"error: {error}", file=sys.stderr, flush=True)
        finally:
            await runner.cancel(reason="chat over")
            await asyncio.gather(run, return_exceptions=True)


async def _show(turns: AsyncIterator[dict[str, Any]]) -> None:
    async for turn in turns:
        print(f"{turn.get('agent') or 'bot'}: {turn.get('text')}", flush=True)


async def _stdin() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    try:
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except ValueError:  # a regular file (`< lines.txt`) is no pipe: it is all there already
        reader.feed_data(sys.stdin.buffer.read())
        reader.feed_eof()
    return reader


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.voice.chat",
                                     description="Chat with a running voice app.")
    parser.add_argument("-f", "--file", help="the topology (default: the project here)")
    parser.add_argument("-p", "--project", help="the project's name, among several here")
    parser.add_argument("--worker", default="acme", help="the transport worker (acme)")
    parser.add_argument("--channel", help="the channel: its key, or its name with --url")
    parser.add_argument("--url", help="join this bus instead of the project's")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds an answer may take (60)")
    args = parser.parse_args()
    try:
        where = locate({"file": args.file, "project": args.project}, args.channel, args.url,
                       worker=args.worker)
        asyncio.run(chat(where, args.worker, args.timeout))
    except WorkersError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
