"""Reading a user's text file (a topology, an env file): bounded, UTF-8, every failure one
:class:`~pipecat_workers_cli.topology.errors.TopologyError` that names the file (and the line,
for bytes that are not UTF-8)."""

from __future__ import annotations

from pathlib import Path

from pipecat_workers_cli.topology.errors import TopologyError


def read_text(path: Path, shown_as: str, *, what: str, limit: int,
              missing: type[TopologyError] = TopologyError) -> str:
    """The text of ``path``, at most ``limit`` bytes.

    Args:
        path: The file.
        shown_as: How messages name it (as the user wrote it).
        what: What it is, for messages: ``"topology file"``, ``"env file"``.
        limit: Its largest size in bytes.
        missing: Raised when there is no such file (a subclass, for callers that report a
            missing file where it is named rather than in it).

    Raises:
        TopologyError: It is missing, a directory, unreadable, too large or not UTF-8.
    """
    try:
        if path.is_file() and path.stat().st_size <= limit:
            data = path.read_bytes()
        else:
            with path.open("rb") as stream:
                # One byte more than allowed tells a file that is too large without reading
                # all of it (or forever, from a device); a pipe is read this way too.
                data = stream.read(limit + 1)
    except FileNotFoundError:
        raise missing("file not found", file=shown_as) from None
    except IsADirectoryError:
        raise TopologyError(f"is a directory, not a {what}", file=shown_as) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise TopologyError(f"cannot read the file: {reason}", file=shown_as) from None
    if len(data) > limit:
        raise TopologyError(f"too large for a {what}: more than {limit / (1024 * 1024):g} MB",
                            file=shown_as)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TopologyError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})",
                            file=shown_as, line=line) from None
