"""The other processes of the pipeline benchmarks: ``python -m benchmarks.pipeline_peers MODE``.

Every mode prints ``READY`` on stdout once its runner is ready (all its workers registered),
and exits when its stdin closes or on SIGTERM, so none outlives the benchmark process. Each
takes ``--impl ours|ref`` (ours: ``pipecat_workers``; ref: pipecat-ai's own runner and buses),
``--backend hub|redis``, ``--url`` (the hub's socket or the Redis URL) and ``--channel``.

``helper``
    One bridged pass-through worker ``helper`` (``[Arrival]``, see ``pipeline_kit``). Ours
    waits to be activated by the transport; the reference's is active from the start.

``agents``
    Two bridged ``LLMWorker`` s on the scripted model, ``greeter`` and ``support``, each with a
    ``transfer_to_agent`` tool that hands the conversation over. The tool prints
    ``TOOL <worker> <target> <t>`` just before it calls ``result_callback`` and each activation
    prints ``ACTIVE <worker> <t>`` (``time.monotonic_ns()``).

``audio-workers --first I --count N --out FILE``
    N bridged workers ``voice-I`` ... (ours only), each echoing the input audio it gets as
    output audio. ``report`` on stdin writes what they received to FILE (JSON) and prints
    ``REPORTED``.

``audio-transports --first I --count N --out FILE``
    N transports ``call-I`` ..., each ``[bridge, sink]`` with ``voice-I`` activated for it;
    ``READY`` once every bridge has its worker. ``go <t_ns> <seconds>`` starts the streams at
    ``t_ns`` (CLOCK_MONOTONIC): each queues a 640-byte ``InputAudioRawFrame`` above its bridge
    every 20 ms (the streams spread over the period), stamped as it is queued; at the end they
    wait up to 15 s for the output audio still in flight, write what they sent and received
    to FILE and print ``DONE``. See ``benchmarks/pipeline_audio.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from benchmarks.peers import say
from benchmarks.pipeline_agents import agent_class
from benchmarks.pipeline_kit import STAMP, now, ours_helper, quiet, ref_helper, serve


async def helper(args: argparse.Namespace) -> None:
    await serve(args, ours_helper() if args.impl == "ours" else ref_helper())


async def agents(args: argparse.Namespace) -> None:
    agent = agent_class(args.impl, say)
    await serve(args, agent("greeter"), agent("support"))


# -- sustained audio --------------------------------------------------------------------------

FRAME_BYTES, FRAME_SECONDS = 640, 0.020  # 20 ms of 16 kHz 16-bit mono
DRAIN_SECONDS = 15.0  # after the last frame was sent; what has not arrived by then is lost


class Streams:
    """Per-stream sequence checks and hop samples of the audio frames one process receives
    (metadata: ``s`` stream, ``q`` sequence number, ``STAMP`` when it left the other side)."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.hops: list[int] = []  # µs
        self.times: list[int] = []  # arrivals, ms of CLOCK_MONOTONIC
        self.gaps = 0  # frames skipped over (lost, unless they come late)
        self.reordered = 0  # frames older than one already received

    def arrived(self, metadata: dict[str, Any]) -> None:
        stream, seq = metadata["s"], metadata["q"]
        t = now()
        self.hops.append((t - metadata[STAMP]) // 1_000)
        self.times.append(t // 1_000_000)
        self.received[stream] = self.received.get(stream, 0) + 1
        last = self.last.get(stream, -1)
        if seq <= last:
            self.reordered += 1
            return
        self.gaps += seq - last - 1
        self.last[stream] = seq

    def report(self, **extra: Any) -> dict[str, Any]:
        return {"hops_us": self.hops, "arrivals_ms": self.times, "gaps": self.gaps,
                "reordered": self.reordered,
                "received": {str(k): v for k, v in self.received.items()}, **extra}


class AudioEcho(FrameProcessor):
    """A bridged worker's pipeline: takes input audio in (checking it), sends the same
    samples back as output audio, stamped anew."""

    def __init__(self, streams: Streams, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.streams = streams
        self.sent = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and "q" in frame.metadata:
            metadata = frame.metadata
            self.streams.arrived(metadata)
            out = OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate,
                                      num_channels=frame.num_channels)
            out.metadata = {"s": metadata["s"], "q": metadata["q"], STAMP: now()}
            self.sent += 1
            await self.push_frame(out, FrameDirection.DOWNSTREAM)
        else:
            await self.push_frame(frame, direction)


class AudioSink(FrameProcessor):
    """Below a transport's bridge: checks the output audio coming back."""

    def __init__(self, streams: Streams, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.streams = streams

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame) and "q" in frame.metadata:
            self.streams.arrived(frame.metadata)
            return
        await self.push_frame(frame, direction)


def _bus_stats(worker: Any) -> dict[str, Any]:
    """What the process's bus dropped and still holds (frames queued for its workers)."""
    stats = worker.bus.stats()
    return {"dropped": stats["dropped"], "queued": stats["queued"],
            "wire_dropped": stats.get("wire_dropped", {})}


def _write(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(report, f)


async def audio_workers(args: argparse.Namespace) -> None:
    from pipecat_workers.pipeline import PipelineWorker

    streams = Streams()
    echoes = [AudioEcho(streams, name=f"voice-{i}.echo")
              for i in range(args.first, args.first + args.count)]
    workers = [PipelineWorker(Pipeline([echo]), name=f"voice-{i}", active=False, bridged=(),
                              idle_timeout_secs=None)
               for i, echo in zip(range(args.first, args.first + args.count), echoes,
                                  strict=True)]

    async def command(line: str) -> None:
        if line == "report":
            _write(args.out, streams.report(sent=sum(e.sent for e in echoes),
                                            bus=_bus_stats(workers[0])))
            say("REPORTED")

    args.command = command
    await serve(args, *workers, name=f"voices-{args.first}")


async def audio_transports(args: argparse.Namespace) -> None:
    from pipecat_workers.pipeline import BusBridgeProcessor, PipelineWorker

    streams = Streams()
    numbers = range(args.first, args.first + args.count)
    bridges = [BusBridgeProcessor(worker_name=f"call-{i}", name=f"call-{i}::BusBridge")
               for i in numbers]
    calls = [PipelineWorker(Pipeline([bridge, AudioSink(streams, name=f"call-{i}.sink")]),
                            name=f"call-{i}", idle_timeout_secs=None)
             for i, bridge in zip(numbers, bridges, strict=True)]
    sent: dict[int, int] = {}
    late: list[int] = []  # µs each frame was sent after its due time

    async def joined() -> None:
        registry = calls[0].registry
        for i, call in zip(numbers, calls, strict=True):
            await registry.wait_for(f"voice-{i}", 30)
            await call.activate_worker(f"voice-{i}")
        async with asyncio.timeout(30):
            while not all(b.peer for b in bridges):
                await asyncio.sleep(0.01)

    async def stream(i: int, call: Any, start: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        audio = os.urandom(FRAME_BYTES)
        due = start + FRAME_SECONDS * (i - args.first) / args.count  # spread over a period
        seq = 0
        while due < start + seconds:
            await asyncio.sleep(due - loop.time())
            late.append(int((loop.time() - due) * 1e6))
            frame = InputAudioRawFrame(audio=audio, sample_rate=16000, num_channels=1)
            frame.metadata = {"s": i, "q": seq, STAMP: now()}
            await call.queue_frame(frame)
            seq += 1
            due += FRAME_SECONDS
        sent[i] = seq

    async def command(line: str) -> None:
        words = line.split()
        if words[:1] != ["go"]:
            return
        start_ns, seconds = int(words[1]), float(words[2])
        loop = asyncio.get_running_loop()
        start = loop.time() + max(0, start_ns - now()) / 1e9
        await asyncio.gather(*(stream(i, call, start, seconds)
                               for i, call in zip(numbers, calls, strict=True)))
        ended = now()
        total = sum(sent.values())
        with contextlib.suppress(TimeoutError):  # the frames still in flight come back
            async with asyncio.timeout(DRAIN_SECONDS):
                while sum(streams.received.values()) < total:
                    await asyncio.sleep(0.005)
        _write(args.out, streams.report(sent={str(k): v for k, v in sent.items()},
                                        late_us=late, drain_ms=(now() - ended) / 1e6,
                                        bus=_bus_stats(calls[0])))
        say("DONE")

    args.command = command
    await serve(args, *calls, on_ready=joined, name=f"calls-{args.first}")


PEER_MODES = {"audio-workers": audio_workers, "audio-transports": audio_transports}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_peers")
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode in ("helper", "agents", "audio-workers", "audio-transports"):
        p = modes.add_parser(mode)
        p.add_argument("--impl", choices=["ours", "ref"], default="ours")
        p.add_argument("--backend", choices=["hub", "redis"], required=True)
        p.add_argument("--url", required=True)
        p.add_argument("--channel", required=True)
        if mode.startswith("audio"):
            p.add_argument("--first", type=int, required=True)
            p.add_argument("--count", type=int, required=True)
            p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    args.command = None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    quiet()
    mode = {"helper": helper, "agents": agents, **PEER_MODES}[args.mode]
    asyncio.run(mode(args))


if __name__ == "__main__":
    main()
    sys.exit(0)
