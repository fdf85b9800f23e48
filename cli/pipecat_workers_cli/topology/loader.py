"""Load a topology file into the frozen objects of :mod:`pipecat_workers_cli.topology.model`.

Everything is checked before anything runs, and every error names the file, the line and the field,
and says what was expected. The keys come from :mod:`pipecat_workers_cli.topology.schema`, which
also publishes them as a JSON Schema.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipecat_workers_cli.topology.envfiles import EnvFileMissing, project_variables, read_env_file
from pipecat_workers_cli.topology.errors import TopologyError
from pipecat_workers_cli.topology.fields import (
    KEY,
    WORKER_FIELDS,
    Invalid,
    backend_name,
    bad_key,
    env_file_names,
    module_names,
    non_empty,
    project_name,
    root_dir,
    string,
    suggest,
)
from pipecat_workers_cli.topology.model import (
    PROXY_TOKEN_ENV,
    ChannelSpec,
    Condition,
    ProxySpec,
    RestartPolicy,
    Topology,
    WorkerSpec,
)
from pipecat_workers_cli.topology.nodes import Node, Problems, got, path_join, read_document, shown
from pipecat_workers_cli.topology.proxies import name_lines, read_proxy
from pipecat_workers_cli.topology.schema import (
    CHANNEL_KEYS,
    PROXY_KEYS,
    TOP_KEYS,
    URL_SCHEMES,
    WORKER_KEYS,
    Key,
)
from pipecat_workers_cli.topology.textfile import read_text

MAX_FILE_BYTES = 1024 * 1024
"""The largest topology file read; a real one is a few kilobytes (and the values in it are
bounded too: :data:`pipecat_workers_cli.topology.nodes.MAX_VALUES`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Loaded:
    """A topology and its file as written (each scalar's source text in ``raw``), from one
    read: what a caller needs to tell a value the file wrote from one it referenced."""

    topology: Topology
    document: Node


def load_topology(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
                  env_files: Sequence[str] | None = None) -> Topology:
    """Read, interpolate and validate a topology file.

    ``${VAR}`` takes VAR from ``env`` first, then from the project's env files: the
    ``env_files`` given, else the ``.env`` beside the file if there is one. A worker's
    ``env`` is what its ``env_file:`` files (the topology's, then its own, a later one
    winning) and its ``env:`` (winning over them) say.

    Args:
        path: The YAML file; messages name it as given.
        env: The shell's environment; default: ``os.environ``.
        env_files: The project's env files (``--env-file``), in place of ``.env``.

    Returns:
        The validated topology, with absolute ``path`` and ``root``.

    Raises:
        TopologyError: Every problem in file order, one line each
            (``configs/x.yaml:12: workers.greeter.restart: expected one of ...``); a
            :class:`~pipecat_workers_cli.topology.errors.TopologyErrors` when there are
            several.

    Example::

        topology = load_topology("configs/handoff.yaml")
        for process in expand(topology): ...
    """
    return load(path, env, env_files=env_files).topology


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
         env_files: Sequence[str] | None = None,
         keep_unset: Callable[[str], bool] | None = None) -> Loaded:
    """:func:`load_topology`, with the document as written.

    Args:
        keep_unset: Whether an unset variable is no error in a field (``channels.main.url``):
            for a caller that writes that field's reference rather than its value. The
            reference stands for the value, and a URL that holds one is not checked.
    """
    file = os.fspath(path)
    source = Path(file)
    problems = Problems(file)
    text = read_text(source, file, what="topology file", limit=MAX_FILE_BYTES)
    shell = os.environ if env is None else env
    variables = {**project_variables(source, env_files, shell), **shell}
    document = read_document(text, variables, problems, keep_unset)
    topology = _Loader(source, problems, shell).topology(document)
    problems.raise_all()
    _check_cycles(topology, document, problems)
    if env_files:
        given = tuple(str(Path(f).expanduser().resolve()) for f in env_files)
        topology = dataclasses.replace(topology, env_files=given)
    return Loaded(topology, document)


