"""Reading per-worker log files: one worker, a merged view of several, or followed live.

A file is ``<logs_dir>/<worker>.log``, rotated to ``<worker>.log.1`` (newest), ``.2``, ...
Each line is ``<time> <stream> <text>``: the time in ISO 8601 UTC with microseconds and a
``Z`` (fixed width, so times sort as text), the stream ``out``, ``err`` or ``sup`` (written
by the supervisor about the worker), then the text, which never holds a newline.

A line that does not parse (written by hand, or a write cut short by a crash) is kept: it
takes the time and stream of the record before it in the same file, because its text is
what a reader wants to see. An unparseable line with no record read before it (first in
the file, or first of a ``tail`` window) is skipped.
Bytes that are not UTF-8 are decoded with replacement characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

STREAMS = ("out", "err", "sup")
"""The streams a record can come from: the worker's stdout, its stderr, the supervisor."""

_BLOCK_SIZE = 64 * 1024  # how much to read at a time when reading a file backwards


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of a worker's log."""

    time: datetime  # aware, UTC
    worker: str
    stream: str
    text: str


Keep = Callable[[LogRecord], bool]
"""Which records to show (``workers logs --trace``): the others are dropped before ``tail``."""


def log_path(logs_dir: Path, worker: str) -> Path:
    """The current log file of ``worker``; refuses names that would leave ``logs_dir``.

    Raises:
        ValueError: ``worker`` is empty, ``.``/``..`` or holds a path separator.
    """
    if not worker or worker in (".", "..") or "/" in worker or os.sep in worker:
        raise ValueError(f"not a usable worker name for a log file: {worker!r}")
    return logs_dir / f"{worker}.log"


def format_time(time: datetime) -> str:
    """``time`` as a log file writes it: UTC, microseconds, ``Z`` (fixed width, sortable)."""
    utc = time.astimezone(UTC) if time.tzinfo is not None else time
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_line(worker: str, line: str) -> LogRecord | None:
    """The record on one line of ``worker``'s log, or None if the line does not parse."""
    stamp, _, rest = line.rstrip("\n").partition(" ")
    stream, _, text = rest.partition(" ")
    if stream not in STREAMS:
        return None
    try:
        time = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if time.tzinfo is None:
        return None
    return LogRecord(time.astimezone(UTC), worker, stream, text)


def merge(streams_of_records: Iterable[Iterable[LogRecord]]) -> list[LogRecord]:
    """Several workers' records ordered by time.

    Each input keeps its own order (a worker's file order, even if its clock stepped back);
    records with equal times come in the order the inputs were given.
    """
    return list(heapq.merge(*streams_of_records, key=lambda record: record.time))


def read_records(
    logs_dir: Path,
    worker: str,
    *,
    since: datetime | None = None,
    tail: int | None = None,
    keep: Keep | None = None,
) -> list[LogRecord]:
    """The records of one worker, oldest first, across its rotated files.

    Args:
        logs_dir: the directory holding the log files.
        worker: whose log to read; a worker without files has no records.
        since: keep records at or after this (aware) time.
        tail: keep only the last ``tail`` records; without ``since`` and ``keep``, only the
            end of the files is read, so this stays cheap on large logs.
        keep: keep only the records it accepts (``tail`` counts those).
    """
    with ExitStack() as stack:
        current = _open_or_none(log_path(logs_dir, worker))
        if current is not None:
            stack.callback(current.close)
        sources = _open_rotated(logs_dir, worker, current, stack)
        if current is not None:
            sources.append((current, os.fstat(current.fileno()).st_size))
        return _backlog(worker, sources, since, tail, keep)[0]


async def follow(
    logs_dir: Path,
    workers: list[str],
    *,
    since: datetime | None = None,
    tail: int | None = None,
    poll: float = 0.1,
    stop: asyncio.Event | None = None,
    keep: Keep | None = None,
) -> AsyncIterator[LogRecord]:
    """The merged records of ``workers``, then new ones as they are written, until ``stop``.

    ``tail`` applies per worker (as ``docker compose logs --tail`` does), then the backlogs
    are merged (with ``keep``, it counts the records kept). Following survives rotation and
    truncation, and picks up a worker whose file does not exist yet. Each poll round yields
    its records in time order.
    Close the iterator (``contextlib.aclosing``) to release the files early.
    """
    followers = [_Follower(logs_dir, worker) for worker in workers]
    stop = stop if stop is not None else asyncio.Event()
    try:
        for record in merge([f.backlog(since, tail, keep) for f in followers]):
            yield record
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
            if stop.is_set():
                return
            for record in merge([f.poll(since, keep) for f in followers]):
                yield record
    finally:
        for follower in followers:
            follower.close()


