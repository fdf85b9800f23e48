"""Turn a topology's ``module:attr`` into a worker class, with one-line errors.

The worker host imports this module before anything else, so it must stay cheap: stdlib,
pipecat_workers and the topology's errors only (no yaml, click or rich). It also holds the
two message helpers the loader shares: :func:`suggest` and :func:`raised_at`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
import sysconfig
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pipecat_workers_cli.topology.errors import WorkerClassError

if TYPE_CHECKING:
    from pipecat_workers.workers.base import BaseWorker

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
CLASS_PATH_PATTERN = f"^{_DOTTED}:{_DOTTED}$"
"""What a ``class:`` value must look like (also published in the JSON Schema)."""

_CLASS_PATH = re.compile(CLASS_PATH_PATTERN)


def parse_class_path(class_path: str) -> tuple[str, str]:
    """Split ``"pkg.module:Attr.Path"`` into module and attribute path.

    Raises:
        WorkerClassError: The text is not ``module:attr``.
    """
    if not _CLASS_PATH.match(class_path):
        raise WorkerClassError(
            f"expected 'module:attr' (e.g. 'examples.handoff.main:MainWorker'), got {class_path!r}"
        )
    module, attr = class_path.split(":")
    return module, attr


def resolve_class(class_path: str) -> type[BaseWorker]:
    """Import the worker class a topology names.

    The module is imported from ``sys.path`` as it is: the caller puts the project root on it.

    Args:
        class_path: ``"module:attr"``; ``attr`` may be dotted (a nested class).

    Returns:
        The class, a subclass of :class:`BaseWorker`.

    Raises:
        WorkerClassError: Bad format, module not found, the module failed to import (the
            message says why and where), no such attribute, or not a BaseWorker subclass.

    Example::

        cls = resolve_class("examples.handoff.main:MainWorker")
    """
    module_name, attr = parse_class_path(class_path)
    obj: Any = _import(module_name)
    walked = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = f"module '{walked}'" if walked == module_name else f"'{walked}'"
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise WorkerClassError(
                f"{owner} has no attribute {part!r}{suggest(part, names)}"
            ) from None
        walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
    if not isinstance(obj, type):
        raise WorkerClassError(f"'{class_path}' is not a class (got {type(obj).__name__})")
    from pipecat_workers.workers.base import BaseWorker  # only once there is a class to check

    if not issubclass(obj, BaseWorker):
        raise WorkerClassError(f"'{class_path}' is not a BaseWorker subclass")
    return obj


def check_args(cls: type[BaseWorker], name: str, args: Mapping[str, Any]) -> None:
    """Check that ``cls(name, **args)`` would bind, without constructing anything.

    Raises:
        WorkerClassError: An argument is missing or unexpected (with the closest parameter
            name), or the class does not take the worker name first.
    """
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return  # no introspectable signature (a C extension): the host will tell
    params = signature.parameters
    where = f"{cls.__module__}:{cls.__qualname__}"
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    keywords = [n for n, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in args:
        if not takes_any and key not in keywords:
            raise WorkerClassError(
                f"{where} takes no argument {key!r}{suggest(key, keywords[1:])}"
            )
    try:
        signature.bind(name, **args)
    except TypeError as exc:
        message = str(exc)
        if "too many positional" in message:
            message = "it does not take the worker name as its first argument"
        elif message.startswith("multiple values"):
            message = f"{message} (the worker name is passed first)"
        raise WorkerClassError(f"{where}: {message}") from None


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(f"{missing}."):
            detail = "" if missing == module_name else f" (no module named '{missing}')"
            raise WorkerClassError(f"module '{module_name}' not found{detail}") from None
        raise _failed(module_name, exc) from None
    except SyntaxError as exc:
        where = _short_path(exc.filename or "?")
        raise WorkerClassError(
            f"importing '{module_name}' failed: syntax error in {where}:{exc.lineno}: {exc.msg}",
        ) from None
    except (Exception, SystemExit) as exc:
        raise _failed(module_name, exc) from None


def _failed(module_name: str, exc: BaseException) -> WorkerClassError:
    """An error raised while the module ran: its one-line message and where it came from."""
    return WorkerClassError(f"importing '{module_name}' failed: {raised_at(exc)}")


def raised_at(exc: BaseException) -> str:
    """One line for an exception the user's code raised: ``RuntimeError: no key (w.py:11)``.

    The place is the innermost frame of the user's own code (not Python's library, an
    installed package, or ours), else the innermost frame; only the message's first line is
    kept.
    """
    lines = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen ")]
    users = [f for f in frames if not f.filename.startswith(_not_the_users())]
    if users or frames:
        frame = (users or frames)[-1]
        detail += f" ({_short_path(frame.filename)}:{frame.lineno})"
    return detail


@functools.cache
def _not_the_users() -> tuple[str, ...]:
    """Directories of code that is not the user's: Python's, installed packages, ours."""
    import pipecat_workers
    import pipecat_workers_cli

    dirs = {Path(sysconfig.get_path(kind)) for kind in ("stdlib", "purelib", "platlib")}
    ours = (pipecat_workers_cli, pipecat_workers)
    dirs |= {Path(module.__file__ or "").parent for module in ours}
    return tuple(sorted({f"{d.resolve()}{os.sep}" for d in dirs}))


def _short_path(filename: str) -> str:
    """Relative to the working directory when below it: messages stay one short line."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith("..") else relative


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
