"""Benchmarks of the ``workers`` command: starting a project, and asking about it.

Each run writes a throw-away project (ten idle workers on the embedded bus) into a temporary
directory and drives the real program, as a user would: ``workers up -d`` returns once every
worker is registered on the bus, so its wall time is the time to a ready system.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from benchmarks.core import Measurement, Scale, Target, benchmark

WORKERS = 10

IDLE_MODULE = '''
from pipecat_workers import BaseWorker, job


class Idle(BaseWorker):
    """Registers, answers pings, and otherwise waits."""

    @job("ping")
    async def ping(self, message):
        return {"pong": True}
'''


def _topology(n: int) -> str:
    workers = "\n".join(f"  w{i}: {{class: 'idle:Idle'}}" for i in range(n))
    return f"name: bench\nworkers:\n{workers}\n"


def run_cli(project: Path, *args: str, timeout: float = 60.0) -> float:
    """Run ``workers ARGS`` in the project; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipecat_workers_cli", *args], cwd=project, check=True,
                   timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


@contextmanager
def throwaway_project(files: dict[str, str], *, prefix: str = "pw-bench-"
                      ) -> Iterator[Path]:
    """A temporary project holding ``files`` (name -> text); brought down at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        project = Path(tmp)
        for name, text in files.items():
            (project / name).write_text(textwrap.dedent(text))
        try:
            yield project
        finally:
            subprocess.run([sys.executable, "-m", "pipecat_workers_cli", "down"], cwd=project,
                           timeout=60, capture_output=True)


def _project(n: int) -> AbstractContextManager[Path]:
    return throwaway_project({"idle.py": IDLE_MODULE, "workers.yaml": _topology(n)})


def _python_startup() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


@benchmark("cli.up_ready", group="cli", workload=f"`workers up -d` until {WORKERS} workers "
           "are ready (embedded bus)", unit="s", target=Target("<=", 1.5))
def up_ready(scale: Scale) -> Measurement:
    runs = scale.pick(5, 2)
    times: list[float] = []
    with _project(WORKERS) as project:
        for _ in range(runs):
            times.append(run_cli(project, "up", "-d", "workers.yaml"))
            run_cli(project, "down")
    return Measurement(statistics.median(times),
                       notes=f"median of {runs}, best {min(times):.2f} s",
                       details={"runs": times})


@benchmark("cli.ps_latency", group="cli", workload=f"`workers ps --json`, {WORKERS} workers "
           "running", unit="ms", target=None)
def ps_latency(scale: Scale) -> Measurement:
    runs = scale.pick(20, 5)
    floor = statistics.median(_python_startup() for _ in range(runs)) * 1000
    with _project(WORKERS) as project:
        run_cli(project, "up", "-d", "workers.yaml")
        times = [run_cli(project, "ps", "--json") * 1000 for _ in range(runs)]
        table = [run_cli(project, "ps") * 1000 for _ in range(runs)]
    p50 = statistics.median(times)
    return Measurement(p50, notes=f"table {statistics.median(table):.0f} ms; bare "
                       f"python startup {floor:.0f} ms", display=f"{p50:.0f} ms",
                       details={"json_ms": times, "table_ms": table,
                                "python_startup_ms": floor})
