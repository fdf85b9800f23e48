"""The allow-list of types that may cross a process boundary.

Only types registered here are ever built from the wire: a receiver looks a type up by its
short registered name and never imports anything. Framework messages register themselves;
applications register their own messages, frames and enums with :func:`register_message`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TypeVar, overload

from pipecat_workers.errors import ConfigurationError

T = TypeVar("T", bound=type)

_by_name: dict[str, type] = {}
_by_type: dict[type, str] = {}


@overload
def register_message(cls: T, *, name: str | None = None) -> T: ...


@overload
def register_message(cls: None = None, *, name: str | None = None) -> Callable[[T], T]: ...


def register_message(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Allow a dataclass or enum to travel on network buses.

    Use it as a decorator, with or without a name. The name is what goes on the wire: keep it
    short and stable, and the same in every process (it defaults to the class name).

    Args:
        cls: A dataclass (a message, a frame, or any value carried in one) or an Enum.
        name: The wire name; defaults to ``cls.__name__``.

    Returns:
        The class itself, unchanged.

    Raises:
        ConfigurationError: if the class is neither a dataclass nor an Enum, or the name is
            already taken by another class.

    Example::

        @register_message
        @dataclass(kw_only=True)
        class BusScoreMessage(BusDataMessage):
            score: float
    """

    def decorate(klass: T) -> T:
        if not (dataclasses.is_dataclass(klass) or issubclass(klass, enum.Enum)):
            raise ConfigurationError(
                f"register_message: {klass.__qualname__} must be a dataclass or an Enum"
            )
        wire_name = name or klass.__name__
        taken = _by_name.get(wire_name)
        # The same class defined again (a module reloaded) may take its name back.
        if taken is not None and taken is not klass and _path(taken) != _path(klass):
            raise ConfigurationError(
                f"register_message: name '{wire_name}' is already used by {_path(taken)}"
            )
        old = _by_type.get(klass)
        if old is not None and old != wire_name:
            del _by_name[old]
        _by_name[wire_name] = klass
        _by_type[klass] = wire_name
        return klass

    if cls is not None:
        return decorate(cls)
    return decorate


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def type_name(cls: type) -> str | None:
    """The wire name of a registered type, or ``None``."""
    return _by_type.get(cls)


def lookup(name: str) -> type | None:
    """The registered type for a wire name, or ``None``; never imports."""
    return _by_name.get(name)


def registered() -> dict[str, type]:
    """A copy of the allow-list, by wire name."""
    return dict(_by_name)

