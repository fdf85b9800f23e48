"""Benchmark of the live dashboard under load: 100 workers and 1,000 jobs a second.

A child process plays the supervisor: it serves the dashboard (the real server, aggregator
and page) in its event loop, with a status of 100 workers on 4 channels that changes every
tick, span files that grow by a span per job, and a feeder that hands the bus observer's
``observe`` real message objects at 1,000 jobs/s (a request and an answer each, every worker
talking to three peers, and a hand-off per channel each second). The parent opens the page in
the OS's Chromium (Playwright, headless) and reads the page's own timings after the run:

- render: the time the page spends applying one snapshot to the DOM (p50/p95/max);
- lag: from the snapshot being made on the server to it being drawn (p50/p95);
- loop lag: how late a 50 ms sleep wakes in the serving loop (p99): whether the supervisor
  stays responsive while it serves the page and counts the traffic;
- observe: the aggregator's cost per message (the bus's own decoding is not included).

``WORKERS_BENCH_SCREENSHOT=page.png`` also saves a picture of the page under that load.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.core import Measurement, Scale, Skip, Target, benchmark

WORKERS = 100
CHANNELS = 4
JOBS_PER_SECOND = 1_000
CHROMIUM = os.environ.get("WORKERS_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _status(tick: int) -> Any:
    from pipecat_workers_cli.supervisor.status import ChannelStatus, ProjectStatus, WorkerStatus

    workers = [WorkerStatus(name=f"w{i:03d}", worker=f"w{i:03d}", channel=f"c{i % CHANNELS}",
                            state="ready" if (i + tick // 20) % 37 else "starting",
                            pid=10_000 + i, uptime=tick * 0.25, restarts=i % 3,
                            registered=True, cpu_percent=float(i % 9), rss_bytes=30_000_000 + i,
                            jobs={"running": tick % 5, "completed": tick * 10 + i, "failed": 0})
               for i in range(WORKERS)]
    channels = [ChannelStatus(key=f"c{c}", backend="local", channel=f"bench.c{c}",
                              connected=True, runners=WORKERS // CHANNELS)
                for c in range(CHANNELS)]
    return ProjectStatus(project="bench-dashboard", file="workers.yaml", running=True,
                         supervisor_pid=os.getpid(), workers=workers, channels=channels)


def _write_traces(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with open(directory / "w000.jsonl", "w") as file:
        for t in range(count):
            trace = f"{t + 1:032x}"
            root = f"{t + 1:016x}"
            lines = [{"trace": trace, "span": root, "parent": None, "name": "job echo",
                      "kind": "job.request", "worker": "w000", "start": now - t,
                      "end": now - t + 0.05, "status": "ok", "attrs": {}, "events": []}]
            for k in range(5):
                lines.append({"trace": trace, "span": f"{(t + 1) * 16 + k + 1:016x}",
                              "parent": root, "name": f"run {k}", "kind": "job.run",
                              "worker": f"w{k + 1:03d}", "start": now - t + 0.01 * k,
                              "end": now - t + 0.01 * k + 0.005, "status": "ok", "attrs": {},
                              "events": []})
            file.writelines(json.dumps(line) + "\n" for line in lines)


class _SpanWriter:
    """Appends a span per job to the span files, as the workers' processes would: the
    dashboard's trace list is then read from files that grow by 1,000 spans a second."""

    def __init__(self, directory: Path) -> None:
        # Open for the whole run, closed by close().
        self._files = [open(directory / f"w{i:03d}.jsonl", "a")  # noqa: SIM115
                       for i in range(0, WORKERS, 10)]
        self._lines: list[list[str]] = [[] for _ in self._files]

    def job(self, n: int, worker: int) -> None:
        now = time.time()
        self._lines[n % len(self._files)].append(json.dumps({
            "trace": f"{n + 1_000_000:032x}", "span": f"{n + 1_000_000:016x}",
            "parent": "00000000000000ff", "name": "run echo", "kind": "job.run",
            "worker": f"w{worker:03d}", "start": now - 0.001, "end": now, "status": "ok",
            "attrs": {"job.id": f"job-{n}", "job.name": "echo"}, "events": []}) + "\n")

    def flush(self) -> None:
        for file, lines in zip(self._files, self._lines, strict=True):
            file.writelines(lines)
            file.flush()
            lines.clear()

    def close(self) -> None:
        for file in self._files:
            file.close()


