"""``.env`` files: read with python-dotenv, every bad line reported as ``file:line``.

Two kinds, as in docker compose:

- the project's ``.env`` (beside the topology file, or the ``--env-file`` files instead):
  variables for ``${VAR}`` in the topology, after the shell's environment;
- ``env_file:`` in the topology (at the top: for every worker; in a worker: for it): variables
  its processes get, under its ``env:``.

The lines are parsed by python-dotenv (quotes, escapes, ``export``, comments), but where it
skips a line it cannot parse with a warning, that line is an error here: a project must not
run with half of its settings. ``${VAR}`` in a value (unless single-quoted) is expanded as in
the topology, from the lines above, then the environment.
"""

from __future__ import annotations

import io
import os
from collections import ChainMap
from collections.abc import Mapping, Sequence
from pathlib import Path

from dotenv.parser import parse_stream  # the parser behind dotenv_values, with line numbers

from pipecat_workers_cli.topology.errors import TopologyError
from pipecat_workers_cli.topology.interpolate import interpolate
from pipecat_workers_cli.topology.textfile import read_text

DEFAULT_ENV_FILE = ".env"
MAX_ENV_FILE_BYTES = 1024 * 1024
"""The largest ``.env`` file read; a real one is a few hundred bytes."""


class EnvFileMissing(TopologyError):
    """Raised when an env file named in the topology or on the command line does not exist."""


def read_env_file(path: Path, shown_as: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables of one ``.env`` file, in file order.

    A line with a name and no ``=`` sets nothing.

    Args:
        path: The file to read.
        shown_as: How messages name it (as the user wrote it).
        env: The environment ``${VAR}`` falls back on after the lines above.

    Raises:
        EnvFileMissing: There is no such file.
        TopologyError: It cannot be read, a line is not ``NAME=value``, or a value names an
            unset variable (with its line).
    """
    text = read_text(path, shown_as, what="env file", limit=MAX_ENV_FILE_BYTES,
                     missing=EnvFileMissing)
    values: dict[str, str] = {}
    lookup = ChainMap(values, dict(env))  # the lines above first, as they are added
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            first = (binding.original.string.strip().splitlines() or [""])[0]
            cut = first if len(first) <= 40 else f"{first[:37]}..."
            raise TopologyError(f"expected NAME=value, got {cut!r}", file=shown_as, line=line)
        if binding.key is None or binding.value is None:
            continue  # a comment, a blank line, a name alone
        if _single_quoted(binding.original.string):
            values[binding.key] = binding.value
            continue
        try:
            values[binding.key] = interpolate(binding.value, lookup)
        except TopologyError as exc:
            raise exc.located(file=shown_as, line=line, field=binding.key) from None
    return values


def _single_quoted(source: str) -> bool:
    """Whether the value of a ``NAME=value`` line is in single quotes (taken literally)."""
    return source.partition("=")[2].lstrip().startswith("'")


def project_env_files(topology: Path, given: Sequence[str] | None) -> list[tuple[Path, str]]:
    """The project's env files, each with how messages name it: the ``--env-file`` files in
    their order, else the topology's ``.env`` if there is one."""
    if given:
        return [(Path(name).expanduser(), name) for name in given]
    default = topology.parent / DEFAULT_ENV_FILE
    if default.is_file():
        return [(default, os.path.join(os.path.dirname(str(topology)), DEFAULT_ENV_FILE))]
    return []


def project_variables(topology: Path, given: Sequence[str] | None,
                      env: Mapping[str, str]) -> dict[str, str]:
    """The project's env files merged, a later file winning (``--env-file`` in order).

    Raises:
        TopologyError: A file is missing (``--env-file``) or malformed.
    """
    merged: dict[str, str] = {}
    for path, shown_as in project_env_files(topology, given):
        try:
            merged.update(read_env_file(path, shown_as, ChainMap(merged, dict(env))))
        except EnvFileMissing:
            raise TopologyError("file not found", file=shown_as, field="--env-file") from None
    return merged
