"""Adapters: types that are not plain dataclasses or enums on the wire, and in-memory copies."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from pipecat_workers import catalogue
from pipecat_workers.bus.codec import Unsupported, copy_value, decode_value, encode_value
from pipecat_workers.bus.messages import (
    BusFrameMessage,
    BusJobRequestMessage,
    BusWorkerLocalErrorMessage,
)
from pipecat_workers.bus.serializer import JSONMessageSerializer
from pipecat_workers.catalogue import (
    adapter_for,
    adapter_named,
    lookup,
    register_adapter,
    register_message,
    registered,
    type_name,
)
from pipecat_workers.errors import ConfigurationError, SerializationError
from pipecat_workers.jobs.types import JobStatus

# -- test-only types ---------------------------------------------------------------------------


class Money:
    """Not a dataclass: crosses through an adapter."""

    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount, other.currency)

    __hash__ = None  # type: ignore[assignment]


register_adapter(Money, encode=lambda m: {"amount": str(m.amount), "currency": m.currency},
                 decode=lambda d: Money(Decimal(d["amount"]), d["currency"]),
                 name="test.adapters.money")


class Shape:
    def __init__(self, sides: int) -> None:
        self.sides = sides


class Square(Shape):
    def __init__(self) -> None:
        super().__init__(4)


class Triangle(Shape):
    def __init__(self) -> None:
        super().__init__(3)


register_adapter(Shape, encode=lambda s: s.sides, decode=Shape, name="test.adapters.shape",
                 subclasses=True)


class Closed:
    """Its adapter does not take subclasses."""

    def __init__(self, x: Any = None) -> None:
        self.x = x


class ClosedChild(Closed):
    pass


register_adapter(Closed, encode=lambda c: {"x": c.x}, decode=lambda d: Closed(d["x"]),
                 name="test.adapters.closed")


class Fragile:
    """Decoding fails when the value says so; encoding fails on a negative value."""

    def __init__(self, value: int) -> None:
        if value < 0:
            raise ValueError("negative")
        self.value = value


def _encode_fragile(f: Fragile) -> int:
    if f.value == 13:
        raise ValueError("unlucky")
    return f.value


register_adapter(Fragile, encode=_encode_fragile, decode=Fragile, name="test.adapters.fragile")


def ser() -> JSONMessageSerializer:
    return JSONMessageSerializer(secret="")


def request(payload: dict[Any, Any]) -> BusJobRequestMessage:
    return BusJobRequestMessage(source="a", target="b", job_id="j-1", payload=payload)


def round_trip(payload: dict[Any, Any]) -> dict[Any, Any]:
    s = ser()
    message = s.deserialize(s.serialize(request(payload)))
    assert isinstance(message, BusJobRequestMessage), s.stats()
    assert message.payload is not None
    return message.payload


def envelope(payload: Any) -> bytes:
    body = {"source": "a", "target": "b", "job_id": "j-1", "payload": payload}
    return json.dumps({"v": 1, "id": "x-1", "from": "r", "inc": 1.0, "ts": time.time(),
                       "type": "job.request", "body": body}).encode()


# -- round trips -------------------------------------------------------------------------------


def test_adapted_value_round_trips_with_its_wire_form() -> None:
    payload = {"price": Money(Decimal("9.99"), "EUR"), "list": [Money(Decimal("1"), "USD")]}
    data = ser().serialize(request(payload))
    wire = json.loads(data)["body"]["payload"]["price"]
    assert wire == {"$t": "test.adapters.money", "v": {"amount": "9.99", "currency": "EUR"}}
    decoded = round_trip(payload)
    assert decoded == payload
    assert type(decoded["price"].amount) is Decimal


def test_adapter_inner_values_are_encoded_in_turn() -> None:
    register_adapter(Triangle, encode=lambda t: (t.sides, b"\x00", JobStatus.FAILED),
                     decode=lambda v: v, name="test.adapters.triangle")
    try:
        decoded = round_trip({"t": Triangle()})
        assert decoded["t"] == (3, b"\x00", JobStatus.FAILED)
        assert type(decoded["t"]) is tuple and decoded["t"][2] is JobStatus.FAILED
    finally:
        register_adapter(Triangle, encode=lambda s: s.sides, decode=Shape,
                         name="test.adapters.triangle")


def test_subclasses_use_the_nearest_adapter_and_decode_as_it_says() -> None:
    decoded = round_trip({"s": Square()})
    assert type(decoded["s"]) is Shape and decoded["s"].sides == 4
    assert adapter_for(Square) is adapter_named("test.adapters.shape")
    assert adapter_for(Square) is adapter_for(Square)  # cached


def test_an_adapter_without_subclasses_refuses_them() -> None:
    assert adapter_for(ClosedChild) is None
    with pytest.raises(SerializationError, match=r"payload\['c'\]: ClosedChild is not a supported"):
        ser().serialize(request({"c": ClosedChild()}))


def test_a_subclass_registered_later_takes_over_from_the_cache() -> None:
    class Pentagon(Shape):
        def __init__(self) -> None:
            super().__init__(5)

    assert adapter_for(Pentagon) is adapter_named("test.adapters.shape")
    register_adapter(Pentagon, encode=lambda p: None, decode=lambda _: Pentagon(),
                     name="test.adapters.pentagon")
    assert type(round_trip({"p": Pentagon()})["p"]) is Pentagon


def test_a_registered_dataclass_subclass_wins_over_the_adapter() -> None:
    @register_message(name="test.adapters.hexagon")
    @dataclass
    class Hexagon(Shape):
        label: str = "hex"

    value = Hexagon()
    decoded = round_trip({"h": value})
    assert type(decoded["h"]) is Hexagon and decoded["h"].label == "hex"


def test_adapter_names_are_known_but_are_not_messages() -> None:
    assert registered()["test.adapters.money"] is Money
    assert lookup("test.adapters.money") is None and type_name(Money) is None
    s = ser()
    raw = json.dumps({"v": 1, "id": "x", "from": "r", "inc": 1.0, "ts": time.time(),
                      "type": "test.adapters.money", "body": {"source": "a"}}).encode()
    assert s.decode(raw) is None
    assert s.stats()["not_a_message"] == 1


# -- decoding never raises ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"$t": "test.adapters.fragile", "v": -1}, "malformed"),  # decode raises
        ({"$t": "test.adapters.money", "v": {"amount": "x"}}, "malformed"),
        ({"$t": "test.adapters.money", "v": 5}, "malformed"),
        ({"$t": "test.adapters.money", "v": {"amount": "1", "currency": "E"}, "w": 1}, "malformed"),
        ({"$t": "test.adapters.nobody", "v": 1}, "unknown_type"),
        ({"$t": "test.adapters.shape", "v": {"$t": "test.adapters.nobody", "v": 1}},
         "unknown_type"),
    ],
)
def test_bad_adapted_values_drop_the_message(value: Any, reason: str) -> None:
    s = ser()
    assert s.decode(envelope({"x": [value]})) is None
    assert s.stats()[reason] == 1 and sum(s.stats().values()) == 1


def test_a_good_adapted_value_in_a_crafted_envelope_decodes() -> None:
    s = ser()
    env = s.decode(envelope({"x": {"$t": "test.adapters.fragile", "v": 7}}))
    assert env is not None and isinstance(env.message, BusJobRequestMessage)
    assert env.message.payload is not None and env.message.payload["x"].value == 7


# -- encode errors -----------------------------------------------------------------------------


def test_encode_failure_names_the_field() -> None:
    with pytest.raises(SerializationError) as info:
        ser().serialize(request({"f": [Fragile(13)]}))
    assert str(info.value) == (
        "cannot encode BusJobRequestMessage.payload['f'][0]: Fragile cannot be encoded: unlucky")


def test_unsupported_value_inside_an_adapter_dict_reads_as_a_field() -> None:
    with pytest.raises(SerializationError, match=r"payload\['m'\]\.currency: object is not a"):
        ser().serialize(request({"m": Money(Decimal(1), object())}))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match=r"payload\['m'\]\.currency: NaN"):
        ser().serialize(request({"m": Money(Decimal(1), math.nan)}))  # type: ignore[arg-type]


def test_frames_that_are_adapted_name_their_path_in_a_frame_message() -> None:
    with pytest.raises(SerializationError, match=r"BusFrameMessage\.frame\.x\[0\]: set"):
        ser().serialize(BusFrameMessage(source="a", frame=Closed([{1}])))


# -- registration ------------------------------------------------------------------------------


def test_name_collisions_are_refused_both_ways() -> None:
    class Other:
        pass

    with pytest.raises(ConfigurationError, match="already used by"):
        register_adapter(Other, encode=str, decode=str, name="test.adapters.money")
    with pytest.raises(ConfigurationError, match="already used by"):
        register_adapter(Other, encode=str, decode=str, name="job.status")

    @dataclass
    class Plain:
        a: int = 0

    with pytest.raises(ConfigurationError, match="already used by"):
        register_message(Plain, name="test.adapters.money")
    with pytest.raises(ConfigurationError):
        register_adapter(Other, encode="no", decode=str)  # type: ignore[arg-type]


def test_registering_a_class_again_replaces_its_registration() -> None:
    @dataclass
    class Moving:
        a: int = 1

    register_message(Moving, name="test.adapters.moving.plain")
    register_adapter(Moving, encode=lambda m: m.a, decode=lambda a: Moving(a + 1),
                     name="test.adapters.moving.adapted")
    assert lookup("test.adapters.moving.plain") is None and type_name(Moving) is None
    assert round_trip({"m": Moving(1)})["m"] == Moving(2)
    register_message(Moving, name="test.adapters.moving.plain")
    assert adapter_named("test.adapters.moving.adapted") is None and adapter_for(Moving) is None
    assert round_trip({"m": Moving(1)})["m"] == Moving(1)


def test_a_registration_hook_can_take_over_register_message() -> None:
    class Special:
        pass

    taken: list[tuple[type, str | None]] = []

    def hook(cls: type, name: str | None) -> bool:
        if issubclass(cls, Special):
            taken.append((cls, name))
            register_adapter(cls, encode=lambda s: None, decode=lambda _: cls(),
                             name=name or "test.adapters.special")
            return True
        return False

    catalogue.add_registration_hook(hook)
    catalogue.add_registration_hook(hook)  # once only
    try:
        assert register_message(Special) is Special
        assert taken == [(Special, None)]
        assert type(round_trip({"s": Special()})["s"]) is Special
        with pytest.raises(ConfigurationError, match="must be a dataclass or an Enum"):
            register_message(Shape)  # not the hook's: the usual rule
    finally:
        catalogue._hooks.remove(hook)
    assert hook not in catalogue._hooks


# -- copies ------------------------------------------------------------------------------------


COPY_CASES: list[Any] = [
    {"b": b"\x00\xff", "t": (1, (2, "x"), [3]), "n": None, "f": -0.0, "big": 2**70},
    {1: "int key", (1, 2): "tuple key", JobStatus.ERROR: "enum key", None: [b"", ()]},
    {"$t": "test.adapters.money", "v": 1},
    [Money(Decimal("2.5"), "GBP"), Square(), Fragile(3)],
]


@pytest.mark.parametrize("value", COPY_CASES)
def test_copy_value_matches_a_trip_through_the_codec(value: Any) -> None:
    through = decode_value(encode_value(value))
    copied = copy_value(value)
    assert repr(_shape(copied)) == repr(_shape(through))


def _shape(v: Any) -> Any:
    """Types and values, recursively: equality alone would take (1, 2) for [1, 2]."""
    if isinstance(v, dict):
        return ("dict", [(_shape(k), _shape(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [_shape(x) for x in v])
    if isinstance(v, (Money, Shape, Fragile)):
        return (type(v).__name__, sorted(vars(v).items()))
    return (type(v).__name__, v)


def test_copy_value_shares_bytes_and_copies_containers() -> None:
    audio = b"\x01" * 640
    payload = {"audio": audio, "list": [1], "nested": {"x": [2]}}
    copied = copy_value(payload)
    assert copied == payload and copied["audio"] is audio
    assert copied is not payload and copied["list"] is not payload["list"]
    assert copied["nested"]["x"] is not payload["nested"]["x"]


@pytest.mark.parametrize(
    ("value", "path", "what"),
    [
        ({"f": [1.0, math.inf]}, "['f'][1]", "NaN and infinity"),
        ({"k": {math.nan: 1}}, "['k']<key nan>", "NaN"),
        ({"s": {1, 2}}, "['s']", "set is not a supported type"),
        ({"b": bytearray(b"x")}, "['b']", "bytearray"),
        ({"m": Money(Decimal(1), [object()])}, "['m'].currency[0]", "object"),  # type: ignore[arg-type]
        ({"f": Fragile(13)}, "['f']", "cannot be encoded: unlucky"),
        ({"c": ClosedChild()}, "['c']", "ClosedChild"),
        ({"l": BusWorkerLocalErrorMessage(source="a", error="x")}, "['l']",
         "BusWorkerLocalErrorMessage"),
    ],
)
def test_copy_value_refuses_what_the_wire_refuses(value: Any, path: str, what: str) -> None:
    with pytest.raises(Unsupported) as info:
        copy_value(value)
    assert "".join(reversed(info.value.path)) == path
    assert what in info.value.what
    with pytest.raises(SerializationError):
        ser().serialize(request(value))


def test_copy_value_refuses_what_the_receiver_would_drop() -> None:
    register_adapter(Triangle, encode=lambda t: -1, decode=Fragile, name="test.adapters.triangle")
    try:
        with pytest.raises(Unsupported, match="cannot be decoded by its adapter"):
            copy_value(Triangle())
        s = ser()
        assert s.decode(s.serialize(request({"t": Triangle()}))) is None
        assert s.stats()["malformed"] == 1
    finally:
        register_adapter(Triangle, encode=lambda s: s.sides, decode=Shape,
                         name="test.adapters.triangle")
