"""``up``'s pre-flight: the mistakes ``check`` finds, found before anything starts.

``check`` imports every worker class. ``up`` must not: it would import the project's modules
(and pipecat) into the supervisor, which the process template forks, so every worker would
see those modules as they were at ``up``, not as they are when it starts. So this looks
without running anything: a channel's driver is found on ``sys.path``, and a worker's module
is found and parsed, and must define its class's name at module level. What it cannot tell
(a module with ``from x import *`` or a module ``__getattr__``, an extension module) passes:
the worker's host says it then, as it always did.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path

from pipecat_workers_cli.topology.classes import parse_class_path, suggest
from pipecat_workers_cli.topology.errors import WorkerClassError
from pipecat_workers_cli.topology.model import Topology, WorkerSpec

# backend -> (its bus class, the packages its driver needs, the extra that installs them)
_DRIVERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "redis": ("RedisBus", ("redis",), "redis"),
    "pgmq": ("PgmqBus", ("pgmq", "asyncpg"), "pgmq"),
}

_PROXY_DRIVER = ("websockets", "proxy")  # a proxy worker's package, and its extra


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake: where it is in the topology and what it is."""

    line: int
    field: str
    message: str


def preflight(topology: Topology) -> list[Problem]:
    """Every missing driver and missing worker module or class of ``topology``."""
    problems: list[Problem] = []
    for channel in topology.channels.values():
        bus, packages, extra = _DRIVERS.get(channel.backend, ("", (), ""))
        for package in packages:
            if importlib.util.find_spec(package) is None:
                problems.append(Problem(
                    channel.line, f"channels.{channel.key}.backend",
                    f"{bus} needs the '{package}' package: "
                    f"pip install 'pipecat-workers[{extra}]'"))
                break
    for spec in topology.workers.values():
        if spec.proxy is not None:  # the library's own class: nothing to look for
            problems.extend(proxy_problems(spec, os.environ))
            continue
        try:
            _check_class(spec.class_path, topology.root, _python_path(spec.env, topology.root))
        except WorkerClassError as exc:
            problems.append(Problem(spec.line, f"workers.{spec.key}.class", str(exc)))
    return problems


def proxy_problems(spec: WorkerSpec, environ: Mapping[str, str]) -> list[Problem]:
    """Why a proxy worker could not start, found before it does: its ``websockets`` driver
    is missing, or it is a server that would listen beyond this machine for anyone (no
    token, and no shared secret, in ``environ`` as its process would get it)."""
    proxy = spec.proxy
    if proxy is None:
        return []
    from pipecat_workers.bus.serializer import SECRET_ENV
    from pipecat_workers.proxy.server import is_loopback
    from pipecat_workers.proxy.worker import TOKEN_ENV

    problems = []
    package, extra = _PROXY_DRIVER
    if importlib.util.find_spec(package) is None:
        name = proxy.class_path.rpartition(":")[2]
        problems.append(Problem(spec.line, f"workers.{spec.key}.proxy",
                                f"{name} needs the '{package}' package: "
                                f"pip install 'pipecat-workers[{extra}]'"))
    env = {**environ, **spec.env}
    if (proxy.host is not None and not is_loopback(proxy.host)
            and not (env.get(TOKEN_ENV) or env.get(SECRET_ENV))):
        problems.append(Problem(spec.line, f"workers.{spec.key}.proxy.listen",
                                f"it would accept anyone on {proxy.host}:{proxy.port}: give it "
                                f"a token (or set {SECRET_ENV}), or listen on 127.0.0.1"))
    return problems


def _python_path(env: Mapping[str, str], root: Path) -> list[str]:
    """The directories a worker's own ``PYTHONPATH`` adds (relative to the project root,
    where the worker runs)."""
    return [str(root / entry) for entry in env.get("PYTHONPATH", "").split(os.pathsep)
            if entry]


