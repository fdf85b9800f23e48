"""Value converters: one located YAML value to one typed field of the model.

Each converter takes a :class:`~pipecat_workers_cli.topology.nodes.Node` and returns the value, or
raises :class:`Invalid` saying what was expected and what was got; the loader adds the file, line
and field. :data:`WORKER_FIELDS` maps every key of
:data:`~pipecat_workers_cli.topology.schema.WORKER_KEYS` to its converter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipecat_workers_cli.topology.classes import parse_class_path
from pipecat_workers_cli.topology.classes import suggest as suggest  # the loader's, shared
from pipecat_workers_cli.topology.errors import TopologyError
from pipecat_workers_cli.topology.model import BACKENDS, Condition, RestartPolicy
from pipecat_workers_cli.topology.nodes import Node, got, shown
from pipecat_workers_cli.topology.schema import (
    ARG_NAME_PATTERN,
    DURATION_PATTERN,
    ENV_NAME_PATTERN,
    KEY_PATTERN,
    MAX_REPLICAS,
    MODULE_PATTERN,
    PROJECT_NAME_PATTERN,
)

KEY = re.compile(KEY_PATTERN)
_PROJECT_NAME = re.compile(PROJECT_NAME_PATTERN)
_ENV_NAME = re.compile(ENV_NAME_PATTERN)
_ARG_NAME = re.compile(ARG_NAME_PATTERN)
_DURATION = re.compile(DURATION_PATTERN)
_MODULE = re.compile(MODULE_PATTERN)
_INTEGER = re.compile(r"^\s*[0-9]+\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RESTART = ", ".join(p.value for p in RestartPolicy)


class Invalid(Exception):
    """A value is wrong; the caller adds where (the value's line unless ``line`` says)."""

    def __init__(self, message: str, line: int | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.key = key  # the entry of a mapping value at fault (``env.X``)


def string(node: Node) -> str:
    if not isinstance(node.value, str):
        raise Invalid(f"expected a string, got {got(node)}")
    return node.value


def non_empty(node: Node) -> str:
    value = string(node)
    if not value:
        raise Invalid("expected a non-empty string")
    return value


def _matching(pattern: re.Pattern[str], expected: str) -> Callable[[Node], str]:
    def convert(node: Node) -> str:
        value = string(node)
        if not pattern.fullmatch(value):
            raise Invalid(f"expected {expected}, got {shown(value)}")
        return value
    return convert


project_name = _matching(_PROJECT_NAME, "a project name (lower-case letters, digits and "
                                        "'_.-', starting with a letter or digit)")


def root_dir(node: Node, base: Path) -> Path:
    given = non_empty(node)
    if "\0" in given:
        raise Invalid(f"expected a directory, got {shown(given)} (it holds a NUL character)")
    try:
        root = (base / Path(given).expanduser()).resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links; ~user of no such user
        raise Invalid(f"cannot use {shown(given)} as a directory: {exc}") from None
    if not root.is_dir():
        text = str(root)  # quoted only when it would not read well on one line
        raise Invalid(f"directory not found: "
                      f"{text if text.isprintable() and len(text) <= 200 else shown(text, 200)}")
    return root


def backend_name(node: Node) -> str:
    if node.value not in BACKENDS:
        raise Invalid(f"expected one of {', '.join(BACKENDS)}, got {got(node)}")
    return str(node.value)


def _class_path(node: Node) -> str:
    value = string(node)
    try:
        parse_class_path(value)
    except TopologyError as exc:
        raise Invalid(exc.message) from None
    return value


def name_ref(node: Node) -> str:
    """A worker or channel key; ``1`` is read as an int but means the key ``1``."""
    if isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.raw
    value = string(node)
    if not KEY.fullmatch(value):
        raise Invalid(bad_key(value))
    return value


def _args(node: Node) -> dict[str, Any]:
    if not node.is_mapping:
        raise Invalid(f"expected a mapping of keyword arguments, got {got(node)}")
    for key in node.value:
        line = node.key_lines[key]
        if not _ARG_NAME.fullmatch(key):
            raise Invalid(f"argument name {shown(key)} is not a Python identifier", line, key)
        if key == "name":
            raise Invalid("'name' is not an argument: the worker key is its name", line, key)
    return {key: value.plain() for key, value in node.value.items()}


def _env(node: Node) -> dict[str, str]:
    if not node.is_mapping:
        raise Invalid(f"expected a mapping of environment variables, got {got(node)}")
    env: dict[str, str] = {}
    for key, value in node.value.items():
        if not _ENV_NAME.fullmatch(key):
            raise Invalid(f"{shown(key)} is not a valid environment variable name",
                          node.key_lines[key], key)
        if isinstance(value.value, bool):
            env[key] = "true" if value.value else "false"
        elif isinstance(value.value, str) and "\0" in value.value:
            raise Invalid("an environment variable cannot hold a NUL character",
                          value.line, key)
        elif isinstance(value.value, str | int | float):
            env[key] = str(value.value)
        else:
            raise Invalid(f"expected a string, number or boolean, got {got(value)}",
                          value.line, key)
    return env


def _replicas(node: Node) -> int:
    value = node.value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value) if len(value) < 20 else MAX_REPLICAS + 1  # from ${VAR}
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Invalid(f"expected an integer >= 1, got {got(node)}")
    if value > MAX_REPLICAS:
        shown = got(node)
        shown = shown if len(shown) <= 30 else f"{shown[:27]}..."
        raise Invalid(f"at most {MAX_REPLICAS:,} replicas (each is a process), got {shown}")
    return value


Dependency = tuple[str, int, Condition]
"""A worker key, the line that names it, and what its dependent waits for."""
_CONDITIONS = ", ".join(c.value for c in Condition)


def _depends_on(node: Node) -> tuple[Dependency, ...]:
    """One worker key, a list of them, or compose's mapping form (``{db: {condition:
    ready}, migrate: {condition: completed}}``); each with its line for the loader's checks."""
    if node.is_mapping:
        return tuple(_conditional(node))
    if node.value is None:
        raise Invalid(f"expected a worker key, a list of worker keys or a mapping of them, "
                      f"got {got(node)}")
    items = node.value if node.is_list else [node]
    seen: set[str] = set()
    depends: list[Dependency] = []
    for item in items:
        try:
            name = name_ref(item)
        except Invalid as exc:
            raise Invalid(exc.message, item.line) from None
        if name in seen:
            raise Invalid(f"{shown(name)} is listed twice", item.line)
        seen.add(name)
        depends.append((name, item.line, Condition.READY))
    return tuple(depends)


def _conditional(node: Node) -> list[Dependency]:
    """``{key: {condition: ready|completed}}``; ``{key: {}}`` or ``{key:}`` means ready."""
    depends: list[Dependency] = []
    for key, value in node.value.items():
        line = node.key_lines[key]
        if not KEY.fullmatch(key):
            raise Invalid(bad_key(key), line, key)
        if value.value is None:
            depends.append((key, line, Condition.READY))
            continue
        if not value.is_mapping:
            raise Invalid(f"expected a mapping such as {{condition: ready}}, got {got(value)}",
                          value.line, key)
        for option in value.value:
            if option != "condition":
                raise Invalid(f"unknown key {shown(option)}{suggest(option, ['condition'])}",
                              value.key_lines[option], f"{key}.{option}")
        condition = value.value.get("condition")
        if condition is None:
            depends.append((key, line, Condition.READY))
            continue
        if condition.value not in {c.value for c in Condition}:
            raise Invalid(f"expected one of {_CONDITIONS}, got {got(condition)}",
                          condition.line, f"{key}.condition")
        depends.append((key, line, Condition(condition.value)))
    return depends


def _max_restarts(node: Node) -> int:
    value = node.value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value) if len(value) < 20 else -1  # from ${VAR}
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(f"expected an integer >= 0, got {got(node)}")
    return value