class _Follower:
    """Follows one worker's current log file, across rotation, from one poll to the next."""

    def __init__(self, logs_dir: Path, worker: str) -> None:
        self._logs_dir = logs_dir
        self._worker = worker
        self._path = log_path(logs_dir, worker)
        self._fh: BinaryIO | None = None
        self._pending = b""  # the start of a line whose newline is not written yet
        self._last: LogRecord | None = None  # gives its time to a line that does not parse

    def backlog(self, since: datetime | None, tail: int | None,
                keep: Keep | None = None) -> list[LogRecord]:
        """What is already written, and the position to follow from."""
        self._fh = _open_or_none(self._path)
        with ExitStack() as stack:
            sources = _open_rotated(self._logs_dir, self._worker, self._fh, stack)
            if self._fh is not None:
                # A line being written now is left for the first poll, whole.
                end = _complete_end(self._fh, os.fstat(self._fh.fileno()).st_size)
                sources.append((self._fh, end))
            records, self._last = _backlog(self._worker, sources, since, tail, keep)
        if self._fh is not None:
            self._fh.seek(end)
        return records

    def poll(self, since: datetime | None, keep: Keep | None = None) -> list[LogRecord]:
        """The records written since the last poll."""
        if self._fh is None:
            self._fh = _open_or_none(self._path)
            if self._fh is None:
                return []
        lines = self._take(self._fh.read(), final=False)
        try:
            now = os.stat(self._path)
        except FileNotFoundError:
            now = None  # rotated, and the new file is not created yet
        mine = os.fstat(self._fh.fileno())
        if now is not None and (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            lines += self._switch(mine.st_ino)
        elif now is not None and now.st_size < self._fh.tell():
            self._fh.seek(0)  # truncated in place: start over
            self._pending = b""
            lines += self._take(self._fh.read(), final=False)
        records = _parse_lines(self._worker, lines, self._last)
        if records:
            self._last = records[-1]
        return [r for r in records
                if (since is None or r.time >= since) and (keep is None or keep(r))]

    def _switch(self, old_inode: int) -> list[bytes]:
        """Finish the rotated file, read any rotated after it, then open the new one."""
        assert self._fh is not None
        lines = self._take(self._fh.read(), final=True)  # written just before the rename
        self._fh.close()
        for path in _newer_rotated(self._logs_dir, self._worker, old_inode):
            with contextlib.suppress(FileNotFoundError):
                lines += _split_lines(path.read_bytes())
        self._fh = _open_or_none(self._path)
        if self._fh is not None:
            lines += self._take(self._fh.read(), final=False)
        return lines

    def _take(self, data: bytes, *, final: bool) -> list[bytes]:
        """Complete lines of ``pending + data``; keeps a trailing partial line unless final."""
        lines = _split_lines(self._pending + data)
        self._pending = b""
        if lines and not final and not lines[-1].endswith(b"\n"):
            self._pending = lines.pop()
        return lines

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


_Source = tuple[BinaryIO, int]  # an open file and how far into it to read


def _open_or_none(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")  # the caller owns and closes it
    except FileNotFoundError:
        return None


def _rotated_paths(logs_dir: Path, worker: str) -> list[Path]:
    """``<worker>.log.N`` files, newest (``.1``) first."""
    prefix = f"{worker}.log."
    numbered: list[tuple[int, Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(logs_dir):
            suffix = entry.name[len(prefix):]
            if entry.name.startswith(prefix) and suffix.isdigit() and suffix.isascii():
                numbered.append((int(suffix), Path(entry.path)))
    return [path for _, path in sorted(numbered)]


def _open_rotated(
    logs_dir: Path, worker: str, current: BinaryIO | None, stack: ExitStack
) -> list[_Source]:
    """The rotated files, oldest first, each opened once.

    A file seen twice under two names (rotated while we opened them) is skipped, so a
    snapshot taken during a rotation holds no line twice.
    """
    seen: set[tuple[int, int]] = set()
    if current is not None:
        st = os.fstat(current.fileno())
        seen.add((st.st_ino, st.st_dev))
    sources: list[_Source] = []
    for path in _rotated_paths(logs_dir, worker):
        fh = _open_or_none(path)
        if fh is None:
            continue
        stack.callback(fh.close)
        st = os.fstat(fh.fileno())
        if (st.st_ino, st.st_dev) not in seen:
            seen.add((st.st_ino, st.st_dev))
            sources.append((fh, st.st_size))
    sources.reverse()
    return sources


def _newer_rotated(logs_dir: Path, worker: str, old_inode: int) -> list[Path]:
    """Rotated files newer than the one with ``old_inode``, oldest first.

    Several rotations can happen between two polls; the files in between must be read.
    If the old file is gone (dropped beyond the backups), nothing can be known: none.
    """
    newer: list[Path] = []
    for path in _rotated_paths(logs_dir, worker):
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            continue
        if inode == old_inode:
            return newer[::-1]
        newer.append(path)
    return []


def _backlog(
    worker: str, sources: list[_Source], since: datetime | None, tail: int | None,
    keep: Keep | None = None,
) -> tuple[list[LogRecord], LogRecord | None]:
    """The records of ``sources`` after ``since`` that ``keep`` accepts, the last ``tail`` of
    them; and the last record read."""
    lines = _collect_lines(sources, tail if since is None and keep is None else None)
    records = _parse_lines(worker, lines, None)
    last = records[-1] if records else None
    if since is not None:
        records = [r for r in records if r.time >= since]
    if keep is not None:
        records = [r for r in records if keep(r)]
    if tail is not None:
        records = records[-tail:] if tail > 0 else []
    return records, last


def _collect_lines(sources: list[_Source], tail: int | None) -> list[bytes]:
    """All lines of ``sources`` in order, or their last ``tail`` (read from the end)."""
    if tail is None:
        lines: list[bytes] = []
        for fh, end in sources:
            fh.seek(0)
            lines += _split_lines(fh.read(end))
        return lines
    collected: list[bytes] = []
    for fh, end in reversed(sources):
        need = tail - len(collected)
        if need <= 0:
            break
        collected[:0] = _tail_lines(fh, end, need)
    return collected


def _tail_lines(fh: BinaryIO, end: int, count: int) -> list[bytes]:
    """The last ``count`` lines of ``fh[:end]``, reading blocks backwards from ``end``."""
    if count <= 0 or end <= 0:
        return []
    blocks: list[bytes] = []
    position, newlines = end, 0
    while position > 0 and newlines <= count:
        size = min(_BLOCK_SIZE, position)
        position -= size
        fh.seek(position)
        blocks.append(fh.read(size))
        newlines += blocks[-1].count(b"\n")
    # The first line may start mid-line; with more than count newlines it is never kept.
    return _split_lines(b"".join(reversed(blocks)))[-count:]


def _complete_end(fh: BinaryIO, size: int) -> int:
    """The offset just after the last newline in ``fh[:size]`` (0 if none)."""
    position = size
    while position > 0:
        start = max(0, position - _BLOCK_SIZE)
        fh.seek(start)
        index = fh.read(position - start).rfind(b"\n")
        if index >= 0:
            return start + index + 1
        position = start
    return 0


def _split_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each newline (kept); a last line without one is kept as is."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _parse_lines(
    worker: str, lines: Iterable[bytes], previous: LogRecord | None
) -> list[LogRecord]:
    """Records of raw lines; a line that does not parse follows ``previous`` (module doc)."""
    records: list[LogRecord] = []
    for raw in lines:
        line = raw.rstrip(b"\n").decode("utf-8", "replace")
        if not line:
            continue
        record = parse_line(worker, line)
        if record is None:
            if previous is None:
                continue
            record = LogRecord(previous.time, worker, previous.stream, line)
        records.append(record)
        previous = record
    return records
