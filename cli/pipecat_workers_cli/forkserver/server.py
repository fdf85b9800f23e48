"""The template process: preload, check that nothing runs, then fork a worker per request.

:func:`serve` is what ``python -P -m pipecat_workers_cli.host`` runs when
:data:`~pipecat_workers_cli.forkserver.TEMPLATE_ENV` is set. It returns only in a forked worker,
made a worker host by :func:`pipecat_workers_cli.forkserver.child.become_worker`; the template
itself exits when the supervisor closes its socket (or dies: the template has the parent-death
signal SIGKILL).
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
from typing import Any

from pipecat_workers_cli.forkserver import (
    CHILD_FDS,
    MAX_MESSAGE,
    PR_SET_PDEATHSIG,
    TEMPLATE_ENV,
    Config,
    close_other_fds,
    decode,
    prctl,
    send,
)
from pipecat_workers_cli.forkserver.child import Baseline, Request, become_worker
from pipecat_workers_cli.forkserver.loading import Failed, Loaded, load
from pipecat_workers_cli.forkserver.preloads import plan_preloads
from pipecat_workers_cli.imported import inherit
from pipecat_workers_cli.titles import set_title

STALE_CHECK_EVERY = 1.0  # seconds: how often the files it imported are compared, at most
_MAX_FILES_BYTES = 100_000  # of the ready message, which must fit in one datagram


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
        _reply(sock, {"event": "failed", "module": failed.module, "error": failed.error,
                      "optional": failed.optional})
        sys.exit(1)
    # Not collected while importing, then frozen: a worker's garbage collector never
    # writes to these pages (the recipe of gc.freeze's documentation).
    gc.freeze()
    _reply(sock, {
        "event": "ready", "pid": os.getpid(), "seconds": round(time.monotonic() - started, 3),
        "preloaded": len(loaded.modules), "skipped": dict(list(loaded.skipped.items())[:20]),
        "env": sorted(loaded.env_read),
        "files": _at_most(inherit(root.resolve()), _MAX_FILES_BYTES)})
    request = _serve(sock, loaded)
    sock.close()  # in the worker: the template's socket is not its to keep
    become_worker(request, baseline, loaded.output)
    gc.enable()


def _die_with(supervisor_pid: int) -> None:
    """SIGKILL when the supervisor dies (the template has nothing to clean up)."""
    with contextlib.suppress(OSError, AttributeError):
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
            forked = _fork(Request.from_message(request, fds))
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


def _reply(sock: socket.socket, message: Mapping[str, Any]) -> None:
    try:
        send(sock, dict(message))
    except OSError:
        sys.exit(0)  # the supervisor is gone: nobody to fork for


def _at_most(paths: list[str], size: int) -> list[str]:
    """The first of ``paths`` that fit in ``size`` bytes of a message."""
    kept, used = [], 0
    for path in paths:
        used += len(path.encode()) + 4
        if used > size:
            break
        kept.append(path)
    return kept


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
