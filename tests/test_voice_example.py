"""The voice example (examples/voice, configs/voice*.yaml): seed 002's app as workers.

From the inside out: the text transport closes a user turn at once with pipecat's default
turn strategies; the topology's workers hand the conversation over and back in one process;
``workers up`` runs the scripted conversation to its end (embedded bus, Redis, PGMQ); and a
detached project answers the ``chat`` job, from ``workers call`` and from the chat prompt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat_workers_cli.topology import check_args, expand, load_topology, resolve_class

from examples.voice.main import TransportWorker
from examples.voice.services import OfflineSTTService, OfflineTTSService
from examples.voice.transport import TextTransport, TransportClosedError
from examples.voice.turns import BotTurn, TurnCollector
from pipecat_workers import BaseWorker, ConfigurationError, Settings, WorkerRunner
from pipecat_workers.bus import BusActivateWorkerMessage, BusEndMessage
from pipecat_workers.pipeline import PipelineWorker, ScriptedLLMService
from tests.helpers import Observer, eventually, running, within

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
WORKERS = str(Path(sys.executable).with_name("workers"))

pytestmark = pytest.mark.timeout(120)

# The conversation of configs/voice.yaml, as the transport worker logs it.
CONVERSATION = [
    "greeter: Hello, Greeter here. Welcome the user.",
    "user: Hi! My printer is acting up.",
    "greeter: Greeter here. You said: Hi! My printer is acting up.",
    "user: Can you transfer me to support?",
    "support: Hello, Support here. Can you transfer me to support?",
    "user: It prints blank pages.",
    "support: Support here. You said: It prints blank pages.",
    "user: Thanks, please transfer me back to the greeter.",
    "greeter: Hello, Greeter here. Thanks, please transfer me back to the greeter.",
    "user: Goodbye!",
    "greeter: Greeter here. You said: Goodbye!",
]


# -- the transport ---------------------------------------------------------------------


class Bot(PipelineWorker):
    """The seed's pipeline with the model in place of the bridge: a voice bot, one process."""

    def __init__(self) -> None:
        self.transport = TextTransport()
        self.context = LLMContext()
        pair = LLMContextAggregatorPair(
            self.context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()))
        llm = ScriptedLLMService(settings=ScriptedLLMService.Settings(
            system_instruction="You are Echo."))
        super().__init__(Pipeline([self.transport.input(), OfflineSTTService(), pair.user(),
                                   llm, OfflineTTSService(), self.transport.output(),
                                   pair.assistant()]), name="bot", idle_timeout_secs=None)


async def test_a_user_line_is_a_turn_that_ends_at_once_with_the_default_strategies() -> None:
    bot = Bot()
    connected: list[tuple[Any, Any]] = []

    async def on_connected(transport: Any, client: Any) -> None:
        connected.append((transport, client))

    bot.transport.add_event_handler("on_client_connected", on_connected)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(bot)
    async with running(runner):
        await within(bot.transport.connect())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await bot.transport.say("Hello there. How are you?")
        # The aggregator's stop timeout is 5 s: the turn must not wait for it.
        turn = await bot.transport.next_turn(timeout=2.0)
        assert loop.time() - started < 2.0
        assert turn == BotTurn("Echo here. You said: Hello there. How are you?")
        assert connected == [(bot.transport, "user")]

        def said() -> list[tuple[Any, Any]]:
            return [(m["role"], m["content"]) for m in bot.context.get_messages()
                    if isinstance(m, dict)]

        # The assistant aggregator, below the output, writes the turn after it is heard.
        await eventually(lambda: len(said()) == 2, "the assistant's message")
        assert said() == [("user", "Hello there. How are you?"),
                          ("assistant", "Echo here. You said: Hello there. How are you?")]
    with pytest.raises(TransportClosedError):
        await bot.transport.next_turn(timeout=1.0)


