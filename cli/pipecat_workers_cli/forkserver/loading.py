"""Importing the template's modules, and making sure nothing runs once they are imported.

After each import the template must still be a single thread with no socket, event loop or
other kernel object that a fork would share: a module that starts a thread (or opens a
socket) at import is *unsafe* and stops the template. OpenBLAS (numpy's) starts its thread
pool when it is loaded: it is loaded with one thread here, and each worker sets the count
it would have had (:func:`pipecat_workers_cli.forkserver.child.restore_blas`).

What the imports print is kept (each worker writes it first, as it would have printed it
itself); which environment variables they read is recorded (a worker whose own ``env:`` sets
one of them is spawned instead, since those modules read the template's); and every file
imported is remembered with its modification time, so that an upgraded package or an edited
file makes the template stale.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipecat_workers_cli.forkserver.preloads import PreloadPlan

BLAS_PIN = "OPENBLAS_NUM_THREADS"
MAX_OUTPUT = 64 * 1024  # bytes kept of what the imports print, per stream


class Failed(Exception):
    """A module the template must import failed, or one was unsafe to fork with;
    ``optional``: one it may leave out (inferred, not the library or ``preload:``)."""

    def __init__(self, module: str, error: str, *, optional: bool) -> None:
        super().__init__(f"{module}: {error}")
        self.module = module
        self.error = error
        self.optional = optional


@dataclass(slots=True)
class Loaded:
    """What the template holds once its modules are imported."""

    modules: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # optional module -> why
    env_read: set[str] = field(default_factory=set)
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> mtime, size
    output: tuple[bytes, bytes] = (b"", b"")

    def changed_file(self) -> str | None:
        """A file it imported that has changed (or gone) since, if any."""
        for path, (mtime, size) in self.files.items():
            try:
                stat = os.stat(path)
            except OSError:
                return path
            if (stat.st_mtime_ns, stat.st_size) != (mtime, size):
                return path
        return None


def load(plan: PreloadPlan, root: Path, *, keep_fds: Collection[int]) -> Loaded:
    """Import the plan's modules; raises :class:`Failed`."""
    loaded = Loaded()
    known_fds = _open_fds() | set(keep_fds)
    saved_blas = os.environ.get(BLAS_PIN)
    os.environ[BLAS_PIN] = "1"
    try:
        with _captured() as output, _recording(loaded.env_read):
            for name in plan.required:
                _import(name, loaded, known_fds, required=True)
            with _on_path(str(root)):  # where a worker host looks first
                for name in plan.explicit:
                    _import(name, loaded, known_fds, required=True)
            for name in plan.optional:
                _import(name, loaded, known_fds, required=False)
    finally:
        if saved_blas is None:
            os.environ.pop(BLAS_PIN, None)
        else:
            os.environ[BLAS_PIN] = saved_blas
    loaded.output = (output[0], output[1])
    loaded.files = _module_files()
    return loaded


def _import(name: str, loaded: Loaded, known_fds: set[int], *, required: bool) -> None:
    try:
        importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        why = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        if required:
            raise Failed(name, why, optional=False) from None
        loaded.skipped[name] = why
    else:
        loaded.modules.append(name)
    unsafe = _running(known_fds)
    if unsafe is not None:
        raise Failed(name, f"importing it {unsafe}", optional=not required)


def _running(known_fds: set[int]) -> str | None:
    """What now runs or is open that a fork must not share, if anything."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = 1
    if threads > 1:
        return "started a thread"
    for fd in sorted(_open_fds() - known_fds):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor that listed the directory, closed since
        if target.startswith("socket:"):
            return "opened a socket"
        if target.startswith("anon_inode:"):
            return f"opened {target.removeprefix('anon_inode:')} (an event loop?)"
    return None


def _open_fds() -> set[int]:
    try:
        return {int(fd) for fd in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def _module_files() -> dict[str, tuple[int, int]]:
    files: dict[str, tuple[int, int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or path in files:
            continue
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            files[path] = (stat.st_mtime_ns, stat.st_size)
    return files


@contextlib.contextmanager
def _on_path(entry: str) -> Iterator[None]:
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)
        sys.path_importer_cache.pop(entry, None)


@contextlib.contextmanager
def _captured() -> Iterator[list[bytes]]:
    """Standard output and error of what runs inside, kept (up to :data:`MAX_OUTPUT` each)."""
    output = [b"", b""]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = [os.dup(1), os.dup(2)]
        _flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield output
        finally:
            _flush()
            for target, fd in enumerate(saved, start=1):
                os.dup2(fd, target)
                os.close(fd)
            for i, file in enumerate((out, err)):
                file.seek(0)
                output[i] = file.read(MAX_OUTPUT)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def _recording(read: set[str]) -> Iterator[None]:
    """Record the names of the environment variables read from ``os.environ`` inside."""
    environ = os.environ
    original = type(environ)

    class Recording(original):  # type: ignore[valid-type,misc]
        def __getitem__(self, key: str) -> str:
            read.add(key)
            value: str = super().__getitem__(key)
            return value

    environ.__class__ = Recording
    try:
        yield
    finally:
        environ.__class__ = original
