"""Frames across the bus, on every bus kind: the splice of a transport's bridge and the bridged
worker that is active for it, hand-offs, and the rules that fix the reference's defects.

The transport runs on one runner and the bridged workers on another (on a network bus, each
runner has its own connection and every frame really is encoded and decoded).
"""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    InterruptionFrame,
    TextFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from pipecat_workers import WorkerState
from pipecat_workers.bus.messages import BusFrameMessage, BusTTSSpeakMessage
from tests.helpers import Recorder as BusRecorder
from tests.helpers import settle, wait_until
from tests.pipeline.conftest import Split
from tests.pipeline.kit import TIMEOUT, Agent, Conversation, Helper, Slow, Transport

DOWN, UP = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM


async def splice(split: Split, *helpers: Helper, active: str | None = None,
                 **transport: object) -> Transport:
    """A transport on one runner, the helpers on another; ``active`` is activated."""
    acme = Transport(**transport)  # type: ignore[arg-type]
    await split.host(*helpers)
    await split.host(acme)
    if active is not None:
        await acme.activate_worker(active)
        await wait_until(lambda: acme.bridge.peer == active, timeout=TIMEOUT)
    return acme


async def test_frames_cross_both_ways_in_order(split: Split) -> None:
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    words = [f"w{i}" for i in range(30)]
    for word in words:
        await acme.queue_frame(TextFrame(word))
    for word in words:
        await acme.queue_frame(TextFrame(f"up-{word}"), UP)  # enters below the bridge
    await acme.below.wait_for(lambda r: len(r.texts(DOWN)) == 30)
    await acme.above.wait_for(lambda r: len(r.texts(UP)) == 30)
    assert acme.below.texts(DOWN) == [w.upper() for w in words]  # through greeter, in order
    assert greeter.seen.texts(DOWN) == words
    assert acme.above.texts(UP) == [f"up-{w}" for w in words]
    assert greeter.seen.texts(UP) == [f"up-{w}" for w in words]
    assert acme.below.texts(UP) == [f"up-{w}" for w in words]  # once: it is not sent back down


async def test_only_the_active_bridged_worker_gets_the_frames(split: Split) -> None:
    greeter, support = Helper("greeter"), Helper("support")
    acme = await splice(split, greeter, support, active="greeter")
    await acme.queue_frame(TextFrame("one"))
    await acme.below.wait_for(lambda r: r.texts(DOWN) == ["ONE"])
    # Activating a second bridged worker hands over: the first is told to deactivate (D3).
    await acme.activate_worker("support")
    await wait_until(lambda: acme.bridge.peer == "support" and not greeter.active,
                     timeout=TIMEOUT)
    await acme.queue_frame(TextFrame("two"))
    await acme.below.wait_for(lambda r: r.texts(DOWN) == ["ONE", "TWO"])
    assert greeter.seen.texts() == ["one"]
    assert support.seen.texts() == ["two"]


async def test_frames_sent_before_a_worker_joins_wait_for_it(split: Split) -> None:
    # Nobody is active: data frames wait at the bridge, in order, for the next peer (D9), and
    # system frames pass locally so that an interruption is never lost (D6).
    greeter = Helper("greeter")
    acme = await splice(split, greeter)
    await acme.queue_frame(TextFrame("early"))
    await acme.queue_frame(InterruptionFrame())
    await acme.below.wait_for(lambda r: bool(r.of(InterruptionFrame)))
    assert acme.below.texts() == []
    await acme.activate_worker("greeter")
    await acme.queue_frame(TextFrame("late"))  # sent right after the activation
    await acme.below.wait_for(lambda r: r.texts(DOWN) == ["EARLY", "LATE"])
    assert greeter.seen.texts() == ["early", "late"]


async def test_frames_of_a_worker_whose_join_is_held_up_wait_for_it(split: Split) -> None:
    # A join travels ahead of its sender's frames, but the bridge's system lane may be busy:
    # frames that arrive before the join is handled wait for it, then go on in order.
    greeter = Helper("greeter")
    acme = await splice(split, greeter)
    bus = split.runners[0].bus
    for text in ("FIRST", "SECOND"):
        await bus.send(BusFrameMessage(source="greeter", target="acme", frame=TextFrame(text)))
    await settle(0.2)
    assert acme.below.texts() == []  # not the bridge's peer: nothing of it is pushed yet
    await acme.activate_worker("greeter")
    await acme.queue_frame(TextFrame("third"))
    await acme.below.wait_for(lambda r: r.texts(DOWN) == ["FIRST", "SECOND", "THIRD"])