def test_the_collector_reads_spoken_and_written_turns_and_knows_when_more_comes() -> None:
    collector = TurnCollector()
    assert collector.observe(LLMFullResponseStartFrame(), "greeter") is None
    assert collector.busy
    collector.observe(TTSStartedFrame(), "greeter")
    collector.observe(TTSTextFrame("Hello.", text_type="sentence"), "greeter")
    collector.observe(TTSTextFrame("Welcome!", text_type="sentence"), "support")
    assert collector.observe(TTSStoppedFrame(), None) == BotTurn("Hello. Welcome!", "greeter")
    assert collector.observe(LLMFullResponseEndFrame(), None) is None  # spoken already
    assert not collector.busy

    collector.observe(FunctionCallInProgressFrame("transfer", "call-1", {}), "greeter")
    assert collector.busy
    collector.observe(FunctionCallResultFrame("transfer", "call-1", {}, None), "greeter")
    assert not collector.busy

    # Without a TTS the LLM's text is the turn; an interruption ends one early.
    collector.observe(LLMFullResponseStartFrame(), "support")
    collector.observe(LLMTextFrame("Let me "), "support")
    collector.observe(LLMTextFrame("see"), "support")
    assert collector.observe(InterruptionFrame(), "support") == BotTurn(
        "Let me see", "support", interrupted=True)
    assert not collector.busy


def test_an_agent_talks_to_openai_or_a_local_server_when_a_key_is_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipecat.services.openai.llm import OpenAILLMService

    from examples.voice.agents import AcmeAgent, make_llm

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(make_llm("You are Echo."), ScriptedLLMService)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("OPENAI_MODEL", "llama3.2")
    agent = AcmeAgent("greeter", persona="You are the greeter.", siblings=["support"])
    llm = agent.llm
    assert isinstance(llm, OpenAILLMService)  # built only: nothing is sent
    assert str(llm._client.base_url) == "http://127.0.0.1:11434/v1/"
    assert (llm._settings.model, llm._settings.system_instruction) == (
        "llama3.2", "You are the greeter.")
    # The agents it may transfer to are the only values the model may name.
    (transfer,) = agent.build_tools()
    assert transfer.properties["agent"]["enum"] == ["support"]


def test_a_script_must_be_a_list_of_lines() -> None:
    with pytest.raises(ConfigurationError, match="script must be a list of lines"):
        TransportWorker("acme", script="Hello!")


# -- the topology, in one process --------------------------------------------------------


def build(path: Path, overrides: dict[str, dict[str, Any]]) -> dict[str, BaseWorker]:
    """Every worker of a topology, built as the ``workers`` host builds them."""
    workers: dict[str, BaseWorker] = {}
    for process in expand(load_topology(path)):
        spec = process.worker
        cls = resolve_class(spec.class_path)
        args = {**spec.args, **overrides.get(spec.key, {})}
        check_args(cls, process.name, args)
        workers[process.name] = cls(process.name, **args)
    return workers


async def test_the_agents_hand_the_user_over_and_back_and_the_hang_up_ends_the_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the scripted model
    workers = build(CONFIGS / "voice.yaml", {"acme": {"settle": 0.2}})
    acme = workers["acme"]
    assert isinstance(acme, TransportWorker)
    runner = WorkerRunner(handle_sigint=False, settings=Settings(end_grace=2.0,
                                                                 cancel_timeout=0.5))
    observer = Observer("voice-observer")
    runner.bus.subscribe(observer, role="observer")
    await runner.add_workers(*workers.values())
    await within(runner.run(auto_end=True), 30)

    said = [f"{who}: {text}" for who, text in acme.transport.transcript]
    assert said == CONVERSATION
    handoffs = [(m.source, m.target) for m in observer.of(BusActivateWorkerMessage)]
    assert handoffs == [("acme", "greeter"), ("greeter", "support"), ("support", "greeter")]
    assert [(m.source, m.reason) for m in observer.of(BusEndMessage)] == [
        ("acme", "the user hung up")]
    # One context, shared by every agent: both transfers are in it as tool calls.
    roles = [m.get("role") for m in acme.context.get_messages() if isinstance(m, dict)]
    assert roles.count("tool") == 2
    assert roles.count("user") == 5


