"""Checking decoded fields against the types their class declares, before anyone sees them.

A registered dataclass declares its fields' types in its annotations. The first time a class
arrives from the wire, :func:`schema_of` resolves them (``typing.get_type_hints``) and compiles
one check per field; :func:`~pipecat_workers.bus.codec.build` runs those checks on every
instance it decodes, and a mismatch drops the whole message (counted as ``invalid``). Messages
built in this process are typed by the type checker and never checked.

What an annotation accepts:

* a class (``str``, ``int``, ``bool``, ``bytes``, a registered dataclass or Enum, ...): its
  instances. A ``bool`` is never an ``int`` or a ``float`` here; a ``float`` field takes an
  ``int`` (as the type checker does) if it fits in a float, and a float must be finite.
* ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``dict[K, V]``: that container with every
  item checked, except a ``dict[K, Any]`` (a payload), whose keys may be of any type the codec
  carries, as in this process; abstract ones (``Sequence[T]``, ``Mapping[K, V]``,
  ``Callable``) by ``isinstance`` only.
* unions (``T | None``), ``Literal[...]``, and ``Annotated[T, MaxLen(n)]`` or
  ``Annotated[T, Range(...)]``, which bound a value further.
* ``Any``, ``object``, type variables and annotations that do not resolve: whatever the codec
  produced. An adapted value has passed its adapter's ``decode``, which checks it.

A field whose default is ``None`` also takes ``None``, whatever its annotation says. A field
missing from the wire takes its default; a missing field without one, or a field the class
does not have, drops the message.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pipecat_workers.errors import ConfigurationError

Check = Callable[[Any], bool]
"""A test a value must pass, for values whose exact type is not enough to accept them."""

_NONE = type(None)
_FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True, slots=True)
class MaxLen:
    """Declared with ``Annotated``: a value (a string, list, dict, ...) has at most ``limit``
    items or characters."""

    limit: int

    def admits(self, value: Any) -> bool:
        try:
            return len(value) <= self.limit
        except TypeError:
            return True  # None in ``Annotated[str | None, MaxLen(n)]``: nothing to bound


@dataclass(frozen=True, slots=True)
class Range:
    """Declared with ``Annotated``: a number lies within these bounds (``None``: unbounded)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def admits(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True  # None in ``Annotated[float | None, Range(...)]``: nothing to bound
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )


MAX_NAME_LENGTH = 1024
Name = Annotated[str, MaxLen(MAX_NAME_LENGTH)]
"""A worker's, runner's or job's name or id, as messages from other processes may carry it:
bounded, as names become keys of the registry and of job tables."""


def check_name(kind: str, name: object) -> str:
    """``name`` if it can travel as a :data:`Name`; else a
    :class:`~pipecat_workers.errors.ConfigurationError` (a ``ValueError``) saying why, so that
    a name every peer would refuse is refused where it is made instead."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a {kind} name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(f"a {kind} name must be at most {MAX_NAME_LENGTH:,} characters, "
                         f"got {len(name):,}")
    return name


_Bound = MaxLen | Range


@dataclass(frozen=True, slots=True)
class Rule:
    """What one annotation accepts: a value whose exact type is in ``plain`` at once (a
    ``float`` if finite, a ``str`` only up to ``limit`` characters if set), any other only if
    ``check`` passes it. ``plain=None`` accepts everything. The decoder tests exact types and
    the limit inline, so most fields cost no call."""

    plain: frozenset[type] | None
    check: Check | None = None
    limit: int | None = None

    def accepts(self, value: Any) -> bool:
        plain = self.plain
        if plain is None:
            return True
        t, limit = type(value), self.limit
        if t in plain and (t is not str or limit is None or len(value) <= limit) and (
                t is not float or value - value == 0.0):  # only inf and nan fail this
            return True
        return self.check is not None and self.check(value)


ANYTHING = Rule(None)
_Field = tuple[str, frozenset[type] | None, Check | None, int | None]


@dataclass(frozen=True, slots=True)
class Schema:
    """A class's fields as the decoder checks them.

    Attributes:
        fields: ``(name, plain, check, limit)`` per init field, in declaration order (see
            :class:`Rule`).
        required: The fields without a default.
    """

    fields: tuple[_Field, ...]
    required: frozenset[str]


_schemas: dict[type, Schema] = {}


def schema_of(cls: type) -> Schema:
    """The compiled checks of a dataclass's init fields (compiled once per class)."""
    schema = _schemas.get(cls)
    if schema is None:
        schema = _schemas[cls] = _compile(cls)
    return schema


def _compile(cls: type) -> Schema:
    rules = field_rules(cls)
    fields: list[_Field] = []
    required: set[str] = set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        rule = rules[f.name]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
        fields.append((f.name, rule.plain, rule.check, rule.limit))
    return Schema(tuple(fields), frozenset(required))


