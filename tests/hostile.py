"""Hostile input for the validation tests: every framework message type, valid bodies of each,
and the wrong values, missing and extra fields, NaN, infinity and huge values that must be
dropped, as fixed tables and as hypothesis strategies.

Values are JSON as it arrives on the wire; :func:`raw_envelope` turns a body into the exact
bytes a peer would send (with ``1e400``, ``-1e400`` and ``NaN`` where the markers stand, which
``json.dumps`` cannot write).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import time
import types
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

from hypothesis import strategies as st

from pipecat_workers.bus.codec import encode_fields
from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.messages import BusLocalMessage, BusMessage
from pipecat_workers.bus.network import NetworkBus
from pipecat_workers.catalogue import lookup, registered, type_name
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.types import WorkerRegistryEntry
from pipecat_workers.validate import MAX_NAME_LENGTH

with contextlib.suppress(ImportError):  # the bridge protocol's messages, if pipecat is here
    import pipecat_workers.pipeline.messages  # noqa: F401

INF, NEG_INF, NAN = "\x00+inf", "\x00-inf", "\x00nan"
_LITERALS = {json.dumps(INF): "1e400", json.dumps(NEG_INF): "-1e400", json.dumps(NAN): "NaN"}
ENTRY = type_name(WorkerRegistryEntry)
LONG_NAME = "n" * (MAX_NAME_LENGTH + 1)


def framework_types() -> list[type[BusMessage]]:
    """Every registered bus message type of this package that may cross a process boundary."""
    found = [cls for name, cls in registered().items()
             if lookup(name) is cls and issubclass(cls, BusMessage)
             and not issubclass(cls, BusLocalMessage)
             and cls.__module__.startswith("pipecat_workers.")]
    return sorted(found, key=lambda cls: type_name(cls) or "")


# -- what each field holds ------------------------------------------------------------------------


def kind_of(hint: Any) -> tuple[str, bool]:
    """``(kind, optional)`` of a field's annotation, in the few shapes framework messages use."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        assert len(rest) == 1, hint
        return kind_of(rest[0])[0], True
    if typing.get_origin(hint) is typing.Annotated:
        if typing.get_origin(args[0]) is list:  # a bounded list of names
            return kind_of(args[0])[0], False
        return {str: "name", float: "interval", int: "count"}[args[0]], False
    if typing.get_origin(hint) is list:
        return {WorkerRegistryEntry: "entries", str: "texts"}.get(args[0], "names"), False
    if typing.get_origin(hint) is dict:
        return "payload", False
    kinds = {str: "text", float: "float", bool: "bool", JobStatus: "status", Any: "any"}
    assert hint in kinds, f"no kind for the annotation {hint!r}: add it to tests/hostile.py"
    return kinds[hint], False


