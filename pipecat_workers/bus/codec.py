"""Encoding values of bus messages to JSON-safe data and back, exactly and safely.

JSON carries ``None``, ``bool``, ``int``, ``float``, ``str``, ``list`` and ``dict`` with ``str``
keys as they are. Everything else becomes a tagged object ``{"$t": TAG, "v": VALUE}``: ``TAG``
is ``0`` for a tuple, ``1`` for bytes (base64), ``2`` for a dict sent as ``[[key, value], ...]``
pairs (a dict with a non-``str`` key, or with a ``"$t"`` key), or the wire name of a registered
Enum or dataclass. Decoding builds only registered classes, through ``__init__``, and never
imports anything.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
from typing import Any

from pipecat_workers.bus.messages import BusLocalMessage
from pipecat_workers.catalogue import lookup, type_name

TAG = "$t"
_TUPLE, _BYTES, _PAIRS = 0, 1, 2
SCALARS = frozenset({str, int, float, bool, type(None)})

_init_fields: dict[type, tuple[str, ...]] = {}


def fields_of(cls: type) -> tuple[str, ...]:
    names = _init_fields.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if f.init)
        _init_fields[cls] = names
    return names


class Unsupported(Exception):
    """A value that cannot be encoded; ``path`` is collected innermost first."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str] = []


def encode_value(v: Any) -> Any:
    t = type(v)
    if t in SCALARS:
        return v
    if t is dict:
        if TAG not in v:
            out: dict[str, Any] = {}
            try:
                for k, x in v.items():
                    if type(k) is not str:
                        break
                    out[k] = x if type(x) in SCALARS else encode_value(x)
                else:
                    return out
            except Unsupported as e:
                e.path.append(f"[{k!r}]")
                raise
        return {TAG: _PAIRS, "v": _enc_pairs(v)}
    if t is list:
        return _enc_seq(v)
    if t is tuple:
        return {TAG: _TUPLE, "v": _enc_seq(v)}
    if t is bytes:
        return {TAG: _BYTES, "v": base64.b64encode(v).decode("ascii")}
    name = type_name(t)
    if name is not None:
        if isinstance(v, enum.Enum):
            try:
                return {TAG: name, "v": encode_value(v.value)}
            except Unsupported as e:
                e.path.append(".value")
                raise
        if isinstance(v, BusLocalMessage):
            raise Unsupported(f"{t.__qualname__} is a local-only message")
        return {TAG: name, "v": encode_fields(v, t)}
    raise Unsupported(
        f"{t.__qualname__} is not a supported type "
        "(register it with register_message or convert it)"
    )


def _enc_seq(v: list[Any] | tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    try:
        for x in v:
            out.append(x if type(x) in SCALARS else encode_value(x))
    except Unsupported as e:
        e.path.append(f"[{len(out)}]")
        raise
    return out


def _enc_pairs(v: dict[Any, Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for k, x in v.items():
        try:
            key = encode_value(k)
        except Unsupported as e:
            e.path.append(f"<key {k!r}>")
            raise
        try:
            out.append([key, encode_value(x)])
        except Unsupported as e:
            e.path.append(f"[{k!r}]")
            raise
    return out


def encode_fields(obj: Any, cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name = ""
    try:
        for name in fields_of(cls):
            x = getattr(obj, name)
            out[name] = x if type(x) in SCALARS else encode_value(x)
    except Unsupported as e:
        e.path.append(f".{name}")
        raise
    return out


def nonfinite_path(v: Any, path: str) -> str | None:
    """The path of the first NaN or infinity in ``v``, walked as :func:`_enc` walks it."""
    t = type(v)
    if t is float:
        return None if math.isfinite(v) else path
    found: str | None = None
    if t is list or t is tuple:
        for i, x in enumerate(v):
            found = found or nonfinite_path(x, f"{path}[{i}]")
    elif t is dict:
        for k, x in v.items():
            found = found or nonfinite_path(k, f"{path}<key {k!r}>")
            found = found or nonfinite_path(x, f"{path}[{k!r}]")
    elif isinstance(v, enum.Enum):
        found = nonfinite_path(v.value, f"{path}.value")
    elif dataclasses.is_dataclass(v):
        for name in fields_of(t):
            found = found or nonfinite_path(getattr(v, name), f"{path}.{name}")
    return found


# -- decoding ---------------------------------------------------------------------------


class Drop(Exception):
    """A value or message that is dropped at decoding, with the reason it is counted under."""

    def __init__(self, reason: str, name: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.name = name


def decode_value(v: Any) -> Any:
    t = type(v)
    if t is list:
        return [x if type(x) in SCALARS else decode_value(x) for x in v]
    if t is not dict:
        return v
    if TAG not in v:
        return {k: (x if type(x) in SCALARS else decode_value(x)) for k, x in v.items()}
    if len(v) != 2 or "v" not in v:
        raise Drop("malformed")
    tag, val = v[TAG], v["v"]
    tt, vt = type(tag), type(val)
    if tt is int:
        if tag == _TUPLE and vt is list:
            return tuple([x if type(x) in SCALARS else decode_value(x) for x in val])
        if tag == _BYTES and vt is str:
            return base64.b64decode(val, validate=True)
        if tag == _PAIRS and vt is list:
            out: dict[Any, Any] = {}
            for pair in val:
                if type(pair) is not list or len(pair) != 2:
                    raise Drop("malformed")
                out[decode_value(pair[0])] = decode_value(pair[1])
            return out
        raise Drop("malformed")
    if tt is not str:
        raise Drop("malformed")
    cls = lookup(tag)
    if cls is None:
        raise Drop("unknown_type", tag)
    if issubclass(cls, enum.Enum):
        try:
            return cls(decode_value(val))
        except (ValueError, TypeError):
            raise Drop("malformed", tag) from None
    if vt is not dict:
        raise Drop("malformed", tag)
    return build(cls, tag, val)


def build(cls: type, name: str, raw: dict[str, Any]) -> Any:
    kwargs = {k: (x if type(x) in SCALARS else decode_value(x)) for k, x in raw.items()}
    try:
        return cls(**kwargs)  # unknown or missing fields raise TypeError: no setattr of extras
    except Exception:
        raise Drop("malformed", name) from None
