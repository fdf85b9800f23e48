"""What the process template imports before it forks workers, found without running project code.

- :data:`LIBRARY`: what every worker host imports (the library and the embedded bus);
- :data:`DRIVERS`: the bus drivers of the topology's channels;
- ``preload:`` in the topology: modules the user names;
- by default, what the workers' own modules import that is not the project's. Their ``import``
  statements are read with :mod:`ast`, at module level (class bodies, ``if`` and ``try``
  included; function bodies and ``if TYPE_CHECKING:`` blocks not), following the project
  modules they import: ``agents.py`` importing ``common.py`` importing ``openai`` preloads
  ``openai``.

A module is the project's when its top-level name is a file or a directory under the project
root, where a worker host looks first. The project's modules are never inferred, so that the
next worker to start sees an edit of one; the library (``pipecat_workers``) is preloaded even
when it lives in the project (an editable install), and an edit of it restarts the template.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

LIBRARY: tuple[str, ...] = (
    "pipecat_workers_cli.topology.classes",
    "pipecat_workers",
    "pipecat_workers.bus",
    "pipecat_workers.bus.backends.hub",
    "pipecat_workers.workers.runner",
)
"""Imported by every worker host before its own module (measured: a ready host adds nothing
else but the project's modules)."""

DRIVERS: Mapping[str, tuple[str, ...]] = {
    "redis": ("pipecat_workers.bus.backends.redis",),
    "pgmq": ("pipecat_workers.bus.backends.pgmq",),
}
"""The modules a channel's backend adds (its driver among them); missing ones are skipped."""

LIBRARY_PACKAGES = frozenset({"pipecat_workers"})
NEVER = frozenset({"__main__", "antigravity", "this"})  # importing them does something
MAX_FILES = 500            # project files read while following imports
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PreloadPlan:
    """The modules to import, in order, by how a failure to import one counts."""

    required: tuple[str, ...]   # the library: a failure means no template
    explicit: tuple[str, ...]   # ``preload:``: a failure means no template, and says why
    optional: tuple[str, ...]   # drivers and inferred modules: a failure is skipped



def plan_preloads(root: Path, *, modules: Iterable[str], backends: Iterable[str],
                  explicit: Iterable[str] = (), excluded: Iterable[str] = ()) -> PreloadPlan:
    """What a template for this project preloads.

    Args:
        root: The project directory.
        modules: The modules of the workers' classes (``agents`` of ``agents:Agent``).
        backends: The backends of the topology's channels.
        explicit: ``preload:`` of the topology.
        excluded: Modules not to infer (importing them was found unsafe before).
    """
    skip = set(excluded)
    drivers = [m for b in dict.fromkeys(backends) for m in DRIVERS.get(b, ())]
    inferred = infer_imports(root, modules)
    optional = [m for m in (*drivers, *inferred) if m not in skip]
    return PreloadPlan(required=LIBRARY, explicit=tuple(dict.fromkeys(explicit)),
                       optional=tuple(dict.fromkeys(optional)))


def infer_imports(root: Path, modules: Iterable[str]) -> list[str]:
    """The modules that importing ``modules`` would import and that are not the project's,
    in the order found (a package before its submodules)."""
    found: dict[str, None] = {}
    pending = list(dict.fromkeys(modules))
    seen: set[Path] = set()
    while pending and len(seen) < MAX_FILES:
        name = pending.pop(0)
        if not is_project_module(root, name):
            if name.partition(".")[0] not in NEVER:
                found.setdefault(name)
            continue
        for path, package in _files_of(root, name):
            if path in seen:
                continue
            seen.add(path)
            for imported, names in _module_imports(path, package):
                pending.append(imported)
                pending.extend(f"{imported}.{n}" for n in names)  # maybe submodules
    return list(found)


def is_project_module(root: Path, name: str) -> bool:
    """Whether a worker host would import ``name`` from the project directory."""
    top = name.partition(".")[0]
    if top in LIBRARY_PACKAGES:
        return False
    try:
        return (root / top).is_dir() or (root / f"{top}.py").is_file() or any(
            root.glob(f"{top}.*.so")) or any(root.glob(f"{top}.*.pyd"))
    except OSError:
        return True  # cannot tell: never preload what might be the project's


def _files_of(root: Path, name: str) -> Iterator[tuple[Path, str]]:
    """The project files that importing ``name`` runs (its packages' ``__init__`` first),
    each with the package its relative imports start from."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        here = root.joinpath(*parts[:i])
        dotted = ".".join(parts[:i])
        if (here / "__init__.py").is_file():
            yield here / "__init__.py", dotted
        elif i == len(parts) and here.with_suffix(".py").is_file():
            yield here.with_suffix(".py"), ".".join(parts[:i - 1])


def _module_imports(path: Path, package: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` of each import run when the file is imported: ``from a import b``
    is ``("a", ("b",))``; relative imports are made absolute from ``package``."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return []
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError):
        return []  # the worker that imports it will say what is wrong
    found: list[tuple[str, tuple[str, ...]]] = []
    stack: list[ast.AST] = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base:
                found.append((base, tuple(a.name for a in node.names if a.name != "*")))
        else:
            stack.extend(reversed([child for child in ast.iter_child_nodes(node)
                                   if isinstance(child, ast.stmt | ast.excepthandler
                                                 | ast.match_case)]))
    return found


def _absolute(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or (level - 1 == len(parts) and not module):
        return ""  # beyond the top: the import fails in the worker too
    base = parts[:len(parts) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
