"""Benchmark of hot reload: from saving a worker's module to that worker being ready again.

A throw-away project of four idle workers, one module each, runs under
``workers up -d --reload``. Each run appends a comment to ``w0.py`` and polls the project's
state file (``.workers/<project>/state.json``, rewritten by the supervisor as soon as a worker
changes state) every 5 ms until ``w0`` is ready again with a new pid; the other three must keep
their pids. The worker's log (the supervisor's timestamped notes ``reloading: ...``,
``exited ...``, ``started, pid N``, ``ready``) splits each run into: the watcher noticing the
save (debounce included), stopping the old process, spawning the new one, and the new
process importing and registering on the bus.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.cli import IDLE_MODULE, run_cli, throwaway_project
from benchmarks.core import Measurement, Scale, Target, benchmark

WORKERS = 4
PROJECT = "bench-reload"
_POLL = 0.005
_RUN_TIMEOUT = 10.0

def _topology(n: int) -> str:
    workers = "\n".join(f"  w{i}: {{class: 'w{i}:Idle', env: {{LOG_LEVEL: WARNING}}}}"
                        for i in range(n))
    return f"name: {PROJECT}\nworkers:\n{workers}\n"


@contextmanager
def _project(n: int) -> Iterator[Path]:
    files = {f"w{i}.py": IDLE_MODULE for i in range(n)}
    with throwaway_project({**files, "workers.yaml": _topology(n)},
                           prefix="pw-bench-reload-") as project:
        run_cli(project, "up", "-d", "--reload", "workers.yaml")
        yield project


def _workers(state_file: Path) -> dict[str, dict[str, Any]]:
    """The workers in the state file (empty while it is being replaced or unreadable)."""
    try:
        data = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return {}
    return {w["name"]: w for w in data.get("workers", [])}


def _wait_ready(state_file: Path, name: str, old_pid: int | None) -> tuple[float, int]:
    """Poll until ``name`` is ready with a pid other than ``old_pid``; (when, pid)."""
    deadline = time.perf_counter() + _RUN_TIMEOUT
    while True:
        worker = _workers(state_file).get(name)
        now = time.perf_counter()
        if worker and worker["state"] == "ready" and worker["pid"] not in (None, old_pid):
            return now, int(worker["pid"])
        if now > deadline:
            raise RuntimeError(f"{name} not ready again within {_RUN_TIMEOUT:g} s "
                               f"(last: {worker})")
        time.sleep(_POLL)


def _notes(log: Path, after: float) -> dict[str, float]:
    """Epoch times of the supervisor's notes about one reload, from the worker's log."""
    found: dict[str, float] = {}
    for line in log.read_text().splitlines():
        stamp, _, rest = line.partition(" ")
        stream, _, text = rest.partition(" ")
        if stream != "sup":
            continue
        when = datetime.fromisoformat(stamp).timestamp()
        if when < after - 0.001:
            continue
        for key, prefix in (("reloading", "reloading: "), ("exited", "exited "),
                            ("started", "started, pid "), ("ready", "ready")):
            if text.startswith(prefix) and key not in found:
                found[key] = when
    return found


def _one_reload(project: Path, run: int) -> dict[str, float]:
    """Save ``w0.py`` once; the seconds from the save to ready, and its parts."""
    state_file = project / ".workers" / PROJECT / "state.json"
    before = _workers(state_file)
    old_pid = before["w0"]["pid"]
    module = project / "w0.py"
    text = module.read_text() + f"# edit {run}\n"
    saved_wall = time.time()
    with module.open("w") as file:
        file.write(text)
    saved = time.perf_counter()
    ready, _ = _wait_ready(state_file, "w0", old_pid)
    result = {"total": ready - saved}
    after = _workers(state_file)
    others = [f"w{i}" for i in range(1, WORKERS)]
    result["others_restarted"] = float(sum(
        after[w]["pid"] != before[w]["pid"] for w in others))
    notes = _notes(project / ".workers" / PROJECT / "logs" / "w0.log", saved_wall)
    if len(notes) == 4:
        result["watch"] = notes["reloading"] - saved_wall
        result["stop"] = notes["exited"] - notes["reloading"]
        result["spawn"] = notes["started"] - notes["exited"]
        result["boot"] = notes["ready"] - notes["started"]
    return result


@benchmark("reload.save_to_ready", group="reload",
           workload=f"`up -d --reload`, {WORKERS} workers: save one worker's module until it "
           "is ready again", unit="s", target=Target("<=", 1.0))
def save_to_ready(scale: Scale) -> Measurement:
    runs = scale.pick(10, 3)
    results: list[dict[str, float]] = []
    with _project(WORKERS) as project:
        _one_reload(project, 0)  # warm-up: not counted
        for run in range(1, runs + 1):
            time.sleep(0.2)  # past the debounce: every save is a batch of its own
            results.append(_one_reload(project, run))
    totals = [r["total"] for r in results]
    parts = {key: [r[key] for r in results if key in r]
             for key in ("watch", "stop", "spawn", "boot")}
    split = {key: statistics.median(values) for key, values in parts.items() if values}
    others = int(sum(r["others_restarted"] for r in results))
    median = statistics.median(totals)
    notes = f"median of {runs}, max {max(totals):.2f} s"
    if split:
        notes += "; median " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in split.items())
    if others:
        notes += f"; {others} other worker restarts (should be 0)"
    return Measurement(median, notes=notes, valid=others == 0,
                       details={"runs_s": totals, "max_s": max(totals),
                                "split_median_s": split,
                                "split_s": parts,
                                "other_workers_restarted": others})
