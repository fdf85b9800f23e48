"""``python -m benchmarks.compare REF [--only KEY ...] [--rounds N] [--quick]``.

Measures the same benchmarks on this working tree and on git revision ``REF``, alternating
(this, REF, this, REF...) so that the machine's drift hits both alike, and prints each row's
median and the ratio of medians. For "this change costs nothing measurable" claims: a ratio
within a few percent, with per-round ratios on both sides of 1, is noise.

``REF`` is checked out into a temporary detached worktree (removed at the end); each run is a
fresh ``python -m benchmarks --json`` process started in one tree, so it imports that tree's
``pipecat_workers`` and ``benchmarks``. The benchmarks named must exist in both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tree: Path, only: list[str], quick: bool) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "benchmarks", "--json", out.name, "--only", *only]
        if quick:
            command.append("--quick")
        probe = subprocess.run(
            [sys.executable, "-c", "import pipecat_workers; print(pipecat_workers.__file__)"],
            cwd=tree, capture_output=True, text=True, check=True)
        if not Path(probe.stdout.strip()).is_relative_to(tree):
            raise SystemExit(f"{tree} does not import its own pipecat_workers "
                             f"({probe.stdout.strip()})")
        subprocess.run(command, cwd=tree, check=True, stdout=subprocess.DEVNULL)
        report = json.loads(Path(out.name).read_text())
    return {row["key"]: row["value"] for row in report["rows"] if row["value"] is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("ref", help="git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--only", nargs="+", default=["local.round_trip"], metavar="KEY")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ref-") as directory:
        other = Path(directory) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                        str(other), args.ref], check=True)
        try:
            here: dict[str, list[float]] = {}
            there: dict[str, list[float]] = {}
            for round_ in range(args.rounds):
                for tree, into in ((ROOT, here), (other, there)):
                    for key, value in _run(tree, args.only, args.quick).items():
                        into.setdefault(key, []).append(value)
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(other)], check=False)
    print(f"{'benchmark':28} {'this tree':>12} {args.ref[:12]:>12} {'ratio':>7}  per round")
    for key in sorted(here.keys() & there.keys()):
        a, b = statistics.median(here[key]), statistics.median(there[key])
        rounds = " ".join(f"{x / y:.3f}" for x, y in zip(here[key], there[key], strict=False))
        print(f"{key:28} {a:12.2f} {b:12.2f} {a / b:7.3f}  {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
