"""``.env`` files: read with python-dotenv, every bad line reported as ``file:line``.

Two kinds, as in docker compose:

- the project's ``.env`` (beside the topology file, or the ``--env-file`` files instead):
  variables for ``${VAR}`` in the topology, after the shell's environment;
- ``env_file:`` in the topology (at the top: for every worker; in a worker: for it): variables
  its processes get, under its ``env:``.

python-dotenv skips a line it cannot parse with a warning; a topology must not run with half
of its settings, so such a line is an error here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream  # the parser behind dotenv_values, with line numbers

from pipecat_workers_cli.topology.errors import TopologyError

DEFAULT_ENV_FILE = ".env"
MAX_ENV_FILE_BYTES = 1024 * 1024
"""The largest ``.env`` file read; a real one is a few hundred bytes."""


class EnvFileMissing(TopologyError):
    """Raised when an env file named in the topology or on the command line does not exist."""


def read_env_file(path: Path, shown_as: str) -> dict[str, str]:
    """The variables of one ``.env`` file, in file order.

    ``${VAR}`` and ``${VAR:-default}`` in values are expanded (python-dotenv's rules) from
    the lines above and the environment. A line with a name and no ``=`` sets nothing.

    Args:
        path: The file to read.
        shown_as: How messages name it (as the user wrote it).

    Raises:
        EnvFileMissing: There is no such file.
        TopologyError: It cannot be read, or a line is not ``NAME=value`` (with its line).
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_ENV_FILE_BYTES + 1)
    except FileNotFoundError:
        raise EnvFileMissing("env file not found", file=shown_as) from None
    except IsADirectoryError:
        raise TopologyError("is a directory, not an env file", file=shown_as) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise TopologyError(f"cannot read the env file: {reason}", file=shown_as) from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise TopologyError("too large for an env file: more than 1 MB", file=shown_as)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TopologyError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})",
                            file=shown_as, line=line) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            first = binding.original.string.strip().splitlines()[0]
            cut = first if len(first) <= 40 else f"{first[:37]}..."
            raise TopologyError(f"expected NAME=value, got {cut!r}", file=shown_as,
                                line=binding.original.line)
    values = dotenv_values(stream=io.StringIO(text), interpolate=True)
    return {name: value for name, value in values.items() if value is not None}


def project_env_files(topology: Path, given: Sequence[str] | None) -> list[tuple[Path, str]]:
    """The project's env files, each with how messages name it: the ``--env-file`` files in
    their order, else the topology's ``.env`` if there is one."""
    if given:
        return [(Path(name).expanduser(), name) for name in given]
    default = topology.parent / DEFAULT_ENV_FILE
    if default.is_file():
        return [(default, os.path.join(os.path.dirname(str(topology)), DEFAULT_ENV_FILE))]
    return []


def project_variables(topology: Path, given: Sequence[str] | None) -> dict[str, str]:
    """The project's env files merged, a later file winning (``--env-file`` in order).

    Raises:
        TopologyError: A file is missing (``--env-file``) or malformed.
    """
    merged: dict[str, str] = {}
    for path, shown_as in project_env_files(topology, given):
        try:
            merged.update(read_env_file(path, shown_as))
        except EnvFileMissing:
            raise TopologyError("file not found", file=shown_as, field="--env-file") from None
    return merged
