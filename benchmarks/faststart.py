"""Benchmarks of the process template: workers forked from a warm process against spawned ones.

Every row runs the real ``workers`` program on a throw-away project twice in one run, with
the template (the default) and with ``--no-fork`` (a fresh interpreter per worker), and
reports both: the machines are noisy, so only ratios within one run mean much.

- ``up_10``: ``workers up -d`` until ten idle workers are registered (its wall time).
- ``reload_8``: eight workers of one module under ``--reload``; from saving the module until
  all eight are registered again with new processes, then each is asked which version of the
  module it runs.
- ``up_100``: a hundred workers, and each one's private memory (USS, from
  ``/proc/PID/smaps_rollup``) once they are all ready.
- ``pipecat_10`` and ``pipecat_reload``: the same with workers whose module imports
  ``pipecat.services.openai.llm`` (about a second and 80 MB per interpreter).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.cli import run_cli, throwaway_project
from benchmarks.core import Measurement, Scale, Skip, Target, benchmark

FORK, SPAWN = "fork", "spawn"
MODES: dict[str, tuple[str, ...]] = {FORK: (), SPAWN: ("--no-fork",)}
_POLL = 0.002
_TIMEOUT = 120.0

VERSIONED_MODULE = '''
from pipecat_workers import BaseWorker, job

VERSION = 0


class Idle(BaseWorker):
    """Registers, and says which version of this file it runs."""

    @job("version")
    async def version(self, message):
        return {"version": VERSION}
'''

# What an LLM agent imports: about a second in a new interpreter.
PIPECAT_MODULE = "import pipecat.services.openai.llm\n" + VERSIONED_MODULE


def _topology(name: str, classes: list[str]) -> str:
    workers = "".join(f"  w{i}: {{class: '{c}', env: {{LOG_LEVEL: WARNING}}}}\n"
                      for i, c in enumerate(classes))
    return f"name: {name}\nworkers:\n{workers}"


@contextmanager
def _project(name: str, modules: dict[str, str], classes: list[str]) -> Iterator[Path]:
    """A project of ``modules`` (file name -> text) whose worker ``wI`` is ``classes[I]``."""
    files = {**modules, "workers.yaml": _topology(name, classes)}
    with throwaway_project(files, prefix=f"pw-bench-{name}-") as project:
        yield project


def _idle_project(name: str, n: int) -> AbstractContextManager[Path]:
    return _project(name, {"agents.py": VERSIONED_MODULE}, ["agents:Idle"] * n)


def _state(project: Path) -> dict[str, Any]:
    state_files = list((project / ".workers").glob("*/state.json"))
    try:
        data: dict[str, Any] = json.loads(state_files[0].read_text())
    except (IndexError, OSError, ValueError):
        return {}
    return data


def _workers(project: Path) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in _state(project).get("workers", [])}


def _up(project: Path, mode: str, *extra: str) -> float:
    """``workers up -d`` in ``mode``; its wall time."""
    return run_cli(project, "up", "-d", *MODES[mode], *extra, "workers.yaml",
                   timeout=_TIMEOUT)


def _alternating(runs: int, one: Callable[[str], float]) -> dict[str, list[float]]:
    """``one(mode)`` ``runs`` times per mode, the modes taking turns (so that a slower
    stretch of the machine hits both)."""
    times: dict[str, list[float]] = {FORK: [], SPAWN: []}
    for _ in range(runs):
        for mode in (FORK, SPAWN):
            times[mode].append(one(mode))
    return times


def _up_times(project: Path, runs: int) -> dict[str, list[float]]:
    """``up -d`` then ``down``, ``runs`` times per mode, after a warm-up (bytecode caches,
    page cache); the times of ``up -d``."""
    _up(project, FORK)
    run_cli(project, "down")

    def one(mode: str) -> float:
        took = _up(project, mode)
        run_cli(project, "down")
        return took

    return _alternating(runs, one)


def _compared(times: dict[str, list[float]], unit: str = "s") -> tuple[float, float, str]:
    """(forked median, how many times faster than spawned, a note)."""
    fork, spawn = statistics.median(times[FORK]), statistics.median(times[SPAWN])
    scale = 1000.0 if unit == "ms" else 1.0
    note = (f"forked {fork * scale:.{0 if unit == 'ms' else 2}f} {unit}, spawned "
            f"{spawn * scale:.{0 if unit == 'ms' else 2}f} {unit}: {spawn / fork:.1f}× faster "
            f"(medians of {len(times[FORK])})")
    return fork, spawn / fork, note


# -- up -d -----------------------------------------------------------------------------------


_UP_10: dict[bool, dict[str, list[float]]] = {}


def _up_10_times(scale: Scale) -> dict[str, list[float]]:
    """Measured once for both rows (per scale)."""
    if scale.quick not in _UP_10:
        with _idle_project("bench-up10", 10) as project:
            _UP_10[scale.quick] = _up_times(project, scale.pick(5, 2))
    return _UP_10[scale.quick]


@benchmark("faststart.up_10", group="faststart", workload="`workers up -d` until 10 workers "
           "are ready, forked from the template", unit="s", target=Target("<=", 0.4))
def up_10(scale: Scale) -> Measurement:
    times = _up_10_times(scale)
    fork, _, note = _compared(times)
    return Measurement(fork, notes=note + _bytecode_note(), details=times)


@benchmark("faststart.up_10_speedup", group="faststart", workload="`workers up -d`, 10 "
           "workers: spawned time / forked time", unit="×", target=Target(">=", 3.0))
def up_10_speedup(scale: Scale) -> Measurement:
    times = _up_10_times(scale)
    _, ratio, note = _compared(times)
    return Measurement(ratio, notes=note, display=f"{ratio:.2f}×", details=times)


def _bytecode_note() -> str:
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "; PYTHONDONTWRITEBYTECODE is set: every interpreter compiles the project"
    return ""


# -- reload ----------------------------------------------------------------------------------


def _save_and_wait(project: Path, file: str, names: list[str], version: int) -> float:
    """Write version ``version`` of the module ``file``; seconds until every worker in
    ``names`` is ready again in a new process."""
    before = _workers(project)
    old = {n: before[n]["pid"] for n in names}
    module = project / file
    text = module.read_text()
    head, _, tail = text.partition("VERSION = ")
    new_text = head + f"VERSION = {version}" + tail[tail.index("\n"):]
    saved = time.perf_counter()
    module.write_text(new_text)
    deadline = saved + 30.0
    while True:
        workers = _workers(project)
        if all(workers.get(n, {}).get("state") == "ready"
               and workers[n].get("pid") not in (None, old[n]) for n in names):
            return time.perf_counter() - saved
        if time.perf_counter() > deadline:
            raise RuntimeError(f"not all of {names} restarted within 30 s: "
                               f"{ {n: workers.get(n) for n in names} }")
        time.sleep(_POLL)


def _answers(project: Path, names: list[str], version: int) -> int:
    """How many of ``names`` answer that they run ``version``."""
    right = 0
    for name in names:
        out = subprocess.run([sys.executable, "-m", "pipecat_workers_cli", "call", name,
                              "--job", "version", "--json"], cwd=project, capture_output=True,
                             text=True, timeout=60)
        events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        answers = [e.get("data") for e in events if e.get("event") == "response"]
        right += out.returncode == 0 and answers == [{"version": version}]
    return right


def _reload_rows(project: Path, file: str, names: list[str], runs: int
                 ) -> tuple[dict[str, list[float]], int, int]:
    """Reload times per mode (the modes taking turns), and how many answers were right."""
    times: dict[str, list[float]] = {FORK: [], SPAWN: []}
    version, right, asked = 0, 0, 0
    for _ in range(runs):
        for mode in (FORK, SPAWN):
            _up(project, mode, "--reload")
            version += 1
            _save_and_wait(project, file, names, version)  # warm-up save: not counted
            time.sleep(0.3)  # past the debounce: a save of its own
            version += 1
            times[mode].append(_save_and_wait(project, file, names, version))
            right += _answers(project, names[:2], version)
            asked += len(names[:2])
            run_cli(project, "down")
    return times, right, asked


@benchmark("faststart.reload_8", group="faststart", workload="`up -d --reload`, 8 workers of "
           "one module: save it until all 8 run the new code", unit="s",
           target=Target("<=", 0.4))
def reload_8(scale: Scale) -> Measurement:
    names = [f"w{i}" for i in range(8)]
    with _idle_project("bench-reload8", 8) as project:
        times, right, asked = _reload_rows(project, "agents.py", names, scale.pick(3, 1))
    fork, _, note = _compared(times)
    return Measurement(fork, notes=f"{note}; {right}/{asked} answered with the new version",
                       valid=right == asked, details={**times, "right": right})


# -- 100 workers -----------------------------------------------------------------------------


def uss_kib(pid: int) -> int | None:
    """A process's private memory (Private_Clean + Private_Dirty), in KiB."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Private_Clean", "Private_Dirty"):
            total += int(value.split()[0])
    return total


