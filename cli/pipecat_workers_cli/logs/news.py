"""The supervisor's own news: one log beside the workers' logs, shown as the ``workers`` stream.

What a user needs to know and no single worker's output says: why a worker exited and when it
restarts, an edit of the topology that could not be applied, the process template falling
back to spawning. ``workers logs`` merges it with the workers' logs in time order, and
``workers logs workers`` shows it alone.

Its file is ``<logs_dir>/_workers.log``: a worker's key starts with a letter or a digit, so
no worker's log can have that name. Its records are named :data:`NEWS` when shown.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.logs.writer import LogWriter

NEWS = "workers"
"""The name the supervisor's stream has in ``workers logs`` and the live view."""

NEWS_FILE = "_workers"
"""The stem of its file in the logs directory (what the log functions take as a worker)."""


def news_writer(logs_dir: Path) -> LogWriter:
    """The writer of the news log (opened at its first line)."""
    return LogWriter(logs_dir / f"{NEWS_FILE}.log")


def as_shown(record: LogRecord) -> LogRecord:
    """``record`` under the name users know: a news record is the ``workers`` stream's."""
    return dataclasses.replace(record, worker=NEWS) if record.worker == NEWS_FILE else record


def file_stem(name: str) -> str:
    """The log file stem of a name as ``workers logs`` shows it."""
    return NEWS_FILE if name == NEWS else name
