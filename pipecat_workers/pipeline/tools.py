"""``@tool`` methods of an LLM worker: checked early, and described to the LLM as JSON schemas.

The marker, its checks, collection from a worker class and one pipecat ``FunctionSchema`` per
tool. Unlike pipecat 1.14 (defect D26): a mistake is a one-line ``ConfigurationError`` naming
class and method, raised as the class body runs (a non-async tool included) and again by
:func:`collect_tools`; ``Enum`` and ``Literal`` give ``{"type": <JSON type of the values>,
"enum": [values]}`` (no type if the values' types differ; unknown if a value is not a JSON
scalar); a docstring type (``agent (str): ...``) is used when the annotation is missing or
unknown, and a known annotation wins. Unknown types are ``{}``.

``None``: a parameter whose default is ``None`` drops ``None`` from its union, as leaving the
argument out already gives ``None`` (``x: str | None = None`` is ``{"type": "string"}``, not
required). Elsewhere ``None`` is ``{"type": "null"}`` in an ``anyOf``, so that the model can
send ``null`` where it must send something.
"""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import enum
import inspect
import re
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import docstring_parser
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema

from pipecat_workers.errors import ConfigurationError

if TYPE_CHECKING:
    from pipecat.services.llm_service import FunctionCallParams

__all__ = ["ToolOptions", "ToolSpec", "collect_tools", "function_schema", "tool", "tools_schema"]

_Tool = TypeVar("_Tool", bound=Callable[..., Awaitable[Any]])
Schema = dict[str, Any]
_Note = docstring_parser.DocstringParam
_Scope = tuple[dict[str, Any], dict[str, Any] | None]  # globals and locals to resolve names in

_MARK = "_pipecat_workers_tool"
_UNKNOWN: Any = object()  # an annotation that does not resolve
_UNIONS = (typing.Union, types.UnionType)
_ARRAYS = (list, tuple, set, frozenset, abc.Sequence, abc.MutableSequence, abc.Set, abc.MutableSet)
_OBJECTS = (dict, abc.Mapping, abc.MutableMapping)
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_WRAPPERS = (typing.Annotated, typing.Required, typing.NotRequired)
# A docstring type is evaluated like an annotation; without parentheses it can call nothing.
_TYPE_TEXT = re.compile(r"[\w\s.,|\[\]'\"]+")


@dataclass(frozen=True, slots=True)
class ToolOptions:
    """How the LLM service runs a tool's calls, as in pipecat's ``register_function``."""

    cancel_on_interruption: bool = True
    timeout_secs: float | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One collected tool: its attribute on the worker, its options, what the LLM is told."""

    attr: str
    name: str
    options: ToolOptions
    schema: FunctionSchema

    def handler(self, worker: object) -> Callable[[FunctionCallParams], Awaitable[None]]:
        """The handler to register on the LLM: the worker's method, given the arguments by name."""
        method = getattr(worker, self.attr)

        async def call(params: FunctionCallParams) -> None:
            await method(params, **params.arguments)

        return call


@overload
def tool(fn: _Tool, /) -> _Tool: ...
@overload
def tool(
    *, cancel_on_interruption: bool = True, timeout_secs: float | None = None,
    timeout: float | None = None,
) -> Callable[[_Tool], _Tool]: ...
def tool(
    fn: _Tool | None = None,
    /,
    *,
    cancel_on_interruption: bool = True,
    timeout_secs: float | None = None,
    timeout: float | None = None,
) -> _Tool | Callable[[_Tool], _Tool]:
    """Mark ``async def method(self, params, <arguments>)`` as a tool; it is checked, not wrapped.

    Args:
        fn: The method, when used without parentheses.
        cancel_on_interruption: ``False`` makes calls asynchronous: the LLM does not wait for
            them, and interruptions do not cancel them.
        timeout_secs: A per-call deadline in seconds; ``None`` keeps the service's default.
        timeout: The older name of ``timeout_secs`` (pipecat's), accepted for ported code.

    Raises:
        ConfigurationError: The method or an option cannot work as a tool.
    """
    if timeout is not None:
        if timeout_secs is not None:
            raise ConfigurationError("@tool: give timeout_secs or timeout (its old name), "
                                     "not both")
        timeout_secs = timeout
    options = ToolOptions(cancel_on_interruption, timeout_secs)

    def mark(func: _Tool) -> _Tool:
        _check(func, options, _where(getattr(func, "__qualname__", repr(func))))
        setattr(func, _MARK, options)
        return func

    return mark if fn is None else mark(fn)


