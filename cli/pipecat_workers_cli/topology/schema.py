"""The topology file's keys, described once: the loader checks them, editors get a JSON Schema.

:data:`TOP_KEYS`, :data:`CHANNEL_KEYS` and :data:`WORKER_KEYS` are the only lists of keys;
the loader refuses anything else and :func:`topology_schema` publishes the same set, so the
two cannot drift. ``configs/topology.schema.json`` is this module's output::

    python -m pipecat_workers_cli.topology.schema > configs/topology.schema.json

The schema checks the file as written, before interpolation: wherever a value may come from
the environment, a string containing ``${`` is accepted too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipecat_workers_cli.topology.classes import CLASS_PATH_PATTERN
from pipecat_workers_cli.topology.model import (
    BACKENDS,
    FORWARD_MESSAGES,
    Condition,
    RestartPolicy,
)

PROJECT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # no dots: replicas are named "key.N"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*$"
MAX_REPLICAS = 1000
"""The most processes one worker entry may ask for (each is a Python interpreter)."""
URL_SCHEMES: Mapping[str, tuple[str, ...]] = {
    "redis": ("redis", "rediss", "unix"),
    "pgmq": ("postgresql", "postgres"),
}
WORKER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a name on a bus: a replica has a dot
PROXY_URL_PATTERN = r"^wss?://[^/?#\s]+"
LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):[0-9]+$"
SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a mapping in the file: its JSON Schema and what editors show for it."""

    name: str
    description: str
    schema: Mapping[str, Any]
    required: bool = False
    instead: str = ""  # a key that may be given in its place (``proxy`` for ``class``)


_VAR = {"type": "string", "pattern": r"\$\{"}


def _or_var(*schemas: Mapping[str, Any]) -> dict[str, Any]:
    """Also accept a string that interpolation will turn into the value."""
    return {"anyOf": [*schemas, _VAR]}


def _string(pattern: str) -> dict[str, Any]:
    return _or_var({"type": "string", "pattern": pattern})


_DURATION = _or_var(
    {"type": "number", "exclusiveMinimum": 0},
    {"type": "string", "pattern": DURATION_PATTERN},
)

_ENV_FILE = {"anyOf": [{"type": "string", "minLength": 1},
                       {"type": "array", "items": {"type": "string", "minLength": 1}}]}

TOP_KEYS: tuple[Key, ...] = (
    Key("name", "Project name; default: the file name. Lower-case letters, digits, '_.-'.",
        _string(PROJECT_NAME_PATTERN)),
    Key("root", "Project directory (imports, state), relative to this file; default: its "
        "directory.", {"type": "string"}),
    Key("channels", "The buses workers join; default: one local channel named 'main'.",
        {"type": "object", "minProperties": 1, "propertyNames": {"pattern": KEY_PATTERN},
         "additionalProperties": {"$ref": "#/$defs/channel"}}),
    Key("workers", "The workers to run, by name (the name they have on the bus).",
        {"type": "object", "minProperties": 1, "propertyNames": {"pattern": KEY_PATTERN},
         "additionalProperties": {"$ref": "#/$defs/worker"}}, required=True),
    Key("preload", "Modules the process template imports before it forks the workers, "
        "besides the library, the bus drivers and what the workers' modules import.",
        {"type": "array", "uniqueItems": True,
         "items": {"type": "string", "pattern": MODULE_PATTERN}}),
    Key("env_file", "Env files (NAME=value lines) every worker gets, relative to this "
        "file; a worker's own env_file and env override them.", _ENV_FILE),
)

CHANNEL_KEYS: tuple[Key, ...] = (
    Key("backend", "local (default: the supervisor hosts the bus, its workers join over a "
        "Unix socket), redis (pub/sub) or pgmq (PostgreSQL).",
        _or_var({"enum": list(BACKENDS)})),
    Key("url", "Server URL: redis://, rediss:// or unix:// for redis; postgresql:// for "
        "pgmq. Not used by local.", {"type": "string"}),
    Key("channel", "Channel name on the wire; default: '<project>.<channel key>'.",
        {"type": "string", "minLength": 1}),
)