async def test_frames_of_a_worker_that_never_joins_are_dropped(split: Split) -> None:
    from pipecat_workers.pipeline import bridge as bridge_module

    greeter = Helper("greeter")
    acme = await splice(split, greeter)
    bus = split.runners[0].bus
    await bus.send(BusFrameMessage(source="intruder", target="acme", frame=TextFrame("NO")))
    await wait_until(lambda: "intruder" in acme.bridge._early, timeout=TIMEOUT)
    acme.bridge._early["intruder"][0] = (
        acme.bridge._early["intruder"][0][0] - bridge_module.EARLY_WAIT - 1,
        acme.bridge._early["intruder"][0][1])  # as if it had waited too long
    await acme.activate_worker("greeter")
    await acme.queue_frame(TextFrame("yes"))
    await acme.below.wait_for(lambda r: r.texts(DOWN) == ["YES"])
    assert acme.bridge.early_dropped == 1 and "intruder" not in acme.bridge._early


async def test_an_interruption_overtakes_queued_frames(split: Split) -> None:
    greeter = Helper("greeter", extra=[Slow(0.05)])
    acme = await splice(split, greeter, active="greeter")
    for i in range(20):
        await acme.queue_frame(TextFrame(f"t{i}"))
    await acme.below.wait_for(lambda r: len(r.texts()) >= 1)
    await acme.queue_frame(InterruptionFrame())
    await acme.below.wait_for(lambda r: bool(r.of(InterruptionFrame)))
    arrived = len(acme.below.texts())
    await settle(0.3)
    # It arrived while text was still queued, and the text queued behind the slow processor
    # was dropped by it.
    assert arrived < 20
    assert len(acme.below.texts()) < 20


async def test_lifecycle_frames_never_cross(split: Split) -> None:
    # An EndWorkerFrame pushed up inside the bridged worker ends that worker only (D15).
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    await greeter.queue_frame(EndWorkerFrame(reason="done here"), UP)
    await wait_until(lambda: greeter.state is WorkerState.STOPPED, timeout=TIMEOUT)
    await wait_until(lambda: acme.bridge.peer is None, timeout=TIMEOUT)
    assert acme.state is WorkerState.READY
    assert not acme.above.of(EndWorkerFrame)
    await acme.queue_frame(UserStartedSpeakingFrame())
    await acme.below.wait_for(lambda r: bool(r.of(UserStartedSpeakingFrame)))


async def test_a_fatal_error_cancels_only_the_worker_it_happened_in(split: Split) -> None:
    from pipecat.frames.frames import ErrorFrame

    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    await greeter.queue_frame(ErrorFrame(error="model gone", fatal=True), UP)
    await wait_until(lambda: greeter.state is WorkerState.STOPPED, timeout=TIMEOUT)
    await settle(0.1)
    assert acme.state is WorkerState.READY
    assert not acme.above.of(ErrorFrame)


async def test_frames_travel_only_to_the_process_that_needs_them(split: Split) -> None:
    # D28: the transport's frames go to the active worker's process only, not to everyone;
    # D29: system frames travel with system priority.
    from pipecat_workers.bus.messages import BusSystemFrameMessage

    greeter = Helper("greeter")
    bystander = Helper("bystander")
    await split.host(bystander)
    acme = await splice(split, greeter, active="greeter")
    seen = BusRecorder("wire")
    split.runners[0].bus.subscribe(seen, role="observer")  # the bystander's runner
    await acme.queue_frame(TextFrame("private"))
    await acme.queue_frame(UserStartedSpeakingFrame())
    await acme.below.wait_for(lambda r: r.texts() == ["PRIVATE"]
                              and bool(r.of(UserStartedSpeakingFrame)))
    shared_bus = split.runners[0].bus is split.runners[2].bus
    if not shared_bus:  # on a network bus the bystander's process never saw the frames
        assert not seen.of_type(BusFrameMessage)
    sent = split.runners[2].bus.stats()["sent"]
    assert sent.get("BusSystemFrameMessage", 0) >= 1 and sent.get("BusFrameMessage", 0) >= 1
    assert issubclass(BusSystemFrameMessage, BusFrameMessage)


