"""``workers call`` and ``tail`` on a signed channel: without the secret they fail at once, with
one line that says what to do; with it, a call works."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest

from pipecat_workers import BaseWorker, WorkerRunner, job
from pipecat_workers.bus import BusJobRequestMessage, JSONMessageSerializer, WorkerBus
from tests.helpers import running

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cli-secret"
SIGNED = "error: messages on this channel are signed; set PIPECAT_WORKERS_SECRET"

BACKENDS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("pgmq", marks=pytest.mark.postgres),
]


class Answers(BaseWorker):
    @job("answer")
    async def answer(self, message: BusJobRequestMessage) -> dict[str, int]:
        return {"answer": 42}


def signed_bus(backend: str, url: str, channel: str) -> WorkerBus:
    serializer = JSONMessageSerializer(secret=SECRET)
    if backend == "redis":
        from pipecat_workers.bus import RedisBus

        return RedisBus(url, channel=channel, serializer=serializer)
    from pipecat_workers.bus import PgmqBus

    return PgmqBus(url, channel=channel, serializer=serializer)


async def workers(*args: str, secret: str | None = None) -> tuple[int, str, str, float]:
    """Run ``workers ARGS``; its exit status, output, errors and how long it took."""
    env = {k: v for k, v in os.environ.items() if k != "PIPECAT_WORKERS_SECRET"}
    if secret is not None:
        env["PIPECAT_WORKERS_SECRET"] = secret
    loop = asyncio.get_running_loop()
    started = loop.time()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipecat_workers_cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 40)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode(), loop.time() - started


@pytest.mark.parametrize("backend", BACKENDS)
async def test_call_and_tail_without_the_secret_fail_within_two_seconds(
        backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url" if backend == "redis" else "postgres_dsn")
    channel = f"signed-{uuid.uuid4().hex[:8]}"
    runner = WorkerRunner(bus=signed_bus(backend, url, channel), handle_sigint=False)
    await runner.add_workers(Answers("answers"))
    where = ("--url", url, "--channel", channel)
    async with running(runner):
        for command in (("call", "answers", "--job", "answer"), ("tail",)):
            status, out, err, took = await workers(*command, *where)
            assert (status, out, err.splitlines()) == (1, "", [SIGNED]), command
            assert took <= 2.0, command
        # With the secret, the same call works.
        status, out, err, _ = await workers("call", "answers", "--job", "answer", *where,
                                            secret=SECRET)
        assert (status, out.strip()) == (0, 'completed: {"answer": 42}'), err