_UP_100: dict[bool, dict[str, Any]] = {}


def _up_100(scale: Scale) -> dict[str, Any]:
    if scale.quick in _UP_100:
        return _UP_100[scale.quick]
    if not Path("/proc/self/smaps_rollup").exists():
        raise Skip("needs /proc/PID/smaps_rollup (Linux 4.14 or later)")
    result: dict[str, Any] = {}
    with _idle_project("bench-up100", 100) as project:
        for mode in (FORK, SPAWN):
            took = _up(project, mode)
            workers = _workers(project).values()
            ready = sum(w.get("state") == "ready" for w in workers)
            uss = [u for w in workers if w.get("pid") and (u := uss_kib(w["pid"])) is not None]
            result[mode] = {"seconds": took, "ready": ready,
                            "uss_kib_median": statistics.median(uss) if uss else None,
                            "uss_samples": len(uss)}
            run_cli(project, "down", timeout=_TIMEOUT)
    _UP_100[scale.quick] = result
    return result


@benchmark("faststart.up_100", group="faststart", workload="`workers up -d` until 100 workers "
           "are ready (embedded bus), forked", unit="s", target=Target("<=", 5.0))
def up_100(scale: Scale) -> Measurement:
    result = _up_100(scale)
    fork, spawn = result[FORK], result[SPAWN]
    return Measurement(fork["seconds"], valid=fork["ready"] == 100, details=result,
                       notes=f"{fork['ready']} ready; spawned: {spawn['seconds']:.2f} s, "
                             f"{spawn['ready']} ready")


