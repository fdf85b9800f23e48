"""Rich tables of traces: one trace as a tree of spans, and the list of recent traces.

What spans hold was written by worker processes; every string shown goes through
:func:`clean` so that no control character (an escape sequence, say) reaches the terminal,
and into a :class:`~rich.text.Text`, so that brackets are shown rather than read as markup.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from rich.table import Table
from rich.text import Text

from pipecat_workers_cli.traces.store import SpanNode, SpanRecord, TraceSummary

STATUS_STYLES = {"ok": "green", "error": "bold red", "cancelled": "yellow", "running": "cyan"}
MAX_INDENT = 24  # levels of tree guides drawn; deeper spans show their depth instead
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` with each control character shown as an escape (``\\x1b``), on one line."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def seconds(value: float) -> str:
    """A span's length or offset: ``850µs``, ``12.3ms``, ``1.234s``, ``2m03.5s``."""
    if value < 0.001:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    if value < 60:
        return f"{value:.3f}s"
    minutes, rest = divmod(value, 60)
    return f"{minutes:.0f}m{rest:04.1f}s"


def when(epoch: float) -> str:
    """A start time in local time, as ``workers logs -t`` shows times (date if not today)."""
    at = datetime.fromtimestamp(epoch).astimezone()
    clock = f"{at:%H:%M:%S.%f}"[:-3]
    return clock if at.date() == datetime.now().astimezone().date() else f"{at:%Y-%m-%d} {clock}"


def status_text(span: SpanRecord) -> Text:
    text = Text(span.status, style=STATUS_STYLES.get(span.status, ""))
    if span.error:
        text.append(f": {clean(span.error)}", style="red")
    return text


def tree_table(rows: Sequence[tuple[str, SpanNode]], start: float) -> Table:
    """One row per span: its place in the tree and name, worker, start offset from
    ``start`` (the trace's start), duration and status; orphans are marked."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("SPAN", "WORKER", "START", "DURATION", "STATUS"):
        table.add_column(column, no_wrap=column != "STATUS",
                         justify="right" if column in ("START", "DURATION") else "left")
    for guides, node in rows:
        span = node.span
        name = Text(guides, style="dim")
        name.append(clean(span.name))
        if node.orphan:
            name.append(" (parent not found)", style="yellow")
        table.add_row(name, Text(clean(span.worker)), f"+{seconds(span.start - start)}",
                      seconds(span.duration), status_text(span))
    return table


def tree_rows(roots: Sequence[SpanNode]) -> list[tuple[str, SpanNode]]:
    """Each node under ``roots`` in order with the guides (``├─``, ``└─``) to draw before it."""
    rows: list[tuple[str, SpanNode]] = []
    # (node, guides before it, indent for its children, depth); iterative, as trees can be deep
    stack = [(root, "", "", 0) for root in reversed(roots)]
    while stack:
        node, guides, indent, depth = stack.pop()
        rows.append((guides, node))
        for i, child in enumerate(reversed(node.children)):
            last = i == 0
            if depth + 1 > MAX_INDENT:
                child_guides, child_indent = f"{indent}·{depth + 1}· ", indent
            else:
                child_guides = indent + ("└─ " if last else "├─ ")
                child_indent = indent + ("   " if last else "│  ")
            stack.append((child, child_guides, child_indent, depth + 1))
    return rows


def traces_table(summaries: Sequence[TraceSummary]) -> Table:
    """The recent traces, one row each, in the order given."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("TRACE", "STARTED", "DURATION", "SPANS", "ROOT", "WORKERS", "STATUS"):
        table.add_column(column, no_wrap=column not in ("ROOT", "WORKERS"),
                         justify="right" if column in ("DURATION", "SPANS") else "left")
    for t in summaries:
        status = Text(t.status, style=STATUS_STYLES.get(t.status, ""))
        if t.errors > 1:
            status.append(f" ({t.errors} spans)", style="red")
        table.add_row(t.trace[:16], when(t.start), seconds(t.duration), str(t.spans),
                      Text(f"{clean(t.name)} ({clean(t.worker)})"),
                      Text(clean(", ".join(t.workers))), status)
    return table
