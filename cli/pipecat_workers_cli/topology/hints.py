"""Where a channel's server address comes from, said as a hint after a connection error.

"cannot reach Redis at redis://localhost:6379: connection refused: is it running?" tells what
failed; the hint tells what to change: the variable the URL is read from, if any, and the field
and line of the topology, ``set REDIS_URL (channels.main.url, workers.yaml:5)``.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipecat_workers_cli.topology.model import ChannelSpec

_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_URL_KEY = re.compile(r"(?:^|[{,\s])url\s*:(.*)$")
_LOOKAHEAD = 12  # lines after the channel's key where its url may be


def channel_hint(path: Path, spec: ChannelSpec, *, located: bool = False) -> str:
    """What to change when ``spec``'s server cannot be reached ("" for a local channel).

    ``located``: the message names the channel's field and line already; only the variable
    is worth adding then.
    """
    if spec.backend == "local":
        return ""
    variable = _url_variable(path, spec.line)
    if located:
        return f"set {variable}" if variable else ""
    where = f"channels.{spec.key}.url, {path.name}:{spec.line}" if spec.line else (
        f"channels.{spec.key}.url in {path.name}")
    return f"set {variable} ({where})" if variable else f"check {where}"


def with_hint(message: str, hint: str) -> str:
    """``message`` followed by ``hint``, as one line."""
    if not hint:
        return message
    return f"{message} {hint}" if message.endswith("?") else f"{message}; {hint}"


def _url_variable(path: Path, line: int) -> str | None:
    """The environment variable named in the channel's ``url:`` (None: none, or unknown)."""
    if line <= 0:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for text in lines[line - 1:line - 1 + _LOOKAHEAD]:
        found = _URL_KEY.search(text)  # the first after the key: a redis/pgmq one has one
        if found:
            variable = _VARIABLE.search(found.group(1))
            return variable.group(1) if variable else None
    return None