@benchmark("faststart.up_100_uss", group="faststart", workload="private memory (USS) per "
           "worker, 100 workers: forked / spawned", unit="×", target=Target("<=", 0.5))
def up_100_uss(scale: Scale) -> Measurement:
    result = _up_100(scale)
    fork, spawn = result[FORK]["uss_kib_median"], result[SPAWN]["uss_kib_median"]
    if not fork or not spawn:
        raise RuntimeError(f"no memory figures: {result}")
    ratio = fork / spawn
    return Measurement(ratio, display=f"{ratio:.2f}×", details=result,
                       notes=f"median USS forked {fork / 1024:.1f} MiB, spawned "
                             f"{spawn / 1024:.1f} MiB")


# -- pipecat ---------------------------------------------------------------------------------


def _needs_pipecat() -> None:
    try:
        import pipecat  # noqa: F401
    except ImportError:
        raise Skip("pipecat-ai is not installed (pip install 'pipecat-workers[pipecat]')")\
            from None


_PIPECAT: dict[bool, dict[str, Any]] = {}


def _pipecat(scale: Scale) -> dict[str, Any]:
    if scale.quick in _PIPECAT:
        return _PIPECAT[scale.quick]
    _needs_pipecat()
    modules = {"agents.py": PIPECAT_MODULE, "solo.py": PIPECAT_MODULE}
    classes = ["solo:Idle"] + ["agents:Idle"] * 9  # w0's module is its own: reloaded alone
    with _project("bench-pipecat", modules, classes) as project:
        up = _up_times(project, scale.pick(2, 1))
        reload, right, asked = _reload_rows(project, "solo.py", ["w0"], scale.pick(2, 1))
    _PIPECAT[scale.quick] = {"up": up, "reload": reload, "right": right, "asked": asked}
    return _PIPECAT[scale.quick]


@benchmark("faststart.pipecat_10", group="faststart", workload="`workers up -d` until 10 "
           "workers importing pipecat's OpenAI service are ready, forked", unit="s",
           target=Target("<=", 1.0))
def pipecat_10(scale: Scale) -> Measurement:
    result = _pipecat(scale)
    fork, _, note = _compared(result["up"])
    return Measurement(fork, notes=note, details=result["up"])


@benchmark("faststart.pipecat_reload", group="faststart", workload="`up -d --reload`, 10 "
           "pipecat workers: save one's module until it runs the new code", unit="s",
           target=Target("<=", 0.3))
def pipecat_reload(scale: Scale) -> Measurement:
    result = _pipecat(scale)
    fork, _, note = _compared(result["reload"])
    return Measurement(fork, notes=f"{note}; {result['right']}/{result['asked']} answered "
                       "with the new version", valid=result["right"] == result["asked"],
                       details=result["reload"])
