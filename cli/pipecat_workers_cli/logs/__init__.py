"""Per-worker log files: written and rotated by the supervisor, read by ``workers logs``.

No click or rich here: the CLI colours and prints what these functions return. The
constants (``STREAMS``, ``MAX_LINE_BYTES``) stay in their modules.
"""

from __future__ import annotations

from pipecat_workers_cli.logs.reader import (
    LogRecord,
    follow,
    format_time,
    log_path,
    merge,
    parse_line,
    read_records,
)
from pipecat_workers_cli.logs.timespec import parse_since
from pipecat_workers_cli.logs.writer import LineSplitter, LogWriter, pump

__all__ = [
    "LineSplitter",
    "LogRecord",
    "LogWriter",
    "follow",
    "format_time",
    "log_path",
    "merge",
    "parse_line",
    "parse_since",
    "pump",
    "read_records",
]
