"""Which of the project's files a worker host has imported (for hot reload).

A host reports them when it is ready; the supervisor restarts it when one of them changes.
A file counts when it lies under the project directory, outside virtualenvs, site-packages
and hidden directories (somebody else's code).

The process template (:mod:`pipecat_workers_cli.forkserver`) runs :func:`inherit` once its modules
are imported: a worker forked from it then only looks at the modules it imported itself, and never
touches the template's modules or their names (a look at each would copy its memory page into the
worker: about 0.2 MB of private memory per worker with 500 modules).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_OTHERS = frozenset({"site-packages", ".venv", "venv", "__pycache__"})

_inherited_root = ""
_inherited_names: frozenset[str] = frozenset()
_inherited_files: frozenset[str] = frozenset()


def project_imports(root: Path) -> list[str]:
    """The files under ``root`` (resolved) that modules of this process were loaded from."""
    top = str(root)
    inherited = top == _inherited_root
    skip = _inherited_names if inherited else frozenset()
    files = set(_inherited_files) if inherited else set()
    real_dirs: dict[str, str] = {}
    for name in _modules_since(skip):
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str) and (found := _project_file(top, path, real_dirs)):
            files.add(found)
    return sorted(files)


def inherit(root: Path) -> list[str]:
    """Remember this process's modules and their project files for the processes forked
    from it; the files."""
    global _inherited_root, _inherited_names, _inherited_files
    _inherited_root = ""  # a full look, not one based on an earlier inheritance
    files = project_imports(root)
    _inherited_root, _inherited_names = str(root), frozenset(sys.modules)
    _inherited_files = frozenset(files)
    return files


def _project_file(root: str, path: str, real_dirs: dict[str, str]) -> str | None:
    """``path`` resolved, if it is one of the project's files."""
    directory, base = os.path.split(os.path.abspath(path))
    real = real_dirs.get(directory)
    if real is None:
        real = real_dirs[directory] = os.path.realpath(directory)
    resolved = os.path.join(real, base)
    if os.path.islink(resolved):
        resolved = os.path.realpath(resolved)
    if not resolved.startswith(root.rstrip(os.sep) + os.sep):
        return None
    parts = Path(resolved).relative_to(root).parts[:-1]
    if any(part in _OTHERS or part.startswith(".") for part in parts):
        return None
    return resolved


def _modules_since(inherited: frozenset[str]) -> list[str]:
    """The names of the modules imported since the process was forked (all of them when
    ``inherited`` is empty): modules are added at the end of ``sys.modules``, so it is read
    backwards up to the first inherited one, without touching the others."""
    if not inherited:
        return list(sys.modules)
    names = []
    for name in reversed(sys.modules):
        if name in inherited:
            break
        names.append(name)
    return names
