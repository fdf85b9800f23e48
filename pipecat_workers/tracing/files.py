"""Spans to a JSON-lines file: what ``workers trace`` and the dashboard read.

One JSON object per ended span (the format of :meth:`Span.to_record`, plus the ``runner`` and
``pid`` of the process). Spans are written in batches, a fraction of a second after they end
(a crash loses at most that much), always whole lines, so readers may follow the file live.
The file is private (0600, its directory 0700 when made here), never opened through a
symbolic link, and rotated to ``<name>.1`` when it would pass ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
from json.encoder import encode_basestring as _string
from pathlib import Path

from pipecat_workers.tracing.spans import Span, SpanExporter

logger = logging.getLogger("pipecat_workers.tracing")

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
_BATCH = 512  # spans that make a write at once, whatever the delay


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span to ``path`` as one line.

    Args:
        path: The file; its directory is made (0700) if missing.
        max_bytes: Rotate to ``<path>.1`` (replacing it) before the file passes this size.
        runner: The runner's name, written with each span.
        delay: Seconds a span may wait before it is written (spans that end together are
            encoded and written in one go, off the path of the work they trace); 0 writes
            each at once.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 8 * 1024 * 1024,
                 runner: str = "", delay: float = 0.2) -> None:
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._tail = f',"runner":{_string(runner)},"pid":{os.getpid()}}}\n'
        self._delay = delay
        self._pending: list[Span] = []
        self._announced: set[int] = set()  # pending spans written as running, by id()
        self._timer: asyncio.TimerHandle | None = None
        self._fd: int | None = None
        self._size = 0
        self._broken = False
        atexit.register(self.flush)  # a program that ends without shutting it down

    @property
    def path(self) -> Path:
        return self._path

    def started(self, span: Span) -> None:
        """Write the span as running (readers take its ended line over it later)."""
        self._announced.add(id(span))
        self.export(span)

    def export(self, span: Span) -> None:
        if self._broken:
            return
        if span.end_time is not None and id(span) in self._announced:
            return  # still waiting as running: it is written as it is then, ended
        self._pending.append(span)
        if len(self._pending) >= _BATCH or self._delay <= 0:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop: nothing would flush later
                self.flush()
                return
            self._timer = loop.call_later(self._delay, self.flush)

    def flush(self) -> None:
        """Write the spans that wait."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        self._announced.clear()
        if not pending or self._broken:
            return
        data = "".join([_line(span) + self._tail for span in pending]).encode("utf-8", "replace")
        try:
            if self._fd is None:
                self._open()
            if self._size and self._size + len(data) > self._max_bytes:
                self._rotate()
            assert self._fd is not None
            os.write(self._fd, data)
            self._size += len(data)
        except OSError as exc:
            self._broken = True  # say it once; the work goes on without its spans
            logger.warning("cannot write spans to %s: %s (spans are no longer written)",
                           self._path, exc.strerror or exc)

    def _open(self) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(self._path, _FLAGS, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        os.replace(self._path, self._path.with_name(self._path.name + ".1"))
        self._fd = os.open(self._path, _FLAGS, 0o600)
        self._size = 0

    def shutdown(self) -> None:
        self.flush()
        atexit.unregister(self.flush)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line(span: Span) -> str:
    """The span as :meth:`Span.to_record` gives it, without the closing brace, encoded
    directly (the hot part of writing spans)."""
    c = span.context
    parent = "null" if span.parent_id is None else f'"{span.parent_id:016x}"'
    end = span.end_time if span.end_time is not None else span.start
    status = span.status if span.end_time is not None else Span.RUNNING
    error = "" if span.error is None else f',"error":{_string(span.error)}'
    events = _encode([{"name": n, "time": t, "attrs": a} for n, t, a in span.events]) \
        if span.events else "[]"
    return (f'{{"trace":"{c.trace_id:032x}","span":"{c.span_id:016x}","parent":{parent},'
            f'"name":{_string(span.name)},"kind":{_string(span.kind)},'
            f'"worker":{_string(span.worker)},"start":{span.start!r},"end":{end!r},'
            f'"status":{_string(status)}{error},"attrs":{_encode(span.attributes)},'
            f'"events":{events}')