async def _feed(traffic: Any, seconds: float, counts: dict[str, float],
                spans: _SpanWriter) -> None:
    """Real message objects at JOBS_PER_SECOND through the observer's ``observe``; a span
    per job to the span files."""
    from pipecat_workers_cli.dashboard.observer import observe

    from pipecat_workers.bus import (
        BusActivateWorkerMessage,
        BusJobRequestMessage,
        BusJobResponseMessage,
    )

    peers = [[(i + d) % WORKERS for d in (1, 7, 31)] for i in range(WORKERS)]
    start = time.perf_counter()
    sent = 0
    spent = 0.0
    messages = 0
    last_handoff = start
    pending: list[tuple[str, str, str]] = []
    ran: list[tuple[int, int]] = []
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * JOBS_PER_SECOND)
        t0 = time.perf_counter()
        for answered in pending:  # last tick's jobs are answered now (some stay in flight)
            source, target, job_id = answered
            observe(traffic, f"c{int(target[1:]) % CHANNELS}", BusJobResponseMessage(
                source=target, target=source, job_id=job_id))
            messages += 1
        pending = []
        while sent < due:
            a = sent % WORKERS
            b = peers[a][sent % 3]
            job_id = f"job-{sent}"
            observe(traffic, f"c{b % CHANNELS}", BusJobRequestMessage(
                source=f"w{a:03d}", target=f"w{b:03d}", job_id=job_id, job_name="echo"))
            messages += 1
            if sent % 50:  # one job in fifty stays in flight
                pending.append((f"w{a:03d}", f"w{b:03d}", job_id))
            ran.append((sent, b))
            sent += 1
        if now - last_handoff >= 1.0:
            last_handoff = now
            for c in range(CHANNELS):
                source, target = (sent + c) % WORKERS, (sent + c + 4) % WORKERS
                observe(traffic, f"c{c}", BusActivateWorkerMessage(
                    source=f"w{source:03d}", target=f"w{target:03d}"))
                messages += 1
        spent += time.perf_counter() - t0
        for n, worker in ran:  # not counted: a worker's work, not the dashboard's
            spans.job(n, worker)
        ran.clear()
        spans.flush()
        await asyncio.sleep(0.01)
    counts.update(jobs=sent, messages=messages, observe_s=spent,
                  elapsed=time.perf_counter() - start)


async def _loop_lag(seconds: float) -> list[float]:
    lags = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(0.05)
        lags.append((time.perf_counter() - t0 - 0.05) * 1000)
    return lags


async def _serve(conn: Connection, seconds: float, traces: Path) -> None:
    from pipecat_workers_cli.dashboard.listener import Listener
    from pipecat_workers_cli.dashboard.server import Dashboard
    from pipecat_workers_cli.dashboard.snapshot import compose

    tick = 0

    async def status() -> Any:
        nonlocal tick
        tick += 1
        return _status(tick)

    listener = Listener.bind("127.0.0.1", 0)
    dashboard = Dashboard(listener, status=status, channels={}, trace_dir=traces)
    serving = asyncio.ensure_future(dashboard.run())
    conn.send(listener.url)
    await asyncio.to_thread(conn.recv)  # the page is open (the loop serves it meanwhile)
    counts: dict[str, float] = {}
    spans = _SpanWriter(traces)
    try:
        _, lags = await asyncio.gather(_feed(dashboard.traffic, seconds, counts, spans),
                                       _loop_lag(seconds))
    finally:
        spans.close()
    t0 = time.perf_counter()
    sizes = []
    for _ in range(20):
        sizes.append(len(json.dumps(compose(_status(1), dashboard.traffic.snapshot(),
                                            dashboard._traces, now=time.time()))))
    snapshot_ms = (time.perf_counter() - t0) / 20 * 1000
    conn.send({**counts, "loop_lag_ms": lags, "snapshot_ms": snapshot_ms,
               "snapshot_bytes": statistics.mean(sizes)})
    await asyncio.to_thread(conn.recv)  # the parent has read the page
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)


