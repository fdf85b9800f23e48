"""What a forked worker does before it goes on as ``pipecat_workers_cli.host``: become what a
spawned host is.

A spawned host is a fresh interpreter in a session of its own, with the supervisor's pipes as
stdin, stdout, stderr and status, the worker's environment and directory, the signal handlers
and mask it inherited, and fresh random state. A forked worker gets the same: it waits until
it is the supervisor's child, takes its pipes, writes what the preloaded imports printed (a
spawned host would have printed it), restores the template's signal handlers and mask,
moves to its directory and environment, reseeds numpy's global random state (``random`` and
the library reseed themselves at fork), and gives OpenBLAS the thread count it would have
had. The host then gives it its title, as it gives a spawned one.

One thing cannot be made fresh: ``str`` hashes use the template's random seed, the same in
every worker it forks.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import json
import linecache
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipecat_workers_cli.forkserver import CHILD_FDS, STATUS_FD

_REPARENT_TIMEOUT = 5.0
_BLAS_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_")
_BLAS_PROCS = ("openblas_get_num_procs", "openblas_get_num_procs64_",
               "scipy_openblas_get_num_procs64_", "scipy_openblas_get_num_procs_")
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


@dataclass(frozen=True, slots=True)
class Baseline:
    """The template before it imported anything: what each worker goes back to."""

    env: Mapping[str, str]
    signals: Mapping[int, Any]
    mask: frozenset[int]

    @classmethod
    def capture(cls) -> Baseline:
        handlers = {}
        for sig in signal.valid_signals():
            if sig in (signal.SIGKILL, signal.SIGSTOP):
                continue
            with contextlib.suppress(OSError, ValueError):
                handlers[int(sig)] = signal.getsignal(sig)
        return cls(env=dict(os.environ), signals=handlers,
                   mask=frozenset(signal.pthread_sigmask(signal.SIG_BLOCK, [])))


@dataclass(frozen=True, slots=True)
class Request:
    """One worker to fork: its directory, its environment (as a difference from the
    template's), and its stdin, stdout, stderr and status pipes."""

    id: int
    cwd: str
    env: Mapping[str, str]
    unset: tuple[str, ...]
    fds: tuple[int, ...]
    middle: int = 0  # the short-lived process between the template and the worker

    @classmethod
    def from_message(cls, message: Mapping[str, Any], fds: Sequence[int]) -> Request:
        env = message["env"]
        unset = message.get("unset") or []
        if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in env.items())
                and isinstance(unset, list) and all(isinstance(k, str) for k in unset)
                and isinstance(message["cwd"], str) and isinstance(message["id"], int)):
            raise ValueError("a malformed request")
        return cls(id=message["id"], cwd=message["cwd"], env=env, unset=tuple(unset),
                   fds=tuple(fds))

    def forked(self, middle: int) -> Request:
        return replace(self, middle=middle)


def become_worker(request: Request, baseline: Baseline, output: tuple[bytes, bytes]) -> None:
    """Make this freshly forked process what a spawned host is at its start."""
    _wait_for_new_parent(request.middle)
    _take_fds(request.fds)
    _write_all(STATUS_FD, json.dumps({"event": "forked", "pid": os.getpid()}).encode() + b"\n")
    for fd, text in ((1, output[0]), (2, output[1])):
        with contextlib.suppress(OSError):
            _write_all(fd, text)
    _restore_signals(baseline)
    os.chdir(request.cwd)
    changed = {k: v for k, v in os.environ.items() if baseline.env.get(k) != v}
    env = {**baseline.env, **changed, **request.env}  # what preloads set stays, as spawned
    for key in request.unset:
        env.pop(key, None)
    os.environ.clear()
    os.environ.update(env)
    importlib.invalidate_caches()
    linecache.clearcache()
    _reseed()
    restore_blas()


def _wait_for_new_parent(middle: int) -> None:
    """The middle process exits at once; until it has, this one is not the supervisor's."""
    deadline = time.monotonic() + _REPARENT_TIMEOUT
    while os.getppid() == middle:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.0001)


def _take_fds(fds: Sequence[int]) -> None:
    """The request's descriptors as 0, 1, 2 and 3, inheritable as a spawned host's are."""
    if len(fds) != CHILD_FDS:
        os._exit(1)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _restore_signals(baseline: Baseline) -> None:
    for sig, handler in baseline.signals.items():
        if handler is None:
            continue  # set outside Python before the template started: left as it is
        with contextlib.suppress(OSError, ValueError, TypeError):
            if signal.getsignal(sig) != handler:
                signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, baseline.mask)


def _reseed() -> None:
    numpy_random = sys.modules.get("numpy.random")
    seed: Callable[[], None] | None = getattr(numpy_random, "seed", None)
    if seed is not None:
        with contextlib.suppress(Exception):
            seed()


def restore_blas() -> None:
    """Give each OpenBLAS the thread count it would have chosen in a fresh process (the
    template loads it with one, as its pool's threads must not exist before a fork)."""
    for path in _loaded_libraries(b"openblas"):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = _symbol(lib, _BLAS_SETTERS)
        procs = _symbol(lib, _BLAS_PROCS)
        if setter is None:
            continue
        available = int(procs()) if procs is not None else (os.cpu_count() or 1)
        wanted = min(_blas_env() or available, available)
        if wanted > 1:
            setter(wanted)


def _blas_env() -> int:
    for name in _BLAS_ENV:
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def _loaded_libraries(needle: bytes) -> list[str]:
    try:
        with open("/proc/self/maps", "rb") as file:
            lines = file.read().splitlines()
    except OSError:
        return []
    found = {line.split(maxsplit=5)[-1].decode(errors="replace") for line in lines
             if needle in line.rpartition(b"/")[2].lower() and line.count(b" ") >= 5}
    return sorted(p for p in found if p.startswith("/"))


def _symbol(lib: ctypes.CDLL, names: Iterable[str]) -> Callable[..., int] | None:
    for name in names:
        function = getattr(lib, name, None)
        if function is not None:
            return function  # type: ignore[no-any-return]
    return None
