"""What the supervisor writes for the other commands to read, and shows as it writes it.

Each worker's log, the supervisor's own news (the ``workers`` stream of ``workers logs``), the
state file (``ps``, ``up -d``) and the topology it resolved (``call``, ``tail``, ``config``).
Kept apart from the loop (:mod:`pipecat_workers_cli.supervisor.driver`), which only says what
happened.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Protocol

from pipecat_workers_cli.logs.news import NEWS, as_shown, news_writer
from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.logs.writer import LogWriter
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.topology.model import Topology


class Renderer(Protocol):
    """Shows a running project: the live view, or plain prefixed lines."""

    def record(self, record: LogRecord) -> None: ...

    def status(self, status: ProjectStatus) -> None: ...


class ProjectRecords:
    """The project's files in its state directory, written as things happen.

    Args:
        state: The project's state directory.
        renderer: Shown every log line as it is written.
    """

    def __init__(self, state: StateDir, renderer: Renderer) -> None:
        self._state = state
        self._renderer = renderer
        self._writers: dict[str, LogWriter] = {}
        self._news: LogWriter | None = None  # opened at its first line

    def log(self, name: str, stream: str, text: str) -> None:
        """A line of worker ``name``'s log (``out``, ``err``, or ``sup`` for ours)."""
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = LogWriter(self._state.logs_dir / f"{name}.log")
        self._renderer.record(writer.write(stream, text))

    def news(self, text: str) -> None:
        """A line of the supervisor's own news: ``workers logs workers``, and the renderer."""
        if self._news is None:
            self._news = news_writer(self._state.logs_dir)
        try:
            record = as_shown(self._news.write("sup", text))
        except ValueError:  # closed: a last word while the supervisor ends
            record = LogRecord(time=datetime.now(UTC), worker=NEWS, stream="sup", text=text)
        self._renderer.record(record)

    def state(self, status: ProjectStatus, *, sockets: dict[str, str | None],
              env_files: tuple[str, ...] | None) -> None:
        """Rewrite the state file: ``status``, where the sockets are, and the env files of
        this run (for the commands after ``down``)."""
        data = status.to_json()
        data["sockets"] = sockets
        data["env_files"] = list(env_files or ())
        with contextlib.suppress(OSError):
            self._state.write_state(data)

    def topology(self, topology: Topology) -> None:
        """Record ``topology`` as resolved here: what ``call``, ``tail`` and ``ps --channel``
        go by, rather than the file resolved again in their own environment."""
        from pipecat_workers_cli.topology.record import topology_record

        with contextlib.suppress(OSError):
            self._state.write_topology(topology_record(topology))

    def close(self) -> None:
        """The supervisor ends: close the logs, and remove the recorded topology (it holds
        the environment's values, secrets included)."""
        with contextlib.suppress(OSError):
            self._state.forget_topology()
        for writer in self._writers.values():
            writer.close()
        if self._news is not None:
            self._news.close()
