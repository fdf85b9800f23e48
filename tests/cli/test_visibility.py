"""What the supervisor knows reaches the user, through the real ``workers`` program: a crashing
worker's reason and back-off in ``workers logs`` (the ``workers`` stream) and in ``ps``'s REASON,
a killed worker explained, a topology edit that cannot be applied, and each worker's CPU and
memory (with its children's) in ``ps --json`` and ``top``."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cliproj import Cli, wait_for, workers_by_name, write_project

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

VIS_WORKERS = '''\
"""Workers of the visibility tests."""

import os
import subprocess
import sys

from pipecat_workers import BaseWorker


class Failing(BaseWorker):
    """Says why on stderr, then exits with 3 while it is being built."""

    def __init__(self, name):
        super().__init__(name)
        print("connecting to the database", flush=True)
        print("RuntimeError: no database at db:5432", file=sys.stderr, flush=True)
        os._exit(3)


class Parent(BaseWorker):
    """Starts a child that holds about 60 MB: the worker's memory counts it."""

    def __init__(self, name):
        super().__init__(name)
        self.child = subprocess.Popen([sys.executable, "-c",
            "import time; x = bytearray(60_000_000); x[::4096] = b'y' * len(x[::4096]); "
            "time.sleep(600)"])
'''

MB = 1024 * 1024


def project(root: Path, name: str, workers: dict[str, dict[str, Any]], **kw: Any) -> Path:
    path = write_project(root, name, workers, **kw)
    (root / "vis_workers.py").write_text(VIS_WORKERS)
    return path


def news_lines(cli: Cli, *args: str) -> list[str]:
    result = cli.run("logs", *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout.splitlines()


@pytest.mark.timeout(90)
def test_a_crashing_workers_reason_and_back_off_reach_logs_and_ps(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    project(tmp_path, "crashy", {"echo": {"class": "Echo"},
                                 "failing": {"class": "vis_workers:Failing",
                                             "restart": "on-failure"}})
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 1, (up.stdout, up.stderr)
    follower = cli.popen("logs", "-f", "workers")  # the news as it comes
    follower.out.wait_for(r"^workers \| \[failing: exit code 3: RuntimeError: no database"
                          r".*\(attempt 3\b", timeout=15)
    assert re.search(r"^failing: backing off \(exit code 3: RuntimeError: no database",
                     up.stdout, re.M), up.stdout

    def restarted_twice(status: dict[str, Any]) -> bool:
        return bool(workers_by_name(status)["failing"]["restarts"] >= 2)

    status = cli.wait_ps(restarted_twice, timeout=20, what="failing restarted twice")
    failing = workers_by_name(status)["failing"]
    assert failing["state"] in ("backing off", "waiting", "starting"), failing
    assert "exit code 3: RuntimeError: no database at db:5432" in failing["reason"], failing
    assert workers_by_name(status)["echo"]["reason"] == ""

    # ps: the state as --json has it, and the why in REASON.
    table = cli.run("ps")
    assert table.returncode == 0, table.stderr
    header, *rows = [ln for ln in table.stdout.splitlines() if ln.startswith(("NAME", "fail"))]
    assert header.split()[-1] == "REASON", header
    assert re.search(r"^failing\s+(backing off|waiting|starting)\s", rows[0]), rows
    assert "exit code 3: RuntimeError: no database" in rows[0], rows

    # The workers stream alone: the supervisor's lines, each exit with what follows.
    news = news_lines(cli, "workers")
    assert news and all(ln.startswith("workers | ") for ln in news), news
    assert "workers | [failing: exit code 3: RuntimeError: no database at db:5432; " \
           "restarting in " in "\n".join(news), news
    attempts = [int(n) for n in re.findall(r"\(attempt (\d+)", "\n".join(news))]
    assert attempts[:2] == [1, 2], news
    assert not any("echo" in ln for ln in news), news  # a worker that runs well is not news

    # Everything, merged in time order: the worker's own lines and the news.
    merged = news_lines(cli, "-t")
    assert any(re.match(r"^\S+ workers\s+\| \[failing: exit code 3", ln) for ln in merged)
    assert any(re.match(r"^\S+ failing\s+\| connecting to the database", ln) for ln in merged)
    times = [ln.split(" ", 1)[0] for ln in merged]
    assert times == sorted(times), merged

    # A worker killed from outside: explained, and restarted.
    echo = workers_by_name(cli.ps())["echo"]
    os.kill(echo["pid"], signal.SIGKILL)
    wait_for(lambda: "workers | [echo: killed by SIGKILL; restarting in " in
             cli.run("logs", "workers").stdout, timeout=10, what="echo's kill in the news")
    gone = cli.run("logs", "nobody")
    assert gone.returncode == 1 and "`workers` is the supervisor's news" in gone.stderr


@pytest.mark.timeout(90)
def test_ps_json_has_each_workers_cpu_and_memory_with_its_children(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    project(tmp_path, "usage", {"echo": {"class": "Echo"},
                                "parent": {"class": "vis_workers:Parent"}})
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)

    def measured(status: dict[str, Any]) -> bool:
        return all(w["cpu_percent"] is not None for w in status["workers"])

    status = cli.wait_ps(measured, timeout=10, what="a CPU share for every worker")
    workers = workers_by_name(status)
    cores = os.cpu_count() or 1
    for w in workers.values():
        assert 0 <= w["cpu_percent"] <= 100 * cores, w
        assert 5 * MB < w["rss_bytes"] < 2048 * MB, w
    # The child's 60 MB count with its worker.
    assert workers["parent"]["rss_bytes"] > workers["echo"]["rss_bytes"] + 40 * MB, workers

    table = cli.run("ps").stdout
    row = next(ln for ln in table.splitlines() if ln.startswith("parent "))
    assert re.search(r"\s\d+%\s+\d+(\.\d)?M\s", row), row
    top = cli.run("top")  # not a terminal: the table once
    assert top.returncode == 0, top.stderr
    assert re.search(r"^echo\s+ready\s", top.stdout, re.M), top.stdout

    cli.run("down")
    after = cli.ps()
    assert all(w["cpu_percent"] is None and w["rss_bytes"] is None
               for w in after["workers"]), after


@pytest.mark.timeout(90)
def test_a_topology_edit_that_cannot_be_applied_is_news(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    path = project(tmp_path, "edits", {"echo": {"class": "Echo"}})
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "--reload", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    path.write_text(path.read_text().replace("  echo:\n", "  echo:\n    colour: blue\n"))

    def refused() -> str | None:
        news = cli.run("logs", "workers").stdout
        return news if "topology not applied" in news else None

    news = wait_for(refused, timeout=15, what="'topology not applied' in the workers stream")
    line = next(ln for ln in news.splitlines() if "topology not applied" in ln)
    assert line.startswith("workers | ") and "colour" in line, line
    assert workers_by_name(cli.ps())["echo"]["state"] == "ready"
