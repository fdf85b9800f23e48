"""The template process: preload, check that nothing runs, then fork a worker per request.

:func:`serve` is what ``python -P -m cli.host`` runs when :data:`~cli.forkserver.TEMPLATE_ENV`
is set. It returns only in a forked worker, made a worker host by
:func:`cli.forkserver.child.become_worker`; the template itself exits when the supervisor
closes its socket (or dies: the template has the parent-death signal SIGKILL).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from cli.forkserver import (
    CHILD_FDS,
    MAX_MESSAGE,
    TEMPLATE_ENV,
    Config,
    close_other_fds,
    decode,
    prctl,
    send,
)
from cli.forkserver.child import Baseline, Request, become_worker
from cli.forkserver.loading import Failed, Loaded, load
from cli.forkserver.preloads import plan_preloads
from cli.imported import inherit
from cli.titles import set_title

STALE_CHECK_EVERY = 1.0  # seconds: how often the files it imported are compared, at most
_PR_SET_PDEATHSIG = 1
_MAX_REPORTED_FILES = 5000


def serve() -> None:
    """Be the template until a request forks a worker; return in that worker only."""
    config = Config.from_json(os.environ.pop(TEMPLATE_ENV))
    close_other_fds(config.fd)  # as a worker host started with close_fds has none
    sock = socket.socket(fileno=config.fd)
    _die_with(config.supervisor_pid)
    with contextlib.suppress(OSError):
        os.chdir(config.root)  # where its workers run
    baseline = Baseline.capture()
    set_title(f"workers: {config.project} process template", name="workers-template")
    root = Path(config.root)
    plan = plan_preloads(root, modules=config.modules, backends=config.backends,
                         explicit=config.explicit, excluded=config.excluded)
    started = time.monotonic()
    gc.disable()
    try:
        loaded = load(plan, root, keep_fds={config.fd})
    except Failed as failed:
        _send_or_exit(sock, {"event": "failed", "module": failed.module,
                             "error": failed.error, "unsafe": failed.unsafe,
                             "explicit": failed.explicit})
        sys.exit(1)
    # Collected, then frozen: a worker's garbage collector never writes to these pages.
    gc.freeze()
    _send_or_exit(sock, {
        "event": "ready", "pid": os.getpid(), "seconds": round(time.monotonic() - started, 3),
        "preloaded": len(loaded.modules), "skipped": dict(list(loaded.skipped.items())[:20]),
        "env": sorted(loaded.env_read),
        "files": inherit(root.resolve())[:_MAX_REPORTED_FILES]})
    request = _serve(sock, loaded)
    become_worker(request, baseline, loaded.output)
    gc.enable()


def _die_with(supervisor_pid: int) -> None:
    """SIGKILL when the supervisor dies (the template has nothing to clean up)."""
    with contextlib.suppress(OSError, AttributeError):
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor_pid:
        os._exit(1)


def _serve(sock: socket.socket, loaded: Loaded) -> Request:
    """Answer requests until one forks a worker: in that worker, return its request."""
    checked = time.monotonic()
    stale: str | None = None
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, CHILD_FDS)
        except OSError:
            sys.exit(0)
        if not data:
            sys.exit(0)  # the supervisor closed its end: done
        request = decode(data)
        ident = request.get("id") if request is not None else None
        if request is None or len(fds) != CHILD_FDS or flags & (socket.MSG_TRUNC
                                                                 | socket.MSG_CTRUNC):
            _close(fds)
            _reply(sock, {"id": ident, "error": "a malformed request"})
            continue
        if stale is None and time.monotonic() - checked >= STALE_CHECK_EVERY:
            stale, checked = loaded.changed_file(), time.monotonic()
        if stale is not None:
            _close(fds)
            _reply(sock, {"id": ident, "stale": stale})
            continue
        try:
            forked = _fork(Request.from_message(request, fds, sock.fileno()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            _close(fds)
            _reply(sock, {"id": ident, "error": f"{type(exc).__name__}: {exc}"})
            continue
        if forked is not None:
            return forked
        _close(fds)
        _reply(sock, {"id": ident, "forked": True})
        _collect_middles()


def _fork(request: Request) -> Request | None:
    """Fork the worker through a short-lived middle process: in the worker, its request.
    The middle process exits at once, so the worker is re-parented to the nearest child
    subreaper, the supervisor; the worker says its pid on its status pipe once that has
    happened, so the template never waits for either of them."""
    middle = os.fork()
    if middle == 0:
        try:
            middle_pid = os.getpid()
            if os.fork() == 0:
                os.setsid()
                return request.forked(middle_pid)
        except BaseException:
            os._exit(1)
        os._exit(0)
    return None


def _collect_middles() -> None:
    """Its only children are middle processes: collect those that have exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reply(sock: socket.socket, message: dict[str, Any]) -> None:
    _send_or_exit(sock, message)


def _send_or_exit(sock: socket.socket, message: Mapping[str, Any]) -> None:
    try:
        send(sock, dict(message))
    except OSError:
        _exit_now()


def _exit_now() -> NoReturn:
    sys.exit(0)  # the supervisor is gone: nobody to fork for


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
