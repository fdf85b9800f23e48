"""YAML text to a tree of :class:`Node` that remembers where everything was written.

PyYAML's constructed objects forget their lines and silently keep the last of two duplicate
keys; the loader needs both for its messages. So we let PyYAML compose its node graph and
build our own tree from it: every key and value keeps its line, duplicate keys and
unsupported tags are reported, and string scalars are interpolated on the way.

Problems are collected (not raised one by one) so that the loader can report the first in
file order, whichever pass found it.

The input is bounded while it is composed, before anything is built from it: at most
:data:`MAX_VALUES` values counting what aliases expand to (an alias bomb is refused at the
alias that crosses the line, at once and in little memory), nested at most
:data:`MAX_DEPTH` deep, and numbers of at most :data:`MAX_NUMBER_CHARS` characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from pipecat_workers_cli.topology.errors import TopologyError, TopologyErrors
from pipecat_workers_cli.topology.interpolate import interpolate

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{t}" for t in ("null", "bool", "int", "float", "str")}
_NUMBER_TAGS = {f"{_TAG}int", f"{_TAG}float"}
_MERGE = f"{_TAG}merge"

MAX_VALUES = 20_000
"""The most values (scalars, lists, mappings, keys) a document may hold once its aliases are
expanded: far above any topology, far below what would take seconds or gigabytes."""
MAX_DEPTH = 50
"""The deepest a value may be nested, also once aliases are expanded."""
MAX_NUMBER_CHARS = 100
"""The longest number written in the file (longer ones cost quadratic time to read)."""


@dataclass(frozen=True, slots=True)
class Node:
    """A YAML value and the 1-based line where it starts.

    ``value`` is a ``dict[str, Node]`` for a mapping (keys by their source text), a
    ``list[Node]`` for a sequence, else a Python scalar (str, int, float, bool or None).
    ``raw`` is a scalar's source text, so messages can quote ``no`` rather than ``False``.
    """

    value: Any
    line: int
    raw: str = ""
    key_lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_list(self) -> bool:
        return isinstance(self.value, list)

    def plain(self) -> Any:
        """The value as plain Python data (for worker arguments)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def shown(text: str, limit: int = 60) -> str:
    """``repr(text)`` for a message: on one line, and cut in the middle when long."""
    quoted = repr(text)
    if len(quoted) <= limit:
        return quoted
    half = (limit - 5) // 2
    return f"{quoted[:half]}...{quoted[-half:]} ({len(text):,} characters)"


def got(node: Node) -> str:
    """How to name a wrong value in "expected X, got Y"."""
    value = node.value
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing" if node.raw == "" else "null"
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, bool):
        return f"{shown(node.raw)} (a boolean)"
    text = node.raw or repr(value)
    return text if len(text) <= 60 else f"{text[:27]}...{text[-27:]} ({len(text):,} characters)"


class Problems:
    """The errors found in one file (and the env files it names), reported all at once."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._errors: list[TopologyError] = []

    def add(self, line: int | None, field: str, message: str) -> None:
        self._errors.append(TopologyError(message, file=self.file, line=line, field=field))

    def add_error(self, error: TopologyError, line: int, field: str) -> None:
        self._errors.append(error.located(file=self.file, line=line, field=field))

    def add_elsewhere(self, error: TopologyError) -> None:
        """An error in another file (a malformed env file), kept where it is."""
        self._errors.append(error)

    def raise_all(self) -> None:
        """Raise every problem, in file order, if any: the error itself when there is one,
        else :class:`TopologyErrors`. Errors in the topology come before those of the files
        it names. One error per line, the first found: a second one on the same line is
        nearly always an echo of the first (a bad key leaves an empty mapping)."""
        if not self._errors:
            return
        first: dict[tuple[str | None, int | None], TopologyError] = {}
        for error in self._errors:
            first.setdefault((error.file, error.line), error)
        ordered = sorted(first.values(), key=lambda e: (e.file != self.file, e.line or 0))
        if len(ordered) == 1:
            raise ordered[0]
        raise TopologyErrors(ordered)


def path_join(path: str, key: str | int) -> str:
    """``workers`` + ``greeter`` -> ``workers.greeter``; list items as ``depends_on[0]``;
    a key that would not read well on one line as ``workers['a\\nb']``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key or len(key) > 60 or not key.isprintable():
        return f"{path}[{shown(key)}]"
    return f"{path}.{key}" if path else key