def _child(conn: Connection, seconds: float, traces: str) -> None:
    asyncio.run(_serve(conn, seconds, Path(traces)))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_load(seconds: float) -> dict[str, Any]:
    """One run: the server's and the page's figures."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as missing:
        raise Skip("playwright is not installed (pip install -e '.[test]')") from missing
    if not os.access(CHROMIUM, os.X_OK):
        raise Skip(f"no browser at {CHROMIUM} (scripts/browser.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="pw-bench-dashboard-") as tmp:
        _write_traces(Path(tmp) / "traces", 50)
        parent, child = multiprocessing.get_context("spawn").Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=_child, args=(child, seconds, str(Path(tmp) / "traces")))
        process.start()
        try:
            url = parent.recv()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(url)
                page.wait_for_function(
                    "() => document.querySelectorAll('tr[data-worker]').length === 100",
                    timeout=30_000)
                page.evaluate("() => { const s = window.dashboardStats; s.renderMs.length = 0;"
                              " s.lagMs.length = 0; }")
                parent.send("open")
                server = parent.recv()
                page_stats = page.evaluate("() => window.dashboardStats")
                edges = page.eval_on_selector_all("#topology g[data-edge]", "e => e.length")
                if shot := os.environ.get("WORKERS_BENCH_SCREENSHOT"):  # a PNG path
                    page.screenshot(path=shot, full_page=True)
                browser.close()
            parent.send("done")
            process.join(30)
        finally:
            if process.is_alive():
                process.kill()
    return {"server": server, "page": page_stats, "edges": edges}


@benchmark("dashboard.page_update", group="dashboard",
           workload="dashboard page: apply one snapshot (100 workers, 1,000 jobs/s), p95",
           unit="ms", target=Target("<=", 50.0))
def page_update(scale: Scale) -> Measurement:
    result = run_load(scale.budget(20.0, 5.0))
    server, page = result["server"], result["page"]
    render, lag = page["renderMs"], page["lagMs"]
    rate = server["jobs"] / server["elapsed"]
    per_message_us = server["observe_s"] / max(server["messages"], 1) * 1e6
    loop_p99 = _percentile(server["loop_lag_ms"], 0.99)
    notes = (f"p50 {_percentile(render, .5):.1f} ms, max {max(render):.1f} ms over "
             f"{len(render)} updates; snapshot->drawn p50 {_percentile(lag, .5):.0f} ms, "
             f"p95 {_percentile(lag, .95):.0f} ms; fed {rate:.0f} jobs/s "
             f"({per_message_us:.1f} µs/message); loop lag p99 {loop_p99:.1f} ms; "
             f"snapshot {server['snapshot_ms']:.1f} ms, {server['snapshot_bytes'] / 1024:.0f} KiB;"
             f" {result['edges']} edges drawn")
    details = {"render_ms": render, "lag_ms": lag, "fed_jobs_per_s": rate,
               "observe_us_per_message": per_message_us,
               "loop_lag_ms_p50": _percentile(server["loop_lag_ms"], 0.5),
               "loop_lag_ms_p99": loop_p99, "snapshot_ms": server["snapshot_ms"],
               "snapshot_bytes": server["snapshot_bytes"], "edges": result["edges"]}
    return Measurement(_percentile(render, 0.95), notes=notes, details=details,
                       valid=rate >= 0.95 * JOBS_PER_SECOND and len(render) > 0)


if __name__ == "__main__":
    figures = run_load(20.0)
    print(json.dumps({k: v for k, v in figures.items() if k != "page"}, default=str)[:2000])
