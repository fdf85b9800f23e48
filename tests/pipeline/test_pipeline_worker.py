"""PipelineWorker's own life, on the in-process bus: start, queueing, end, cancel, events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    StartFrame,
    TextFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup

from pipecat_workers import WorkerRunner, WorkerState, WorkerStateError
from pipecat_workers.bus.messages import BusTTSSpeakMessage, BusWorkerReadyMessage
from pipecat_workers.pipeline import PipelineStartError, PipelineWorker
from tests.helpers import Observer, running, settle, wait_until
from tests.pipeline.kit import FAST, TIMEOUT, Recorder, Slow

DOWN, UP = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM


class Stuck(FrameProcessor):
    """Blocks on every data frame until cancelled (a processor that never finishes)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            await asyncio.Event().wait()
        await self.push_frame(frame, direction)


class SlowSetup(FrameProcessor):
    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        await asyncio.sleep(10)


def worker(*processors: FrameProcessor, name: str = "p", **kwargs: Any) -> PipelineWorker:
    kwargs.setdefault("idle_timeout_secs", None)
    return PipelineWorker(Pipeline(list(processors)), name=name, **kwargs)


def finished_with(w: PipelineWorker) -> list[Frame]:
    frames: list[Frame] = []

    @w.event_handler("on_pipeline_finished")
    async def on_finished(_w: object, frame: Frame) -> None:
        frames.append(frame)

    return frames


async def test_it_is_ready_once_its_pipeline_started_and_queued_frames_wait() -> None:
    rec = Recorder("rec")
    p = worker(rec)
    await p.queue_frame(TextFrame("before run"))  # queued before anything started
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    observer = Observer("o")
    runner.bus.subscribe(observer, role="observer")
    await runner.add_workers(p)
    async with running(runner):
        await rec.wait_for(lambda r: r.texts() == ["before run"])
        ready = observer.of_type(BusWorkerReadyMessage)
        assert [m.source for m in ready] == ["p"]
        assert isinstance(rec.frames[0][0], StartFrame)  # the StartFrame went first
        await p.queue_frame(TextFrame("up"), UP)  # upstream enters at the bottom
        await rec.wait_for(lambda r: r.texts(UP) == ["up"])


async def test_a_graceful_end_plays_out_what_was_queued() -> None:
    # D12/D20: runner.end() finishes the pipeline with an EndFrame, after the queued frames.
    speaker = Recorder("speaker")
    p = worker(Slow(0.02), speaker)
    finished = finished_with(p)
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(p)
    async with running(runner) as task:
        for i in range(5):
            await p.queue_frame(TTSSpeakFrame(f"sentence {i}"))
        await runner.end(reason="bye")
        await asyncio.wait_for(task, TIMEOUT)
    assert [f.text for f in speaker.of(TTSSpeakFrame)] == [f"sentence {i}" for i in range(5)]
    assert isinstance(speaker.frames[-1][0], EndFrame)
    assert speaker.frames[-1][0].reason == "bye"
    assert [type(f) for f in finished] == [EndFrame]
    with pytest.raises(WorkerStateError, match="is ending"):
        await p.queue_frame(TextFrame("too late"))  # D14: refused, not silently kept


async def test_cancel_stops_a_stuck_pipeline_within_its_timeout() -> None:
    p = worker(Stuck(), Recorder("after"), cancel_timeout_secs=0.5)
    timeouts: list[Frame] = []

    @p.event_handler("on_pipeline_timeout")
    async def on_timeout(_w: object, frame: Frame) -> None:
        timeouts.append(frame)

    finished = finished_with(p)
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(p)
    async with running(runner):
        await p.queue_frame(TextFrame("blocks"))
        await settle(0.05)
        started = asyncio.get_running_loop().time()
        await p.cancel(reason="enough")
        await wait_until(lambda: p.state is WorkerState.STOPPED, timeout=TIMEOUT)
        assert asyncio.get_running_loop().time() - started < 2.0
    assert [type(f) for f in finished] == [CancelFrame]