def read_document(text: str, env: Mapping[str, str], problems: Problems) -> Node:
    """Parse ``text`` into a located tree, interpolating string scalars from ``env``.

    Raises:
        TopologyError: The text is not YAML, is empty, or is not a mapping at the top level
            (nothing more can be checked). Anything else is added to ``problems``.
    """
    try:
        root = _compose(text)
    except TopologyError as exc:
        raise exc.located(file=problems.file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "unreadable"
        if exc.problem and exc.context:
            problem, context = exc.problem, exc.context
            detail = (f"{context}, {problem}" if problem.startswith("but ")
                      else f"{problem} ({context})")
        line = mark.line + 1 if mark is not None else None
        raise TopologyError(f"invalid YAML: {detail}", file=problems.file, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise TopologyError(f"invalid YAML: {exc.reason} (character #x{exc.character:04x})",
                            file=problems.file, line=line) from None
    if root is None:
        raise TopologyError("the file is empty (expected a mapping with 'workers')",
                            file=problems.file, line=1)
    if not isinstance(root, yaml.MappingNode):
        raise TopologyError(f"expected a mapping at the top level, got {_kind(root)}",
                            file=problems.file, line=root.start_mark.line + 1)
    return _Builder(env, problems).build(root, "")


def _compose(text: str) -> yaml.Node | None:
    loader = _BoundedLoader(text)  # checks the characters already
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    """PyYAML's composer, counting values and depth as it goes, aliases expanded.

    An alias adds the size of what it names (memoised per node, so counting is linear in
    the file however much the aliases would expand to), and is refused where it is written.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._values = 0
        self._depth = 0
        self._measured: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # else PyYAML's own error: an undefined alias
                size, depth = self._measure(target)
                if self._values + size > MAX_VALUES:
                    raise TopologyError(
                        f"more than {MAX_VALUES:,} values once aliases are expanded "
                        f"(*{_cut(event.anchor)} here adds {size:,}): too large for a "
                        "topology", line=line)
                if self._depth + depth > MAX_DEPTH:
                    raise TopologyError(f"values nested more than {MAX_DEPTH} deep once "
                                        f"aliases are expanded (*{_cut(event.anchor)} here)",
                                        line=line)
                self._values += size
            node: yaml.Node = super().compose_node(parent, index)
            return node
        self._values += 1
        if self._values > MAX_VALUES:
            raise TopologyError(f"more than {MAX_VALUES:,} values (counting what aliases "
                                "expand to): too large for a topology", line=line)
        if self._depth >= MAX_DEPTH:
            raise TopologyError(f"values nested more than {MAX_DEPTH} deep", line=line)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        return node

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(values, depth) of ``node`` with its aliases expanded; a node still being
        composed (an alias inside itself, refused later) counts as one."""
        if node.end_mark is None:
            return 1, 1
        known = self._measured.get(id(node))
        if known is not None:
            return known
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        size, depth = 1, 0
        for child in children:
            child_size, child_depth = self._measure(child)
            size += child_size
            depth = max(depth, child_depth)
        self._measured[id(node)] = result = (size, depth + 1)
        return result


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


class _Builder:
    """Walks PyYAML's node graph once; aliases are built once and shared."""

    def __init__(self, env: Mapping[str, str], problems: Problems) -> None:
        self._env = env
        self._problems = problems
        self._constructor = yaml.SafeLoader("")
        self._done: dict[int, Node] = {}
        self._building: set[int] = set()

    def build(self, node: yaml.Node, path: str) -> Node:
        key = id(node)
        if key in self._done:
            return self._done[key]
        line = node.start_mark.line + 1
        if key in self._building:
            self._problems.add(line, path, "an alias refers to itself")
            return Node(None, line)
        self._building.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                built = self._mapping(node, path)
            elif isinstance(node, yaml.SequenceNode):
                built = self._sequence(node, path)
            else:
                built = self._scalar(node, path)
        finally:
            self._building.discard(key)
        self._done[key] = built
        return built

    def _scalar(self, node: yaml.Node, path: str) -> Node:
        line = node.start_mark.line + 1
        raw = str(node.value)
        if node.tag not in _SCALAR_TAGS:
            kind = node.tag.removeprefix(_TAG)
            self._problems.add(line, path, f"unsupported YAML value {shown(raw)} (a {kind}); "
                                           "quote it to make it a string")
            return Node(None, line, raw)
        try:
            raw = _text(raw)
        except _NotText as exc:
            self._problems.add(line, path, str(exc))
            return Node(None, line, "")
        if node.tag == f"{_TAG}str":
            try:
                return Node(interpolate(raw, self._env), line, raw)
            except TopologyError as exc:
                self._problems.add_error(exc, line, path)
                return Node(raw, line, raw)
        if node.tag in _NUMBER_TAGS and len(raw) > MAX_NUMBER_CHARS:
            self._problems.add(line, path, f"a number of {len(raw):,} characters: at most "
                                           f"{MAX_NUMBER_CHARS} (quote it to make it a string)")
            return Node(None, line, raw[:20] + "...")
        try:
            return Node(self._constructor.construct_object(node), line, raw)
        except Exception:  # pyyaml's own constructors fail in many ways (`!!int ` raises
            # IndexError): whatever the reason, the value cannot be read as its tag says
            tag = node.tag.removeprefix(_TAG)
            self._problems.add(line, path, f"cannot read {shown(raw)} as {tag}")
            return Node(None, line, raw)

    def _sequence(self, node: yaml.SequenceNode, path: str) -> Node:
        line = node.start_mark.line + 1
        if node.tag != f"{_TAG}seq":
            self._problems.add(line, path, f"unsupported YAML tag {shown(node.tag)} on a list")
        return Node([self.build(item, path_join(path, i)) for i, item in enumerate(node.value)],
                    line)

    def _mapping(self, node: yaml.MappingNode, path: str) -> Node:
        line = node.start_mark.line + 1
        if node.tag != f"{_TAG}map":
            self._problems.add(line, path, f"unsupported YAML tag {shown(node.tag)} on a mapping")
        values: dict[str, Node] = {}
        lines: dict[str, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                merges.append(self.build(value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problems.add(key_line, path, f"expected a string key, got {_kind(key_node)}")
                continue
            try:
                key = _text(str(key_node.value))
            except _NotText as exc:
                self._problems.add(key_line, path, f"a key: {exc}")
                continue
            if key in values:
                self._problems.add(key_line, path_join(path, key),
                                   f"duplicate key {shown(key)} (first on line {lines[key]})")
                continue
            lines[key] = key_line
            values[key] = self.build(value_node, path_join(path, key))
        for merged in merges:
            self._merge(merged, values, lines, path)
        return Node(values, line, key_lines=lines)

    def _merge(self, merged: Node, values: dict[str, Node], lines: dict[str, int],
               path: str) -> None:
        """``<<: *anchor`` (or a list of them): keys written here win, then earlier merges."""
        sources = merged.value if merged.is_list else [merged]
        for source in sources:
            if not source.is_mapping:
                self._problems.add(source.line, path, "'<<' expects a mapping or a list of "
                                                      f"mappings, got {got(source)}")
                continue
            for key, value in source.value.items():
                if key not in values:
                    values[key] = value
                    lines[key] = source.key_lines[key]


def _cut(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:37]}..."


class _NotText(ValueError):
    """A string that no file name, environment or UTF-8 message can hold."""


def _text(value: str) -> str:
    """``value`` with its surrogate pairs joined: YAML's ``"\\ud83d\\ude00"`` (as JSON
    writes an emoji) is two 16-bit escapes, which PyYAML leaves as two lone surrogates.

    Raises:
        _NotText: a surrogate is left alone (``"\\ud800"``), saying which and where.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        joined = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le",
                                                                  "surrogatepass")
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _NotText(f"not valid text: holds a lone surrogate ({joined[exc.start]!r} at "
                       f"character {exc.start + 1})") from None
    return joined