def collect_tools(cls: type) -> dict[str, ToolSpec]:
    """Check and describe a worker class's tools, keyed by tool name.

    The first class in the MRO that defines a name decides it, so a tool overridden without
    ``@tool`` is no longer a tool. The checks run again because a mark can reach a method the
    decorator never saw, e.g. copied by ``functools.wraps`` onto a sync wrapper.

    Raises:
        ConfigurationError: A tool cannot work, or two attributes give the same tool name.
    """
    specs: dict[str, ToolSpec] = {}
    seen: set[str] = set()
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            spec = None if attr in seen else _spec(klass, attr, value)
            seen.add(attr)
            if spec is not None and spec.name in specs:
                taken = f"the tool name {spec.name!r} is taken by {specs[spec.name].attr}"
                raise _error(f"{_where(klass.__qualname__)}.{attr}", taken)
            if spec is not None:
                specs[spec.name] = spec
    return specs


def tools_schema(specs: Iterable[ToolSpec]) -> ToolsSchema:
    """The ``ToolsSchema`` advertising these tools, e.g. for an ``LLMSetToolsFrame``."""
    return ToolsSchema(standard_tools=[spec.schema for spec in specs])


def function_schema(fn: Callable[..., Any], *, owner: type | None = None) -> FunctionSchema:
    """Describe a tool to the LLM: its name, its docstring, and the arguments after ``params``.

    Args:
        fn: The tool's function.
        owner: The class defining it, so that annotations can name classes nested in it.

    Raises:
        ConfigurationError: ``fn`` has no ``params`` parameter.
    """
    parameters = list(inspect.signature(fn).parameters.values())
    names = [p.name for p in parameters]
    if "params" not in names:
        raise _error(_where(fn.__qualname__), "there is no 'params' parameter")
    doc = _parse_doc(inspect.getdoc(fn))
    notes = {note.arg_name: note for note in doc.params}
    scope = (getattr(inspect.unwrap(fn), "__globals__", {}), dict(vars(owner)) if owner else None)
    properties: dict[str, Schema] = {}
    for param in parameters[names.index("params") + 1 :]:
        tp = _resolve(param.annotation, scope)
        if param.default is None and typing.get_origin(tp) in _UNIONS:
            rest = tuple(a for a in typing.get_args(tp) if a is not type(None))
            tp = typing.Union[rest]  # noqa: UP007 (a union built at run time)
        properties[param.name] = _property(tp, notes.get(param.name), scope)
    required = [p.name for p in parameters if p.name in properties and p.default is p.empty]
    description = "\n\n".join(t for t in (doc.short_description, doc.long_description) if t)
    return FunctionSchema(fn.__name__, description.strip(), properties, required)


def _spec(klass: type, attr: str, value: object) -> ToolSpec | None:
    """The tool that ``klass`` defines as ``attr``, or None if ``value`` is not one."""
    func = value.__func__ if isinstance(value, staticmethod | classmethod) else value
    options = getattr(func, _MARK, None)
    if not isinstance(options, ToolOptions):
        return None
    where = f"{_where(klass.__qualname__)}.{attr}"
    if func is not value or not callable(func):
        raise _error(where, f"a tool must be a plain method, not a {type(value).__name__}")
    _check(func, options, where)
    schema = function_schema(func, owner=klass)
    return ToolSpec(attr=attr, name=schema.name, options=options, schema=schema)


