"""The topology files in configs/ describe systems that work.

Every worker of a file is built exactly as the ``workers`` host builds it, ``cls(name, **args)``
with replicas expanded, and all of them run in ONE process on the in-process bus, so these
tests check the systems' behaviour without any server. The network variants
(``*.redis.yaml``, ``*.pgmq.yaml``) must run the very same workers.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipecat_workers_cli.topology import check_args, expand, load_topology, resolve_class

from examples.handoff.main import Conversation
from examples.research.coordinator import Coordinator
from examples.sensors.controller import Controller
from examples.sensors.messages import SensorReading
from examples.sensors.sensor import Sensor
from pipecat_workers import BaseWorker, JobError, JobEvent, Settings, WorkerRunner
from pipecat_workers.bus import (
    BusActivateWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusJobRequestMessage,
    JSONMessageSerializer,
)
from tests.helpers import Observer, eventually, running, within

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SYSTEMS = ("handoff", "research", "sensors")
BACKENDS = ("redis", "pgmq")
SETTINGS = Settings(end_grace=2.0, cancel_timeout=0.5)

Overrides = dict[str, dict[str, Any]]


def build(path: Path, overrides: Overrides | None = None) -> dict[str, BaseWorker]:
    """Every worker of a topology by bus name, built as the host builds them; ``overrides``
    replaces some args of a worker entry (short intervals for the tests)."""
    workers: dict[str, BaseWorker] = {}
    for process in expand(load_topology(path)):
        spec = process.worker
        cls = resolve_class(spec.class_path)
        args = {**spec.args, **(overrides or {}).get(spec.key, {})}
        check_args(cls, process.name, args)
        workers[process.name] = cls(process.name, **args)
    return workers


def host(workers: dict[str, BaseWorker]) -> tuple[WorkerRunner, Observer]:
    runner = WorkerRunner(handle_sigint=False, settings=SETTINGS)
    observer = Observer("topology-observer")
    runner.bus.subscribe(observer, role="observer")
    return runner, observer


async def run_to_end(runner: WorkerRunner, workers: dict[str, BaseWorker],
                     timeout: float = 10.0) -> None:
    """Run until the session ends by itself (``run(auto_end=True)``, as the host does)."""
    await runner.add_workers(*workers.values())
    await within(runner.run(auto_end=True), timeout)


# -- the files ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_file_loads_and_builds_every_worker(path: Path) -> None:
    topology = load_topology(path)
    assert topology.root == ROOT  # imports of `examples.*` resolve from the repo root
    workers = build(path)
    assert [w.name for w in workers.values()] == list(workers)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_network_variants_differ_only_in_the_channel(system: str, backend: str) -> None:
    local_path, variant_path = CONFIGS / f"{system}.yaml", CONFIGS / f"{system}.{backend}.yaml"
    local_doc, variant_doc = (yaml.safe_load(p.read_text()) for p in (local_path, variant_path))
    assert variant_doc["workers"] == local_doc["workers"]
    local, variant = load_topology(local_path), load_topology(variant_path)
    # its own project name: a variant runs next to the local one, with its own state
    assert (variant.name, variant.root) == (f"{local.name}-{backend}", local.root)
    assert variant.channels.keys() == local.channels.keys()
    for key, channel in variant.channels.items():
        assert channel.backend == backend
        assert channel.url  # from the environment, with a localhost default
        assert channel.channel == local.channels[key].channel
    # `line` differs (the headers do): everything else of every worker is the same
    assert [replace(w, line=0) for w in variant.workers.values()] == [
        replace(w, line=0) for w in local.workers.values()]


# -- handoff ------------------------------------------------------------------------------


async def test_handoff_conversation_hands_over_and_back_and_ends_the_session() -> None:
    workers = build(CONFIGS / "handoff.yaml")
    runner, observer = host(workers)
    await run_to_end(runner, workers)

    acme = workers["acme"]
    assert isinstance(acme, Conversation)
    speakers = [speaker for speaker, _ in acme.transcript]
    assert speakers == ["user", "greeter", "user", "greeter", "user", "support",
                        "user", "support"]
    assert acme.transcript[3] == ("greeter", "Let me get you to support.")
    assert acme.transcript[5][1].startswith("Billing support here.")
    handoffs = [(m.source, m.target) for m in observer.of(BusActivateWorkerMessage)]
    assert handoffs == [("acme", "greeter"), ("greeter", "support"), ("support", "greeter")]
    # deactivate_self: each agent steps down before the next one is activated
    order = [(type(m).__name__, m.target) for m in observer.messages
             if isinstance(m, BusActivateWorkerMessage | BusDeactivateWorkerMessage)]
    assert order.index(("BusDeactivateWorkerMessage", "greeter")) < order.index(
        ("BusActivateWorkerMessage", "support"))
    ends = observer.of(BusEndMessage)
    assert [(m.source, m.reason) for m in ends] == [("acme", "conversation over")]
    assert not any(w.active for w in workers.values() if w.name != "acme")


# -- research -----------------------------------------------------------------------------

RESEARCH_FAST: Overrides = {"researcher": {"delay": 0.005}}


class Asker(BaseWorker):
    """Sends ``ask`` like ``workers call coordinator --job ask`` does, and keeps every event."""

    def __init__(self, name: str = "asker") -> None:
        super().__init__(name)
        self.events: list[JobEvent] = []

    async def ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        async with self.job("coordinator", name="ask", payload=payload, timeout=5) as j:
            async for event in j:
                self.events.append(event)
        return j.response

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event.data or {} for event in self.events if event.type == kind]


async def test_research_ask_streams_one_finding_per_researcher_per_point() -> None:
    workers = build(CONFIGS / "research.yaml", RESEARCH_FAST)
    assert sorted(workers) == ["coordinator", "researcher.1", "researcher.2", "researcher.3"]
    asker = Asker()
    runner, _ = host(workers)
    await runner.add_workers(*workers.values(), asker)
    async with running(runner) as task:
        summary = await within(asker.ask({"topic": "solar"}))

        researchers = ["researcher.1", "researcher.2", "researcher.3"]
        assert summary["topic"] == "solar"
        assert summary["findings"] == 9
        assert sorted(summary["summaries"]) == researchers
        assert len(set(summary["summaries"].values())) == 3  # each replica its own angle
        findings = asker.of(JobEvent.STREAM_DATA)
        assert sorted(f["researcher"] for f in findings) == sorted(researchers * 3)
        for researcher in researchers:
            points = [f["finding"] for f in findings if f["researcher"] == researcher]
            assert [p.rsplit(" ", 1)[1] for p in points] == ["1", "2", "3"]
            assert all(" of solar, point " in p for p in points)
        assert asker.of(JobEvent.STREAM_START)[0]["researchers"] == researchers
        assert [u["done"] for u in asker.of(JobEvent.UPDATE)] == [1, 2, 3]

        coordinator = workers["coordinator"]
        assert isinstance(coordinator, Coordinator)
        # the question asked at start (ask_on_start) was answered too
        await eventually(lambda: len(coordinator.reports) == 2, "the start-up report")
        assert {r.topic for r in coordinator.reports} == {"solar", "solar power"}
        assert not task.done()  # long-running: it keeps serving questions


async def test_research_ask_without_a_topic_answers_an_error() -> None:
    workers = build(CONFIGS / "research.yaml", {**RESEARCH_FAST,
                                                "coordinator": {"ask_on_start": None}})
    asker = Asker()
    runner, observer = host(workers)
    await runner.add_workers(*workers.values(), asker)
    async with running(runner):
        with pytest.raises(JobError, match="needs a topic"):
            await within(asker.ask({"subject": "solar"}))
        assert not observer.of(BusJobRequestMessage, job_name="research")
        assert (await within(asker.ask({"topic": "wind"})))["findings"] == 9


# -- sensors ------------------------------------------------------------------------------

SENSORS_FAST: Overrides = {"sensor": {"interval": 0.01, "switch_delay": 0.005}}


async def test_sensors_controller_switches_the_heater_and_ends_at_its_limit() -> None:
    workers = build(CONFIGS / "sensors.yaml",
                    {**SENSORS_FAST, "controller": {"limit": 25}})
    runner, observer = host(workers)
    await run_to_end(runner, workers)

    controller = workers["controller"]
    assert isinstance(controller, Controller)
    assert len(controller.readings) == 25
    assert controller.subscriptions == 1
    seqs = [r.seq for r in controller.readings]
    assert seqs == sorted(seqs)
    # 18 °C is below 21 ± 0.5: the heater goes on, the room warms past 21.5, it goes off
    requests = observer.of(BusJobRequestMessage, job_name="set_heater", target="sensor")
    assert [r.payload for r in requests[:2]] == [{"on": True}, {"on": False}]
    assert controller.switches[0]["heater"] is True
    assert {"step": "switching relay", "progress": 0.5} in controller.updates
    assert {"step": "heater on", "progress": 1.0} in controller.updates
    assert max(r.temperature for r in controller.readings) > 21.5
    ends = observer.of(BusEndMessage)
    assert [(m.source, m.reason) for m in ends] == [("controller", "25 readings taken")]


async def test_sensors_controller_subscribes_again_when_the_sensor_restarts() -> None:
    workers = build(CONFIGS / "sensors.yaml", SENSORS_FAST)
    controller = workers["controller"]
    assert isinstance(controller, Controller)
    runner, _ = host(workers)
    await runner.add_workers(*workers.values())
    async with running(runner) as task:
        await eventually(lambda: len(controller.readings) >= 3, "readings")
        await workers["sensor"].stop()
        count = len(controller.readings)
        await asyncio.sleep(0.05)
        assert len(controller.readings) == count  # no sensor, no readings, still running
        assert not task.done()

        restarted = Sensor("sensor", **SENSORS_FAST["sensor"])
        await runner.add_workers(restarted)
        await eventually(lambda: controller.subscriptions == 2, "a second subscription")
        await eventually(lambda: len(controller.readings) >= count + 3, "new readings")
        assert restarted.subscribers == ["controller"]


def test_a_sensor_reading_crosses_process_boundaries() -> None:
    serializer = JSONMessageSerializer(secret="")
    reading = SensorReading(source="sensor", target="controller", seq=4, temperature=20.25,
                            heater=True)
    assert serializer.deserialize(serializer.serialize(reading)) == reading


def test_sensor_and_controller_refuse_nonsense_args() -> None:
    with pytest.raises(ValueError, match="interval"):
        Sensor("sensor", interval=0)
    with pytest.raises(ValueError, match="limit"):
        Controller("controller", limit=0)