def _restart(node: Node) -> RestartPolicy:
    if node.value is False:  # YAML 1.1 reads a bare `no` as false
        return RestartPolicy.NO
    if isinstance(node.value, str):
        for policy in RestartPolicy:
            if node.value == policy.value:
                return policy
    raise Invalid(f"expected one of {_RESTART}, got {got(node)}")


def _duration(node: Node) -> float:
    """Seconds: a number, or a string such as ``"500ms"``, ``"10s"``, ``"2m"``."""
    value = node.value
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(3)]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise Invalid(f"expected a duration > 0 (seconds, or '500ms', '10s', '2m'), "
                      f"got {got(node)}")
    return seconds


def env_file_names(node: Node) -> tuple[tuple[str, int], ...]:
    """``env_file:``: one path or a list of them, each with its line (to place a missing
    file)."""
    items = node.value if node.is_list else [node]
    names: list[tuple[str, int]] = []
    for item in items:
        if not isinstance(item.value, str) or not item.value or "\0" in item.value:
            raise Invalid(f"expected a file name or a list of file names, got {got(item)}",
                          item.line)
        names.append((item.value, item.line))
    return tuple(names)


def _proxy(node: Node) -> Node:
    """``proxy:``: a mapping, read by :mod:`pipecat_workers_cli.topology.proxies`."""
    if not node.is_mapping:
        raise Invalid(f"expected a mapping with url (a client) or listen (a server), "
                      f"got {got(node)}")
    return node


WORKER_FIELDS: Mapping[str, Callable[[Node], Any]] = {
    "class": _class_path,
    "proxy": _proxy,
    "args": _args,
    "channel": name_ref,
    "env_file": env_file_names,
    "env": _env,
    "replicas": _replicas,
    "depends_on": _depends_on,
    "restart": _restart,
    "stop_timeout": _duration,
    "ready_timeout": _duration,
    "max_restarts": _max_restarts,
}
"""How each key of :data:`~pipecat_workers_cli.topology.schema.WORKER_KEYS` is checked and
converted."""


def module_names(node: Node) -> tuple[str, ...]:
    """``preload:``: a list of dotted module names, each once."""
    if not node.is_list:
        raise Invalid(f"expected a list of module names, got {got(node)}")
    names: list[str] = []
    for item in node.value:
        if not isinstance(item.value, str) or not _MODULE.fullmatch(item.value):
            raise Invalid(f"expected a module name (such as 'numpy' or 'pipecat.frames."
                          f"frames'), got {got(item)}", item.line)
        if item.value in names:
            raise Invalid(f"{shown(item.value)} is listed twice", item.line)
        names.append(item.value)
    return tuple(names)


def bad_key(key: str) -> str:
    return (f"invalid name {shown(key)}: expected letters, digits, '_' and '-', "
            "starting with a letter or digit")

