"""Pipecat frames on the wire: what crosses, what is transformed, what is refused.

Importing this module registers, under ``pipecat.<ClassName>``:

* every dataclass ``Frame`` class of ``pipecat.frames.frames``, with a frame adapter;
* the enums, plain dataclasses and pydantic models that frames carry, from the modules in
  ``_VALUE_MODULES`` (``Language``, ``TextType``, ``KeypadEntry``, ``ErrorCategory``, pipecat's
  ``FrameDirection``, ``FunctionCallFromLLM``, ``FunctionCallResultProperties``, the service
  settings, ``VADParams``, every ``MetricsData``, ``LLMTokenUsage``, ...): enums keep their
  type (a ``StrEnum`` comes back as itself, not as ``str``);
* adapters for ``LLMContext``, ``ToolsSchema``, ``FunctionSchema``, ``NOT_GIVEN``,
  ``ExternalUserTurnStrategies`` and :class:`RemoteError`.

Users register their own frame classes with :func:`register_frame` (or ``register_message``,
which hands frames to it once this module is imported).

A frame carries every dataclass field, the ones its constructor takes and the ones it does not
(``name``, ``pts``, ``metadata``, ``transport_source``, ``transport_destination``,
``broadcast_sibling_id``, ``interruptible``, ``num_frames``, ...), except ``id``. A field is
left out when it holds its declared default (``None`` for a field without one, ``{}`` for
``metadata``). The receiver builds the frame through ``__init__`` and then sets every other
field, sent or left out, so it gets the sender's values exactly, under a fresh ``id`` of its
own process (pipecat's ids come from a per-process counter: keeping the sender's could
collide, D32). :func:`copy_frame` gives the same result in memory, for the local bus (D30).

Transformed, on every bus (and by :func:`copy_frame`):

* ``ErrorFrame.processor`` (and ``FatalErrorFrame``'s): sent as ``None``; a processor of
  another process is nothing the receiver can act on.
* ``ErrorFrame.exception``: sent as a :class:`RemoteError` holding the exception's type name
  and its message (credentials masked as in ``ErrorFrame.error``).
* ``TranscriptionFrame.result``, ``InterimTranscriptionFrame.result``,
  ``EagerTranscriptionFrame.result`` (the STT service's raw response): sent when the bus can
  carry it; an SDK object that it cannot is sent as ``None`` (logged once per type).
* ``FunctionSchema.handler``: not sent; the receiver's schema has no handler (handlers run in
  the process whose LLM service registered them). A ``ToolsSchema`` built from direct
  functions arrives with their ``FunctionSchema``s and no ``direct_functions``.
* ``LLMContext``: its messages (``LLMSpecificMessage`` entries keep their ``llm``), tools and
  tool choice (``NOT_GIVEN`` stays ``NOT_GIVEN``), as a new ``LLMContext``.
* ``ExternalUserTurnStrategies``: its ``enable_interruptions``; the receiver builds its own
  strategy objects, as the constructor does.

Refused at the sender with a ``SerializationError`` naming the field, unless ``None``:
callables (``FunctionCallResultProperties.on_context_updated``,
``LLMMessagesTransformFrame.transform``, ``UserImageRequestFrame.result_callback``, a bare
function in ``LLMSetToolsFrame.tools``), processors (``FrameProcessorPauseFrame``,
``FrameProcessorResumeFrame`` and their urgent forms' ``processor``,
``ServiceSwitcherRequestMetadataFrame.service``, ``ManuallySwitchServiceFrame.service``, the
``*UpdateSettingsFrame.service``: a target that only exists here), ``PipelineFlushFrame.event``
(an ``asyncio.Event``), ``StartFrame.tracing_context``, ``LLMContextSummaryConfig.llm``, any
other ``UserTurnStrategies``, and any unregistered value in an ``Any`` field (``metadata``,
``reason``, ``message``, ...). Nothing is dropped silently (D19).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

from pipecat.frames.frames import (
    EagerTranscriptionFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
)
from pydantic import BaseModel

from pipecat_workers.bus.codec import Unsupported, copy_value, encode_value, nonfinite_path
from pipecat_workers.catalogue import (
    adapter_for,
    add_registration_hook,
    lookup,
    register_adapter,
    register_message,
    registered,
)
from pipecat_workers.errors import ConfigurationError, SerializationError
from pipecat_workers.pipeline.wire_values import (
    ENUMS_ONLY,
    VALUE_MODULES,
    RemoteError,
    model_adapter,
    register_value_adapters,
)
from pipecat_workers.validate import Rule, field_rules

logger = logging.getLogger("pipecat_workers.pipeline")

F = TypeVar("F", bound=Frame)
T = TypeVar("T", bound=type)

PREFIX = "pipecat."

_REQUIRED: Any = object()  # the "default" of a required field: never equal to a value
_UNSET: Any = object()
_CHEAP_FACTORIES: dict[Any, Any] = {dict: {}, list: [], tuple: (), str: "", int: 0, bool: False}
_IMPLIED = {"metadata": dict}  # Frame.__post_init__ sets it to {} rather than declaring it


# -- frames -----------------------------------------------------------------------------------


def _to_none(value: Any) -> Any:
    return None


def _remote_exception(value: Any) -> Any:
    return RemoteError.from_exception(value) if isinstance(value, BaseException) else value


_unsent_results: set[type] = set()


def _raw_result(value: Any) -> Any:
    try:
        encode_value(value)
        if nonfinite_path(value, "") is None:
            return value
    except (Unsupported, RecursionError):
        pass
    t = type(value)
    if t not in _unsent_results and len(_unsent_results) < 1024:
        _unsent_results.add(t)
        logger.info("a transcription's raw result (%s) cannot cross the bus: sent as None",
                    t.__qualname__)
    return None


_TRANSFORMS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (ErrorFrame, "processor"): _to_none,
    (ErrorFrame, "exception"): _remote_exception,
    (TranscriptionFrame, "result"): _raw_result,
    (InterimTranscriptionFrame, "result"): _raw_result,
    (EagerTranscriptionFrame, "result"): _raw_result,
}


def _omittable(f: dataclasses.Field[Any]) -> tuple[Any, Callable[[], Any] | None]:
    """The value that lets ``f`` be left out, and the factory that rebuilds it (if any)."""
    if f.default is not dataclasses.MISSING:
        return f.default, None
    factory: Any = f.default_factory
    if factory is not dataclasses.MISSING:
        return _CHEAP_FACTORIES.get(factory, _REQUIRED), factory
    if f.init:
        return _REQUIRED, None
    implied = _IMPLIED.get(f.name)
    return (implied(), implied) if implied is not None else (None, None)


class _FrameCodec:
    """Encodes and decodes one frame class; built once, at registration."""

    __slots__ = ("cls", "fields", "init_names", "absent", "factories", "by_dict", "_rules")

    def __init__(self, cls: type[Frame]) -> None:
        self.cls = cls
        fields: list[tuple[str, Any, bool, Callable[[Any], Any] | None]] = []
        init_names: set[str] = set()
        self.absent: dict[str, Any] = {}  # non-init fields, as a receiver sets them if not sent
        self.factories: list[tuple[str, Callable[[], Any]]] = []
        for f in dataclasses.fields(cls):
            if f.name == "id":
                continue
            default, factory = _omittable(f)
            transform = next((_TRANSFORMS[(b, f.name)] for b in cls.__mro__
                              if (b, f.name) in _TRANSFORMS), None)
            # Only values of these types are compared by value (a float default never is: -0.0
            # equals 0.0); anything else is left out only when it is the default object itself.
            by_value = type(default) in (int, str, dict, list, tuple)
            fields.append((f.name, default, by_value, transform))
            if f.init:
                init_names.add(f.name)
            elif factory is not None:
                self.factories.append((f.name, factory))
                self.absent[f.name] = None
            else:
                self.absent[f.name] = default
        self.fields = tuple(fields)
        self.init_names = frozenset(init_names)
        self._rules: dict[str, Rule] | None = None  # compiled when the first one arrives
        # Fields stored plainly in __dict__ are read and set there: faster, and StartFrame's
        # deprecation warnings on attribute reads stay quiet. Slots, descriptors or a custom
        # __setattr__ make the codec go through getattr/setattr instead.
        self.by_dict = not any(
            vars(c).get("__slots__") or "__setattr__" in vars(c) for c in cls.__mro__[:-1]
        ) and not any(hasattr(vars(c).get(n), "__set__") for c in cls.__mro__ for n, *_ in fields)

    def encode(self, frame: Frame) -> dict[str, Any]:
        out: dict[str, Any] = {}
        get = frame.__dict__.get if self.by_dict else (lambda n, d: getattr(frame, n, d))
        for name, default, by_value, transform in self.fields:
            v = get(name, _UNSET)
            if transform is not None and v is not _UNSET:
                v = transform(v)
            if v is default or v is _UNSET or (by_value and type(v) is type(default)
                                               and v == default):
                continue
            out[name] = v
        return out

    def decode(self, raw: Any) -> Frame:
        if type(raw) is not dict:
            raise TypeError("a frame is a dict of fields")
        init_names = self.init_names
        kwargs: dict[str, Any] = {}
        extra = self.absent.copy()
        for name, factory in self.factories:
            extra[name] = factory()
        rules = self._rules
        if rules is None:
            rules = self._rules = field_rules(self.cls)
        for k, v in raw.items():
            rule = rules.get(k)
            if rule is not None and not rule.accepts(v):  # as any other value from the wire
                raise ValueError(f"frame field {k!r}: {type(v).__name__} does not match")
            if k in init_names:
                kwargs[k] = v
            elif k in extra:
                extra[k] = v
            else:
                raise ValueError(f"unknown frame field {k!r}")  # "id" too: ids stay local
        frame = self.cls(**kwargs)
        if self.by_dict:
            frame.__dict__.update(extra)
        else:
            for k, v in extra.items():
                setattr(frame, k, v)
        return frame


@overload
def register_frame(cls: T, *, name: str | None = None) -> T: ...


@overload
def register_frame(cls: None = None, *, name: str | None = None) -> Callable[[T], T]: ...


def register_frame(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Allow a frame class of your own to cross network buses, with every field.

    Use it as a decorator, with or without a name, in a module that every process imports.
    ``register_message`` does the same for ``Frame`` subclasses once this module is imported.

    Args:
        cls: A dataclass subclass of pipecat's ``Frame``.
        name: The wire name; defaults to ``cls.__name__``. Registering a class again without
            a name keeps its name.

    Returns:
        The class itself, unchanged.

    Raises:
        ConfigurationError: if the class is not a dataclass ``Frame``, is defined in
            ``__main__`` and no name is given (``__main__`` is a different module in every
            process), or the name is taken by another class.

    Example::

        @register_frame
        @dataclass
        class ScoreFrame(DataFrame):
            score: float
    """

    def decorate(klass: T) -> T:
        if not (isinstance(klass, type) and issubclass(klass, Frame)
                and dataclasses.is_dataclass(klass)):
            raise ConfigurationError(
                f"register_frame: {getattr(klass, '__qualname__', klass)!r} must be a dataclass "
                "subclass of pipecat's Frame")
        wire_name = name
        if wire_name is None:
            current = adapter_for(klass)
            if current is not None and current.cls is klass:
                return klass
            if klass.__module__ == "__main__":
                raise ConfigurationError(
                    f"register_frame: {klass.__qualname__} is defined in __main__, which is a "
                    f"different module in every process: define {klass.__name__} in a module "
                    "that every process imports, or pass name=...")
            wire_name = klass.__name__
        codec = _FrameCodec(klass)
        register_adapter(klass, encode=codec.encode, decode=codec.decode, name=wire_name)
        return klass

    if cls is not None:
        return decorate(cls)
    return decorate


