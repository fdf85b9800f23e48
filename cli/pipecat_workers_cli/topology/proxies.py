"""A worker entry's ``proxy:`` mapping, checked and read into a :class:`ProxySpec`.

A client (``url``) stands in on this bus for workers of another project; a server
(``listen``) lets other projects reach workers of this one. The entry's key is the proxy's
own name on the bus, so it may not be one of the names it stands in for or exposes: those
are other workers' names, and two workers cannot share one.

Every problem is added to the file's problems, so that all of them are reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pipecat_workers_cli.topology.model import FORWARD_MESSAGES, ProxySpec
from pipecat_workers_cli.topology.nodes import Node, Problems, got, path_join, shown
from pipecat_workers_cli.topology.schema import LISTEN_PATTERN, WORKER_NAME_PATTERN

_NAME = re.compile(WORKER_NAME_PATTERN)
_LISTEN = re.compile(LISTEN_PATTERN)
_URL = re.compile(r"wss?://([^/?#\s@]+@)?(\[[0-9A-Fa-f:.]+\]|[^/?#\s:\[\]@]+)(:[0-9]{1,5})?"
                  r"([/?#]\S*)?")
_FORWARD = ", ".join(FORWARD_MESSAGES)


def read_proxy(key: str, entries: Mapping[str, Node], line: int, field: str,
               problems: Problems) -> ProxySpec | None:
    """The proxy that ``entries`` (the known keys of the ``proxy:`` mapping at ``field``,
    whose key is on ``line``) describe for the worker ``key``; None when it is wrong (the
    problems say why)."""
    reader = _Reader(problems, field)
    url = reader.value(entries, "url", reader.url)
    listen = reader.value(entries, "listen", reader.listen)
    remote = reader.value(entries, "remote", reader.names)
    expose = reader.value(entries, "expose", reader.names)
    token = reader.value(entries, "token", reader.token)
    forward = reader.value(entries, "forward", reader.forward)
    if "url" in entries and "listen" in entries:
        reader.add(entries["listen"].line, "listen",
                   "give url (a client) or listen (a server), not both")
    elif "url" not in entries and "listen" not in entries:
        reader.add(line, "", "expected url (a client, ws://host:port/) or listen "
                                  "(a server, host:port)")
    elif "listen" in entries and "expose" not in entries:
        reader.add(line, "expose", "required for a server: the workers of this bus "
                                        "that its clients may reach")
    for option in ("remote", "expose"):
        for name, line in name_lines(entries.get(option)).items():
            if name == key:
                reader.add(line, option, f"{shown(name)} is this proxy's own name (its key "
                                         "in workers); give the proxy another key, such as "
                                         f"{shown(key + '-proxy')}")
    if reader.failed:
        return None
    if url is not None:
        return ProxySpec("client", url=url, remote=remote, expose=expose,
                         forward=forward or (), token=token)
    host, port = listen
    return ProxySpec("server", host=host, port=port, remote=remote, expose=expose,
                     forward=forward or (), token=token)


def name_lines(node: Node | None) -> dict[str, int]:
    """The worker names of ``remote:`` or ``expose:`` as written, each with its line."""
    if node is None:
        return {}
    items = node.value if node.is_list else [node]
    return {str(item.value): item.line for item in items if isinstance(item.value, str)}


class _Reader:
    """Converts the values of one ``proxy:`` mapping, noting each problem."""

    def __init__(self, problems: Problems, field: str) -> None:
        self.problems = problems
        self.field = field
        self.failed = False

    def add(self, line: int, key: str, message: str) -> None:
        self.failed = True
        self.problems.add(line, path_join(self.field, key) if key else self.field, message)

    def value(self, entries: Mapping[str, Node], key: str,
              convert: Callable[[Node], Any]) -> Any:
        node = entries.get(key)
        if node is None:
            return None
        try:
            return convert(node)
        except _Wrong as exc:
            self.add(exc.line or node.line, key, str(exc))
            return None

    @staticmethod
    def url(node: Node) -> str:
        text = _text(node, "a ws:// or wss:// URL")
        match = _URL.fullmatch(text)
        if match is None:
            raise _Wrong(f"expected a ws:// or wss:// URL (such as ws://127.0.0.1:8765/), "
                         f"got {got(node)}")
        port = match.group(3)
        if port is not None and not 0 < int(port[1:]) <= 65535:
            raise _Wrong(f"port {port[1:]} is out of range (1-65535)")
        return text

    @staticmethod
    def listen(node: Node) -> tuple[str, int]:
        text = _text(node, "host:port")
        if not _LISTEN.fullmatch(text):
            raise _Wrong(f"expected host:port (such as 127.0.0.1:8765), got {got(node)}")
        host, _, port = text.rpartition(":")
        if len(port) > 5 or not 0 < int(port) <= 65535:
            raise _Wrong(f"port {port} is out of range (1-65535)")
        return host.strip("[]"), int(port)

    @staticmethod
    def names(node: Node) -> tuple[str, ...]:
        items = node.value if node.is_list else [node]
        if node.is_list and not items:
            raise _Wrong("expected a worker name or a list of them, got an empty list")
        names: list[str] = []
        for item in items:
            if not isinstance(item.value, str) or not _NAME.fullmatch(item.value):
                raise _Wrong(f"expected a worker name or a list of them, got {got(item)}",
                             item.line)
            if item.value in names:
                raise _Wrong(f"{shown(item.value)} is listed twice", item.line)
            names.append(item.value)
        return tuple(names)

    @staticmethod
    def token(node: Node) -> str:
        """A token; an empty one (``${PROXY_TOKEN:-}`` unset) means none."""
        text = _text(node, "a token")
        if "\0" in text or not text.isprintable():
            raise _Wrong("a token cannot hold control characters")
        return text

    @staticmethod
    def forward(node: Node) -> tuple[str, ...]:
        items = node.value if node.is_list else [node]
        names: list[str] = []
        for item in items:
            if item.value not in FORWARD_MESSAGES:
                raise _Wrong(f"expected one of {_FORWARD}, got {got(item)}", item.line)
            if item.value not in names:
                names.append(item.value)
        return tuple(names)


def _text(node: Node, expected: str) -> str:
    if not isinstance(node.value, str):
        raise _Wrong(f"expected {expected}, got {got(node)}")
    return node.value


class _Wrong(ValueError):
    """A value is wrong: the message, and its line when not the value's own."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line

