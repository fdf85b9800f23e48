"""What the supervisor tells users, without running it: exits explained, the ``workers``
stream's lines, the REASON column, one vocabulary of states, CPU and memory figures, and the
live view fitting an 80 x 24 terminal."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pipecat_workers_cli.logs.news import NEWS, NEWS_FILE, as_shown, file_stem, news_writer
from pipecat_workers_cli.logs.reader import LogRecord, read_records
from pipecat_workers_cli.render.live import LiveRenderer, fit_workers
from pipecat_workers_cli.render.tables import (
    STATE_STYLES,
    project_table,
    reason_text,
    size,
)
from pipecat_workers_cli.states import STATES
from pipecat_workers_cli.supervisor.exits import explain_exit
from pipecat_workers_cli.supervisor.machine import Machine, Timing
from pipecat_workers_cli.supervisor.model import State
from pipecat_workers_cli.supervisor.report import exit_news, is_news, project_status
from pipecat_workers_cli.supervisor.status import ChannelStatus, ProjectStatus, WorkerStatus
from pipecat_workers_cli.supervisor.usage import UsageSampler
from pipecat_workers_cli.topology import expand, load_topology
from rich.console import Console


def worker(name: str, state: str, **fields: object) -> WorkerStatus:
    return WorkerStatus(name=name, worker=name.split(".")[0], channel="main", state=state,
                        **fields)  # type: ignore[arg-type]


def project(*workers: WorkerStatus, channels: int = 0) -> ProjectStatus:
    return ProjectStatus(project="p", file="p.yaml", running=True, supervisor_pid=1,
                         workers=list(workers),
                         channels=[ChannelStatus(f"c{i}", "local", f"p.c{i}", True)
                                   for i in range(channels)])


def rendered(renderable: object, width: int = 200, height: int = 50) -> str:
    out = io.StringIO()
    Console(file=out, width=width, height=height, color_system=None).print(renderable)
    return out.getvalue()


def topology(tmp_path: Path, workers: str) -> object:
    (tmp_path / "t.yaml").write_text(f"name: t\nroot: .\nworkers:\n{workers}")
    return load_topology(tmp_path / "t.yaml")


# -- exits explained ----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "text"), [
    (3, "exit code 3"),
    (1, "exit code 1 (an error)"),
    (78, "exit code 78 (configuration error)"),
    (-signal.SIGKILL, "killed by SIGKILL"),
    (-signal.SIGTERM, "killed by SIGTERM"),
    (137, "exit code 137 (SIGKILL)"),
    (143, "exit code 143 (SIGTERM)"),
    (-77, "killed by signal 77"),
])
def test_exit_codes_are_explained(code: int, text: str) -> None:
    assert explain_exit(code) == text


def test_an_exit_becomes_one_news_line_with_what_follows(tmp_path: Path) -> None:
    m = Machine(expand(topology(tmp_path, "  crasher: {class: 'm:W', restart: always}\n")),
                clock=lambda: 100.0, random=lambda: 1.0, timing=Timing())
    m.start()
    m.spawned("crasher", 42)
    proc = m.procs["crasher"]
    notes = [a.text for a in m.exited("crasher", 3) if hasattr(a, "text")]
    assert notes == ["exited with code 3", "restarting in 0.5 s"]
    assert exit_news(proc, "exit code 3: boom", notes) == (
        "crasher: exit code 3: boom; restarting in 0.5 s (attempt 1)")
    looping = ["exited with code 3", "restarting in 7.9 s (crash loop: 5 failures in a row)"]
    proc.restarts = 4
    assert exit_news(proc, "exit code 3", looping) == (
        "crasher: exit code 3; restarting in 7.9 s (attempt 5; crash loop: 5 failures in a row)")


def test_routine_notes_stay_out_of_the_workers_stream() -> None:
    for routine in ("started, pid 12", "ready", "stopped", "exited with code 0",
                    "restarting in 1.0 s"):
        assert not is_news(routine), routine
    for news in ("not ready within 30 s: killing it", "could not start: OSError: x",
                 "not started: dependency 'db' is failed", "did not drain in time: SIGTERM",
                 "removed from the topology"):
        assert is_news(news), news


# -- REASON and the state vocabulary -----------------------------------------------------


def test_the_reason_says_why_and_when_it_restarts() -> None:
    backing = worker("c", "backing off", reason="exit code 3: boom", retry_in=2.4,
                     crash_loop=True, exit_code=3)
    assert reason_text(backing) == "crash loop; exit code 3: boom; restarting in 2s"
    assert reason_text(worker("c", "crashed", exit_code=-9)) == "killed by SIGKILL"
    assert reason_text(worker("r", "ready", pid=5)) == "-"
    table = rendered(project_table(project(backing)))
    header = next(line for line in table.splitlines() if line.startswith("NAME"))
    assert header.split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU", "MEM",
                              "JOBS", "run/ok/fail", "BUS", "REASON"]
    assert "crash loop; exit code 3: boom; restarting in 2s" in table


def test_a_waiting_worker_says_what_it_waits_for(tmp_path: Path) -> None:
    top = topology(tmp_path, "  db: {class: 'm:W'}\n  api: {class: 'm:W', depends_on: [db]}\n")
    m = Machine(expand(top), clock=lambda: 1.0, random=lambda: 0.5)  # type: ignore[arg-type]
    m.start()
    status = project_status(top, m, {}, {}, now=1.0, running=True)  # type: ignore[arg-type]
    api = status.worker("api")
    assert api is not None and (api.state, api.reason) == ("waiting", "waiting for db")


def test_the_table_shows_exactly_the_states_json_has() -> None:
    assert set(STATES) == {s.value for s in State} | {"gone"}
    assert set(STATE_STYLES) == set(STATES)  # a style for every word, and no other word
    workers = [worker(f"w{i}", state, exit_code=3, crash_loop=True, parked=True, active=True,
                      retry_in=1.0) for i, state in enumerate(STATES)]
    table = rendered(project_table(project(*workers)))
    rows = {line.split()[0]: line for line in table.splitlines()[2:] if line.strip()}
    for i, state in enumerate(STATES):
        cell = rows[f"w{i}"].split("  ")[1:]
        assert next(c.strip() for c in cell if c.strip()) == state, rows[f"w{i}"]


# -- CPU and memory -----------------------------------------------------------------------


def test_the_sampler_reads_a_process_and_its_children() -> None:
    now = [0.0]
    sampler = UsageSampler(lambda: now[0], every=1.0)
    sampler.sample({"me": os.getpid()})
    first = sampler.usage("me")
    assert first is not None and first.cpu_percent is None  # one reading: no share yet
    assert first.rss_bytes > 1_000_000
    sum(range(200_000))
    now[0] = 0.5
    sampler.sample({"me": os.getpid()})  # too soon: the last figures stay
    assert sampler.usage("me") == first
    now[0] = 1.5
    sampler.sample({"me": os.getpid()})
    second = sampler.usage("me")
    assert second is not None and second.cpu_percent is not None and second.cpu_percent >= 0
    now[0] = 3.0
    sampler.sample({})
    assert sampler.usage("me") is None


async def test_a_worker_counts_the_cpu_and_memory_of_the_child_it_started() -> None:
    # A "worker" (a sleeping parent) whose child spins and holds 50 MB: the child's share
    # and memory are the worker's. Sampled in a thread, as the supervisor does.
    child_code = ("import time\nblock = bytearray(50 * 1024 * 1024)\n"
                  "for i in range(0, len(block), 4096): block[i] = 1\n"
                  "end = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n")
    parent_code = ("import subprocess, sys, time\n"
                   f"subprocess.Popen([sys.executable, '-c', {child_code!r}])\n"
                   "time.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], start_new_session=True)
    try:
        now = [0.0]
        sampler = UsageSampler(lambda: now[0], every=1.0)

        def counted() -> bool:
            sampler.sample({"w": parent.pid})
            usage = sampler.usage("w")
            return usage is not None and usage.rss_bytes > 50 * 1024 * 1024

        deadline = time.monotonic() + 10
        while not counted():  # the child is started and has touched its 50 MB
            assert time.monotonic() < deadline, sampler.usage("w")
            now[0] += 1.0
            await asyncio.sleep(0.05)
        now[0] += 1.0
        await asyncio.sleep(0.5)  # the child spins meanwhile
        assert sampler.due()
        await sampler.refresh({"w": parent.pid})
        usage = sampler.usage("w")
        assert usage is not None and usage.cpu_percent is not None
        assert usage.cpu_percent > 5, usage  # the parent sleeps: that is the child's
        assert usage.rss_bytes > 50 * 1024 * 1024
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


@pytest.mark.parametrize(("n", "text"), [(None, "-"), (512, "512B"), (2048, "2K"),
                                         (45 * 2**20 + 2**19, "45.5M"), (300 * 2**20, "300M"),
                                         (3 * 2**30, "3.0G")])
def test_sizes_read_short(n: int | None, text: str) -> None:
    assert size(n) == text


# -- the workers stream ------------------------------------------------------------------


def test_the_news_log_is_named_workers_and_no_worker_can_own_its_file(tmp_path: Path) -> None:
    writer = news_writer(tmp_path)
    record = as_shown(writer.write("sup", "crasher: exit code 3"))
    writer.close()
    assert record.worker == NEWS and (tmp_path / f"{NEWS_FILE}.log").exists()
    assert file_stem(NEWS) == NEWS_FILE and file_stem("echo") == "echo"
    assert [as_shown(r).text for r in read_records(tmp_path, NEWS_FILE)] == [
        "crasher: exit code 3"]
    with pytest.raises(Exception, match="workers"):
        topology(tmp_path, f"  {NEWS_FILE}: {{class: 'm:W'}}\n")


# -- the live view fits the terminal -----------------------------------------------------


def test_fit_workers_leaves_a_row_for_the_count() -> None:
    workers = [worker(f"w{i}", "ready") for i in range(5)]
    assert fit_workers(workers, 5) == (workers, 0)
    assert fit_workers(workers, 4) == (workers[:3], 2)
    assert fit_workers(workers, 0) == ([], 5)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (80, 16), (200, 40)])
def test_the_live_view_fits_the_terminal(tmp_path: Path, width: int, height: int) -> None:
    top = topology(tmp_path, "  researcher: {class: 'm:W', replicas: 40}\n")
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None)
    view = LiveRenderer(top, console=console)  # type: ignore[arg-type]
    reason = "exit code 3: " + "a long error that goes on " * 8
    view.status(project(*[worker(f"researcher.{i}", "backing off", reason=reason, pid=None,
                                 restarts=12, retry_in=3.0, crash_loop=True, rss_bytes=2**27,
                                 cpu_percent=12.6) for i in range(1, 41)], channels=2))
    for i in range(20):
        view.record(LogRecord(datetime.now(UTC), "researcher.7", "err", f"line {i} " + "x" * 300))
    console.print(view._render())
    lines = out.getvalue().splitlines()
    assert len(lines) <= height - 1, "\n".join(lines)
    assert max(map(len, lines)) <= width, "\n".join(lines)
    shown = sum(line.startswith("researcher.") for line in lines)
    assert 0 < shown < 40
    assert f"... {40 - shown} more" in out.getvalue()
    assert "line 19" in out.getvalue()  # the newest feed line is kept
    row = next(line for line in lines if line.startswith("researcher.1 "))
    assert "backing off" in row and "13%" in row and "128M" in row, row
    assert row.rstrip().endswith("…"), row


def test_the_live_view_shows_every_worker_when_they_fit(tmp_path: Path) -> None:
    top = topology(tmp_path, "  w: {class: 'm:W', replicas: 3}\n")
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, color_system=None)
    view = LiveRenderer(top, console=console)  # type: ignore[arg-type]
    view.status(project(*[worker(f"w.{i}", "ready", pid=100 + i) for i in range(1, 4)]))
    console.print(view._render())
    text = out.getvalue()
    assert all(f"w.{i} " in text for i in range(1, 4)) and "more" not in text


def test_ps_at_80_columns_keeps_the_reason_and_wraps_it() -> None:
    failing = worker("researcher.1", "backing off", restarts=3, retry_in=1.2,
                     reason="exit code 3: RuntimeError: no database at db:5432")
    looping = worker("echo", "ready", pid=12345, registered=True,
                     failing=["membership (TypeError: x)"])
    text = rendered(project_table(project(failing, looping), narrow=True), width=80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, text
    assert lines[1].split() == ["NAME", "STATE", "PID", "UP", "RST", "CPU", "MEM", "JOBS",
                                "REASON"]
    words = " ".join(text.split())
    assert "RuntimeError: no database at db:5432; restarting in 1s" in words, text
    assert "loop failing: membership (TypeError: x)" in words, text


def test_the_live_feed_shows_an_exit_once(tmp_path: Path) -> None:
    top = topology(tmp_path, "  crasher: {class: 'm:W'}\n")
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, color_system=None)
    view = LiveRenderer(top, console=console)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    for worker_name, text in (("crasher", "exited with code 3"),
                              ("crasher", "restarting in 1.2 s"),
                              ("workers", "crasher: exit code 3; restarting in 1.2 s (attempt 1)"),
                              ("crasher", "started, pid 7")):
        view.record(LogRecord(now, worker_name, "sup", text))
    console.print(view._render())
    text = out.getvalue()
    assert "exited with code 3" not in text and "restarting in 1.2 s (attempt 1)" in text
    assert "started, pid 7" in text