WORKER_KEYS: tuple[Key, ...] = (
    Key("class", "The worker class, 'module:attr', a BaseWorker subclass (or give proxy).",
        _string(CLASS_PATH_PATTERN), required=True, instead="proxy"),
    Key("proxy", "Instead of class: a proxy worker that joins this bus to another "
        "project's over WebSocket, as a client (url) or a server (listen).",
        {"$ref": "#/$defs/proxy"}),
    Key("args", "Constructor keyword arguments; the worker's name is passed first.",
        {"type": "object", "propertyNames": {"pattern": ARG_NAME_PATTERN,
                                             "not": {"const": "name"}}}),
    Key("channel", "The channel key it joins; default: the only channel, else 'main'.",
        _string(KEY_PATTERN)),
    Key("env_file", "Env files (NAME=value lines) of its processes, relative to this file; "
        "a later file overrides an earlier one, env overrides them all.", _ENV_FILE),
    Key("env", "Extra environment variables of its processes.",
        {"type": "object", "propertyNames": {"pattern": ENV_NAME_PATTERN},
         "additionalProperties": {"type": ["string", "number", "boolean"]}}),
    Key("replicas", "How many processes; replicas are named '<key>.1' .. '<key>.N'.",
        _or_var({"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS},
                {"type": "string", "pattern": r"^\s*[0-9]+\s*$"})),
    Key("depends_on", "Workers that must be ready (registered on their bus) before it starts; "
        "or a mapping such as {migrate: {condition: completed}} (exited with code 0).",
        {"anyOf": [{"type": "string", "pattern": KEY_PATTERN},
                   {"type": "array", "uniqueItems": True,
                    "items": {"type": "string", "pattern": KEY_PATTERN}},
                   {"type": "object", "propertyNames": {"pattern": KEY_PATTERN},
                    "additionalProperties": {
                        "type": ["object", "null"], "additionalProperties": False,
                        "properties": {"condition": {
                            "enum": [c.value for c in Condition]}}}}]}),
    Key("restart", "When to start it again after it exits; default: on-failure.",
        _or_var({"enum": [p.value for p in RestartPolicy]},
                {"const": False, "description": "YAML 1.1 reads a bare no as false"})),
    Key("stop_timeout", "Seconds to drain before SIGTERM: a number, or '500ms', '10s', '2m'.",
        _DURATION),
    Key("ready_timeout", "Seconds from spawn to registered on its bus: a number, or '30s'.",
        _DURATION),
    Key("max_restarts", "Restarts in a row (a run ready for 10 s resets the count) after "
        "which it stays crashed; default: no limit.",
        _or_var({"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*[0-9]+\s*$"})),
)


_NAMES = {"anyOf": [{"type": "string", "pattern": WORKER_NAME_PATTERN},
                    {"type": "array", "minItems": 1, "uniqueItems": True,
                     "items": {"type": "string", "pattern": WORKER_NAME_PATTERN}}]}

PROXY_KEYS: tuple[Key, ...] = (
    Key("url", "A client: the server's ws:// or wss:// URL.", _string(PROXY_URL_PATTERN)),
    Key("listen", "A server: the address it listens on, 'host:port'.",
        _string(LISTEN_PATTERN)),
    Key("remote", "The other side's workers to stand in for on this bus; default: all it "
        "exposes.", _NAMES),
    Key("expose", "This bus's workers the other side may reach (required for a server; a "
        "client's default: all).", _NAMES),
    Key("token", "The bearer token the client sends and the server requires; empty: none; "
        "default: $PIPECAT_WORKERS_PROXY_TOKEN.", {"type": "string"}),
    Key("forward", "Broadcasts that cross (both ends must say so): end, cancel.",
        {"type": "array", "uniqueItems": True,
         "items": {"enum": list(FORWARD_MESSAGES)}}),
)


def _object(keys: tuple[Key, ...], title: str) -> dict[str, Any]:
    properties = {k.name: {"description": k.description, **k.schema} for k in keys}
    schema: dict[str, Any] = {
        "type": "object",
        "description": title,
        "properties": properties,
        "additionalProperties": False,
    }
    required = [k.name for k in keys if k.required and not k.instead]
    if required:
        schema["required"] = required
    either = [[k.name, k.instead] for k in keys if k.required and k.instead]
    if either:
        schema["allOf"] = [{"oneOf": [{"required": [a]}, {"required": [b]}]}
                           for a, b in either]
    return schema


def _channel() -> dict[str, Any]:
    """A channel, with the URL rules of each backend as if/then clauses."""
    schema = _object(CHANNEL_KEYS, "A bus that workers join.")
    rules: list[dict[str, Any]] = [
        {"if": {"properties": {"backend": {"const": backend}}, "required": ["backend"]},
         "then": {"required": ["url"],
                  "properties": {"url": _string(f"^({'|'.join(schemes)})://")}}}
        for backend, schemes in URL_SCHEMES.items()
    ]
    rules.append({"if": {"anyOf": [{"not": {"required": ["backend"]}},
                                   {"properties": {"backend": {"const": "local"}}}]},
                  "then": {"not": {"required": ["url"]}}})
    schema["allOf"] = rules
    return schema


def _worker() -> dict[str, Any]:
    """A worker: a class, or a proxy (which takes no args and runs as one process)."""
    schema = _object(WORKER_KEYS, "A worker: one process, or one per replica.")
    schema["allOf"].append({"if": {"required": ["proxy"]}, "then": {"not": {"anyOf": [
        {"required": ["args"]},
        {"required": ["replicas"], "properties": {"replicas": {"not": {"const": 1}}}}]}}})
    return schema


def _proxy() -> dict[str, Any]:
    """A proxy: a client (url) or a server (listen, and the workers it exposes)."""
    schema = _object(PROXY_KEYS, "A proxy worker: a client (url) or a server (listen).")
    schema["oneOf"] = [{"required": ["url"], "not": {"required": ["listen"]}},
                       {"required": ["listen", "expose"], "not": {"required": ["url"]}}]
    return schema


def topology_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a topology file, as published for editors."""
    schema = _object(TOP_KEYS, "A pipecat-workers topology: channels and the workers on them.")
    schema.update({
        "$schema": SCHEMA_URI,
        "title": "pipecat-workers topology",
        "$defs": {
            "channel": _channel(),
            "worker": _worker(),
            "proxy": _proxy(),
        },
    })
    return schema


def render_schema() -> str:
    """The published text: pretty, sorted keys, a trailing newline (stable diffs)."""
    return json.dumps(topology_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render_schema(), end="")