class _Loader:
    """One pass over the document; problems are collected, not raised, to report them all."""

    def __init__(self, source: Path, problems: Problems, env: Mapping[str, str]) -> None:
        self.source = source
        self.problems = problems
        self.env = env
        self.channel_keys: list[str] = ["main"]  # declared, even if invalid: no echo errors
        self.shared_env: dict[str, str] = {}  # the top-level env_file's variables
        # env files read, by name: their variables, missing, or None (malformed)
        self.read: dict[str, dict[str, str] | EnvFileMissing | None] = {}

    def topology(self, doc: Node) -> Topology:
        entries = self.entries(doc, "", TOP_KEYS, line=1) or {}
        path = self.source.resolve()
        name = self.field(entries, "name", "", project_name, _default_name(self.source))
        root = self.field(entries, "root", "", lambda n: root_dir(n, path.parent), path.parent)
        channels = self.channels(entries.get("channels"), name)
        self.shared_env = self.env_files(self.field(entries, "env_file", "", env_file_names,
                                                    ()), "env_file")
        workers = self.workers(entries.get("workers"))
        preload = self.field(entries, "preload", "", module_names, ())
        return Topology(name=name, path=path, root=root, channels=channels, workers=workers,
                        preload=preload)

    def entries(self, node: Node, field: str, keys: Iterable[Key], *, line: int,
                allow_null: bool = False) -> dict[str, Node] | None:
        """The mapping's entries; unknown keys and missing required keys are problems."""
        if node.value is None and allow_null:
            node = Node({}, node.line)
        if not node.is_mapping:
            self.problems.add(node.line, field, f"expected a mapping, got {got(node)}")
            return None
        known = {k.name: k for k in keys}
        entries: dict[str, Node] = node.value
        hints = {key: suggest(key, known) for key in entries if key not in known}
        for key, hint in hints.items():
            self.problems.add(node.key_lines[key], path_join(field, key),
                              f"unknown key {shown(key)}{hint}")
        for spec in known.values():
            if not spec.required or spec.name in entries or spec.instead in entries:
                continue
            # A misspelt required key is reported once, as the misspelling whose hint
            # names it (the hint names it as it names itself: " (did you mean 'class'?)"),
            # or names the key that may stand in its place.
            named = {suggest(k, [k]) for k in (spec.name, spec.instead) if k}
            if not named & set(hints.values()):
                self.problems.add(line, path_join(field, spec.name), "required key missing")
        return {k: v for k, v in entries.items() if k in known}

    def field(self, entries: Mapping[str, Node], key: str, field: str,
              convert: Callable[[Node], Any], default: Any) -> Any:
        """``convert(entries[key])``, or ``default`` when absent or wrong (a problem)."""
        node = entries.get(key)
        if node is None:
            return default
        try:
            return convert(node)
        except Invalid as exc:
            where = path_join(field, key)
            if exc.key is not None:
                where = path_join(where, exc.key)
            self.problems.add(exc.line or node.line, where, exc.message)
            return default

    def named_entries(self, node: Node | None, field: str, what: str) -> dict[str, Node]:
        """Entries of ``channels:`` or ``workers:``: a non-empty mapping of valid keys."""
        if node is None:
            return {}
        if not node.is_mapping or not node.value:
            shown = "an empty mapping" if node.is_mapping else got(node)
            self.problems.add(node.line, field, f"expected a mapping of {what}, got {shown}")
            return {}
        for key in node.value:
            if not KEY.fullmatch(key):
                self.problems.add(node.key_lines[key], path_join(field, key), bad_key(key))
        return dict(node.value)

    def channels(self, node: Node | None, project: str) -> dict[str, ChannelSpec]:
        if node is None:
            return {"main": ChannelSpec(key="main", channel=f"{project}.main")}
        channels: dict[str, ChannelSpec] = {}
        declared = self.named_entries(node, "channels", "channels")
        self.channel_keys = list(declared)
        for key, value in declared.items():
            field = path_join("channels", key)
            line = node.key_lines[key]
            entries = self.entries(value, field, CHANNEL_KEYS, line=line, allow_null=True)
            if entries is None:
                continue
            backend = self.field(entries, "backend", field, backend_name, "local")
            url = self.field(entries, "url", field, string, None)
            self.check_url(backend, url, entries, field, line)
            wire = self.field(entries, "channel", field, non_empty, f"{project}.{key}")
            channels[key] = ChannelSpec(key=key, backend=backend, url=url, channel=wire,
                                        line=line)
        return channels

    def check_url(self, backend: str, url: str | None, entries: Mapping[str, Node],
                  field: str, line: int) -> None:
        """Never guess a server: redis and pgmq need a URL of their scheme, local none."""
        where = entries["url"].line if "url" in entries else line
        if "url" in entries and entries["url"].unset:
            return  # a reference kept for later: its value is not known here
        schemes = URL_SCHEMES.get(backend)
        if schemes is None:
            if url is not None:
                self.problems.add(where, f"{field}.url", "the local backend takes no url")
            return
        *others, last = [f"{s}://" for s in schemes]
        expected = f"{', '.join(others)} or {last}" if others else last
        if not url:
            self.problems.add(where, f"{field}.url",
                              f"required for the {backend} backend (a {expected} URL)")
        elif url.partition("://")[0] not in schemes or "://" not in url:
            self.problems.add(where, f"{field}.url", f"expected a {expected} URL for the "
                                                     f"{backend} backend, got {shown(url)}")

    def workers(self, node: Node | None) -> dict[str, WorkerSpec]:
        declared = self.named_entries(node, "workers", "workers")
        key_lines = node.key_lines if node is not None else {}
        workers: dict[str, WorkerSpec] = {}
        for key, value in declared.items():
            field = path_join("workers", key)
            line = key_lines[key]
            entries = self.entries(value, field, WORKER_KEYS, line=line, allow_null=True)
            if entries is None:
                continue
            values = {k: self.field(entries, k, field, convert, None)
                      for k, convert in WORKER_FIELDS.items() if k in entries}
            proxy = self.proxy(key, values, entries, field,
                               value.key_lines.get("proxy", line))
            if values.get("class") is None and proxy is None:
                continue
            channel = self.worker_channel(values.get("channel"), entries, field, line)
            depends = values.get("depends_on") or ()
            for dep, dep_line, _ in depends:
                if dep == key:
                    self.problems.add(dep_line, f"{field}.depends_on",
                                      f"{shown(key)} cannot depend on itself")
                elif dep not in declared:
                    self.problems.add(dep_line, f"{field}.depends_on",
                                      f"unknown worker {shown(dep)}{suggest(dep, declared)}")
            options = {k: v for k, v in values.items() if v is not None
                       and k not in ("class", "channel", "depends_on", "env_file")}
            options.pop("proxy", None)
            own = self.env_files(values.get("env_file") or (), f"{field}.env_file")
            if self.shared_env or own:
                options["env"] = {**self.shared_env, **own, **(values.get("env") or {})}
            if proxy is not None:
                options.update(proxy=proxy, args=proxy.args())
                if proxy.token is not None:  # a secret: it travels as one
                    options["env"] = {**options.get("env", {}), PROXY_TOKEN_ENV: proxy.token}
            class_path = proxy.class_path if proxy is not None else values["class"]
            workers[key] = WorkerSpec(key=key, class_path=class_path, channel=channel,
                                      depends_on=tuple(d for d, _, _ in depends), line=line,
                                      conditions={d: c for d, _, c in depends
                                                  if c is not Condition.READY},
                                      **options)
        self.check_completed(workers, node)
        self.check_stand_ins(workers, node)
        # Keys have no dots and replica names always do ("key.N"), so a worker key can
        # never collide with another worker's replica name.
        return workers

    def proxy(self, key: str, values: Mapping[str, Any], entries: Mapping[str, Node],
              field: str, line: int) -> ProxySpec | None:
        """The worker's ``proxy:``, if it has one; it takes the place of ``class`` and
        ``args`` and runs as one process (a second would listen on the same port, or put a
        second stand-in of each name on the bus)."""
        node = values.get("proxy")
        if node is None:
            return None
        where = path_join(field, "proxy")
        for other in ("class", "args"):
            if other in entries:
                self.problems.add(entries[other].line, path_join(field, other),
                                  f"a proxy worker takes no {other} (its settings are "
                                  "under proxy)")
        if (values.get("replicas") or 1) > 1:
            self.problems.add(entries["replicas"].line, path_join(field, "replicas"),
                              "a proxy worker runs as one process")
        proxy_entries = self.entries(node, where, PROXY_KEYS, line=line)
        if proxy_entries is None:
            return None
        return read_proxy(key, proxy_entries, line, where, self.problems)

    def check_stand_ins(self, workers: Mapping[str, WorkerSpec], node: Node | None) -> None:
        """A client's stand-ins join its channel under the other side's names: none may be
        a worker of this project, or a stand-in of another client on the same channel."""
        taken = {name: spec for spec in workers.values() for name in spec.instance_names()}
        standing: dict[tuple[str, str], str] = {}
        for spec in workers.values():
            if spec.proxy is None or spec.proxy.role != "client" or node is None:
                continue
            written = node.value[spec.key].value["proxy"].value.get("remote")
            for name, line in name_lines(written).items():
                where = f"workers.{spec.key}.proxy.remote"
                other = taken.get(name)
                if other is not None and other.key != spec.key:
                    self.problems.add(line, where, f"{shown(name)} is a worker of this "
                                                   "project: its stand-in would take its name")
                first = standing.setdefault((spec.channel, name), spec.key)
                if first != spec.key:
                    self.problems.add(line, where, f"{shown(first)} stands in for "
                                                   f"{shown(name)} on this channel already")

    def check_completed(self, workers: Mapping[str, WorkerSpec], node: Node | None) -> None:
        """A worker others wait to complete must be able to end: not ``restart: always``."""
        for spec in workers.values():
            for dep in spec.depends_on:
                target = workers.get(dep)
                if (spec.condition(dep) is Condition.COMPLETED and target is not None
                        and target.restart is RestartPolicy.ALWAYS):
                    assert node is not None  # workers were declared under it
                    entry = node.value[spec.key].value["depends_on"]
                    self.problems.add(entry.key_lines.get(dep, entry.line),
                                      f"workers.{spec.key}.depends_on.{dep}",
                                      f"{shown(dep)} has restart: always, so it never "
                                      "completes; give it restart: on-failure or no")

    def env_files(self, names: Iterable[tuple[str, int]], field: str) -> dict[str, str]:
        """The variables of ``env_file:`` files (relative to the topology's directory), a
        later file winning; a missing or malformed file is a problem."""
        merged: dict[str, str] = {}
        for name, line in names:
            path = self.source.parent / Path(name).expanduser()
            shown_as = os.path.normpath(os.path.join(os.path.dirname(self.problems.file), name))
            if shown_as not in self.read:
                try:
                    self.read[shown_as] = read_env_file(path, shown_as, self.env)
                except EnvFileMissing as exc:
                    self.read[shown_as] = exc
                except TopologyError as exc:  # reported once, in the env file
                    self.read[shown_as] = None
                    self.problems.add_elsewhere(exc)
            variables = self.read[shown_as]
            if isinstance(variables, EnvFileMissing):  # reported where each names it
                text = shown_as if shown_as.isprintable() and len(shown_as) <= 200 else (
                    shown(shown_as, 200))
                self.problems.add(line, field, f"env file not found: {text}")
            elif variables is not None:
                merged.update(variables)
        return merged

    def worker_channel(self, given: str | None, entries: Mapping[str, Node], field: str,
                       line: int) -> str:
        """The channel given (it must exist), else the only one, else ``main``."""
        channels = self.channel_keys
        choices = ", ".join(channels)
        if given is not None:
            if channels and given not in channels:
                self.problems.add(entries["channel"].line, f"{field}.channel",
                                  f"unknown channel {shown(given)}{suggest(given, channels)} "
                                  f"(channels: {choices})")
            return given
        if len(channels) == 1:
            return channels[0]
        if channels and "main" not in channels:
            self.problems.add(line, f"{field}.channel",
                              f"required: there are several channels ({choices}) "
                              "and none is named 'main'")
        return "main"


def _check_cycles(topology: Topology, doc: Node, problems: Problems) -> None:
    """Refuse a dependency cycle, named from its first worker in the file: a -> b -> a."""
    order = {key: i for i, key in enumerate(topology.workers)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(key: str) -> list[str] | None:
        state[key] = 1
        stack.append(key)
        for dep in topology.workers[key].depends_on:
            if state.get(dep) == 1:
                return stack[stack.index(dep):]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[key] = 2
        return None

    for key in topology.workers:
        if key in state:
            continue
        cycle = visit(key)
        if cycle is not None:
            start = cycle.index(min(cycle, key=order.__getitem__))
            cycle = cycle[start:] + cycle[:start]
            first = topology.workers[cycle[0]]
            line = doc.value["workers"].value[first.key].value["depends_on"].line
            problems.add(line, f"workers.{first.key}.depends_on",
                         "dependency cycle: " + " -> ".join([*cycle, cycle[0]]))
            problems.raise_all()


def _default_name(source: Path) -> str:
    """The file's stem made into a valid project name: ``My App.yaml`` -> ``my-app``."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", source.stem.lower()).strip("_.-")
    return name or "topology"