def _frame_hook(cls: type, name: str | None) -> bool:
    if isinstance(cls, type) and issubclass(cls, Frame):
        register_frame(cls, name=name)
        return True
    return False


def copy_frame(frame: F) -> F:
    """The frame a network bus would deliver, made in memory: same type and fields, a fresh
    ``id``, the transformations listed in this module applied; bytes are shared, not copied.

    Raises:
        SerializationError: if a network bus would refuse the frame; names the field.
    """
    try:
        copied: F = copy_value(frame)
    except Unsupported as e:
        path = "".join(reversed(e.path))
        raise SerializationError(f"cannot copy {type(frame).__name__}{path}: {e.what}") from None
    except RecursionError:
        raise SerializationError(
            f"cannot copy {type(frame).__name__}: nested too deeply (or circular)") from None
    return copied


def _register_values(module_name: str) -> None:
    module = importlib.import_module(module_name)
    enums_only = module_name in ENUMS_ONLY
    for obj in list(vars(module).values()):
        if not isinstance(obj, type) or obj.__module__ != module_name:
            continue
        if issubclass(obj, Frame):
            if dataclasses.is_dataclass(obj):
                register_frame(obj, name=PREFIX + obj.__name__)
        elif issubclass(obj, enum.Enum):
            register_message(obj, name=PREFIX + obj.__name__)
        elif enums_only or obj.__name__.endswith("Frame"):
            continue  # frame mixins (AudioRawFrame, ...) never travel on their own
        elif dataclasses.is_dataclass(obj):
            register_message(obj, name=PREFIX + obj.__name__)
        elif issubclass(obj, BaseModel):
            model_adapter(obj, PREFIX)


def _register_all() -> None:
    for module_name in VALUE_MODULES:
        _register_values(module_name)
    register_value_adapters(PREFIX)
    # Frames given to register_message before this module was imported get every field now.
    for wire_name, cls in registered().items():
        if lookup(wire_name) is cls and issubclass(cls, Frame):
            register_frame(cls, name=wire_name)
    add_registration_hook(_frame_hook)


_register_all()

__all__ = ["RemoteError", "copy_frame", "register_frame"]