async def test_a_frame_is_copied_across_the_bus_even_in_one_process(split: Split) -> None:
    # D30: the local bus gives the same copy semantics as a network bus.
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    frame = TextFrame("original")
    frame.metadata["k"] = ["v"]
    await acme.queue_frame(frame)
    await acme.below.wait_for(lambda r: r.texts() == ["ORIGINAL"])
    received = greeter.seen.of(TextFrame)[0]
    assert received is not frame and received.metadata == {"k": ["v"]}
    assert received.metadata["k"] is not frame.metadata["k"]


async def test_a_bridged_worker_takes_frames_from_its_bridge_only(split: Split) -> None:
    # Anyone else's frame messages, and lifecycle frames from anyone, are dropped (D18).
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    rogue = split.runners[0].bus
    await rogue.send(BusFrameMessage(source="mallory", target="greeter",
                                     frame=TextFrame("forged")))
    from pipecat.frames.frames import EndFrame

    await rogue.send(BusFrameMessage(source="acme", target="greeter", frame=EndFrame()))
    await acme.queue_frame(TextFrame("real"))
    await acme.below.wait_for(lambda r: r.texts() == ["REAL"])
    await settle(0.1)
    assert greeter.seen.texts() == ["real"]
    assert greeter.state is WorkerState.READY
    assert greeter.frame_stats().get("not from its bridge", 0) >= 1
    assert greeter.frame_stats().get("lifecycle frame", 0) == 1


async def test_excluded_frames_stay_local_and_arrive(split: Split) -> None:
    # A worker's exclude_frames stay out of it, but still reach the transport below (D5).
    greeter = Helper("greeter", exclude_frames=(UserStartedSpeakingFrame,))
    acme = await splice(split, greeter, active="greeter")
    await acme.queue_frame(UserStartedSpeakingFrame())
    await acme.queue_frame(TextFrame("x"))
    await acme.below.wait_for(lambda r: r.texts() == ["X"] and bool(
        r.of(UserStartedSpeakingFrame)))
    assert not greeter.seen.of(UserStartedSpeakingFrame)


async def test_a_frame_that_cannot_cross_stays_in_the_pipeline(split: Split) -> None:
    # A frame that names a processor of this pipeline cannot leave it: it passes locally.
    from pipecat.frames.frames import FrameProcessorResumeFrame

    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    await acme.queue_frame(FrameProcessorResumeFrame(processor=acme.below))
    await acme.queue_frame(TextFrame("after"))
    await acme.below.wait_for(lambda r: r.texts() == ["AFTER"])
    assert len(acme.below.of(FrameProcessorResumeFrame)) == 1
    assert not greeter.seen.of(FrameProcessorResumeFrame)


async def test_named_bridges_round_trip(split: Split) -> None:
    # D4: the reply of a worker serving tag "voice" comes back to the "voice" bridge.
    greeter = Helper("greeter", bridged=("voice",))
    acme = await splice(split, greeter, active="greeter", bridge="voice")
    await acme.queue_frame(TextFrame("tagged"))
    await acme.below.wait_for(lambda r: r.texts() == ["TAGGED"])


async def test_an_inactive_worker_publishes_nothing(split: Split) -> None:
    # D7: what an inactive bridged worker queues never reaches the transport.
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    support = Helper("support")
    await split.host(support)
    await support.queue_frame(TextFrame("not my turn"))
    await acme.queue_frame(TextFrame("mine"))
    await acme.below.wait_for(lambda r: r.texts() == ["MINE"])
    await settle(0.1)
    assert acme.below.texts() == ["MINE"]