def test_the_example_runs_in_one_process_too() -> None:
    out = subprocess.run([sys.executable, "-m", "examples.voice"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "OPENAI_API_KEY": ""})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line for line in lines if re.match(r"(user|greeter|support): ", line)] == CONVERSATION
    assert lines.index("  [greeter] transferring the user to support: Can you transfer me to "
                       "support?") < lines.index(CONVERSATION[4])


# -- `workers up` ----------------------------------------------------------------------------


def workers(*args: str, env: dict[str, str] | None = None, timeout: float = 90,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WORKERS, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, input=stdin, env={**os.environ, **(env or {})})


def said_by_acme(output: str) -> list[str]:
    """The conversation lines of acme's log (not its log records or status lines)."""
    lines = (line.removeprefix("acme    | ") for line in output.splitlines()
             if line.startswith("acme    | "))
    return [line for line in lines if re.match(r"(user|greeter|support): ", line)]


def check_scripted_run(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stderr + out.stdout
    assert said_by_acme(out.stdout) == CONVERSATION
    lines = out.stdout.splitlines()
    assert ("greeter |   [greeter] transferring the user to support: Can you transfer me to "
            "support?") in lines
    assert ("support |   [support] transferring the user to greeter: Thanks, please transfer "
            "me back to the greeter.") in lines
    assert sum(line.endswith("[exited with code 0]") for line in lines) == 3
    assert "Traceback" not in out.stderr


def test_workers_up_plays_the_script_to_its_end_and_exits_0() -> None:
    started = time.time()
    check_scripted_run(workers("up", "configs/voice.yaml", env={"OPENAI_API_KEY": ""}))
    check_one_trace(ROOT / ".workers" / "voice" / "traces", since=started)


def check_one_trace(traces: Path, *, since: float) -> None:
    """The conversation greeter -> support -> greeter is one trace across the processes:
    each session's parent is the hand-off that led to it."""
    lines = [json.loads(line) for path in traces.glob("*.jsonl")
             for line in path.read_text().splitlines()]
    # A session is written when it starts (running) and when it ends: the last line wins.
    spans = list({s["span"]: s for s in lines}.values())
    spans = sorted((s for s in spans if s["start"] >= since
                    and s["kind"] in ("activation", "handoff")), key=lambda s: s["start"])
    assert all(s["status"] == "ok" for s in spans)  # every session ended, none running
    chain = [(s["kind"], s["worker"]) for s in spans]
    assert chain == [("activation", "greeter"), ("handoff", "greeter"),
                     ("activation", "support"), ("handoff", "support"),
                     ("activation", "greeter")], chain
    assert len({s["trace"] for s in spans}) == 1
    for parent, child in itertools.pairwise(spans):
        assert child["parent"] == parent["span"], (parent["name"], child["name"])
    assert spans[0]["pid"] != spans[2]["pid"]  # greeter and support: two processes


@pytest.mark.redis
def test_the_same_workers_run_on_redis(redis_url: str) -> None:
    check_scripted_run(workers("up", "configs/voice.redis.yaml",
                               env={"REDIS_URL": redis_url, "OPENAI_API_KEY": ""}))


@pytest.mark.postgres
def test_the_same_workers_run_on_pgmq(postgres_dsn: str) -> None:
    check_scripted_run(workers("up", "configs/voice.pgmq.yaml",
                               env={"PGMQ_DSN": postgres_dsn, "OPENAI_API_KEY": ""}))


def test_a_detached_project_answers_chat_jobs_from_workers_call_and_the_prompt() -> None:
    up = workers("up", "-d", "configs/voice.chat.yaml", env={"OPENAI_API_KEY": ""})
    assert up.returncode == 0, up.stderr
    try:
        call = workers("-f", "configs/voice.chat.yaml", "call", "acme", "--job", "chat",
                       "--payload", '{"text": "Hello!"}', "--json")
        assert call.returncode == 0, call.stderr
        events = [json.loads(line) for line in call.stdout.splitlines()]
        # The first chat connects the user: the greeter welcomes them, then answers.
        assert [e["data"] for e in events if e["event"] == "stream_data"] == [
            {"agent": "greeter", "text": "Hello, Greeter here. Welcome the user."},
            {"agent": "greeter", "text": "Greeter here. You said: Hello!"},
        ]
        assert events[-1] == {"event": "response", "status": "completed",
                              "data": {"turns": 2}, "job": events[-1]["job"]}

        prompt = subprocess.run(
            [sys.executable, "-m", "examples.voice.chat", "-f", "configs/voice.chat.yaml"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            input="Please transfer me to support.\nIt prints blank pages.\n")
        assert prompt.returncode == 0, prompt.stderr
        assert prompt.stdout.splitlines() == [
            "support: Hello, Support here. Please transfer me to support.",
            "support: Support here. You said: It prints blank pages.",
        ]
        logs = workers("-f", "configs/voice.chat.yaml", "logs", "acme")
        assert "acme | user: It prints blank pages." in logs.stdout.splitlines()
    finally:
        down = workers("-f", "configs/voice.chat.yaml", "down")
    assert down.returncode == 0, down.stderr



# -- the offline TTS, with espeak-ng ------------------------------------------------------

# What espeak-ng writes to a pipe: a WAV header whose lengths are placeholders, 0.1 s of audio.
FAKE_ESPEAK = """#!{python}
import struct, sys
pcm = b"\\x01\\x00" * 2205
header = (b"RIFF" + struct.pack("<I", 0x7FFFF000) + b"WAVEfmt "
          + struct.pack("<IHHIIHH", 16, 1, 1, 22050, 44100, 2, 16)
          + b"data" + struct.pack("<I", 0x7FFFF000 - 36))
open(sys.argv[0] + ".args", "a").write(" ".join(sys.argv[1:]) + "\\n")
sys.stdout.buffer.write(header + pcm)
"""


class Speaker(PipelineWorker):
    """``[OfflineTTSService(audio=True), recorder]``."""

    def __init__(self) -> None:
        from tests.pipeline.kit import Recorder

        self.heard = Recorder("heard")
        super().__init__(Pipeline([OfflineTTSService(audio=True, espeak_voice="en-gb"),
                                   self.heard]), name="speaker", idle_timeout_secs=None)


async def test_the_offline_tts_speaks_each_sentence_with_espeak_ng_when_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    espeak = tmp_path / "espeak-ng"
    espeak.write_text(FAKE_ESPEAK.format(python=sys.executable))
    espeak.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    speaker = Speaker()
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(speaker)
    async with running(runner):
        await speaker.queue_frames([LLMFullResponseStartFrame(), LLMTextFrame("Hello there. "),
                                    LLMTextFrame("Bye."), LLMFullResponseEndFrame()])
        await speaker.heard.wait_for(lambda r: bool(r.of(LLMFullResponseEndFrame)))
    spoken = [f for f, _ in speaker.heard.frames if isinstance(
        f, (TTSStartedFrame, TTSTextFrame, TTSAudioRawFrame, TTSStoppedFrame))]
    assert [type(f).__name__ for f in spoken] == [
        "TTSStartedFrame", "TTSTextFrame", "TTSAudioRawFrame", "TTSTextFrame",
        "TTSAudioRawFrame", "TTSStoppedFrame"]
    assert [f.text for f in spoken if isinstance(f, TTSTextFrame)] == ["Hello there.", "Bye."]
    audio = [f for f in spoken if isinstance(f, TTSAudioRawFrame)]
    assert [(len(f.audio), f.sample_rate, f.num_channels) for f in audio] == [(4410, 22050, 1)] * 2
    assert len({f.context_id for f in spoken}) == 1
    assert (tmp_path / "espeak-ng.args").read_text().splitlines() == [
        "--stdout -v en-gb -- Hello there.", "--stdout -v en-gb -- Bye."]


def test_the_offline_tts_speaks_text_only_without_espeak_ng(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    OfflineTTSService(audio=True)
    assert "espeak-ng is not installed: speaking text only" in caplog.text
