"""The benchmark registry: what a benchmark is, how it is run, and the row it produces.

A benchmark is a plain function registered with :func:`benchmark`. It receives a
:class:`Scale` (full or quick iteration counts) and returns a :class:`Measurement`; the
registration carries what the row needs besides the number (workload text, unit, target), so
a benchmark that crashes still shows up in the table with its target.

New backends add a module that registers its own benchmarks under another group (for example
``"redis"``) and list that module in ``benchmarks.__main__.SUITES``.

A benchmark that cannot run here (its server is unreachable, say) raises :class:`Skip`: its
row says "skipped" with the reason, which is neither a crash nor a missed target. A benchmark
registered with ``target=None`` is a reference row (a floor other rows are compared with): it
shows its number and counts neither as met nor as missed.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Target:
    """A performance target from spec §4: ``value <= limit`` or ``value >= limit``."""

    op: Literal["<=", ">="]
    limit: float

    def met(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit

    @property
    def symbol(self) -> str:
        return "≤" if self.op == "<=" else "≥"


class Skip(Exception):
    """Raised by a benchmark that cannot run here; the message is the row's note."""


@dataclass(frozen=True, slots=True)
class Scale:
    """How hard to push: the full run, or a quick smoke run."""

    quick: bool = False

    def pick(self, full: int, quick: int) -> int:
        """The full-run count, or the quick one."""
        return quick if self.quick else full

    def budget(self, full: float, quick: float) -> float:
        """A time budget in seconds after which a loop stops early (keeps runs bounded)."""
        return quick if self.quick else full


@dataclass(slots=True)
class Measurement:
    """What a benchmark function returns.

    Attributes:
        value: The number compared with the target, in the benchmark's unit.
        notes: One short line for the table (p99, counts, splits).
        details: Anything else worth keeping in the JSON report.
        valid: False if the run was wrong even though it produced a number (e.g. lost
            chunks); such a row never meets its target.
        display: The result cell, when the value alone says too little (e.g.
            ``"412 µs (1.31x floor)"`` for a ratio); default: the value and its unit.
    """

    value: float
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    valid: bool = True
    display: str = ""


BenchmarkFn = Callable[[Scale], Measurement]


@dataclass(frozen=True, slots=True)
class Benchmark:
    """A registered benchmark."""

    key: str
    group: str
    workload: str
    unit: str
    target: Target | None
    fn: BenchmarkFn


@dataclass(slots=True)
class Row:
    """One line of the report."""

    key: str
    group: str
    workload: str
    unit: str
    target: Target | None
    value: float | None
    notes: str
    details: dict[str, Any]
    valid: bool
    seconds: float
    error: str | None = None
    skipped: str | None = None
    display: str = ""

    @property
    def passed(self) -> bool:
        return self.error is None and self.skipped is None and self.valid \
            and self.value is not None and self.target is not None \
            and self.target.met(self.value)

    @property
    def judged(self) -> bool:
        """Whether the row counts towards "N/M targets met": it has a target and ran."""
        return self.target is not None and self.skipped is None

    def to_json(self) -> dict[str, Any]:
        target = None if self.target is None else {"op": self.target.op,
                                                   "limit": self.target.limit}
        return {
            "key": self.key, "group": self.group, "workload": self.workload,
            "value": self.value, "unit": self.unit, "target": target,
            "passed": self.passed, "valid": self.valid, "notes": self.notes,
            "display": self.display, "details": self.details,
            "seconds": round(self.seconds, 3), "error": self.error, "skipped": self.skipped,
        }


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    key: str, *, group: str, workload: str, unit: str, target: Target | None
) -> Callable[[BenchmarkFn], BenchmarkFn]:
    """Register a benchmark function under ``key`` (unique, e.g. ``"local.round_trip"``);
    ``target=None`` makes a reference row."""

    def register(fn: BenchmarkFn) -> BenchmarkFn:
        if key in BENCHMARKS:
            raise ValueError(f"benchmark '{key}' is registered twice")
        BENCHMARKS[key] = Benchmark(key, group, workload, unit, target, fn)
        return fn

    return register


def select(patterns: Sequence[str] = ()) -> list[Benchmark]:
    """Registered benchmarks, in registration order, whose key contains any of ``patterns``."""
    return [b for b in BENCHMARKS.values() if not patterns or any(p in b.key for p in patterns)]


def run(bench: Benchmark, scale: Scale) -> Row:
    """Run one benchmark after a full collection; an exception becomes an error row, and
    :class:`Skip` a skipped one."""
    gc.collect()
    started = time.perf_counter()
    value: float | None = None
    notes, details, valid, error, skipped, display = "", {}, True, None, None, ""
    try:
        result = bench.fn(scale)
        value, notes, details, valid = result.value, result.notes, result.details, result.valid
        display = result.display
    except Skip as exc:
        skipped = str(exc) or "skipped"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        details = {"traceback": traceback.format_exc()}
    return Row(bench.key, bench.group, bench.workload, bench.unit, bench.target, value, notes,
               details, valid, time.perf_counter() - started, error, skipped, display)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of already sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
