"""Span files as workers write them (one JSON object a line), for the dashboard's tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT, RUN, HANDOFF = "00f067aa0ba902b7", "a3ce929d0e0e4736", "b7ad6b7169203331"
HOSTILE = '<img src=x onerror="window.pwned=1">'


def span(span_id: str, parent: str | None, name: str, worker: str, start: float, end: float,
         **extra: Any) -> dict[str, Any]:
    line = {"trace": TRACE, "span": span_id, "parent": parent, "name": name,
            "kind": "job.run", "worker": worker, "runner": worker, "pid": 1, "start": start,
            "end": end, "status": "ok", "attrs": {"job.name": "echo"}, "events": []}
    line.update(extra)
    return line


def write_trace(directory: Path, start: float,
                files: tuple[str, str] = ("greeter", "support")) -> None:
    """One trace across two files (a request, its run, a hand-off under the run), among
    lines that are not spans at all; ``files``: their names, without ``.jsonl``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    greeter = [
        span(ROOT, None, "job echo", "greeter", start, start + 0.30, kind="job.request",
             attrs={"job.id": "j1", "job.name": "echo", "job.target": "support"}),
        "this line is not JSON",
        {"trace": "not hex", "span": "x"},
        span("c0ffee00c0ffee00", None, "wrong types", "greeter", "soon", start),
    ]
    support = [
        span(RUN, ROOT, "run echo", "support", start + 0.05, start + 0.25),
        span(HANDOFF, RUN, HOSTILE, HOSTILE, start + 0.10, start + 0.20, kind="handoff",
             status="error", error=f"failed: {HOSTILE}"),
    ]
    for name, lines in zip(files, (greeter, support), strict=True):
        path = directory / f"{name}.jsonl"
        with open(path, "a", encoding="utf-8") as file:
            for line in lines:
                file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
        os.chmod(path, 0o600)
