"""Tests for the JSON wire serializer: round trips, the allow-list, drops, limits and signing."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import inspect
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipecat_workers.bus import messages
from pipecat_workers.bus import replay as replay_module
from pipecat_workers.bus import serializer as serializer_module
from pipecat_workers.bus.messages import (
    BusDataMessage,
    BusEndMessage,
    BusFrameMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusLocalMessage,
    BusMessage,
    BusUnregisteredMessage,
    BusWorkerLocalErrorMessage,
    BusWorkerRegistryMessage,
    FrameDirection,
)
from pipecat_workers.bus.serializer import (
    Envelope,
    JSONMessageSerializer,
    MessageSerializer,
)
from pipecat_workers.catalogue import register_message, registered, type_name
from pipecat_workers.errors import MessageTooLargeError, SerializationError
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.types import WorkerRegistryEntry

# -- test-only registered types ----------------------------------------------------------------


@register_message(name="test.serializer.color")
class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


@register_message(name="test.serializer.text_frame")
@dataclass(kw_only=True, slots=True)
class TextFrame:
    text: str
    pts: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    children: tuple[Any, ...] = ()


@register_message(name="test.serializer.point")
@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int


@register_message(name="test.serializer.local")
@dataclass(kw_only=True, slots=True)
class RegisteredLocalMessage(BusLocalMessage, BusDataMessage):
    note: str = ""


@dataclass(kw_only=True, slots=True)
class UnregisteredMessage(BusDataMessage):
    value: int = 0


@dataclass
class Unregistered:
    a: int = 1


class UnregisteredEnum(enum.IntEnum):
    ONE = 1


def ser(**kwargs: Any) -> JSONMessageSerializer:
    kwargs.setdefault("secret", "")
    return JSONMessageSerializer(**kwargs)


def round_trip(message: BusMessage, s: JSONMessageSerializer | None = None) -> BusMessage:
    s = s or ser()
    decoded = s.deserialize(s.serialize(message))
    assert decoded is not None, s.stats()
    return decoded


def envelope(**overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "v": 1,
        "id": "abc-1",
        "from": "runner-x",
        "inc": 1.0,
        "ts": time.time(),
        "type": "session.end",
        "body": {"source": "a", "target": None, "reason": "done"},
    }
    env.update(overrides)
    return env


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


RICH_PAYLOAD: dict[Any, Any] = {
    "text": "héllo ✓",
    "n": 3,
    "f": -0.0,
    "big": 2**80,
    "ok": True,
    "none": None,
    "list": [1, [2, [3, "x"]], (4, 5), b"\x00\xff"],
    "tuple": (1, "a", (2.5, None)),
    "bytes": b"\x00\x01binary",
    "status": JobStatus.FAILED,
    "dir": FrameDirection.UPSTREAM,
    1: "int key",
    (1, "a"): "tuple key",
    2.5: "float key",
    None: "none key",
    JobStatus.ERROR: "enum key",
    "nested": {"$t": "job.status", "v": "completed", "deeper": {"$t": 1, "v": "AAE="}},
    "empty": {},
    "entry": WorkerRegistryEntry(name="w", active=True, started_at=1.5),
}


def sample_value(annotation: str, name: str) -> Any:
    values: dict[str, Any] = {
        "str": f"value-of-{name}",
        "str | None": f"maybe-{name}",
        "list[str]": [f"{name}-1", f"{name}-2"],
        "Name": f"value-of-{name}",
        "Name | None": f"maybe-{name}",
        "list[Name]": [f"{name}-1", f"{name}-2"],
        "Annotated[float, Range(gt=0.0, le=MAX_HEARTBEAT_INTERVAL)]": 12.5,
        "bool": True,
        "float": 12.5,
        "float | None": 3.25,
        "dict[str, Any] | None": dict(RICH_PAYLOAD),
        "list[WorkerRegistryEntry]": [
            WorkerRegistryEntry(name="a"),
            WorkerRegistryEntry(name="b", parent="a", bridged=True, started_at=2.0),
        ],
        "JobStatus": JobStatus.CANCELLED,
        "FrameDirection": FrameDirection.UPSTREAM,
        "Any": TextFrame(text="hi", pts=7, meta={"k": (1, 2)}),
    }
    assert annotation in values, f"no sample value for a field of type {annotation!r}"
    return values[annotation]


def framework_messages() -> list[type[BusMessage]]:
    return [
        obj
        for _, obj in inspect.getmembers(messages, inspect.isclass)
        if issubclass(obj, BusMessage) and type_name(obj) is not None
    ]


# -- round trips -------------------------------------------------------------------------------


def test_every_registered_framework_message_round_trips() -> None:
    classes = framework_messages()
    assert len(classes) >= 25
    s = ser()
    for cls in classes:
        kwargs = {
            f.name: sample_value(str(f.type), f.name) for f in dataclasses.fields(cls) if f.init
        }
        message = cls(**kwargs)
        data = s.serialize(message, sender="runner-1", incarnation=5.5)
        env = s.decode(data)
        assert env is not None, (cls, s.stats())
        assert type(env.message) is cls
        assert env.message == message
        assert json.loads(data)["type"] == type_name(cls)
    assert sum(s.stats().values()) == 0


def test_local_messages_are_not_registered_by_the_framework() -> None:
    for _, obj in inspect.getmembers(messages, inspect.isclass):
        if issubclass(obj, BusLocalMessage) and obj is not BusLocalMessage:
            assert type_name(obj) is None


def test_envelope_fields_and_wire_format() -> None:
    s = ser()
    message = BusJobRequestMessage(
        source="parent", target="worker", job_id="t-1", payload={"q": "x"}
    )
    before = time.time()
    data = s.serialize(message, sender="runner-1", incarnation=1718000000.5)
    obj = json.loads(data)
    assert list(obj) == ["v", "id", "from", "inc", "ts", "type", "body"]
    assert obj["v"] == 1 and obj["type"] == "job.request" and obj["from"] == "runner-1"
    assert b" " not in data and b"pipecat_workers" not in data
    env = s.decode(data)
    assert isinstance(env, Envelope)
    assert env.sender == "runner-1" and env.incarnation == 1718000000.5
    assert env.message_id == obj["id"] and before <= env.timestamp <= time.time()
    other = json.loads(s.serialize(message))["id"]
    assert other != env.message_id
    assert isinstance(s, MessageSerializer)


def test_payload_keys_of_any_type_round_trip_exactly() -> None:
    payload: dict[Any, Any] = {
        1: "a",
        (1, (2, "x")): "b",
        2.5: "c",
        None: "d",
        False: "e",
        JobStatus.COMPLETED: "f",
        Point(x=1, y=2): "g",
        b"k": "h",
    }
    message = BusJobRequestMessage(source="a", job_id="1", payload={"outer": payload, 7: [payload]})
    decoded = round_trip(message)
    assert isinstance(decoded, BusJobRequestMessage)
    assert decoded == message
    assert decoded.payload is not None
    inner = decoded.payload["outer"]
    assert [type(k) for k in inner] == [type(k) for k in payload]
    assert list(inner) == list(payload)
    assert type(next(k for k in inner if isinstance(k, enum.Enum))) is JobStatus


def test_dicts_containing_the_tag_key_are_escaped() -> None:
    tricky = {"$t": "job.status", "v": "completed"}
    payload = {
        "a": tricky,
        "b": {"$t": 0, "v": [1, 2]},
        "c": [{"$t": 1, "v": "AAE="}],
        "d": {"x": {"$t": "os.system", "v": {"cmd": "rm"}}},
        "$t": "top-level tag key",
    }
    decoded = round_trip(BusJobRequestMessage(source="a", job_id="1", payload=payload))
    assert isinstance(decoded, BusJobRequestMessage)
    assert decoded.payload == payload
    assert type(decoded.payload["a"]) is dict
    assert decoded.payload["a"]["v"] == "completed"


def test_bytes_tuples_and_nested_lists() -> None:
    payload = {
        "b": b"\x00\x01\xfe\xff",
        "empty_b": b"",
        "t": (1, (2, 3), [4, (5,)], ()),
        "l": [[[], [[1]]], ["x", None, True, 1.5]],
        "surrogate": "\ud800 lone",
        "unicode": "日本語",
    }
    decoded = round_trip(BusJobRequestMessage(source="a", job_id="1", payload=payload))
    assert isinstance(decoded, BusJobRequestMessage) and decoded.payload is not None
    assert decoded.payload == payload
    assert type(decoded.payload["b"]) is bytes
    assert type(decoded.payload["t"]) is tuple and type(decoded.payload["t"][2]) is list
    assert type(decoded.payload["t"][2][1]) is tuple
    assert type(decoded.payload["l"]) is list


def test_job_status_keeps_its_type() -> None:
    message = BusJobResponseMessage(
        source="w", target="p", job_id="1", status=JobStatus.FAILED, response={"s": JobStatus.ERROR}
    )
    decoded = round_trip(message)
    assert isinstance(decoded, BusJobResponseMessage) and decoded.response is not None
    assert type(decoded.status) is JobStatus and decoded.status is JobStatus.FAILED
    assert type(decoded.response["s"]) is JobStatus


def test_frame_direction_and_user_frames_keep_their_types() -> None:
    frame = TextFrame(
        text="hello",
        pts=10,
        meta={"color": Color.PAIR, 3: Color.RED},
        children=(TextFrame(text="child"), Point(x=1, y=2)),
    )
    message = BusFrameMessage(
        source="a", frame=frame, direction=FrameDirection.UPSTREAM, bridge="b"
    )
    decoded = round_trip(message)
    assert isinstance(decoded, BusFrameMessage)
    assert decoded == message
    assert type(decoded.frame) is TextFrame and decoded.direction is FrameDirection.UPSTREAM
    assert decoded.frame.meta["color"] is Color.PAIR
    assert type(decoded.frame.children[1]) is Point


def test_registry_entries_come_back_as_entries() -> None:
    message = BusWorkerRegistryMessage(
        source="r", runner="r", workers=[WorkerRegistryEntry(name="w", active=True)], digest="d"
    )
    decoded = round_trip(message)
    assert isinstance(decoded, BusWorkerRegistryMessage)
    assert type(decoded.workers[0]) is WorkerRegistryEntry and decoded == message


# -- encode errors -----------------------------------------------------------------------------


def test_unsupported_value_error_names_the_field_path() -> None:
    message = BusJobRequestMessage(
        source="a", job_id="1", payload={"when": datetime.datetime.now()}
    )
    with pytest.raises(SerializationError) as info:
        ser().serialize(message)
    assert str(info.value) == (
        "cannot encode BusJobRequestMessage.payload['when']: datetime is not a supported type "
        "(register it with register_message or convert it)"
    )


@pytest.mark.parametrize(
    ("payload", "path", "what"),
    [
        ({"a": [1, {"b": {1, 2}}]}, "payload['a'][1]['b']", "set"),
        ({"a": (1, Unregistered())}, "payload['a'][1]", "Unregistered"),
        ({"a": UnregisteredEnum.ONE}, "payload['a']", "UnregisteredEnum"),
        ({5: {"x": object()}}, "payload[5]['x']", "object"),
        ({"k": {object(): 1}}, "payload['k']<key", "object"),
        ({"f": [1.0, float("nan")]}, "payload['f'][1]", "NaN"),
        ({"f": {"g": float("inf")}}, "payload['f']['g']", "NaN and infinity"),
        ({"ba": bytearray(b"x")}, "payload['ba']", "bytearray"),
    ],
)
def test_encode_errors_name_the_path(payload: dict[Any, Any], path: str, what: str) -> None:
    with pytest.raises(SerializationError) as info:
        ser().serialize(BusJobRequestMessage(source="a", job_id="1", payload=payload))
    text = str(info.value)
    assert text.startswith(f"cannot encode BusJobRequestMessage.{path}"), text
    assert what in text


def test_frame_field_path_and_circular_data() -> None:
    frame = TextFrame(text="x", meta={"when": datetime.date.today()})
    with pytest.raises(SerializationError, match=r"BusFrameMessage\.frame\.meta\['when'\]"):
        ser().serialize(BusFrameMessage(source="a", frame=frame))
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="circular"):
        ser().serialize(BusJobRequestMessage(source="a", job_id="1", payload={"l": loop}))


def test_local_and_unregistered_messages_are_refused() -> None:
    with pytest.raises(SerializationError, match="local-only"):
        ser().serialize(BusWorkerLocalErrorMessage(source="a", error="x"))
    with pytest.raises(SerializationError, match="local-only"):
        ser().serialize(RegisteredLocalMessage(source="a"))
    with pytest.raises(SerializationError, match="not a registered bus message"):
        ser().serialize(UnregisteredMessage(source="a"))
    with pytest.raises(SerializationError, match="not a registered bus message"):
        ser().serialize(Point(x=1, y=2))  # type: ignore[arg-type]


# -- drops -------------------------------------------------------------------------------------


def test_unknown_type_is_dropped_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    s = ser()
    bad = raw(envelope(type="no.such.message"))
    with caplog.at_level(logging.WARNING, logger="pipecat_workers.bus"):
        assert s.decode(bad) is None
        assert s.decode(bad) is None
        assert s.decode(raw(envelope(type="another.unknown"))) is None
    assert s.stats()["unknown_type"] == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "no.such.message" in line]) == 1
    assert len([line for line in lines if "another.unknown" in line]) == 1


def test_an_observer_may_keep_unknown_types_by_name_and_raw_fields() -> None:
    s = ser(keep_unknown=True)
    body = {"source": "sensor", "target": "controller", "celsius": 19.5,
            "x": {"$t": "not.registered", "v": {}}}
    message = s.deserialize(raw(envelope(type="app.reading", body=body)))
    assert message == BusUnregisteredMessage(
        source="sensor", target="controller", type_name="app.reading",
        body={"celsius": 19.5, "x": {"$t": "not.registered", "v": {}}})
    assert s.stats()["unknown_type"] == 0
    with pytest.raises(SerializationError, match="local-only"):
        s.serialize(message)  # a view of what passed, never sent on
    bad_source = {"source": 3, "celsius": 1}
    assert s.decode(raw(envelope(type="app.reading", body=bad_source))) is None
    assert s.stats()["malformed"] == 1


def test_nested_unknown_type_drops_the_whole_message() -> None:
    s = ser()
    body = {"source": "a", "job_id": "1", "payload": {"x": {"$t": "not.registered", "v": {}}}}
    assert s.decode(raw(envelope(type="job.request", body=body))) is None
    assert s.stats()["unknown_type"] == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json at all", "malformed"),
        (b"\xff\xfe\x00garbage", "malformed"),
        (b"", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (b'"just a string"', "malformed"),
        (b"null", "malformed"),
        (raw(envelope(v=2)), "version"),
        (raw(envelope(v="1")), "version"),
        (raw({k: v for k, v in envelope().items() if k != "v"}), "malformed"),
        (raw({k: v for k, v in envelope().items() if k != "id"}), "malformed"),
        (raw({k: v for k, v in envelope().items() if k != "body"}), "malformed"),
        (raw(envelope(type=5)), "malformed"),
        (raw(envelope(ts="yesterday")), "malformed"),
        (raw(envelope(inc=True)), "malformed"),
        (raw(envelope(body=[1])), "malformed"),
        (raw(envelope(body={"source": "a", "reason": "x", "extra": 1})), "invalid"),
        (raw(envelope(body={"reason": "x"})), "invalid"),
        (raw(envelope(body={"source": 5})), "invalid"),
        (raw(envelope(body={"source": "a", "target": ["x"]})), "invalid"),
        (
            raw(envelope(body={"source": "a", "reason": {"$t": 1, "v": "@@not base64"}})),
            "malformed",
        ),
        (raw(envelope(body={"source": "a", "reason": {"$t": 9, "v": 1}})), "malformed"),
        (
            raw(envelope(body={"source": "a", "reason": {"$t": "job.status", "v": "nope"}})),
            "malformed",
        ),
        (raw(envelope(body={"source": "a", "reason": {"$t": 2, "v": [[[1], 2]]}})), "malformed"),
        (raw(envelope(body={"source": "a", "reason": {"$t": 2, "v": [1]}})), "malformed"),
        (raw(envelope(body={"source": "a", "reason": {"$t": "x", "v": 1, "w": 2}})), "malformed"),
        (
            b'{"v":1,"id":"a","from":"r","inc":0,"ts":NaN,"type":"session.end","body":{}}',
            "malformed",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "malformed"),
        (raw(envelope(type="registry.entry", body={"name": "w"})), "not_a_message"),
        (raw(envelope(type="job.status", body={})), "not_a_message"),
        (raw(envelope(type="frame.direction", body={})), "not_a_message"),
        (raw(envelope(type="test.serializer.local", body={"source": "a"})), "local_only"),
    ],
)
def test_bad_input_is_dropped_with_a_reason(data: bytes, reason: str) -> None:
    s = ser()
    assert s.decode(data) is None
    assert s.deserialize(data) is None
    stats = s.stats()
    assert stats[reason] == 2
    assert sum(stats.values()) == 2


def test_extra_body_keys_are_never_set_as_attributes() -> None:
    s = ser()
    body = {"source": "a", "reason": "x", "__class__": "evil"}
    assert s.decode(raw(envelope(body=body))) is None
    assert s.stats()["invalid"] == 1
    ok = s.decode(raw(envelope(body={"source": "a", "reason": "x"})))
    assert ok is not None and ok.message == BusEndMessage(source="a", reason="x")


def test_import_paths_are_never_imported(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    module_name = "serializer_sentinel_module_7f3a"
    (tmp_path / f"{module_name}.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = ser()
    names = [
        "os.system",
        "pipecat_workers.bus.messages.BusEndMessage",
        f"{module_name}.Thing",
        f"{module_name}:Thing",
    ]
    for name in names:
        assert s.decode(raw(envelope(type=name))) is None
    nested = {"source": "a", "reason": {"$t": f"{module_name}.Thing", "v": {}}}
    assert s.decode(raw(envelope(body=nested))) is None
    assert s.stats()["unknown_type"] == len(names) + 1
    assert module_name not in sys.modules


def test_oversize_fails_at_send_and_drops_at_receive() -> None:
    small = ser(max_size=300)
    big_message = BusJobRequestMessage(source="a", job_id="1", payload={"blob": "x" * 1000})
    with pytest.raises(MessageTooLargeError) as info:
        small.serialize(big_message)
    assert "BusJobRequestMessage" in str(info.value) and "300" in str(info.value)
    assert isinstance(info.value, SerializationError)
    data = ser().serialize(big_message)
    assert small.decode(data) is None
    assert small.stats()["oversize"] == 1
    assert small.decode(b"{" * 301) is None
    assert small.stats()["oversize"] == 2 and small.stats()["malformed"] == 0


# -- signing -----------------------------------------------------------------------------------


def test_signed_round_trip() -> None:
    sender = ser(secret="s3cret")
    receiver = ser(secret=b"s3cret")
    message = BusJobRequestMessage(source="a", job_id="1", payload={"x": (1, b"2")})
    data = sender.serialize(message, sender="r1")
    assert sender.signed and receiver.signed
    assert data.endswith(b'"}') and b'"sig":"' in data
    env = receiver.decode(data)
    assert env is not None and env.message == message and env.sender == "r1"
    unsigned_receiver = ser()
    assert unsigned_receiver.deserialize(data) == message


def test_unsigned_message_dropped_by_a_signing_receiver() -> None:
    receiver = ser(secret="k")
    assert receiver.decode(ser().serialize(BusEndMessage(source="a"))) is None
    assert receiver.stats()["unsigned"] == 1


def test_tampered_and_wrongly_signed_messages_are_forged() -> None:
    receiver = ser(secret="k")
    data = ser(secret="k").serialize(BusEndMessage(source="a", reason="polite"))
    tampered = data.replace(b"polite", b"rudely")
    assert tampered != data and receiver.decode(tampered) is None
    wrong = ser(secret="other").serialize(BusEndMessage(source="a"))
    assert receiver.decode(wrong) is None
    flipped_sig = data[:-3] + (b"0" if data[-3:-2] != b"0" else b"1") + data[-2:]
    assert receiver.decode(flipped_sig) is None
    assert receiver.stats()["forged"] == 3
    assert receiver.decode(data) is not None


def test_replayed_message_is_dropped() -> None:
    s = ser(secret="k")
    data = s.serialize(BusEndMessage(source="a"))
    assert s.decode(data) is not None
    assert s.decode(data) is None
    assert s.stats()["replayed"] == 1
    assert s.decode(s.serialize(BusEndMessage(source="a"))) is not None


def test_replay_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # More in tests/bus/test_signing.py: per sender it is a fixed window, whatever the rate.
    monkeypatch.setattr(replay_module, "MAX_SENDERS", 10)
    s = ser(secret="k")
    for _ in range(50):
        assert s.decode(ser(secret="k").serialize(BusEndMessage(source="a"))) is not None
    assert len(s._replay._senders) <= 10


@pytest.mark.parametrize("offset", [-120.0, 120.0])
def test_stale_timestamps_are_dropped(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    sender = ser(secret="k")
    real_time = time.time
    monkeypatch.setattr(serializer_module.time, "time", lambda: real_time() + offset)
    data = sender.serialize(BusEndMessage(source="a"))
    monkeypatch.undo()
    receiver = ser(secret="k", max_age=60.0)
    assert receiver.decode(data) is None
    assert receiver.stats()["stale"] == 1
    assert ser(secret="k", max_age=300.0).decode(data) is not None


def test_secret_from_environment_read_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPECAT_WORKERS_SECRET", "from-env")
    env_serializer = JSONMessageSerializer()
    explicit_empty = JSONMessageSerializer(secret="")
    monkeypatch.setenv("PIPECAT_WORKERS_SECRET", "changed-later")
    assert env_serializer.signed and not explicit_empty.signed
    data = env_serializer.serialize(BusEndMessage(source="a"))
    assert ser(secret="from-env").decode(data) is not None
    assert ser(secret="changed-later").decode(data) is None
    monkeypatch.setenv("PIPECAT_WORKERS_SECRET", "")
    assert not JSONMessageSerializer().signed
    monkeypatch.delenv("PIPECAT_WORKERS_SECRET")
    assert b'"sig"' not in JSONMessageSerializer().serialize(BusEndMessage(source="a"))


# -- fuzzing -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(["$t", "v", "job.status", "frame", "registry.entry", "completed"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["$t", "v", "source", "target", "x"]) | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 2, "1", None]),
        "id": st.text(max_size=5) | st.integers(),
        "from": st.text(max_size=5),
        "inc": st.floats(allow_nan=False) | st.integers() | st.text(max_size=2),
        "ts": st.floats(allow_nan=False) | st.just(time.time()),
        "type": st.sampled_from(sorted(registered())) | st.text(max_size=8),
        "body": st.dictionaries(
            st.sampled_from(["source", "target", "job_id", "payload", "frame", "reason", "x"]),
            json_values,
            max_size=5,
        )
        | json_values,
    },
)
fuzz_settings = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@fuzz_settings
@given(st.binary(max_size=300))
def test_fuzz_binary_never_raises(data: bytes) -> None:
    for s in (ser(), ser(secret="k")):
        result = s.decode(data)
        assert result is None or isinstance(result, Envelope)


@fuzz_settings
@given(json_values)
def test_fuzz_json_values_never_raise(value: Any) -> None:
    s = ser()
    assert s.decode(json.dumps(value).encode()) is None or isinstance(value, dict)


@fuzz_settings
@given(envelopes)
def test_fuzz_envelopes_never_raise(env: dict[str, Any]) -> None:
    s = ser()
    result = s.decode(json.dumps(env).encode())
    if result is None:
        assert sum(s.stats().values()) == 1
    else:
        assert isinstance(result.message, BusMessage)
        assert result.message_id == env["id"]
