"""Membership at scale: idle CPU per runner and newcomer discovery with 10, 50 and 100 runners.

For each size N, on a fresh channel of one Redis server or of one hub (a hub process, as under
``workers up``), N runners run in N/10 processes of 10 runners each (``python -m
benchmarks.membership crowd ...``, below), so interpreter start-up does not dominate; each runner
hosts one idle worker and uses the default :class:`Settings` (1 s interval). This process runs
one more runner, the observer. Then:

1. once every runner knows every worker, a settling pause, then the CPU time of the crowd
   processes over a window (the scheduler's nanoseconds, ``/proc/<pid>/task/*/schedstat``),
   divided by the window and by N: idle CPU per runner, in % of one core;
2. newcomers: one at a time, a crowd process starts a new runner hosting a new worker; every
   crowd process times (``time.monotonic_ns``, comparable across processes) when the last of
   its runners registered it, and the observer when it did. Discovery = the last of those
   minus the moment the newcomer's ``run()`` began;
3. false losses: departures with reason ``lost`` heard by any runner (no runner dies here).

Rows per backend (``redis``, ``hub``): ``membership.<b>.idle_cpu`` (CPU per runner at 100
runners ÷ at 10, target ≤ 2x; the per-runner figures are in the notes), ``.discovery`` (the
slowest newcomer at any size, target ≤ 50 ms) and ``.false_losses`` (target 0). The sweep runs
once per backend and feeds its three rows. ``membership.up_100``: ``workers up -d`` of 100
workers on the embedded bus, as a user would run it; the value is the number of workers not
ready when it returns (target 0), the result cell its wall time.

``--quick`` uses a 3 s window, 1 s of settling and 2 newcomers per size (full: 10 s, 3 s, 5).
No extra dependency: CPU comes from ``/proc`` (Linux only; elsewhere the rows are skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.cli import IDLE_MODULE, throwaway_project
from benchmarks.core import Measurement, Scale, Skip, Target, benchmark
from benchmarks.network import Peer, _fresh, _quiet, make_bus, redis_url
from pipecat_workers import BaseWorker, Settings, WorkerLostData, WorkerReadyData, WorkerRunner

SIZES = (10, 50, 100)
PER_PROCESS = 10
_SWEEPS: dict[str, dict[str, Any]] = {}  # backend -> the sweep its three rows share


# -- the crowd process -----------------------------------------------------------------------


class _Idle(BaseWorker):
    """Registers, and otherwise waits."""


async def crowd(args: argparse.Namespace) -> None:
    """``crowd --backend B --url U --channel C --prefix P --runners K``: K runners, one idle
    worker each; prints ``READY``. Stdin commands: ``count`` (prints ``COUNT <lost> <fewest
    workers any runner knows>``), ``watch NAME`` (prints ``FOUND NAME <ns>`` once every runner
    here has NAME), ``go NAME`` (starts a runner hosting NAME: ``STARTED NAME <ns>``),
    ``stop NAME``. Exits when stdin closes."""
    from benchmarks.peers import say, stdin_lines

    lost = 0
    reports: set[asyncio.Task[None]] = set()

    async def on_departure(data: WorkerLostData) -> None:
        nonlocal lost
        if data.reason == "lost":
            lost += 1
            print(f"lost {data.worker_name} of {data.runner} at {time.monotonic():.3f}",
                  file=sys.stderr, flush=True)

    def new_runner(name: str, worker: str) -> WorkerRunner:
        runner = WorkerRunner(name=name, bus=make_bus(args.backend, args.url, args.channel),
                              handle_sigint=False, settings=Settings())
        runner.registry.add_departure_listener(on_departure)
        return runner

    runners = [new_runner(f"{args.prefix}-r{i}", f"{args.prefix}-w{i}")
               for i in range(args.runners)]
    for i, runner in enumerate(runners):
        await runner.add_workers(_Idle(f"{args.prefix}-w{i}"))
    tasks = [await _start(runner) for runner in runners]
    newcomers: dict[str, tuple[WorkerRunner, asyncio.Task[None]]] = {}
    say("READY")
    lines = stdin_lines()
    while (line := await lines.get()) is not None:
        command, _, name = line.partition(" ")
        if command == "count":
            say("COUNT", lost, min(len(r.registry) for r in runners))
        elif command == "watch":
            report = asyncio.ensure_future(_report_found(name, runners, say))
            reports.add(report)
            report.add_done_callback(reports.discard)
        elif command == "go":
            new = new_runner(f"{name}-runner", name)
            await new.add_workers(_Idle(name))
            say("STARTED", name, time.monotonic_ns())
            newcomers[name] = (new, await _start(new))
        elif command == "stop" and name in newcomers:
            new, task = newcomers.pop(name)
            await new.end()
            await task
            say("STOPPED", name)
    for runner in [*runners, *(r for r, _ in newcomers.values())]:
        await runner.cancel("stdin closed")
    await asyncio.gather(*tasks, *(t for _, t in newcomers.values()), return_exceptions=True)


async def _start(runner: WorkerRunner) -> asyncio.Task[None]:
    """Run ``runner`` in a task; returns once it is ready (raises if it failed to start)."""
    ready = asyncio.Event()

    async def on_ready(_: WorkerRunner) -> None:
        ready.set()

    runner.add_event_handler("on_ready", on_ready)
    task = asyncio.get_running_loop().create_task(runner.run(auto_end=False))
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
        raise RuntimeError(f"runner '{runner.name}' ended before it was ready")
    return task


async def _report_found(name: str, runners: list[WorkerRunner], say: Any) -> None:
    times: list[int] = []

    async def found(_: WorkerReadyData) -> None:
        times.append(time.monotonic_ns())

    for runner in runners:
        await runner.registry.watch(name, found)
    while len(times) < len(runners):
        await asyncio.sleep(0.001)
    say("FOUND", name, max(times))
    for runner in runners:
        runner.registry.unwatch(name, found)


# -- the sweep -----------------------------------------------------------------------------------


async def _spawn(log: Path, *args: str) -> Peer:
    """``python -m benchmarks.membership ARGS``. Not ``benchmarks.peers``: that program
    restores SIGPIPE's default action, and a hub that writes to a socket whose process was
    just killed would die of it."""
    path = os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[1]),
                                         os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.membership", *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=err, env=env, start_new_session=True)
    return Peer(proc, log)


async def _crowd(backend: str, url: str, channel: str, prefix: str, log: Path) -> Peer:
    return await _spawn(log, "crowd", "--backend", backend, "--url", url, "--channel", channel,
                        "--prefix", prefix, "--runners", str(PER_PROCESS))


async def _stop(peer: Peer) -> None:
    """Close its stdin and let it end its runners (they say goodbye); kill it if it lingers."""
    if peer.proc.returncode is None and peer.proc.stdin is not None:
        peer.proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.proc.wait(), 15)
    await peer.stop()


def _cpu(pid: int) -> float:
    """CPU seconds a process has used so far: the scheduler's nanoseconds summed over its
    threads (``/proc/<pid>/task/*/schedstat``), else user + system clock ticks, which are too
    coarse (10 ms) for runners this idle."""
    try:
        return sum(int(Path(task, "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _size(backend: str, url: str, n: int, scale: Scale, logs: Path) -> dict[str, Any]:
    channel = f"pw-bench-{uuid.uuid4().hex[:10]}"
    observer = WorkerRunner(name=f"observer-{uuid.uuid4().hex[:6]}",
                            bus=make_bus(backend, url, channel), handle_sigint=False)
    observed_lost: list[WorkerLostData] = []

    async def on_departure(data: WorkerLostData) -> None:
        if data.reason == "lost":
            observed_lost.append(data)

    observer.registry.add_departure_listener(on_departure)
    observer_task = await _start(observer)
    crowds = [await _crowd(backend, url, channel, f"n{n}p{i}", logs / f"{channel}-{i}.log")
              for i in range(n // PER_PROCESS)]
    try:
        await asyncio.gather(*(c.expect("READY", timeout=120) for c in crowds))
        deadline = time.monotonic() + 60
        while True:  # everyone knows everyone (and the observer, which hosts nothing)
            counts = await _ask_all(crowds, "count", "COUNT")
            if min(int(c[2]) for c in counts) >= n and len(observer.registry) >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} runners did not find each other: {counts}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(scale.budget(3.0, 1.0))
        window = scale.budget(10.0, 3.0)
        before = [_cpu(c.pid) for c in crowds]
        await asyncio.sleep(window)
        cpu = sum(_cpu(c.pid) - b for c, b in zip(crowds, before, strict=True))
        discovery = [await _newcomer(observer, crowds, crowds[k % len(crowds)], f"new-{n}-{k}")
                     for k in range(scale.pick(5, 2))]
        counts = await _ask_all(crowds, "count", "COUNT")
        lost = sum(int(c[1]) for c in counts) + len(observed_lost)
    finally:
        await asyncio.gather(*(_stop(c) for c in crowds), return_exceptions=True)
        await observer.cancel("done")
        await asyncio.gather(observer_task, return_exceptions=True)
    return {"runners": n, "processes": len(crowds), "window_s": window,
            "cpu_per_runner_pct": 100 * cpu / window / n,
            "discovery_ms": max(d["all_ms"] for d in discovery),
            "observer_ms": max(d["observer_ms"] for d in discovery),
            "newcomers": discovery, "false_losses": lost}


async def _ask_all(crowds: list[Peer], line: str, answer: str) -> list[list[str]]:
    for crowd in crowds:
        await crowd.send(line)
    return list(await asyncio.gather(*(c.expect(answer) for c in crowds)))


async def _newcomer(observer: WorkerRunner, crowds: list[Peer], host: Peer, name: str
                    ) -> dict[str, float]:
    seen: list[int] = []

    async def found(_: WorkerReadyData) -> None:
        seen.append(time.monotonic_ns())

    await observer.registry.watch(name, found)
    for crowd in crowds:
        await crowd.send(f"watch {name}")
    await asyncio.sleep(0.05)  # the watches are in place
    await host.send(f"go {name}")
    started = int((await host.expect("STARTED"))[2])
    founds = await asyncio.gather(*(c.expect("FOUND", timeout=10) for c in crowds))
    while not seen:
        await asyncio.sleep(0.001)
    observer.registry.unwatch(name, found)
    await host.send(f"stop {name}")
    await host.expect("STOPPED")
    last = max(int(f[2]) for f in founds)
    return {"all_ms": (max(last, seen[0]) - started) / 1e6,
            "observer_ms": (seen[0] - started) / 1e6}


async def _sweep(backend: str, url: str, scale: Scale) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="pw-bench-"))
    try:
        with _quiet("pipecat_workers.membership"):
            return {str(n): await _size(backend, url, n, scale, logs) for n in SIZES}
    finally:
        shutil.rmtree(logs, ignore_errors=True)


async def _hub_sweep(scale: Scale) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="pw-bench-"))
    path = str(directory / "hub.sock")
    hub = await _spawn(directory / "hub.log", "hub", "--path", path)
    try:
        await hub.expect("READY")
        return await _sweep("hub", path, scale)
    finally:
        await _stop(hub)
        shutil.rmtree(directory, ignore_errors=True)


def sweep(backend: str, scale: Scale) -> dict[str, Any]:
    """The sweep of ``backend``, run once for its three rows."""
    if not Path("/proc/self/stat").exists():
        raise Skip("needs /proc (Linux) to measure CPU time")
    if backend not in _SWEEPS:
        if backend == "redis":
            url = redis_url()
            _SWEEPS[backend] = _fresh(_sweep("redis", url, scale))
        else:
            _SWEEPS[backend] = _fresh(_hub_sweep(scale))
    return _SWEEPS[backend]


# -- rows ------------------------------------------------------------------------------------------


def _cpu_row(backend: str, scale: Scale) -> Measurement:
    result = sweep(backend, scale)
    per = {n: result[str(n)]["cpu_per_runner_pct"] for n in SIZES}
    ratio = per[SIZES[-1]] / per[SIZES[0]] if per[SIZES[0]] else float("inf")
    notes = "per runner: " + ", ".join(f"{n}: {per[n]:.3f} %" for n in SIZES)
    return Measurement(ratio, notes=notes, details=result,
                       display=f"{ratio:.2f}× ({per[SIZES[0]]:.3f} % → "
                               f"{per[SIZES[-1]]:.3f} %)")


def _discovery_row(backend: str, scale: Scale) -> Measurement:
    result = sweep(backend, scale)
    worst = max(result[str(n)]["discovery_ms"] for n in SIZES)
    notes = "slowest, by size: " + ", ".join(
        f"{n}: {result[str(n)]['discovery_ms']:.1f}" for n in SIZES) + " ms"
    return Measurement(worst, notes=notes, details=result)


def _losses_row(backend: str, scale: Scale) -> Measurement:
    result = sweep(backend, scale)
    lost = sum(result[str(n)]["false_losses"] for n in SIZES)
    return Measurement(lost, notes=f"over {', '.join(map(str, SIZES))} runners",
                       details=result, display=str(lost))


for _backend, _name in (("redis", "one Redis channel"), ("hub", "the hub")):
    benchmark(f"membership.{_backend}.idle_cpu", group="membership",
              workload=f"idle CPU per runner, 100 runners vs 10, {_name}", unit="×",
              target=Target("<=", 2.0))(lambda scale, b=_backend: _cpu_row(b, scale))
    benchmark(f"membership.{_backend}.discovery", group="membership",
              workload=f"newcomer found by every runner, 10-100 runners, {_name}", unit="ms",
              target=Target("<=", 50))(lambda scale, b=_backend: _discovery_row(b, scale))
    benchmark(f"membership.{_backend}.false_losses", group="membership",
              workload=f"false losses, 10-100 idle runners, {_name}", unit="",
              target=Target("<=", 0))(lambda scale, b=_backend: _losses_row(b, scale))


@benchmark("membership.up_100", group="membership", workload="`workers up -d` of 100 workers "
           "(embedded bus): workers not ready", unit="", target=Target("<=", 0))
def up_100(scale: Scale) -> Measurement:
    topology = "name: big100\nworkers:\n" + "".join(
        f"  w{i}: {{class: 'idle:Idle'}}\n" for i in range(100))
    with throwaway_project({"idle.py": IDLE_MODULE, "workers.yaml": topology}) as project:
        start = time.perf_counter()
        up = subprocess.run([sys.executable, "-m", "pipecat_workers_cli", "up", "-d",
                             "workers.yaml"],
                            cwd=project, timeout=300, capture_output=True, text=True)
        took = time.perf_counter() - start
        ps = subprocess.run([sys.executable, "-m", "pipecat_workers_cli", "ps", "--json"],
                            cwd=project,
                            timeout=60, capture_output=True, text=True)
    workers = json.loads(ps.stdout)["workers"] if ps.returncode == 0 else []
    ready = sum(w.get("registered") is True for w in workers)
    failed = [line for line in up.stdout.splitlines() if ": ready" not in line]
    return Measurement(100 - ready, display=f"{100 - ready} ({took:.1f} s)",
                       notes=f"exit {up.returncode}, {ready} registered",
                       details={"exit": up.returncode, "seconds": took, "other_lines": failed,
                                "stderr": up.stderr[-2000:]}, valid=up.returncode == 0)


# -- the crowd process's entry point ---------------------------------------------------------------


async def hub(args: argparse.Namespace) -> None:
    """``hub --path PATH``: a :class:`BusHub` until stdin closes."""
    from benchmarks.peers import _until_eof, say, stdin_lines
    from pipecat_workers.bus import BusHub

    async with BusHub(args.path):
        say("READY")
        await _until_eof(stdin_lines())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.membership")
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("crowd")
    p.add_argument("--backend", choices=["hub", "redis", "pgmq"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--runners", type=int, default=PER_PROCESS)
    h = modes.add_parser("hub")
    h.add_argument("--path", required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(crowd(args) if args.mode == "crowd" else hub(args))


if __name__ == "__main__":
    main()
    sys.exit(0)
