"""Seed 002's programs, run for real on Redis: the agents of llm.py, each a process of its own,
and main.py's ``run_bot`` here, on a text transport that plays the user.

The programs are the seed's code with only their imports changed (examples/seed002), so this
is the seed's distributed hand-off on our library: the greeter welcomes the user, hands them
to support when asked, support answers, and the user hanging up ends ``run_bot``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from examples.voice.transport import BotTurn, TextTransport

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ("greeter", "support")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


@pytest.fixture
def channel() -> str:
    return f"seed002-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def agents(redis_url: str, channel: str) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """``python -m examples.seed002.llm greeter|support`` on the channel; killed at the end
    whatever happened."""
    # The seed reads OPENAI_API_KEY; its model is the scripted one, which ignores it.
    env = {**os.environ, "OPENAI_API_KEY": "offline", "LOGURU_LEVEL": "WARNING"}
    processes = {name: subprocess.Popen(
        [sys.executable, "-m", "examples.seed002.llm", name, "--redis-url", redis_url,
         "--channel", channel],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name in AGENTS}
    try:
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


async def test_the_seed_hands_the_user_from_the_greeter_to_support_across_processes(
        redis_url: str, channel: str, agents: dict[str, subprocess.Popen[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "offline")  # read by the seed's main.py
    monkeypatch.setenv("CARTESIA_API_KEY", "offline")
    from examples.seed002.main import run_bot

    transport = TextTransport()
    runner_args = SimpleNamespace(
        cli_args=SimpleNamespace(redis_url=redis_url, channel=channel), handle_sigint=False)
    bot = asyncio.ensure_future(run_bot(transport, runner_args))
    try:
        await transport.connect()
        # The agents' processes may still be starting: the seed waits for the greeter.
        assert await transport.reply(timeout=30) == [
            BotTurn("Hello, Greeter here. Welcome the user.")]
        await transport.say("Hello!")
        assert await transport.reply(timeout=10) == [BotTurn("Greeter here. You said: Hello!")]
        await transport.say("Please transfer me to support.")
        assert await transport.reply(timeout=10) == [
            BotTurn("Hello, Support here. Please transfer me to support.")]
        await transport.say("My printer prints blank pages.")
        assert await transport.reply(timeout=10) == [
            BotTurn("Support here. You said: My printer prints blank pages.")]
        # The seed cancels its runner when the client disconnects: run_bot returns.
        await transport.disconnect()
        await asyncio.wait_for(bot, 15)
    finally:
        if not bot.done():
            bot.cancel()
            await asyncio.gather(bot, return_exceptions=True)

    assert [who for who, _ in transport.transcript] == ["bot", *["user", "bot"] * 3]
    # The agents serve on until stopped; Ctrl-C stops each cleanly (the seed's
    # handle_sigint=True).
    for process in agents.values():
        assert process.poll() is None, process.communicate()[1]
        process.send_signal(signal.SIGINT)
    for name, process in agents.items():
        _, errors = process.communicate(timeout=15)
        assert process.returncode == 0, f"{name}: {errors}"
        assert "Traceback" not in errors
