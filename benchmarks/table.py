"""Rendering: the results table (rich if available, plain text otherwise) and the JSON file."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from benchmarks.core import Row, Target

HEADERS = ("workload", "result", "target", "status", "notes")


def fmt_number(value: float) -> str:
    """Thousands separators for big numbers, three significant digits for small ones."""
    if abs(value) >= 1_000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_value(value: float, unit: str) -> str:
    return f"{fmt_number(value)}{unit}" if unit == "×" else f"{fmt_number(value)} {unit}"


def fmt_target(target: Target | None, unit: str) -> str:
    if target is None:
        return "reference"
    limit = f"{target.limit:,g}"
    return f"{target.symbol} {limit}{unit}" if unit == "×" else f"{target.symbol} {limit} {unit}"


def status(row: Row) -> str:
    if row.skipped is not None:
        return "skipped"
    if row.target is None and row.error is None:
        return "—"
    return "✓" if row.passed else "✗"


def cells(row: Row) -> tuple[str, str, str, str, str]:
    if row.skipped is not None:
        result = "—"
    elif row.value is None:
        result = "error"
    else:
        result = row.display or fmt_value(row.value, row.unit)
    notes = row.skipped or row.error or row.notes
    return (row.workload, result, fmt_target(row.target, row.unit), status(row), notes)


def summary(rows: Sequence[Row]) -> str:
    judged = [r for r in rows if r.judged]
    line = f"{sum(r.passed for r in judged)}/{len(judged)} targets met"
    extra = []
    errors = sum(r.error is not None for r in rows)
    if errors:
        extra.append(f"{errors} benchmark(s) failed to run")
    skipped = sum(r.skipped is not None for r in rows)
    if skipped:
        extra.append(f"{skipped} skipped")
    return line + (f" ({', '.join(extra)})" if extra else "")


def render(rows: Sequence[Row], *, title: str, out: TextIO = sys.stdout) -> None:
    """Print the table and the summary line."""
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        _render_plain(rows, title, out)
        return
    table = Table()
    for header in HEADERS:
        table.add_column(header, justify="right" if header in ("result", "target") else "left",
                         no_wrap=header != "notes")
    for row in rows:
        if row.skipped is not None:
            style = "dim"
        elif row.passed or (row.target is None and row.error is None):
            style = None
        else:
            style = "red"
        # Notes hold brackets ("pipecat-workers[proxy]") that rich would take for markup.
        table.add_row(*map(escape, cells(row)), style=style)
    # Piped output defaults to 80 columns; the notes column deserves more.
    console = Console(file=out, width=max(Console(file=out).width, 160))
    console.print(title, style="bold")
    console.print(table)
    console.print(summary(rows), style="bold")


def _render_plain(rows: Sequence[Row], title: str, out: TextIO) -> None:
    lines = [HEADERS, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    print(title, file=out)
    for n, line in enumerate(lines):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(),
              file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
    print(summary(rows), file=out)


def write_json(path: Path, rows: Sequence[Row], *, quick: bool) -> None:
    report: dict[str, Any] = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "summary": {"met": sum(r.passed for r in rows), "total": sum(r.judged for r in rows),
                    "skipped": sum(r.skipped is not None for r in rows)},
        "rows": [r.to_json() for r in rows],
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
