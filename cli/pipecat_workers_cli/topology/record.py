"""The topology a supervisor resolved, as JSON data and back.

A running supervisor records its topology (after interpolation and env files) in its state
directory, so that ``call``, ``tail`` and ``ps --channel`` join the buses it runs on, whatever
the environment of the shell they run in. The data mirrors the model's dataclasses field by
field (enums by value, tuples as lists, paths as text), so a field added to the model is
recorded without a change here.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, cast

from pipecat_workers_cli.topology.model import Topology

RECORD_VERSION = 1
T = TypeVar("T")


class RecordError(ValueError):
    """Raised when recorded data does not make a topology (written by another version)."""


def topology_record(topology: Topology) -> dict[str, Any]:
    """``topology`` as JSON-ready data, with a version."""
    return {"version": RECORD_VERSION, "topology": as_data(topology)}


def topology_from_record(data: Mapping[str, Any]) -> Topology:
    """The topology recorded by :func:`topology_record`.

    Raises:
        RecordError: The data is of another version or does not fit the model.
    """
    if data.get("version") != RECORD_VERSION:
        raise RecordError(f"record version {data.get('version')!r}, expected {RECORD_VERSION}")
    try:
        return _build(Topology, data["topology"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"not a recorded topology: {exc}") from None


def as_data(value: Any) -> Any:
    """Plain data (dicts, lists, str, numbers, bools, None) of a model value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): as_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_data(v) for v in value]
    return value


def _build(cls: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise TypeError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = _hints(cast(Any, cls))
    values = {f.name: _convert(hints[f.name], data[f.name])
              for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.name in data}
    return cls(**values)


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(hint: Any, data: Any) -> Any:
    """``data`` as the type ``hint`` says (the model's types: dataclasses, enums, paths,
    tuples, mappings, unions with None, literals and plain values)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or origin is typing.Literal:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors: list[Exception] = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _convert(arm, data)
            except (KeyError, TypeError, ValueError) as exc:
                errors.append(exc)
        raise TypeError(f"{data!r} fits none of {hint}: {errors}")
    if origin is tuple:
        if not isinstance(data, list):
            raise TypeError(f"expected a list, got {data!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in data)
        return tuple(_convert(a, v) for a, v in zip(args, data, strict=True))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {data!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {k: _convert(value_type, v) for k, v in data.items()}
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return _build(hint, data)
        if issubclass(hint, Enum | Path):
            return hint(data)
        if hint is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
        if not isinstance(data, hint):
            raise TypeError(f"expected {hint.__name__}, got {data!r}")
    return data
