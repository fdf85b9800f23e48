"""Writing per-worker log files, rotated by size, and reading a child's pipe line by line.

The supervisor owns one :class:`LogWriter` per worker and feeds it from :func:`pump`, which
turns a subprocess pipe into lines however long they are. The file format is described in
:mod:`pipecat_workers_cli.logs.reader`.

Logs are private: files 0600 (an existing file is tightened), a directory the writer makes is 0700,
and a log file is never opened through a symbolic link. A log file or directory deleted while the
project runs is made again at the next line; a deleted directory says so with one warning (on the
``pipecat_workers_cli.logs`` logger, which the supervisor shows in its feed and ``supervisor.log``),
instead of the worker's output going on into a file nobody can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from pipecat_workers_cli.logs.reader import STREAMS, LogRecord, format_time

MAX_LINE_BYTES = 64 * 1024
"""The longest text one record holds; longer lines are split into several records."""

_READ_SIZE = 64 * 1024
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC

logger = logging.getLogger("pipecat_workers_cli.logs")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LogWriter:
    """Appends timestamped lines to one worker's log file, rotating it by size.

    Each line is flushed as it is written, because readers follow the file live. The file
    is opened on the first write, so a constructor never does I/O.

    Args:
        path: ``<logs_dir>/<worker>.log``; the worker's name is taken from it.
        max_bytes: rotate before a line would make the file larger than this.
        backups: how many rotated files (``.1`` newest) to keep; 0 keeps none.
        clock: the time of each record (aware); defaults to ``datetime.now(UTC)``.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 3,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be 0 or more, got {backups}")
        self.path = path
        self.worker = path.name.removesuffix(".log")
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock or _utc_now
        self._file: BinaryIO | None = None
        self._size = 0
        self._closed = False
        self._failing = False  # a write failed; said once until one works again

    def write(self, stream: str, text: str) -> LogRecord:
        """Writes ``text`` from ``stream`` (``out``, ``err`` or ``sup``) as one record.

        Text holding newlines, or longer than :data:`MAX_LINE_BYTES`, is stored as several
        lines with the same time; the returned record carries the whole text (without a
        trailing newline), for the caller to show.

        Raises:
            ValueError: an unknown stream, or the writer is closed.
        """
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
        if self._closed:
            raise ValueError(f"log writer for {self.path} is closed")
        time = self._clock()
        time = time.astimezone(UTC) if time.tzinfo is not None else time.replace(tzinfo=UTC)
        text = text.removesuffix("\n").removesuffix("\r")
        prefix = f"{format_time(time)} {stream} ".encode()
        try:
            if self._file is not None and not self._still_there():
                self._reopen()
            for piece in _pieces(text):
                self._append(prefix + piece + b"\n")
        except OSError as exc:
            # The supervisor goes on without this line, but says so (once) rather than
            # losing output silently or dying of a full disk.
            if not self._failing:
                logger.warning("cannot write %s: %s; %s's output is lost until it can",
                               self.path, exc.strerror or exc, self.worker)
            self._failing = True
            self._drop_file()
        else:
            self._failing = False
        return LogRecord(time, self.worker, stream, text)

    def close(self) -> None:
        """Closes the file; safe to call twice."""
        self._closed = True
        self._drop_file()

    def _drop_file(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _append(self, line: bytes) -> None:
        if self._file is None:
            self._open()
        elif self._size > 0 and self._size + len(line) > self._max_bytes:
            self._rotate()
        assert self._file is not None
        # Unbuffered: one write call per line, so a follower sees whole lines promptly.
        self._file.write(line)
        self._size += len(line)

    def _open(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            _make_private_dirs(directory)
            # Made again: the supervisor made it before the first worker started.
            logger.warning("the logs directory %s was missing (deleted?): made it again; "
                           "output written since it went is lost", directory)
        self._file = _open_private(self.path)
        self._size = os.fstat(self._file.fileno()).st_size
        if self._size > 0 and self._size >= self._max_bytes:
            self._rotate()  # left full by an earlier run

    def _still_there(self) -> bool:
        """Whether the open file is still the one at ``path`` (not deleted or replaced)."""
        assert self._file is not None
        try:
            here = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        mine = os.fstat(self._file.fileno())
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _reopen(self) -> None:
        """The file was deleted (or moved away, the directory with it): start a new one."""
        self._drop_file()
        self._open()

    def _rotate(self) -> None:
        """``.log`` becomes ``.log.1``, ``.1`` becomes ``.2``, ...; the oldest is dropped."""
        assert self._file is not None
        self._file.close()
        name = self.path.name
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for number in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{name}.{number}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{name}.{number + 1}"))
            os.replace(self.path, self.path.with_name(f"{name}.1"))
        self._file = _open_private(self.path)
        self._size = 0


def _open_private(path: Path) -> BinaryIO:
    """``path`` opened for appending, unbuffered, never through a link; 0600."""
    fd = os.open(path, _OPEN_FLAGS, _FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, _FILE_MODE)  # made by an older version, or by hand
        return open(fd, "ab", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _make_private_dirs(directory: Path) -> None:
    """``directory`` and any missing parent, each 0700 (``makedirs`` only sets the last)."""
    missing: list[Path] = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile (another writer)
            path.mkdir(mode=_DIR_MODE)


def _pieces(text: str) -> list[bytes]:
    """The lines of ``text`` as UTF-8, none holding a newline or over MAX_LINE_BYTES."""
    pieces: list[bytes] = []
    for line in text.split("\n"):
        data = line.removesuffix("\r").encode("utf-8", "replace")
        pieces.extend(_cut(data, MAX_LINE_BYTES) if len(data) > MAX_LINE_BYTES else [data])
    return pieces


def _cut(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes, never inside a UTF-8 character."""
    pieces: list[bytes] = []
    start = 0
    while len(data) - start > size:
        end = _boundary(data, start + size)
        pieces.append(data[start:end])
        start = end
    pieces.append(data[start:])
    return pieces


def _boundary(data: bytes, end: int) -> int:
    """``end``, moved back (at most 3 bytes) so that it does not split a UTF-8 character."""
    for cut in range(end, max(end - 4, 0), -1):
        if data[cut] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return cut
    return end  # not UTF-8 anyway: cut where asked


class LineSplitter:
    """Turns chunks of a byte stream into lines, without their newline.

    A line longer than ``max_len`` is passed on in pieces of at most ``max_len`` bytes (cut
    between UTF-8 characters), so one runaway line cannot hold unbounded memory.
    """

    def __init__(
        self, on_line: Callable[[bytes], None], *, max_len: int = MAX_LINE_BYTES
    ) -> None:
        if max_len < 4:
            raise ValueError(f"max_len must be at least 4, got {max_len}")
        self._on_line = on_line
        self._max_len = max_len
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """Passes on every line completed by ``data``, and full pieces of a long one."""
        buffer = self._pending + data if self._pending else data
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            for piece in _cut(buffer[start:newline], self._max_len):
                self._on_line(piece)
            start = newline + 1
        # Strictly longer: a line of exactly max_len waits for its newline, so that the
        # newline does not arrive alone as an empty line.
        while len(buffer) - start > self._max_len:
            end = _boundary(buffer, start + self._max_len)
            self._on_line(buffer[start:end])
            start = end
        self._pending = buffer[start:]

    def flush(self) -> None:
        """Passes on a last line that has no newline (the stream ended)."""
        if self._pending:
            pending, self._pending = self._pending, b""
            self._on_line(pending)


async def pump(
    stream_reader: asyncio.StreamReader,
    on_line: Callable[[bytes], None],
    *,
    max_len: int = MAX_LINE_BYTES,
) -> None:
    """Calls ``on_line`` with each line of ``stream_reader`` (a child's pipe) until EOF.

    Reads chunks rather than ``readline()``, which raises on lines over the reader's limit;
    long lines come in pieces instead, and a last line without a newline is passed on.
    """
    splitter = LineSplitter(on_line, max_len=max_len)
    while chunk := await stream_reader.read(_READ_SIZE):
        splitter.feed(chunk)
    splitter.flush()
