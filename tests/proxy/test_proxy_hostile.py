"""A hostile peer on a proxy link: hypothesis-made bodies of every message type the link may
carry (its own handshake, acknowledgement and worker-list messages included), raw junk, and
valid frames with bytes flipped. Each must be dropped and counted, none may reach a worker,
and the link must go on carrying real jobs afterwards."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from hypothesis import HealthCheck, given, settings

from pipecat_workers.bus.messages import BusJobRequestMessage
from pipecat_workers.proxy import messages as proxy_messages
from pipecat_workers.proxy.session import LINK_CHANNEL
from tests.helpers import wait_until
from tests.hostile import framework_types, hostile_bodies, raw_envelope
from tests.proxy.test_proxy import WAIT, RawClient, echo_request, server_side

EXAMPLES = 300


def dropped(side: Any) -> int:
    return sum(side.proxy.proxy_stats()["sessions"][0]["dropped"].values())


def hostile_frames(count: int) -> list[bytes]:
    """Numbered link frames of hostile envelopes (derandomized: the same every run)."""
    assert proxy_messages.ProxyHelloMessage in framework_types()
    frames: list[bytes] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile_bodies(framework_types()))
    def collect(hostile: tuple[str, dict[str, Any]]) -> None:
        frames.append(raw_envelope(*hostile, channel=LINK_CHANNEL))

    collect()
    return frames


async def test_hostile_frames_are_dropped_and_the_link_goes_on() -> None:
    async with server_side() as back:
        raw = RawClient(back.proxy.port)
        await raw.open(exposes=["raw-caller"])
        await wait_until(lambda: "raw-caller" in back.runner.registry, timeout=WAIT)
        support = back.workers["support"]
        frames = await asyncio.to_thread(hostile_frames, EXAMPLES)
        rng = random.Random(7)
        valid = raw.serializer.serialize(echo_request("raw-caller", "support", "valid"),
                                         sender="raw", channel=LINK_CHANNEL)
        for _ in range(100):  # a valid envelope with a few bytes changed
            data = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            frames.append(bytes(data))
        frames += [b"", b"\x00" * 8, b"\xff" * 9, b"\x00" * 8 + b"{}", b"\x00" * 8 + b"null",
                   b"\x00" * 8 + b'{"v":1}', rng.randbytes(4096)]
        def handled() -> int:
            return dropped(back) + len(support.requests)

        sent = 0
        for data in frames:
            raw.seq += 1
            await raw.connection.send(raw.seq.to_bytes(8, "big") + data if data else data)
            sent += 1
            await wait_until(lambda: handled() == sent, timeout=WAIT)  # noqa: B023
        # A flipped byte may leave an envelope valid (inside the job id, say): it then
        # reaches the worker as a job from an exposed worker, which is fine; nothing else may.
        assert all(r.source == "raw-caller" and r.target == "support"
                   for r in support.requests)
        assert handled() == sent
        await raw.send(BusJobRequestMessage(source="raw-caller", target="support",
                                            job_id="after-the-fuzz", job_name="echo"))
        await wait_until(lambda: any(r.job_id == "after-the-fuzz" for r in support.requests),
                         timeout=WAIT)
        assert back.proxy.proxy_stats()["sessions"][0]["connected"]
        await raw.close()
