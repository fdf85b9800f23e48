"""Every message from another process is checked against its type's declared fields before any
handler sees it (issue 11): wrong types, missing and unknown fields, NaN, infinity and huge
values are dropped and counted as ``invalid``; valid messages pass as before."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NewType, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings

from pipecat_workers import BaseWorker, WorkerLostData
from pipecat_workers.bus import JSONMessageSerializer
from pipecat_workers.bus.codec import Drop, build, encode_fields
from pipecat_workers.bus.messages import (
    BusDataMessage,
    BusHeartbeatMessage,
    BusJobRequestMessage,
    BusMessage,
    BusWorkerRegistryMessage,
)
from pipecat_workers.catalogue import register_message, type_name
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.validate import MAX_NAME_LENGTH, MaxLen, Range, rule_for
from tests.helpers import Recorder, wait_until
from tests.hostile import (
    ENTRY,
    INF,
    LONG_NAME,
    NAN,
    NESTED_JUNK,
    attacker,
    fields_of,
    framework_types,
    hostile_bodies,
    junk_for,
    raw_envelope,
    sample,
    valid_body,
)
from tests.procs.cluster import Cluster

TYPES = framework_types()
DROPPED = {"invalid", "malformed", "unknown_type"}


def ser() -> JSONMessageSerializer:
    return JSONMessageSerializer(secret="")


def dropped(s: JSONMessageSerializer) -> dict[str, int]:
    return {reason: n for reason, n in s.stats().items() if n}


# -- every framework message type ---------------------------------------------------------------


def test_every_framework_message_type_is_covered() -> None:
    names = {type_name(cls) for cls in TYPES}
    assert len(TYPES) >= 30
    assert {"runner.heartbeat", "registry.snapshot", "job.request", "job.check"} <= names


@pytest.mark.parametrize("cls", TYPES, ids=type_name)
def test_a_valid_message_of_each_type_passes(cls: type[BusMessage]) -> None:
    s = ser()
    envelope = s.decode(raw_envelope(type_name(cls) or "", valid_body(cls)))
    assert envelope is not None, dropped(s)
    assert envelope.message == sample(cls)
    assert dropped(s) == {}


@pytest.mark.parametrize("cls", TYPES, ids=type_name)
def test_each_wrong_field_of_each_type_is_dropped_and_counted(cls: type[BusMessage]) -> None:
    name, fields = type_name(cls) or "", fields_of(cls)
    cases: list[tuple[str, dict[str, Any], str]] = []
    for field_name, (kind, optional, required) in fields.items():
        for value, reason in junk_for(kind, optional):
            cases.append((f"{field_name}={value!r:.60}", {**valid_body(cls), field_name: value},
                          reason))
        if required:
            body = {k: v for k, v in valid_body(cls).items() if k != field_name}
            cases.append((f"no {field_name}", body, "invalid"))
    cases.append(("an unknown field", {**valid_body(cls), "evil": 1}, "invalid"))
    cases.append(("__class__", {**valid_body(cls), "__class__": "x"}, "invalid"))
    wrong = []
    for label, body, reason in cases:
        s = ser()
        if s.decode(raw_envelope(name, body)) is not None or dropped(s) != {reason: 1}:
            wrong.append(f"{label}: {dropped(s) or 'accepted'}, expected {reason}")
    assert not wrong, "\n".join(wrong)
    assert len(cases) >= 10


# -- the reproductions of the issue, and the rules ------------------------------------------------


def heartbeat(**fields: Any) -> bytes:
    body = {"source": "bad", "target": None, "runner": "bad", "incarnation": 1718000000.5,
            "digest": "d", "interval": 1.0, "stats": None}
    body.update(fields)
    return raw_envelope("runner.heartbeat", body)


@pytest.mark.parametrize(
    "fields",
    [{"interval": "x"}, {"runner": 5}, {"incarnation": "1718000000.5"}, {"interval": INF},
     {"interval": 0}, {"interval": -1.0}, {"interval": 1e9}, {"incarnation": True},
     {"incarnation": INF}, {"incarnation": 10**400}, {"runner": LONG_NAME}, {"stats": [1]}],
    ids=repr,
)
def test_the_heartbeats_that_stopped_liveness_are_dropped(fields: dict[str, Any]) -> None:
    s = ser()
    assert s.decode(heartbeat(**fields)) is None
    assert dropped(s) == {"invalid": 1}


def test_nan_cannot_even_be_read() -> None:
    s = ser()
    assert s.decode(heartbeat(interval=NAN)) is None
    assert dropped(s) == {"malformed": 1}


def test_an_int_is_a_float_a_bool_is_not_and_names_have_a_limit() -> None:
    s = ser()
    envelope = s.decode(heartbeat(incarnation=1718000000, interval=2,
                                  runner="r" * MAX_NAME_LENGTH))
    assert envelope is not None and envelope.message == BusHeartbeatMessage(
        source="bad", runner="r" * MAX_NAME_LENGTH, incarnation=1718000000, digest="d",
        interval=2)
    for wrong in ({"incarnation": False}, {"interval": True}, {"runner": "r" * 1025}):
        assert s.decode(heartbeat(**wrong)) is None
    assert dropped(s) == {"invalid": 3}


def snapshot(*entries: Any, runner: str = "ghost") -> bytes:
    return raw_envelope("registry.snapshot", {
        "source": runner, "target": None, "runner": runner, "workers": list(entries),
        "incarnation": 2.0, "digest": "d"})


def entry(**fields: Any) -> dict[str, Any]:
    return {"$t": ENTRY, "v": {"name": "w", **fields}}


def test_nested_registry_entries_are_validated_and_one_bad_entry_drops_the_snapshot() -> None:
    s = ser()
    good = s.decode(snapshot(entry(), entry(name="w2", parent="w", active=True, started_at=3)))
    assert good is not None and good.message == BusWorkerRegistryMessage(
        source="ghost", runner="ghost", incarnation=2.0, digest="d", workers=[
            WorkerRegistryEntry(name="w"),
            WorkerRegistryEntry(name="w2", parent="w", active=True, started_at=3)])
    bad: list[dict[str, Any]] = [
        entry(name=5), entry(active="yes"), entry(started_at=INF), entry(extra=1),
        entry(name="n" * (MAX_NAME_LENGTH + 1)), entry(parent="p" * (MAX_NAME_LENGTH + 1)),
        {"$t": ENTRY, "v": {}}, {"name": "w"}]
    for one in bad:
        assert s.decode(snapshot(entry(), one)) is None
    assert dropped(s) == {"invalid": len(bad)}


def test_a_registered_value_is_validated_wherever_it_is_even_in_a_payload() -> None:
    s = ser()
    body: dict[str, Any] = {"source": "a", "target": "w", "job_id": "j", "job_name": "echo",
                            "payload": {"deep": [{"x": entry(parent=3)}]}}
    assert s.decode(raw_envelope("job.request", body)) is None
    assert dropped(s) == {"invalid": 1}
    payload = {"deep": [{"x": entry(parent="p")}], 3: "int keys are carried as ever"}
    body["payload"] = {"$t": 2, "v": [[k, v] for k, v in payload.items()]}  # pairs: any keys
    envelope = s.decode(raw_envelope("job.request", body))
    assert envelope is not None and isinstance(envelope.message, BusJobRequestMessage)
    assert envelope.message.payload == {"deep": [{"x": WorkerRegistryEntry(name="w", parent="p")}],
                                        3: "int keys are carried as ever"}


@pytest.mark.parametrize(("value", "reason"), NESTED_JUNK, ids=repr)
def test_junk_nested_in_a_payload_drops_the_message(value: Any, reason: str) -> None:
    s = ser()
    body = {"source": "a", "job_id": "j", "payload": {"k": [value]}}
    assert s.decode(raw_envelope("job.request", body)) is None
    assert dropped(s) == {reason: 1}


def test_one_warning_per_reason_and_type(caplog: pytest.LogCaptureFixture) -> None:
    s = ser()
    with caplog.at_level(logging.WARNING, logger="pipecat_workers.bus"):
        for _ in range(50):
            s.decode(heartbeat(interval="x"))
            s.decode(snapshot(entry(name=5)))
    assert dropped(s) == {"invalid": 100}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "'runner.heartbeat'" in lines[0] and "'registry.entry'" in lines[1]


def test_why_a_value_was_refused_is_told_to_whoever_catches_the_drop() -> None:
    with pytest.raises(Drop) as info:
        build(BusHeartbeatMessage, "runner.heartbeat",
              {"source": "a", "runner": "r", "incarnation": 1.0, "interval": "x"})
    assert (info.value.reason, info.value.name) == ("invalid", "runner.heartbeat")
    assert info.value.detail == "interval: str does not match"


# -- an application's own messages -------------------------------------------------------------


@register_message(name="test.validation.mood")
class Mood(enum.Enum):
    GOOD = 1
    BAD = 2


@register_message(name="test.validation.point")
@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int = 0


@register_message(name="test.validation.reading")
@dataclass(kw_only=True, slots=True)
class Reading(BusDataMessage):
    count: int
    ratios: list[float] = field(default_factory=list)
    scores: dict[str, int] = field(default_factory=dict)
    pair: tuple[int, str] = (0, "")
    points: tuple[Point, ...] = ()
    mood: Mood | None = None
    unit: Literal["C", "F"] = "C"
    tag: Annotated[str, MaxLen(3)] = ""
    level: Annotated[int, Range(ge=0, le=10)] = 0
    sloppy: str = None  # type: ignore[assignment]  # a default of None also takes None
    later: ResolvedOnlyForTheTypeChecker | None = None  # type: ignore[name-defined]  # noqa: F821


def reading(**fields: Any) -> Reading:
    return Reading(source="sensor", count=1, **fields)


def test_an_application_message_is_checked_against_its_annotations() -> None:
    s = ser()
    good = reading(ratios=[0.5, 1], scores={"a": 1}, pair=(1, "x"), mood=Mood.BAD, unit="F",
                   points=(Point(1), Point(2, 3)), tag="abc", level=10, later=["x"])
    body = encode_fields(good, Reading)
    body["later"] = ["whatever: the name does not resolve, so it is not checked"]
    envelope = s.decode(raw_envelope("test.validation.reading", body))
    assert envelope is not None and isinstance(envelope.message, Reading), dropped(s)
    assert envelope.message.points == (Point(1), Point(2, 3)) and envelope.message.mood is Mood.BAD
    wrong: list[dict[str, Any]] = [
        {"count": 1.0}, {"count": True}, {"ratios": [0.5, "1"]}, {"ratios": [True]},
        {"ratios": [INF]}, {"scores": {"a": 1.5}}, {"scores": {"$t": 2, "v": [[1, 1]]}},
        {"pair": {"$t": 0, "v": [1]}}, {"pair": {"$t": 0, "v": ["1", "x"]}}, {"pair": [1, "x"]},
        {"points": {"$t": 0, "v": [{"x": 1}]}}, {"mood": 2}, {"mood": {"$t": ENTRY, "v": {"name":
        "w"}}}, {"unit": "K"}, {"tag": "abcd"}, {"level": 11}, {"level": -1}, {"level": 1.0},
        {"sloppy": 5},
    ]
    for change in wrong:
        assert s.decode(raw_envelope("test.validation.reading", {**body, **change})) is None, change
    assert dropped(s) == {"invalid": len(wrong)}
    assert s.decode(raw_envelope("test.validation.reading", {**body, "sloppy": None})) is not None


UserId = NewType("UserId", str)
T = TypeVar("T")


@pytest.mark.parametrize(
    ("annotation", "accepted", "refused"),
    [
        (float, [1.5, -2, 10**300], [True, float("inf"), float("nan"), 10**400, "1", None]),
        (int, [0, -(10**50), Mood.GOOD.value], [True, 1.0, "1", None]),
        (bool, [True, False], [0, 1, None]),
        (str | None, ["", None], [b"x", 5]),
        (list[int], [[], [1, 2]], [(1,), [1, "2"], [True], {"a": 1}]),
        (tuple[int, ...], [(), (1, 2)], [[1], (1, "x")]),
        (tuple[int, str], [(1, "x")], [(1,), (1, "x", 2), ("x", 1)]),
        (dict[str, float], [{}, {"a": 1.5}], [{"a": "x"}, {1: 1.5}, [("a", 1.5)]]),
        (dict[str, Any], [{}, {1: object()}], [[], "x", None]),
        (Sequence[int], [[1], (1,), "not checked inside"], [5, None]),
        (Mapping[str, int], [{"a": "not checked inside"}], [[], None]),
        (Callable[[], None] | None, [None], ["f", 5]),
        (Literal["a", 1], ["a", 1], [True, "b", 1.0]),
        (Annotated[list[str], MaxLen(2)], [[], ["a", "b"]], [["a", "b", "c"]]),
        (Annotated[float, Range(gt=0, le=1)], [1, 0.5], [0, 1.5, True]),
        (UserId, ["u"], [5]),
        (Point | Mood, [Point(1), Mood.BAD], [{"x": 1}, 1]),
        (Any, [object(), None], []),
        (T, [object(), None], []),
    ],
    ids=repr,
)
def test_what_each_annotation_accepts(annotation: Any, accepted: list[Any],
                                      refused: list[Any]) -> None:
    rule = rule_for(annotation)
    assert [v for v in accepted if not rule.accepts(v)] == []
    assert [v for v in refused if rule.accepts(v)] == []


# -- on real buses: before any handler, and liveness goes on ------------------------------------


class Watcher(BaseWorker):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.lost: list[WorkerLostData] = []

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)


async def test_forged_input_never_reaches_a_handler_and_membership_goes_on(
        cluster: Cluster) -> None:
    watcher = Watcher("watcher")
    runner = await cluster.local(watcher)
    seen = Recorder("seen")
    runner.bus.subscribe(seen, role="observer")
    await cluster.local(BaseWorker("w"))
    await watcher.watch_workers("w")
    forged = [
        heartbeat(runner="bad-1", interval="x"), heartbeat(runner=5),
        heartbeat(runner="bad-2", incarnation="1"), heartbeat(runner="bad-3", interval=INF),
        heartbeat(runner=LONG_NAME),
        snapshot(entry(name="bad-w"), entry(active="yes"), runner="bad-6"),
        raw_envelope("job.check", {"source": "bad-4", "target": "w", "job_ids": [1]}),
        raw_envelope("session.end", {"source": "bad-5", "reason": {"$t": 0, "v": 5}}),
    ]
    async with attacker(cluster.bus()) as send:
        for data in forged:
            await send(data)
        await wait_until(lambda: sum(runner.stats()["messages"]["wire_dropped"].values())
                         == len(forged), timeout=5)
        ghost = raw_envelope("registry.snapshot", {
            "source": "ghost", "runner": "ghost", "incarnation": 2.0, "digest": "g",
            "workers": [entry(name="ghost-w")]})
        await send(ghost)  # a valid one passes, from a runner that never says anything again
        await wait_until(lambda: "ghost-w" in runner.registry, timeout=5)
    assert runner.stats()["messages"]["wire_dropped"] == {"invalid": 7, "malformed": 1}
    assert [m.source for m in seen.messages if m.source.startswith(("bad", "ghost"))] == [
        "ghost"]
    assert runner.stats()["messages"]["received"].get("BusJobCheckMessage", 0) == 0
    # Membership still works: the silent ghost is declared lost, the live peer is not.
    await watcher.watch_workers("ghost-w")
    await wait_until(lambda: "ghost-w" not in runner.registry, timeout=8)
    assert [(d.worker_name, d.reason) for d in watcher.lost] == [("ghost-w", "lost")]
    await asyncio.sleep(1.0)
    assert "w" in runner.registry and not any(d.worker_name == "w" for d in watcher.lost)


# -- property: no hostile body is ever accepted, and decoding never raises -----------------------


@pytest.mark.parametrize("cls", TYPES, ids=type_name)
def test_no_hostile_body_of_any_type_is_ever_accepted(cls: type[BusMessage]) -> None:
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile_bodies([cls]))
    def dropped_once(hostile: tuple[str, dict[str, Any]]) -> None:
        s = ser()
        assert s.decode(raw_envelope(*hostile)) is None
        counts = dropped(s)
        assert sum(counts.values()) == 1 and set(counts) <= DROPPED, counts

    dropped_once()