async def test_cancel_cuts_a_draining_end_short() -> None:
    # D13: an end waiting behind slow frames is overtaken by a cancel.
    speaker = Recorder("speaker")
    p = worker(Slow(0.3), speaker, cancel_timeout_secs=1.0)
    finished = finished_with(p)
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(p)
    async with running(runner):
        for i in range(10):
            await p.queue_frame(TTSSpeakFrame(f"s{i}"))
        await p.stop_when_done()  # queues the end behind 3 s of speech
        await settle(0.1)
        started = asyncio.get_running_loop().time()
        await p.cancel(reason="now")
        await wait_until(lambda: p.state is WorkerState.STOPPED, timeout=TIMEOUT)
        assert asyncio.get_running_loop().time() - started < 1.5
    assert len(speaker.of(TTSSpeakFrame)) < 10
    assert [type(f) for f in finished] == [CancelFrame]


async def test_an_end_worker_frame_ends_the_worker() -> None:
    p = worker(Recorder("r"))
    finished = finished_with(p)
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(p)
    async with running(runner, auto_end=True) as task:
        await p.queue_frame(EndWorkerFrame(reason="finished"), UP)
        await asyncio.wait_for(task, TIMEOUT)  # the runner ends with its last worker
    assert [type(f) for f in finished] == [EndFrame]


async def test_cancel_affects_only_that_worker() -> None:
    a, b = worker(Recorder("a"), name="a"), worker(Recorder("b"), name="b")
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(a, b)
    async with running(runner):
        await a.cancel(reason="just a")
        await wait_until(lambda: a.state is WorkerState.STOPPED, timeout=TIMEOUT)
        await settle(0.1)
        assert b.state is WorkerState.READY


async def test_a_pipeline_that_cannot_set_up_never_registers() -> None:
    p = worker(SlowSetup(), setup_timeout_secs=0.2)
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    errors: list[Any] = []

    @runner.event_handler("on_error")
    async def on_error(_r: object, data: Any) -> None:
        errors.append(data)

    await runner.add_workers(p)
    async with running(runner, auto_end=True) as task:
        await asyncio.wait_for(task, TIMEOUT)
    assert p.state is WorkerState.STOPPED
    assert "p" not in runner.registry
    assert errors and "not set up within 0.2 s" in errors[0].error
    assert issubclass(PipelineStartError, WorkerStateError)


async def test_tts_speak_to_a_worker_queues_a_tts_frame() -> None:
    speaker = Recorder("speaker")
    p = worker(speaker)
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(p)
    async with running(runner):
        await runner.bus.send(BusTTSSpeakMessage(source="ops", target="p", text="hi there",
                                                 append_to_context=False))
        await speaker.wait_for(lambda r: bool(r.of(TTSSpeakFrame)))
        frame = speaker.of(TTSSpeakFrame)[0]
        assert (frame.text, frame.append_to_context) == ("hi there", False)


async def test_an_inactive_worker_is_never_idle() -> None:
    # D16: a helper waiting for its turn (inactive) does not time out; an active one does.
    helper = worker(Recorder("h"), name="helper", active=False, bridged=(),
                    idle_timeout_secs=0.3)
    active = worker(Recorder("a"), name="busy", idle_timeout_secs=0.3)
    idled: list[str] = []
    for w in (helper, active):
        @w.event_handler("on_idle_timeout")
        async def on_idle(who: PipelineWorker) -> None:
            idled.append(who.name)

    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(helper, active)
    async with running(runner):
        await wait_until(lambda: active.state is WorkerState.STOPPED, timeout=TIMEOUT)
        await settle(0.5)
        assert idled == ["busy"]
        assert helper.state is WorkerState.READY


async def test_bad_arguments_are_refused_at_construction() -> None:
    from pipecat_workers import ConfigurationError

    with pytest.raises(ConfigurationError, match="bridged must be"):
        PipelineWorker(Pipeline([]), name="x", bridged=["voice"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="only applies to a bridged worker"):
        PipelineWorker(Pipeline([]), name="x", exclude_frames=(TextFrame,))


pytestmark = pytest.mark.timeout(30)


async def test_two_stops_at_once_finish_the_pipeline_once() -> None:
    p = worker(Recorder("r"))
    finished = finished_with(p)
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(p)
    async with running(runner):
        await asyncio.gather(p.stop(reason="one"), p.stop(reason="two"))
        await settle(0.1)
    assert len(finished) == 1


async def test_flush_with_no_time_gives_up_at_once() -> None:
    p = worker(Stuck(), Recorder("r"))
    runner = WorkerRunner(handle_sigint=False, settings=FAST)
    await runner.add_workers(p)
    async with running(runner):
        await p.queue_frame(TextFrame("blocks"))
        assert await asyncio.wait_for(p.flush_pipeline(timeout=0), 1) is False
