"""Hot reload: which files changed, and which workers that concerns.

:class:`ChangeWatcher` wraps ``watchfiles.awatch`` over the project directory, with the usual
ignores plus our own state directory and virtualenvs, and yields batches of changed paths.
:func:`plan` decides, without I/O, what a batch means: the topology file changed, or these
workers imported a file that changed (each host reports the project files it imported when
it gets ready), or a parked worker (one that crashed and waits) may now start.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import Change, DefaultFilter, awatch

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.supervisor.statedir import STATE_DIRNAME
from pipecat_workers_cli.topology.model import Topology

# Besides watchfiles' defaults (VCS, caches, .venv, node_modules, editor droppings).
EXTRA_IGNORED_DIRS = (STATE_DIRNAME, "venv", "env", ".ruff_cache", ".nox", "build", "dist",
                      ".eggs")
DEBOUNCE_STEP_MS = 50   # quiet time that ends a batch of changes (an editor's save burst)
DEBOUNCE_MAX_MS = 1000  # a batch never waits longer than this


class ProjectFilter(DefaultFilter):
    """What may trigger a reload: Python sources and YAML, outside ignored directories.

    Directories are judged by the part of the path inside a watched root, so a project that
    itself lives under a folder called ``build`` or ``env`` still reloads.
    """

    def __init__(self, roots: Collection[Path] = ()) -> None:
        super().__init__(ignore_dirs=(*DefaultFilter.ignore_dirs, *EXTRA_IGNORED_DIRS))
        self._roots = [str(r.resolve()) for r in roots]

    def __call__(self, change: Change, path: str) -> bool:
        if not path.endswith((".py", ".yaml", ".yml")):
            return False
        return super().__call__(change, self._inner(path))

    def _inner(self, path: str) -> str:
        for root in self._roots:
            if path.startswith(root + os.sep):
                return path[len(root) + 1:]
        return path


class ChangeWatcher:
    """Yields sets of changed files under ``root`` until ``stop`` is set."""

    def __init__(self, root: Path, *, extra: Collection[Path] = ()) -> None:
        self._paths = [root, *[p for p in extra if not _inside(p, root)]]
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def changes(self) -> AsyncIterator[set[Path]]:
        async for batch in awatch(*self._paths, watch_filter=ProjectFilter(self._paths),
                                  step=DEBOUNCE_STEP_MS, debounce=DEBOUNCE_MAX_MS,
                                  stop_event=self._stop):
            yield {Path(path).resolve() for _, path in batch}


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What one batch of changes asks for."""

    topology_changed: bool = False
    restart: dict[str, Path] = field(default_factory=dict)  # worker -> the file that did it


def plan(changed: Collection[Path], *, topology: Path, imports: Mapping[str, Collection[str]],
         parked: Collection[str]) -> ReloadPlan:
    """Workers to restart for ``changed`` files.

    A running worker restarts when a file it imported changed. A parked worker (crashed,
    waiting) restarts on any Python change: what broke it may be a file it never managed to
    import (a syntax error, say).
    """
    topology = topology.resolve()
    sources = sorted(p for p in changed if p.suffix == ".py")
    restart: dict[str, Path] = {}
    for worker, files in imports.items():
        hit = next((p for p in sources if str(p) in files), None)
        if hit is not None:
            restart[worker] = hit
    if sources:
        for worker in parked:
            restart.setdefault(worker, sources[0])
    return ReloadPlan(topology_changed=topology in changed, restart=restart)


def reload_topology(current: Topology, path: Path | None = None,
                    env: Mapping[str, str] | None = None, *,
                    env_files: Sequence[str] | None = None) -> Topology:
    """The topology file as edited (``path``, by default ``current``'s), if it can replace
    ``current`` in a running supervisor; ``env`` interpolates it (default: ours), with
    ``env_files`` (default: the ones ``current`` was read with).

    Raises:
        TopologyError: the file has an error (it says where).
        CommandError: the project's name or root changed (that takes a new ``up``).
    """
    from pipecat_workers_cli.topology import load_topology

    edited = load_topology(path or current.path, env,
                           env_files=current.env_files if env_files is None else env_files)
    if (edited.name, edited.root) != (current.name, current.root):
        raise CommandError("its name or root changed; stop and run `workers up` again")
    return edited


def shown(path: Path, root: Path) -> str:
    """A path as the user knows it: relative to the project when it is inside."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def drop_bytecode(paths: Collection[Path]) -> None:
    """Remove the cached bytecode of the changed Python files.

    Python trusts a ``.pyc`` whose recorded source size and modification time (in whole
    seconds) match: an edit that keeps the size, saved within the second of the previous
    one, would otherwise restart workers on the old code.
    """
    for path in paths:
        if path.suffix == ".py":
            with contextlib.suppress(OSError, ValueError, NotImplementedError):
                os.unlink(importlib.util.cache_from_source(str(path)))