async def test_drains_complete_by_message(split: Split) -> None:
    # D1/D2: a drain completes on every bus, through the active peer or without one.
    greeter = Helper("greeter", extra=[Slow(0.02)])
    acme = await splice(split, greeter, active="greeter")
    for i in range(5):
        await acme.queue_frame(TextFrame(f"d{i}"))
    assert await asyncio.wait_for(acme.flush_pipeline(), TIMEOUT)
    assert len(acme.below.texts()) == 5  # everything queued before it went through
    assert await asyncio.wait_for(greeter.flush_pipeline(), TIMEOUT)
    await acme.deactivate_worker("greeter")
    await wait_until(lambda: acme.bridge.peer is None, timeout=TIMEOUT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await acme.flush_pipeline()  # no peer: the probe passes the bridge locally
    assert loop.time() - started < 1.0


async def test_a_handoff_from_a_tool_moves_the_conversation(split: Split) -> None:
    greeter = Agent("greeter", "You are the greeter.")
    support = Agent("support", "You are Support.")
    acme = Conversation()
    await split.host(greeter, support)
    await split.host(acme)
    await acme.activate_worker("greeter", args=_welcome())
    assert await acme.reply() == "Hello, Greeter here. Welcome the user."
    await acme.say("hello")
    assert await acme.reply() == "Greeter here. You said: hello"
    await acme.say("please transfer me to support")
    assert await acme.reply() == "Okay, done."  # greeter's reply to its tool result
    assert await acme.reply() == "Hello, Support here. please transfer me to support"
    assert support.active and not greeter.active
    await acme.say("my printer is broken")
    assert await acme.reply() == "Support here. You said: my printer is broken"
    # The shared context holds the whole conversation, greeter's tool call included.
    roles = [m.get("role") for m in acme.context.get_messages() if isinstance(m, dict)]
    assert roles.count("tool") == 1 and roles[-2:] == ["user", "assistant"]
    assert greeter.calls == [{"agent": "support", "reason": "please transfer me to support"}]


async def test_agents_hand_the_conversation_back_and_forth_again_and_again(
        split: Split) -> None:
    # A worker that handed off is deactivated for good (its on_deactivated runs), so being
    # handed the conversation again, with the same activation as before, starts it afresh.
    greeter = Agent("greeter", "You are the greeter.")
    support = Agent("support", "You are Support.")
    acme = Conversation()
    await split.host(greeter, support)
    await split.host(acme)
    await acme.activate_worker("greeter", args=_welcome())
    assert await acme.reply() == "Hello, Greeter here. Welcome the user."
    for target in ("support", "greeter", "support", "greeter"):
        await acme.say(f"please transfer me to {target}")
        assert await acme.reply() == "Okay, done."
        name = "Support" if target == "support" else "Greeter"
        assert await acme.reply() == f"Hello, {name} here. please transfer me to {target}"
    assert greeter.active and not support.active
    assert len(support.calls) == 2 and len(greeter.calls) == 2


async def test_tts_speak_is_spoken_once(split: Split) -> None:
    # D8: a broadcast is spoken by the transport only, not once more by the bridged worker.
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    from pipecat.frames.frames import TTSSpeakFrame

    await split.runners[0].bus.send(BusTTSSpeakMessage(source="ops", text="hello all"))
    await acme.below.wait_for(lambda r: bool(r.of(TTSSpeakFrame)))
    await settle(0.2)
    assert len(acme.below.of(TTSSpeakFrame)) == 1
    assert not greeter.seen.of(TTSSpeakFrame, UP)


async def test_frame_messages_never_fire_on_bus_message(split: Split) -> None:
    greeter = Helper("greeter")
    fired: list[object] = []

    @greeter.event_handler("on_bus_message")
    async def on_bus_message(worker: object, message: object) -> None:
        fired.append(message)

    acme = await splice(split, greeter, active="greeter")
    watcher = BusRecorder("frames")
    split.runners[1].bus.subscribe(watcher, role="observer")
    await acme.queue_frame(TextFrame("quiet"))
    await acme.below.wait_for(lambda r: r.texts() == ["QUIET"])
    assert watcher.of_type(BusFrameMessage)
    assert not any(isinstance(m, BusFrameMessage) for m in fired)


def _welcome() -> object:
    from pipecat_workers.pipeline import LLMWorkerActivationArgs

    return LLMWorkerActivationArgs(messages=[{"role": "developer",
                                              "content": "Welcome the user."}])


pytestmark = pytest.mark.timeout(60)


async def test_what_is_not_a_frame_never_enters_a_pipeline(split: Split) -> None:
    # The frame field is Any on the wire: a string, None or a dict is dropped and counted.
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    bus = split.runners[1].bus  # greeter's runner sends as if it were greeter
    for junk in ("hello", None, 5, {"a": 1}):
        await bus.send(BusFrameMessage(source="greeter", target="acme", frame=junk))
        await bus.send(BusFrameMessage(source="acme", target="greeter", frame=junk))
    await acme.queue_frame(TextFrame("after"))
    await acme.below.wait_for(lambda r: r.texts() == ["AFTER"])
    await settle(0.1)
    assert all(isinstance(f, Frame) for f, _ in acme.below.frames + greeter.seen.frames)
    assert acme.frame_stats()["not a frame"] == 4
    assert greeter.frame_stats()["not a frame"] == 4


async def test_a_worker_that_stops_leaves_no_watch_behind(split: Split) -> None:
    greeter = Helper("greeter")
    acme = await splice(split, greeter, active="greeter")
    registry = split.runners[0].registry
    await acme.stop()
    await wait_until(lambda: greeter.serving is None, timeout=TIMEOUT)
    await greeter.stop()
    assert registry.watch_count() == 0


async def test_a_bus_that_is_down_holds_nothing_up(socket_dir: str) -> None:
    # While the bus is down, frames for the peer are lost at once (counted) rather than each
    # waiting for the server, and a drain does not wait for a probe that cannot cross.
    from pipecat_workers import WorkerRunner
    from pipecat_workers.bus import BusHub, HubBus
    from tests.helpers import running
    from tests.pipeline.kit import FAST

    hub = BusHub(f"{socket_dir}/hub.sock")
    await hub.start()
    greeter = Helper("greeter")
    acme = Transport()
    runners = [WorkerRunner(name=n, bus=HubBus(hub.path, channel="down"), handle_sigint=False,
                            settings=FAST) for n in ("a", "b")]
    await runners[0].add_workers(greeter)
    await runners[1].add_workers(acme)
    try:
        async with running(runners[0]), running(runners[1]):
            await wait_until(lambda: "greeter" in runners[1].registry, timeout=TIMEOUT)
            await acme.activate_worker("greeter")
            await wait_until(lambda: acme.bridge.peer == "greeter", timeout=TIMEOUT)
            await hub.stop()
            await wait_until(lambda: not runners[1].bus.connected, timeout=TIMEOUT)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(5):
                await acme.queue_frame(TextFrame(f"lost {i}"))
            assert await asyncio.wait_for(acme.flush_pipeline(), TIMEOUT)
            assert loop.time() - started < 1.0
            assert acme.frame_stats()["bus down"] == 5
    finally:
        await hub.stop()


async def test_a_worker_in_the_same_process_is_reached_while_the_bus_is_down(
        socket_dir: str) -> None:
    # Frames for a worker on the same runner go to its mailbox, not over the network: a bus
    # that is down loses none of them.
    from pipecat_workers import WorkerRunner
    from pipecat_workers.bus import BusHub, HubBus
    from tests.helpers import running
    from tests.pipeline.kit import FAST

    hub = BusHub(f"{socket_dir}/hub.sock")
    await hub.start()
    greeter = Helper("greeter")
    acme = Transport()
    runner = WorkerRunner(name="one", bus=HubBus(hub.path, channel="local-down"),
                          handle_sigint=False, settings=FAST)
    await runner.add_workers(greeter, acme)
    try:
        async with running(runner):
            await acme.activate_worker("greeter")
            await wait_until(lambda: acme.bridge.peer == "greeter", timeout=TIMEOUT)
            await hub.stop()
            await wait_until(lambda: not runner.bus.connected, timeout=TIMEOUT)
            for i in range(3):
                await acme.queue_frame(TextFrame(f"kept {i}"))
            await greeter.seen.wait_for(lambda r: len(r.texts()) == 3)
            assert greeter.seen.texts() == ["kept 0", "kept 1", "kept 2"]
            assert acme.frame_stats().get("bus down", 0) == 0
    finally:
        await hub.stop()