def _check(fn: Callable[..., Any], options: ToolOptions, where: str) -> None:
    """Refuse what an LLM service could not call as ``fn(self, params, **arguments)``."""
    if not inspect.iscoroutinefunction(fn):
        what = "a plain 'def'" if inspect.isfunction(fn) else f"a {type(fn).__name__}"
        raise _error(where, f"a tool must be an 'async def' method, not {what}")
    if not isinstance(options.cancel_on_interruption, bool):
        raise _error(where, "cancel_on_interruption must be True or False")
    timeout = options.timeout_secs
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise _error(where, f"timeout_secs must be a positive number of seconds, got {timeout!r}")
    parameters = list(inspect.signature(fn).parameters.values())
    if len(parameters) < 2 or parameters[1].name != "params":
        got = repr(parameters[1].name) if len(parameters) > 1 else "nothing"
        raise _error(where, f"the first parameter after self must be 'params', got {got}")
    for param in parameters[2:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise _error(where, f"the LLM passes arguments by name, which {param} cannot take")


def _error(where: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"@tool {where}: {problem}")


def _where(qualname: str) -> str:
    """``Class.method``, without the ``<locals>`` path of a class defined in a function."""
    return qualname.rpartition("<locals>.")[2]


def _parse_doc(text: str | None) -> docstring_parser.Docstring:
    """The parsed docstring; one the parser cannot read just gives no descriptions."""
    try:
        return docstring_parser.parse(text or "")
    except docstring_parser.ParseError:
        return docstring_parser.Docstring()


def _resolve(annotation: object, scope: _Scope) -> Any:
    """The type an annotation (or docstring type) names, else ``_UNKNOWN``; one at a time, so
    that another that cannot be resolved (``params: FunctionCallParams`` imported only under
    ``TYPE_CHECKING``, say) does not hide this one."""
    if annotation is inspect.Parameter.empty:
        return _UNKNOWN
    holder = types.SimpleNamespace(__annotations__={"a": annotation})
    try:
        return typing.get_type_hints(holder, globalns=scope[0], localns=scope[1])["a"]
    except Exception:  # whatever stops it from evaluating, it names no type we can use
        return _UNKNOWN


def _property(
    tp: Any, note: _Note | None, scope: _Scope, seen: frozenset[type] = frozenset()
) -> Schema:
    """The annotation's schema, else the docstring type's, else ``{}``; with its description."""
    schema = _schema(tp, seen)
    type_text = note.type_name if note is not None else None
    if schema is None and type_text and _TYPE_TEXT.fullmatch(type_text):
        schema = _schema(_resolve(type_text, scope), seen)
    result: Schema = schema if schema is not None else {}
    if note is not None and note.description:
        result["description"] = note.description
    return result


def _schema(tp: Any, seen: frozenset[type]) -> Schema | None:
    """A new JSON schema for ``tp``, or None when we know no JSON meaning for it."""
    if isinstance(tp, typing.NewType):
        return _schema(tp.__supertype__, seen)
    if isinstance(tp, type):
        return _class_schema(tp, seen)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return _enum(list(args))
    if origin in _UNIONS:
        return _union(list(args), seen)
    if origin in _ARRAYS:
        return _array(origin, args, seen)
    if origin in _OBJECTS:
        values = _schema(args[1], seen) if len(args) == 2 else None
        return {"type": "object"} | ({} if values is None else {"additionalProperties": values})
    return None


def _class_schema(tp: type, seen: frozenset[type]) -> Schema | None:
    """Scalars, enums, bare containers, TypedDicts and dataclasses."""
    if issubclass(tp, enum.Enum):
        return _enum([member.value for member in tp])
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if tp in _ARRAYS or tp in _OBJECTS:
        return {"type": "array" if tp in _ARRAYS else "object"}
    if typing.is_typeddict(tp) or dataclasses.is_dataclass(tp):
        return _object(tp, seen)
    return None


def _enum(values: list[Any]) -> Schema | None:
    """An ``enum`` of JSON scalars, with their type when they share one."""
    values = [v.value if isinstance(v, enum.Enum) else v for v in values]
    kinds = {_SCALARS.get(type(v)) for v in values}  # exact types: True is not an integer
    if not values or None in kinds:
        return None
    return ({"type": kinds.pop()} if len(kinds) == 1 else {}) | {"enum": values}


def _union(members: list[Any], seen: frozenset[type]) -> Schema | None:
    """The only member's schema, or ``anyOf``; unknown if any member is."""
    schemas = [_schema(member, seen) for member in members]
    if not schemas or any(s is None for s in schemas):
        return None
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _array(origin: Any, args: tuple[Any, ...], seen: frozenset[type]) -> Schema:
    """An array; a fixed-length tuple also gives its length, and any of its item types."""
    schema: Schema = {"type": "array"}
    fixed = origin is tuple and bool(args) and args[-1] is not Ellipsis
    items = _union(list(dict.fromkeys(args)), seen) if fixed else _union(list(args[:1]), seen)
    if items is not None:
        schema["items"] = items
    if fixed:
        schema["minItems"] = schema["maxItems"] = len(args)
    return schema


def _object(tp: type, seen: frozenset[type]) -> Schema:
    """A TypedDict's or dataclass's fields, described by the class docstring's entries."""
    if tp in seen:  # recursive: the second time, say no more than "an object"
        return {"type": "object"}
    try:
        hints = typing.get_type_hints(tp, include_extras=True)
    except Exception:  # as for parameters, a field type that does not resolve is unknown
        hints = {}
    if typing.is_typeddict(tp):
        names = list(tp.__annotations__)
        required = [name for name in names if _required_key(tp, name, hints.get(name))]
    else:
        fields = [f for f in dataclasses.fields(tp) if f.init]
        names = [f.name for f in fields]
        missing = dataclasses.MISSING
        required = [f.name for f in fields if missing is f.default and missing is f.default_factory]
    notes = {note.arg_name: note for note in _parse_doc(tp.__doc__).params}
    module = sys.modules.get(tp.__module__)
    scope: _Scope = (vars(module) if module else {}, dict(vars(tp)))
    properties = {
        name: _property(_unwrap(hints.get(name, _UNKNOWN)), notes.get(name), scope, seen | {tp})
        for name in names
    }
    schema: Schema = {"type": "object", "properties": properties}
    return schema | ({"required": required} if required else {})


def _required_key(tp: type, name: str, hint: Any) -> bool:
    """Whether a TypedDict key is required; the hint is read too, as with postponed annotations
    the class could not see ``NotRequired`` when it was created."""
    origin = typing.get_origin(hint)
    return origin is typing.Required or (
        origin is not typing.NotRequired and name in getattr(tp, "__required_keys__", ())
    )


def _unwrap(hint: Any) -> Any:
    """The type inside ``Annotated``, ``Required`` and ``NotRequired``."""
    while typing.get_origin(hint) in _WRAPPERS:
        hint = typing.get_args(hint)[0]
    return hint
