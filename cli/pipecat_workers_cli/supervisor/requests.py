"""The control socket's requests, checked and typed before the supervisor acts on any.

What arrives on the socket is JSON from a process of this user, but still only JSON: every
field is checked here (types, and the names and counts it may hold), so that the supervisor's
loop handles typed requests and a malformed one is one line back to the sender. The shapes are
listed in :mod:`pipecat_workers_cli.supervisor.control`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.topology.schema import MAX_REPLICAS

_MAX_NAMES = 10_000       # worker names in one request
_MAX_ENV = 100_000        # variables in an applied environment


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """What ``ps`` asks: the project's status."""


@dataclass(frozen=True, slots=True)
class StopRequest:
    """Stop these workers (all if None) until started again; ``down`` ends the project."""

    names: list[str] | None
    down: bool


@dataclass(frozen=True, slots=True)
class StartRequest:
    names: list[str] | None


@dataclass(frozen=True, slots=True)
class RestartRequest:
    """Restart these workers (all if None), or roll them one at a time."""

    names: list[str] | None
    rolling: bool


@dataclass(frozen=True, slots=True)
class ScaleRequest:
    """Run this many replicas of each worker key (0 stops them)."""

    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    """``up -d`` on the running project: the file, interpolated with the caller's
    environment and env files (an empty list: the ``.env`` beside the file)."""

    file: str
    env: dict[str, str] | None
    env_files: list[str]
    names: list[str] | None


Request = (StatusRequest | StopRequest | StartRequest | RestartRequest | ScaleRequest
           | ApplyRequest)


def parse_request(payload: dict[str, Any]) -> Request:
    """The request ``payload`` makes.

    Raises:
        CommandError: it is no request of ours, or a field has the wrong shape.
    """
    cmd = payload.get("cmd")
    names = _names(payload.get("workers"))
    if cmd == "status":
        return StatusRequest()
    if cmd in ("stop", "down"):
        return StopRequest(names, down=cmd == "down")
    if cmd == "start":
        return StartRequest(names)
    if cmd == "restart":
        return RestartRequest(names, rolling=payload.get("rolling") is True)
    if cmd == "scale":
        return ScaleRequest(_counts(payload.get("replicas")))
    if cmd == "apply":
        file = payload.get("file")
        if not isinstance(file, str) or not file:
            raise CommandError("apply: expected the topology file's name")
        return ApplyRequest(file, _env(payload.get("env")), _names(payload.get("env_files")) or [],
                     names)
    raise CommandError(f"unknown command {str(cmd)[:40]!r}")


def _names(value: object) -> list[str] | None:
    if value is None or value == []:
        return None
    if not (isinstance(value, list) and len(value) <= _MAX_NAMES
            and all(isinstance(n, str) and n for n in value)):
        raise CommandError("expected a list of names")
    return value


def _counts(value: object) -> dict[str, int]:
    if not (isinstance(value, dict) and value and len(value) <= _MAX_NAMES):
        raise CommandError("scale: expected worker keys and replica counts")
    for key, count in value.items():
        if not (isinstance(key, str) and isinstance(count, int)
                and not isinstance(count, bool)):
            raise CommandError("scale: expected worker keys and replica counts")
        if not 0 <= count <= MAX_REPLICAS:
            raise CommandError(f"{key}: expected 0 to {MAX_REPLICAS} replicas, got {count}")
    return value


def _env(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and len(value) <= _MAX_ENV and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
        raise CommandError("apply: expected the environment as names and values")
    return value
