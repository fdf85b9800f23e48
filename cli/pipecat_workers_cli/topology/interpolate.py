"""``${VAR}`` interpolation of topology strings, with docker compose's rules.

- ``${VAR}``: the variable's value; an error when it is not set.
- ``${VAR:-default}``: the default when VAR is unset *or empty*.
- ``${VAR-default}``: the default only when VAR is unset.
- ``$$``: a literal ``$``. Any other ``$`` is kept as it is (passwords in URLs).

Defaults may themselves contain references (``${A:-${B:-x}}``), up to :data:`MAX_NESTING`
deep; a default that is not used is only parsed, so a variable missing from it is no error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from pipecat_workers_cli.topology.errors import TopologyError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORMS = "${NAME}, ${NAME:-default} or ${NAME-default}"
MAX_NESTING = 10
"""How deep references may nest in defaults (each level is a recursion)."""


def interpolate(text: str, env: Mapping[str, str],
                missing: Callable[[str], str] | None = None) -> str:
    """The text with every reference replaced from ``env``.

    ``missing``, when given, is the value of an unset variable without a default (it gets
    the name), for a caller that keeps the reference rather than its value.

    Raises:
        TopologyError: A referenced variable is unset and has no default (and no
            ``missing``), or a ``${`` is malformed. It carries no location; the caller
            places it in the file.

    Example::

        >>> interpolate("redis://${HOST:-localhost}:6379", {})
        'redis://localhost:6379'
    """
    if "$" not in text:
        return text
    value, _ = _template(text, 0, env, depth=0, evaluate=True, missing=missing)
    return value


_Missing = Callable[[str], str] | None


def _template(
    text: str, i: int, env: Mapping[str, str], *, depth: int, evaluate: bool,
    missing: _Missing = None,
) -> tuple[str, int]:
    """Parse from ``i`` to the end, or (``depth`` > 0: in a default) to the ``}`` closing
    it."""
    out: list[str] = []
    while i < len(text):
        char = text[i]
        if char == "}" and depth:
            return "".join(out), i
        if char != "$":
            out.append(char)
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            value, i = _reference(text, i, env, depth=depth, evaluate=evaluate,
                                  missing=missing)
            out.append(value)
        else:
            out.append(char)
            i += 1
    return "".join(out), i  # unterminated when nested: the caller sees i == len(text)


def _reference(
    text: str, start: int, env: Mapping[str, str], *, depth: int, evaluate: bool,
    missing: _Missing,
) -> tuple[str, int]:
    """Parse the ``${...}`` at ``start``; return its value and the index after it."""
    match = _NAME.match(text, start + 2)
    if match is None:
        raise _malformed(text, start)
    name, i = match.group(), match.end()
    if text.startswith("}", i):
        if evaluate and name not in env:
            if missing is not None:
                return missing(name), i + 1
            raise TopologyError(
                f"variable {name} is not set (give a default with ${{{name}:-default}})"
            )
        return env.get(name, ""), i + 1
    for op in (":-", "-"):
        if text.startswith(op, i):
            current = env.get(name)
            use_default = current is None or (op == ":-" and current == "")
            if depth >= MAX_NESTING:
                raise TopologyError(f"variable references nested more than {MAX_NESTING} "
                                    "deep in defaults")
            default, i = _template(
                text, i + len(op), env, depth=depth + 1, evaluate=evaluate and use_default,
                missing=missing,
            )
            if i >= len(text):
                raise _malformed(text, start)
            return (default if use_default or current is None else current), i + 1
    raise _malformed(text, start)


def _malformed(text: str, start: int) -> TopologyError:
    end = text.find("}", start)
    snippet = text[start:] if end < 0 else text[start : end + 1]
    quoted = repr(snippet) if len(snippet) <= 40 else f"{snippet[:37]!r}..."
    return TopologyError(f"malformed variable reference {quoted}: expected {_FORMS}")