def field_rules(cls: type) -> dict[str, Rule]:
    """What each field of a dataclass (``init=False`` ones too) accepts, by name; a field
    whose default is ``None`` also takes ``None``."""
    hints = _hints(cls)
    rules: dict[str, Rule] = {}
    for f in dataclasses.fields(cls):
        try:
            rule = rule_for(hints.get(f.name, Any))
        except Exception:  # an annotation this module does not understand: unchecked
            rule = ANYTHING
        if f.default is None and not rule.accepts(None):
            rule = Rule((rule.plain or frozenset()) | {_NONE}, rule.check, rule.limit)
        rules[f.name] = rule
    return rules


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls`` and its bases; one that cannot be resolved (a name
    imported only for the type checker) is ``Any``."""
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        module = sys.modules.get(klass.__module__)
        scope = (vars(module) if module is not None else {}, dict(vars(klass)))
        for name, annotation in inspect.get_annotations(klass).items():
            hints[name] = _resolve(annotation, scope)
    return hints


def _resolve(annotation: Any, scope: tuple[dict[str, Any], dict[str, Any]]) -> Any:
    holder = types.SimpleNamespace(__annotations__={"a": annotation})
    try:
        return typing.get_type_hints(holder, globalns=scope[0], localns=scope[1],
                                     include_extras=True)["a"]
    except Exception:
        return Any


# -- compiling annotations ----------------------------------------------------------------------


def rule_for(annotation: Any) -> Rule:
    """What a (resolved) annotation accepts."""
    if annotation is Any or annotation is object:
        return ANYTHING
    if annotation is None or annotation is _NONE:
        return Rule(frozenset({_NONE}))
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _annotated(annotation)
    if origin is Union or origin is types.UnionType:
        return _union([rule_for(a) for a in typing.get_args(annotation)])
    if origin is Literal:
        return _literal(typing.get_args(annotation))
    if origin is not None:
        return _generic(origin, typing.get_args(annotation))
    if isinstance(annotation, typing.NewType):
        return rule_for(annotation.__supertype__)
    if isinstance(annotation, type):
        return _class(annotation)
    return ANYTHING  # a TypeVar, a ForwardRef that did not resolve, ...


def _class(cls: type) -> Rule:
    if cls is float:
        return Rule(frozenset({float}), _is_float)
    if cls is int:
        return Rule(frozenset({int}), _is_int)
    if cls is bool:
        return Rule(frozenset({bool}))
    return Rule(frozenset({cls}), lambda v: isinstance(v, cls))


def _is_float(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return _is_int(v) and -_FLOAT_MAX <= v <= _FLOAT_MAX


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _union(rules: list[Rule]) -> Rule:
    if any(rule.plain is None for rule in rules):
        return ANYTHING
    limits = {rule.limit for rule in rules if rule.limit is not None}
    if limits and (len(limits) > 1 or sum(str in (r.plain or ()) for r in rules) > 1):
        rules = [_without_limit(rule) for rule in rules]  # one limit no longer fits all
    plain: set[type] = set()
    checks: list[Check] = []
    for rule in rules:
        plain |= rule.plain or frozenset()
        if rule.check is not None:
            checks.append(rule.check)
    limit = next((rule.limit for rule in rules if rule.limit is not None), None)
    if len(checks) <= 1:
        return Rule(frozenset(plain), checks[0] if checks else None, limit)
    return Rule(frozenset(plain), lambda v: any(check(v) for check in checks), limit)


def _without_limit(rule: Rule) -> Rule:
    """The same rule with its limit moved into its check."""
    if rule.limit is None:
        return rule
    return Rule(frozenset(), rule.accepts)


def _literal(values: tuple[Any, ...]) -> Rule:
    allowed = tuple((type(x), x) for x in values)
    return Rule(frozenset(), lambda v: any(type(v) is t and v == x for t, x in allowed))


def _annotated(annotation: Any) -> Rule:
    base = rule_for(typing.get_args(annotation)[0])
    bounds = [m for m in annotation.__metadata__ if isinstance(m, _Bound)]
    if not bounds:
        return base
    if base.plain == frozenset({str}) and len(bounds) == 1 and isinstance(bounds[0], MaxLen):
        limit = bounds[0].limit  # a bounded name, the commonest field: tested inline
        return Rule(base.plain, lambda v: isinstance(v, str) and len(v) <= limit, limit)
    accepts = base.accepts
    if len(bounds) == 1:
        admits = bounds[0].admits
        return Rule(frozenset(), lambda v: accepts(v) and admits(v))
    return Rule(frozenset(), lambda v: accepts(v) and all(b.admits(v) for b in bounds))


def _generic(origin: Any, args: tuple[Any, ...]) -> Rule:
    if origin is list:
        return _items(list, args[0] if args else Any)
    if origin is dict:
        return _mapping(*(args or (Any, Any)))
    if origin is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _items(tuple, args[0] if args else Any)
        return _fixed_tuple(args)
    if origin is type or origin is collections.abc.Callable:
        return Rule(frozenset())  # neither travels on the wire: only None, if allowed
    if isinstance(origin, type):
        return Rule(frozenset(), lambda v: isinstance(v, origin))
    return ANYTHING


def _items(container: type, item: Any) -> Rule:
    rule = rule_for(item)
    if rule.plain is None:
        return Rule(frozenset({container}))
    accepts = rule.accepts
    return Rule(frozenset(), lambda v: type(v) is container and all(
        map(accepts, typing.cast("list[Any]", v))))


def _mapping(key: Any, value: Any) -> Rule:
    key_ok, value_ok = rule_for(key), rule_for(value)
    if value_ok.plain is None:
        return Rule(frozenset({dict}))  # a payload: the codec carries keys of any type
    pair = key_ok.accepts, value_ok.accepts
    return Rule(frozenset(), lambda v: type(v) is dict and all(
        pair[0](k) and pair[1](x) for k, x in v.items()))


def _fixed_tuple(args: tuple[Any, ...]) -> Rule:
    each = tuple(rule_for(a).accepts for a in args)
    return Rule(frozenset(), lambda v: type(v) is tuple and len(v) == len(each) and all(
        ok(x) for ok, x in zip(each, v, strict=True)))