def preflight_or_exit(topology: Topology) -> None:
    """Say every problem :func:`preflight` finds, one line each, and refuse to go on.

    Raises:
        CommandError: there was at least one (the last line says how many).
    """
    problems = preflight(topology)
    if not problems:
        return
    from pipecat_workers_cli.errors import CommandError

    lines = [f"{topology.path.name}:{p.line}: {p.field}: {p.message}" for p in problems]
    if len(lines) == 1:
        raise CommandError(f"{lines[0]}; nothing started")
    import click

    for line in lines:
        click.secho(f"error: {line}", fg="red", err=True)
    raise CommandError(f"{len(lines)} errors in {topology.path.name}; nothing started")


def _check_class(class_path: str, root: Path, extra: list[str]) -> None:
    """Raise what ``resolve_class`` would for a missing module or name, without importing.

    Raises:
        WorkerClassError: the module is not found, does not parse, or lacks the name.
    """
    module, attr = parse_class_path(class_path)
    source = _module_source(module, root, extra)
    if source is None:
        return  # found, but not as a Python file we can read: the host will tell
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except SyntaxError as exc:
        raise WorkerClassError(f"importing '{module}' failed: syntax error in "
                               f"{_shown(source, root)}:{exc.lineno}: {exc.msg}") from None
    except (OSError, ValueError):
        return
    names = set(_top_level_names(tree.body))
    if "*" in names or "__getattr__" in names:
        return  # names made at run time
    first = attr.split(".")[0]
    if first not in names:
        public = sorted(n for n in names if not n.startswith("_"))
        raise WorkerClassError(
            f"module '{module}' has no attribute {first!r}{suggest(first, public)}")


def _module_source(module: str, root: Path, extra: list[str]) -> Path | None:
    """The file of ``module``, found by Python's own rules as the host will look (the
    project root first, then ``extra``, the worker's ``PYTHONPATH``, then ``sys.path``):
    a regular package or module anywhere on the path wins over namespace folders. Finding
    a module imports nothing; only its parent packages' locations are followed.

    Raises:
        WorkerClassError: no such module.
    """
    parts = module.split(".")
    path = [str(root), *extra, *(p for p in sys.path if p)]
    spec = PathFinder.find_spec(parts[0], path)
    if spec is None:
        try:  # an installed package's own finder (an editable install, say)
            spec = importlib.util.find_spec(parts[0])  # a top-level name imports nothing
        except (ImportError, ValueError):
            spec = None
    for depth in range(1, len(parts)):
        if spec is None:
            break
        locations = spec.submodule_search_locations
        if locations is None:  # a module, not a package: it has no submodules
            spec = None
            break
        spec = PathFinder.find_spec(".".join(parts[:depth + 1]), list(locations))
    if spec is None:
        missing = _first_missing(parts, path)
        detail = "" if missing == module else f" (no module named '{missing}')"
        raise WorkerClassError(f"module '{module}' not found{detail}")
    origin = spec.origin or ""
    return Path(origin) if spec.has_location and origin.endswith(".py") else None


def _first_missing(parts: list[str], path: list[str]) -> str:
    """The shortest prefix of a dotted name that cannot be found, for the message."""
    spec = PathFinder.find_spec(parts[0], path)
    for depth in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return ".".join(parts[:depth])
        spec = PathFinder.find_spec(".".join(parts[:depth + 1]),
                                    list(spec.submodule_search_locations))
    return ".".join(parts)


def _top_level_names(body: list[ast.stmt]) -> Iterator[str]:
    """Names a module binds when it runs, looking into ``if``/``try``/``with`` blocks."""
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                yield from (n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                yield alias.asname or alias.name.split(".")[0]
        elif isinstance(node, ast.If | ast.Try | ast.TryStar | ast.With | ast.AsyncWith
                        | ast.For | ast.AsyncFor | ast.While):
            bound = [node.target] if isinstance(node, ast.For | ast.AsyncFor) else [
                item.optional_vars for item in getattr(node, "items", ()) if item.optional_vars]
            for target in bound:  # `for X in ...`, `with ... as X`
                yield from (n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            for block in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, block, []):
                    inner = child.body if isinstance(child, ast.ExceptHandler) else [child]
                    yield from _top_level_names(inner)
        elif isinstance(node, ast.Match):
            yield "*"  # rare at module level: do not guess


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