def fields_of(cls: type) -> dict[str, tuple[str, bool, bool]]:
    """``name -> (kind, optional, required)`` for each init field of ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        if f.init:
            kind, optional = kind_of(hints[f.name])
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out[f.name] = (kind, optional, required)
    return out


_VALID: dict[str, Callable[[str], Any]] = {
    "name": lambda field: f"fuzz-{field}",
    "text": lambda field: f"some {field}",
    "float": lambda field: 1718000000.5,
    "interval": lambda field: 0.5,
    "bool": lambda field: True,
    "payload": lambda field: {"k": [1, (2, 3)], 7: b"\x00"},
    "names": lambda field: [f"fuzz-{field}-1", f"fuzz-{field}-2"],
    "texts": lambda field: [f"some {field}"],
    "entries": lambda field: [WorkerRegistryEntry(name="fuzz-w", parent="fuzz-p", active=True,
                                                  started_at=1.5)],
    "status": lambda field: JobStatus.FAILED,
    "count": lambda field: 1,
    "any": lambda field: {"frame": "data", "n": 1},
}


def sample(cls: type[BusMessage]) -> BusMessage:
    """A valid instance of ``cls`` with every field set, to names no worker has."""
    return cls(**{name: _VALID[kind](name) for name, (kind, _, _) in fields_of(cls).items()})


def valid_body(cls: type[BusMessage]) -> dict[str, Any]:
    """The wire body of :func:`sample`."""
    return encode_fields(sample(cls), cls)


# -- what must be dropped -------------------------------------------------------------------------


def _entry(**changes: Any) -> dict[str, Any]:
    """A registry entry on the wire, with fields changed (``...`` leaves a field out)."""
    body: dict[str, Any] = {"name": "fuzz-w", "parent": None, "active": True, "bridged": False,
                            "started_at": 1.5}
    body.update(changes)
    return {"$t": ENTRY, "v": {k: v for k, v in body.items() if v is not ...}}


# Codec-level junk that drops a message wherever it is, even in a field of type Any.
NESTED_JUNK: list[tuple[Any, str]] = [
    ({"$t": 99, "v": 1}, "malformed"),
    ({"$t": 1, "v": "@@ not base64"}, "malformed"),
    ({"$t": 2, "v": [[1]]}, "malformed"),
    ({"$t": "job.status", "v": "nope"}, "malformed"),
    ({"$t": "no.such.type", "v": {}}, "unknown_type"),
    (_entry(name=5), "invalid"),
    (_entry(started_at=INF), "invalid"),
    (_entry(name=...), "invalid"),
    (_entry(evil=1), "invalid"),
    ([1, {"deep": [_entry(active="yes")]}], "invalid"),
]

_NOT_A_STRING: list[Any] = [5, -1.5, True, ["x"], {"a": 1}, {"$t": 0, "v": ["t"]}]
_NOT_A_NUMBER: list[Any] = ["1.5", True, False, [1.0], {"a": 1.0}, {"$t": 0, "v": [1.0]}]

# Values that are wrong for a field of each kind, and the reason they are dropped for.
JUNK: dict[str, list[tuple[Any, str]]] = {
    "name": [(v, "invalid") for v in (*_NOT_A_STRING, LONG_NAME, "n" * 100_000)],
    "text": [(v, "invalid") for v in _NOT_A_STRING],
    "float": [
        *((v, "invalid") for v in (*_NOT_A_NUMBER, INF, NEG_INF, 10**400, -(10**400))),
        (NAN, "malformed"),  # no JSON parser here reads NaN at all
    ],
    "interval": [
        *((v, "invalid") for v in (*_NOT_A_NUMBER, INF, NEG_INF, 10**400, 0, 0.0, -1, -0.5,
                                   3600.5, 10**6, 1e300)),
        (NAN, "malformed"),
    ],
    "bool": [(v, "invalid") for v in (0, 1, "true", 1.0, [True], {"b": True})],
    "payload": [(v, "invalid") for v in (5, "x", [1, 2], True, 1.5, {"x": INF},
                                           {"x": [1, {"y": NEG_INF}]})],
    "names": [(v, "invalid") for v in (
        "j", 5, {"j": 1}, [5], ["j", None], ["j", LONG_NAME], ["j"] * 5000 + [True])],
    "texts": [(v, "invalid") for v in ("j", 5, {"j": 1}, [5], ["j", None], ["j"] * 5000 + [1])],
    "entries": [(v, "invalid") for v in (
        "w", 5, {"name": "w"}, [{"name": "w"}], ["w"], [_entry(), _entry(name=...)],
        [_entry(extra=1)], [{"$t": "frame.direction", "v": 1}],
    )],
    "status": [
        *((v, "invalid") for v in ("completed", 1, True, {"$t": "frame.direction", "v": 1})),
        ({"$t": "job.status", "v": "finished"}, "malformed"),
    ],
    "any": [(v, "invalid") for v in (INF, [1, NEG_INF], {"deep": {"x": INF}})],
    # A bounded count (a proxy link's sequence numbers and protocol version).
    "count": [
        *((v, "invalid") for v in ("1", 1.5, True, -1, 2**64, 10**400, [1], {"a": 1}, INF)),
        (NAN, "malformed"),
    ],
}


def _entry_junk() -> list[tuple[Any, str]]:
    """Snapshots' entries with one wrong field each, as the entries' own annotations say."""
    out = []
    for name, (kind, optional, _) in fields_of(WorkerRegistryEntry).items():
        for value, reason in [*JUNK[kind], *([] if optional else [(None, "invalid")])]:
            out.append(([_entry(), _entry(**{name: value})], reason))
    return out


JUNK["entries"] += _entry_junk()


def junk_for(kind: str, optional: bool) -> list[tuple[Any, str]]:
    """Wrong values for a field, with the reason each is dropped for."""
    out = list(JUNK[kind]) + NESTED_JUNK
    if not optional and kind != "any":
        out.append((None, "invalid"))
    return out


def raw_envelope(name: str, body: dict[str, Any], *, channel: str = "",
                 sender: str = "fuzzer") -> bytes:
    """The bytes of an unsigned envelope carrying ``body`` as a message of type ``name``."""
    envelope: dict[str, Any] = {"v": 1, "id": f"fuzz-{next(_ids):x}", "from": sender,
                                "inc": 1.0, "ts": time.time(), "type": name, "body": body}
    if channel:
        envelope["ch"] = channel
    text = json.dumps(envelope)
    for marker, literal in _LITERALS.items():
        text = text.replace(marker, literal)
    return text.encode()


_ids = itertools.count(1)


# -- hypothesis -----------------------------------------------------------------------------------

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
_json = st.recursive(_json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=12)
_huge_ints = st.one_of(st.integers(min_value=2**1024, max_value=10**600),
                       st.integers(min_value=-(10**600), max_value=-(2**1024)))
_not_strings = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.booleans(), st.lists(_json_scalars, max_size=3),
                         st.dictionaries(st.text(max_size=3), _json_scalars, max_size=3))
_long_names = st.integers(MAX_NAME_LENGTH + 1, 200_000).map(lambda n: "n" * n)
_not_numbers = st.one_of(st.text(max_size=5), st.booleans(), st.lists(_json_scalars, max_size=3),
                         st.dictionaries(st.text(max_size=3), _json_scalars, max_size=3))


def _generated(kind: str) -> st.SearchStrategy[Any]:
    """Generated wrong values for a field of ``kind`` (``None`` is left to the tables)."""
    if kind == "name":
        return st.one_of(_not_strings, _long_names)
    if kind == "text":
        return _not_strings
    if kind in ("float", "interval"):
        out = st.one_of(_not_numbers, _huge_ints, st.sampled_from([INF, NEG_INF]))
        if kind == "interval":
            out = st.one_of(out, st.floats(max_value=0.0, allow_nan=False),
                            st.floats(min_value=3600.001, allow_nan=False, allow_infinity=False),
                            st.integers(max_value=0), st.integers(min_value=3601))
        return out
    if kind == "count":
        return st.one_of(_not_numbers, st.integers(max_value=-1), st.integers(min_value=2**63),
                         st.floats(allow_nan=False, allow_infinity=False))
    if kind == "bool":
        return st.one_of(st.integers(), st.text(max_size=4),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.lists(st.booleans(), max_size=2))
    if kind == "payload":
        return st.one_of(st.integers(), st.text(max_size=4), st.lists(_json, max_size=3))
    if kind in ("names", "texts"):
        wrong = st.one_of(_not_strings, _long_names) if kind == "names" else _not_strings
        return st.one_of(_not_strings.filter(lambda v: type(v) is not list), st.tuples(
            st.integers(0, 5000), wrong).map(lambda t: ["fuzz-j"] * t[0] + [t[1]]))
    if kind == "entries":
        return st.lists(_json, min_size=1, max_size=3)  # untagged: never an entry
    if kind == "status":
        return st.one_of(st.sampled_from([s.value for s in JobStatus]), st.integers())
    return st.nothing()


@st.composite
def hostile_bodies(draw: st.DrawFn, types_: list[type[BusMessage]]) -> tuple[str, dict[str, Any]]:
    """A message type's wire name and a body that no receiver may accept: a valid body with
    one to three of wrong values, missing required fields, unknown fields and nested junk."""
    cls = draw(st.sampled_from(types_))
    fields = fields_of(cls)
    body = dict(valid_body(cls))
    mutations = draw(st.lists(st.sampled_from(["wrong", "wrong", "missing", "extra", "nested"]),
                              min_size=1, max_size=3))
    for mutation in mutations:
        field = draw(st.sampled_from(sorted(fields)))
        kind, optional, _ = fields[field]
        if mutation == "missing":
            body.pop(draw(st.sampled_from(sorted(f for f, v in fields.items() if v[2]))), None)
        elif mutation == "extra":
            key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in fields))
            body[key] = draw(_json)
        elif mutation == "nested" or kind == "any":
            body[field] = draw(st.sampled_from([v for v, _ in NESTED_JUNK]))
        else:
            body[field] = draw(st.one_of(
                st.sampled_from([v for v, _ in junk_for(kind, optional)]),
                _generated(kind)))
    return type_name(cls) or "", body


# -- sending raw bytes ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def attacker(bus: WorkerBus) -> AsyncIterator[Callable[[bytes], Any]]:
    """A started network bus of its own that sends raw bytes to every runner on its channel,
    through its backend exactly as a peer's bus would (``_send_broadcast``)."""
    assert isinstance(bus, NetworkBus)
    bus.bind("fuzzer", 1.0, lambda name: None)
    await bus.start()
    try:
        yield bus._send_broadcast
    finally:
        await bus.close()

