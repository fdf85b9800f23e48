"""``python -m benchmarks [--quick] [--json PATH] [--only KEY ...] [--list]``.

Runs the registered benchmarks one after another and prints a table. The exit status is 0
even when targets are missed (this is a report); it is 1 only if a benchmark crashed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from benchmarks.core import Scale, run, select
from benchmarks.table import fmt_target, render, write_json

# Modules that register benchmarks; a new backend adds its module here.
SUITES = ("benchmarks.local", "benchmarks.network", "benchmarks.hub", "benchmarks.cli",
          "benchmarks.reload", "benchmarks.pipeline", "benchmarks.pipeline_audio",
          "benchmarks.pipeline_handoff", "benchmarks.membership",
          "benchmarks.faststart", "benchmarks.proxy", "benchmarks.tracing",
          "benchmarks.dashboard")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="small iteration counts: a smoke run of about 10 s")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument("--only", nargs="+", default=(), metavar="KEY",
                        help="run only benchmarks whose key contains one of these strings")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for module in SUITES:
        importlib.import_module(module)
    benches = select(args.only)
    if args.list:
        for b in benches:
            print(f"{b.key:24} {b.workload} ({fmt_target(b.target, b.unit)})")
        return 0
    if not benches:
        print(f"no benchmark matches {' '.join(args.only)}", file=sys.stderr)
        return 2
    scale = Scale(quick=args.quick)
    rows = []
    for bench in benches:
        print(f"running {bench.key} ...", end=" ", file=sys.stderr, flush=True)
        row = run(bench, scale)
        outcome = f" ({row.error})" if row.error else " (skipped)" if row.skipped else ""
        print(f"{row.seconds:.1f} s{outcome}", file=sys.stderr, flush=True)
        rows.append(row)
    title = "pipecat-workers benchmarks" + (" (quick: small counts, not comparable)"
                                            if args.quick else "")
    render(rows, title=title)
    if args.json:
        write_json(args.json, rows, quick=args.quick)
        print(f"results written to {args.json}", file=sys.stderr)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
