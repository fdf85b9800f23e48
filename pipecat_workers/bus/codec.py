"""Encoding values of bus messages to JSON-safe data and back, exactly and safely.

JSON carries ``None``, ``bool``, ``int``, ``float``, ``str``, ``list`` and ``dict`` with ``str``
keys as they are. Everything else becomes a tagged object ``{"$t": TAG, "v": VALUE}``: ``TAG``
is ``0`` for a tuple, ``1`` for bytes (base64), ``2`` for a dict sent as ``[[key, value], ...]``
pairs (a dict with a non-``str`` key, or with a ``"$t"`` key), or the wire name of a registered
Enum or dataclass, or of an adapted type (:func:`~pipecat_workers.catalogue.register_adapter`),
whose ``VALUE`` is what its adapter's ``encode`` returned, encoded in turn. Decoding builds only
registered classes, through ``__init__`` or their adapter's ``decode``, and never imports
anything. Before a dataclass is built, its fields are checked against the types it declares
(:mod:`pipecat_workers.validate`): a mismatch drops the message as ``invalid``; a broken
encoding (a bad tag, bad base64, an enum value that does not exist, an adapter's ``decode``
that fails) as ``malformed``.

:func:`copy_value` gives, in memory, what a trip through :func:`encode_value` and
:func:`decode_value` gives (bytes are immutable, so they are shared rather than copied).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
from typing import Any

from pipecat_workers.bus.messages import BusLocalMessage
from pipecat_workers.catalogue import Adapter, adapter_for, adapter_named, lookup, type_name
from pipecat_workers.validate import schema_of

TAG = "$t"
_TUPLE, _BYTES, _PAIRS = 0, 1, 2
SCALARS = frozenset({str, int, float, bool, type(None)})


class OutOfRange(float):
    """A number read from the wire that no float can hold (``1e400``): it matches no
    field's type, an ``Any`` field's included, so the message is dropped as invalid
    wherever it is (not being in :data:`SCALARS`, it reaches :func:`decode_value`)."""
_SHARED = frozenset({str, int, bool, type(None), bytes})  # immutable, no check: copied as is

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
    adapter = adapter_for(t)
    if adapter is not None:
        return {TAG: adapter.name, "v": _enc_adapted(v, adapter)}
    raise _unsupported(t)


def _unsupported(t: type) -> Unsupported:
    return Unsupported(
        f"{t.__qualname__} is not a supported type "
        "(register it with register_message or convert it)"
    )


def _adapt(v: Any, adapter: Adapter) -> Any:
    """What ``adapter.encode`` makes of ``v``; its failures become :class:`Unsupported`."""
    try:
        return adapter.encode(v)
    except (Unsupported, RecursionError):
        raise
    except Exception as e:
        raise Unsupported(f"{type(v).__qualname__} cannot be encoded: {e}") from None


def _enc_adapted(v: Any, adapter: Adapter) -> Any:
    inner = _adapt(v, adapter)
    if type(inner) is not dict or TAG in inner:
        return encode_value(inner)
    out: dict[str, Any] = {}
    for k, x in inner.items():
        if type(k) is not str:
            return encode_value(inner)
        try:
            out[k] = x if type(x) in SCALARS else encode_value(x)
        except Unsupported as e:
            e.path.append(f".{k}")  # the adapter's dict stands for the object's fields
            raise
    return out


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
    elif type_name(t) is None and (adapter := adapter_for(t)) is not None:
        try:
            inner = adapter.encode(v)
        except Exception:
            return None
        if type(inner) is dict:
            for k, x in inner.items():
                found = found or nonfinite_path(x, f"{path}.{k}")
        else:
            found = nonfinite_path(inner, path)
    elif dataclasses.is_dataclass(v):
        for name in fields_of(t):
            found = found or nonfinite_path(getattr(v, name), f"{path}.{name}")
    return found


# -- decoding ---------------------------------------------------------------------------


class Drop(Exception):
    """A value or message that is dropped at decoding, with the reason it is counted under,
    the wire name of the type at fault and, for an ``invalid`` one, which field and why."""

    def __init__(self, reason: str, name: str = "", detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.name = name
        self.detail = detail


def decode_value(v: Any) -> Any:
    t = type(v)
    if t is list:
        return [x if type(x) in SCALARS else decode_value(x) for x in v]
    if t is not dict:
        if t is OutOfRange:
            raise Drop("invalid", "", "a number out of range")
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
        adapter = adapter_named(tag)
        if adapter is None:
            raise Drop("unknown_type", tag)
        inner = val if type(val) in SCALARS else decode_value(val)
        try:
            return adapter.decode(inner)
        except Exception:
            raise Drop("malformed", tag) from None
    if issubclass(cls, enum.Enum):
        try:
            return cls(decode_value(val))
        except (ValueError, TypeError):
            raise Drop("malformed", tag) from None
    if vt is not dict:
        raise Drop("malformed", tag)
    return build(cls, tag, val)


_MISSING: Any = object()


def build(cls: type, name: str, raw: dict[str, Any]) -> Any:
    """An instance of the registered dataclass ``cls`` (wire name ``name``) from its encoded
    fields, each checked against its declared type first; raises :class:`Drop`."""
    schema = schema_of(cls)
    fields = schema.fields
    if len(raw) > len(fields):  # junk is refused before any of it is decoded
        raise Drop("invalid", name, "a field it does not have")
    kwargs: dict[str, Any] = {}
    for field, plain, check, limit in fields:
        x = raw.get(field, _MISSING)
        if x is _MISSING:
            if field in schema.required:
                raise Drop("invalid", name, f"{field}: missing")
            continue
        if type(x) not in SCALARS:
            x = decode_value(x)
        if plain is not None:  # validate.Rule.accepts, inline: most fields cost no call
            t = type(x)
            if not (t in plain and (t is not str or limit is None or len(x) <= limit)
                    and (t is not float or x - x == 0.0)) and (check is None or not check(x)):
                raise Drop("invalid", name, f"{field}: {t.__name__} does not match")
        kwargs[field] = x
    if len(kwargs) != len(raw):
        raise Drop("invalid", name, "a field it does not have")
    try:
        return cls(**kwargs)  # keyword arguments only: nothing is ever set as an attribute
    except Exception:
        raise Drop("malformed", name) from None


# -- copying ------------------------------------------------------------------------------


def copy_value(v: Any) -> Any:
    """What ``decode_value(encode_value(v))`` returns, without building the encoded form.

    Raises :class:`Unsupported` where :func:`encode_value` would (NaN and infinity too, which
    the JSON step refuses), and where an adapter's ``decode`` fails (the receiver would drop
    the message).
    """
    t = type(v)
    if t in SCALARS:
        if t is float and not math.isfinite(v):
            raise Unsupported("NaN and infinity are not supported")
        return v
    if t is bytes:
        return v
    if t is dict:
        out: dict[Any, Any] = {}
        for k, x in v.items():
            try:
                key = k if type(k) in _SHARED else copy_value(k)
            except Unsupported as e:
                e.path.append(f"<key {k!r}>")
                raise
            try:
                out[key] = x if type(x) in _SHARED else copy_value(x)
            except Unsupported as e:
                e.path.append(f"[{k!r}]")
                raise
        return out
    if t is list:
        return _copy_seq(v)
    if t is tuple:
        return tuple(_copy_seq(v))
    name = type_name(t)
    if name is not None:
        if isinstance(v, enum.Enum):
            try:
                copy_value(v.value)
            except Unsupported as e:
                e.path.append(".value")
                raise
            return v
        if isinstance(v, BusLocalMessage):
            raise Unsupported(f"{t.__qualname__} is a local-only message")
        kwargs: dict[str, Any] = {}
        field = ""
        try:
            for field in fields_of(t):
                kwargs[field] = copy_value(getattr(v, field))
        except Unsupported as e:
            e.path.append(f".{field}")
            raise
        return _rebuild(t, kwargs)
    adapter = adapter_for(t)
    if adapter is not None:
        inner = _copy_adapted(v, adapter)
        try:
            return adapter.decode(inner)
        except Exception as e:
            raise Unsupported(f"{t.__qualname__} cannot be decoded by its adapter: {e}") from None
    raise _unsupported(t)


def _copy_adapted(v: Any, adapter: Adapter) -> Any:
    inner = _adapt(v, adapter)
    if type(inner) is not dict:
        return copy_value(inner)
    out: dict[str, Any] = {}
    for k, x in inner.items():
        if type(k) is not str:
            return copy_value(inner)
        try:
            out[k] = x if type(x) in _SHARED else copy_value(x)
        except Unsupported as e:
            e.path.append(f".{k}")
            raise
    return out


def _copy_seq(v: list[Any] | tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    try:
        for x in v:
            out.append(x if type(x) in _SHARED else copy_value(x))
    except Unsupported as e:
        e.path.append(f"[{len(out)}]")
        raise
    return out


def _rebuild(cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except Exception as e:
        raise Unsupported(f"{cls.__qualname__} cannot be rebuilt from its fields: {e}") from None
