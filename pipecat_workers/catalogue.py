"""The allow-list of types that may cross a process boundary.

Only types registered here are ever built from the wire: a receiver looks a type up by its
short registered name and never imports anything. Framework messages register themselves;
applications register their own messages, frames and enums with :func:`register_message`, and
types that are not plain dataclasses or enums with :func:`register_adapter`.

A class has at most one registration: registering it again (either way) replaces the old one.
A name belongs to one class; another class asking for it is refused.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pipecat_workers.errors import ConfigurationError

T = TypeVar("T", bound=type)
V = TypeVar("V")

RegistrationHook = Callable[[type, "str | None"], bool]
"""Called by :func:`register_message` with ``(cls, name)``; returns ``True`` if it registered
the class itself (so :func:`register_message` does nothing more)."""


@dataclass(frozen=True, slots=True)
class Adapter:
    """How a type that is not a plain dataclass or enum crosses the wire.

    Attributes:
        cls: The registered class.
        name: Its wire name.
        encode: Turns an instance into a value the codec can encode.
        decode: Turns that value, decoded, back into an instance.
        subclasses: Whether instances of unregistered subclasses use this adapter too.
    """

    cls: type
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    subclasses: bool


_by_name: dict[str, type] = {}
_by_type: dict[type, str] = {}
_adapter_names: dict[str, Adapter] = {}
_adapter_types: dict[type, Adapter] = {}
# Exact and subclass hits by concrete type: the encoder's lookup is one dict get.
_adapter_cache: dict[type, Adapter] = {}
_hooks: list[RegistrationHook] = []


@overload
def register_message(cls: T, *, name: str | None = None) -> T: ...


@overload
def register_message(cls: None = None, *, name: str | None = None) -> Callable[[T], T]: ...


def register_message(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Allow a dataclass or enum to travel on network buses.

    Use it as a decorator, with or without a name. The name is what goes on the wire: keep it
    short and stable, and the same in every process (it defaults to the class name).

    Once :mod:`pipecat_workers.pipeline` is imported, a pipecat ``Frame`` subclass is handed
    to its ``register_frame``, which carries every field of the frame.

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
        for hook in _hooks:
            if hook(klass, name):
                return klass
        if not (dataclasses.is_dataclass(klass) or issubclass(klass, enum.Enum)):
            raise ConfigurationError(
                f"register_message: {klass.__qualname__} must be a dataclass or an Enum"
            )
        wire_name = name or klass.__name__
        _claim("register_message", klass, wire_name)
        _by_name[wire_name] = klass
        _by_type[klass] = wire_name
        return klass

    if cls is not None:
        return decorate(cls)
    return decorate


def register_adapter(
    cls: type[V],
    *,
    encode: Callable[[V], Any],
    decode: Callable[[Any], V],
    name: str | None = None,
    subclasses: bool = False,
) -> type[V]:
    """Allow a type that is not a plain dataclass or enum to travel on network buses.

    On the wire an instance becomes ``{"$t": name, "v": <encode(obj), encoded>}``. The
    receiver decodes the inner value and hands it to ``decode``; if ``decode`` raises, the
    whole message is dropped and counted as malformed (nothing raises out of the serializer).
    If ``encode`` raises, sending fails with a ``SerializationError`` that names the field.

    Args:
        cls: The type to carry.
        encode: Turns an instance into a value the bus can carry (scalars, lists, tuples,
            dicts, bytes, registered types). A ``dict`` with ``str`` keys reads as the
            object's fields in error messages (``.frame.context.messages``).
        decode: Turns the decoded value back into an instance.
        name: The wire name; defaults to ``cls.__name__``. The same in every process.
        subclasses: Let instances of unregistered subclasses use this adapter too (the
            nearest registered base wins); they decode as whatever ``decode`` returns.

    Returns:
        The class itself, unchanged.

    Raises:
        ConfigurationError: if the name is already taken by another class, or ``encode`` or
            ``decode`` is not callable.

    Example::

        register_adapter(Decimal, encode=str, decode=Decimal, name="decimal")
    """
    if not isinstance(cls, type) or not callable(encode) or not callable(decode):
        raise ConfigurationError("register_adapter: needs a class and callable encode/decode")
    wire_name = name or cls.__name__
    _claim("register_adapter", cls, wire_name)
    adapter = Adapter(cls, wire_name, encode, decode, subclasses)
    _adapter_names[wire_name] = adapter
    _adapter_types[cls] = adapter
    _adapter_cache.clear()
    return cls


def _claim(caller: str, klass: type, wire_name: str) -> None:
    """Free ``wire_name`` and ``klass`` for a new registration, or refuse."""
    taken = _by_name.get(wire_name)
    if taken is None and wire_name in _adapter_names:
        taken = _adapter_names[wire_name].cls
    # The same class defined again (a module reloaded) may take its name back.
    if taken is not None and taken is not klass and _path(taken) != _path(klass):
        raise ConfigurationError(f"{caller}: name '{wire_name}' is already used by {_path(taken)}")
    for old in (taken, klass):
        if old is None:
            continue
        plain = _by_type.pop(old, None)
        if plain is not None:
            del _by_name[plain]
        adapter = _adapter_types.pop(old, None)
        if adapter is not None:
            del _adapter_names[adapter.name]
            _adapter_cache.clear()


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def add_registration_hook(hook: RegistrationHook) -> None:
    """Let an optional package register the classes it knows when :func:`register_message`
    is called on them (the pipeline package uses it for pipecat frames)."""
    if hook not in _hooks:
        _hooks.append(hook)


def type_name(cls: type) -> str | None:
    """The wire name of a type registered with :func:`register_message`, or ``None``."""
    return _by_type.get(cls)


def lookup(name: str) -> type | None:
    """The type registered with :func:`register_message` under a wire name, or ``None``;
    never imports."""
    return _by_name.get(name)


def adapter_for(cls: type) -> Adapter | None:
    """The adapter that encodes instances of ``cls``: its own, or (with ``subclasses``) its
    nearest registered base's; ``None`` if there is none."""
    found = _adapter_cache.get(cls)
    if found is not None:
        return found
    for base in cls.__mro__:
        adapter = _adapter_types.get(base)
        if adapter is not None:
            if base is cls or adapter.subclasses:
                _adapter_cache[cls] = adapter
                return adapter
            return None
    return None


def adapter_named(name: str) -> Adapter | None:
    """The adapter registered under a wire name, or ``None``; never imports."""
    return _adapter_names.get(name)


def registered() -> dict[str, type]:
    """A copy of the allow-list, by wire name (messages, values and adapted types)."""
    out = dict(_by_name)
    out.update((n, a.cls) for n, a in _adapter_names.items())
    return out
