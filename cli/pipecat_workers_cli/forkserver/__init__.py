"""The process template: one warm process per project that forks worker processes on request.

The supervisor starts it once (``python -P -m pipecat_workers_cli.host``, the worker host's own
command line, with :data:`TEMPLATE_ENV` set instead of the host's description). It imports the
library, the bus drivers and the modules of
:func:`~pipecat_workers_cli.forkserver.preloads.plan_preloads`, checks that no thread, event loop or
socket came with them, and then waits. For each worker the supervisor sends a request with the
worker's pipes; the template forks, the child forks the worker and exits, so the worker is
re-parented to the supervisor (a child subreaper): its parent, parent-death signal and exit status
are the supervisor's, exactly as when spawned. The template answers as soon as it has forked and
never waits for a child; the worker says its pid itself. The worker then makes itself what a spawned
host is (:mod:`pipecat_workers_cli.forkserver.child`) and goes on as ``pipecat_workers_cli.host``.

Protocol, one JSON object per message on a ``SOCK_SEQPACKET`` socket pair:

- supervisor to template: ``{"id": N, "cwd": ..., "env": {...}, "unset": [...]}`` with four
  file descriptors (stdin, stdout, stderr, status): the environment is given as its
  difference from the template's own.
- template to supervisor: ``{"event": "ready", ...}`` once, or ``{"event": "failed",
  "module": ..., "error": ..., "optional": bool}`` and it exits; then
  ``{"id": N, "forked": true}`` as soon as it has forked, ``{"id": N, "error": ...}``, or
  ``{"id": N, "stale": PATH}`` when a file it imported changed since (it answers every later
  request the same way, and the supervisor starts a new one).
- the worker to the supervisor, first on its status pipe: ``{"event": "forked", "pid": P}``
  once it is the supervisor's child and leads its own session; a pipe that ends before that
  line means the fork failed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import socket

TEMPLATE_ENV = "PIPECAT_WORKERS_TEMPLATE"
MAX_MESSAGE = 1024 * 1024
STATUS_FD = 3  # where a forked host finds its status pipe (a spawned one is told its own)
CHILD_FDS = 4  # stdin, stdout, stderr, status


@dataclass(frozen=True, slots=True)
class Config:
    """What the supervisor tells the template (JSON in :data:`TEMPLATE_ENV`)."""

    fd: int
    supervisor_pid: int
    project: str
    root: str
    modules: tuple[str, ...]      # of the workers' classes
    backends: tuple[str, ...]
    explicit: tuple[str, ...]     # ``preload:``
    excluded: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # what every worker's ``env:`` sets alike

    def to_json(self) -> str:
        return json.dumps({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str) -> Config:
        data: dict[str, Any] = json.loads(text)
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items()}
        fields["env"] = tuple((str(k), str(v)) for k, v in fields.get("env", ()))
        return cls(**fields)


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One message (and the file descriptors that go with it); raises OSError."""
    import socket  # not at the top: a spawned host imports this package for its constants

    data = json.dumps(message, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


PR_SET_PDEATHSIG = 1  # prctl(2) options used here
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, arg: int | bytes) -> None:
    """Linux's prctl(2) with one argument; raises OSError (AttributeError off Linux)."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    value: Any = ctypes.c_char_p(arg) if isinstance(arg, bytes) else arg
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


_command_dir_dropped = False


def drop_command_dir() -> None:
    """Take the command's own directory (the script's, or the current one for ``-m``) off
    the front of ``sys.path``, once: a forked process is to import as ``python -P`` does,
    never from there over the project's modules."""
    import sys

    global _command_dir_dropped
    if not _command_dir_dropped and not sys.flags.safe_path and sys.path:
        del sys.path[0]
    _command_dir_dropped = True


def close_other_fds(keep: int) -> None:
    """Close every descriptor above 2 but ``keep``: what a fresh process started with
    ``close_fds`` has (Python makes its own descriptors non-inheritable, but a caller may
    have handed down others, which a long-lived process would otherwise hold open)."""
    import os

    os.closerange(3, keep)
    os.closerange(keep + 1, _max_fd())


def _max_fd() -> int:
    import os

    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 65536


def decode(data: bytes) -> dict[str, Any] | None:
    """A message's JSON object, or None if it is not one."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
