"""The verbs compose and pm2 users reach for, on the real ``workers`` program.

``up -d`` on a running project applies the file's difference; ``scale`` changes a worker's
replicas; ``restart --rolling`` never has every replica down; ``max_restarts`` leaves a
worker crashed; ``depends_on`` waits for a one-shot job to complete. Each test runs a tiny
project in ``tmp_path`` (see ``cliproj.py``) and leaves nothing running.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cliproj import Cli, brief, wait_gone, workers_by_name, write_project

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

JOBS_PY = '''\
"""One-shot workers: they register on the bus, then end with a code after a moment."""

import asyncio
import os

from pipecat_workers import BaseWorker


class Job(BaseWorker):
    def __init__(self, name, *, code=0, after=1.0):
        super().__init__(name)
        self._code, self._after = code, after

    async def on_activated(self, args):
        self.create_task(self._finish())

    async def _finish(self):
        await asyncio.sleep(self._after)
        print(f"{self.name} finishing with {self._code}", flush=True)
        os._exit(self._code)


class Instant(BaseWorker):
    """Does its work in on_activated and ends there: gone from the bus at once."""

    async def on_activated(self, args):
        print(f"{self.name} did its work", flush=True)
        await self.end(reason="done")
'''


def pids(status: dict[str, Any]) -> dict[str, int]:
    return {name: w["pid"] for name, w in workers_by_name(status).items()}


def one_line_error(result: Any, *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def supervisor_lines(root: Path, project: str) -> list[str]:
    """The detached supervisor's notes, ``<worker>: <text>`` in the order it wrote them."""
    text = (root / ".workers" / project / "supervisor.log").read_text()
    return [line.split(" ", 1)[1] for line in text.splitlines() if " " in line]


def index_of(lines: list[str], pattern: str, start: int = 0) -> int:
    regex = re.compile(pattern)
    for i in range(start, len(lines)):
        if regex.search(lines[i]):
            return i
    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(lines[start:]))


@pytest.mark.timeout(120)
def test_up_d_on_a_running_project_applies_only_the_difference(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "apply", {"keep": {"class": "Echo"}, "change": {"class": "Echo"},
                                      "gone": {"class": "Echo"}})
    cli = clis(tmp_path)
    first = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert first.returncode == 0, (first.stdout, first.stderr)
    before = pids(cli.ps())

    # The same file again: nothing moves.
    same, foreground = cli.run_many(("up", "-d", "workers.yaml"), ("up", "workers.yaml"))
    assert same.returncode == 0, (same.stdout, same.stderr)
    assert same.stdout.splitlines() == ["unchanged: 3 workers"]
    one_line_error(foreground, "already running", "up -d workers.yaml")
    assert pids(cli.ps()) == before

    # An edit with an error changes nothing, and says where in one line.
    path = tmp_path / "workers.yaml"
    good = path.read_text()
    path.write_text(good.replace("class: app_workers:Echo", "class: app_workers:Echo\n"
                                 "    replicas: zero", 1))
    one_line_error(cli.run("up", "-d", "workers.yaml"), "workers.yaml:", "replicas")
    assert pids(cli.ps()) == before

    # A new worker, a changed one, a removed one, one left alone.
    write_project(tmp_path, "apply", {"keep": {"class": "Echo"},
                                      "change": {"class": "Echo", "args": {}, "env": {
                                          "LOG_LEVEL": "WARNING", "EDITED": "1"}},
                                      "new": {"class": "Echo"}})
    applied = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert applied.returncode == 0, (applied.stdout, applied.stderr)
    lines = applied.stdout.splitlines()
    assert re.fullmatch(r"started new: ready \(pid \d+\)", lines[0]), lines
    assert re.fullmatch(r"restarted change: ready \(pid \d+\)", lines[1]), lines
    assert lines[2:] == ["stopped gone", "unchanged: 1 worker"], lines
    status = cli.ps()
    after = workers_by_name(status)
    assert set(after) == {"keep", "change", "new"}, brief(status)
    assert after["keep"]["pid"] == before["keep"] and after["keep"]["restarts"] == 0
    assert after["change"]["pid"] != before["change"]
    assert after["change"]["state"] == after["new"]["state"] == "ready", brief(status)
    wait_gone([before["gone"], before["change"]])


@pytest.mark.timeout(120)
def test_scale_up_down_to_zero_and_back_with_the_next_up(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "scale", {"echo": {"class": "Echo", "replicas": 2},
                                      "peer": {"class": "Echo", "depends_on": ["echo"]}})
    cli = clis(tmp_path)
    assert cli.run("up", "-d", "workers.yaml", timeout=60).returncode == 0
    before = pids(cli.ps())

    up3 = cli.run("scale", "echo=3", timeout=60)
    assert up3.returncode == 0, (up3.stdout, up3.stderr)
    assert [line.split(":")[0] for line in up3.stdout.splitlines()] == [
        "echo.1", "echo.2", "echo.3"]
    now = pids(cli.ps())
    # The running replicas and their dependent keep their processes.
    assert {n: now[n] for n in ("echo.1", "echo.2", "peer")} == {
        n: before[n] for n in ("echo.1", "echo.2", "peer")}

    down1 = cli.run("scale", "echo=2", timeout=60)
    assert down1.returncode == 0, (down1.stdout, down1.stderr)
    assert set(workers_by_name(cli.ps())) == {"echo.1", "echo.2", "peer"}
    wait_gone([now["echo.3"]])

    zero = cli.run("scale", "echo=0", timeout=60)
    assert zero.returncode == 0, (zero.stdout, zero.stderr)
    states = {n: w["state"] for n, w in workers_by_name(cli.ps()).items()}
    assert states == {"echo.1": "stopped", "echo.2": "stopped", "peer": "ready"}

    bad = cli.run_many(("scale", "echo"), ("scale", "nobody=2"), ("scale", "echo=1001"))
    one_line_error(bad[0], "expected WORKER=N")
    one_line_error(bad[1], "no worker key 'nobody'")
    one_line_error(bad[2], "at most 1,000 replicas")

    # The next up applies the file again: its two replicas.
    again = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert [line.split(":")[0] for line in again.stdout.splitlines()] == [
        "started echo.1", "started echo.2", "unchanged"]
    assert all(w["state"] == "ready" for w in cli.ps()["workers"])


@pytest.mark.timeout(120)
def test_a_rolling_restart_never_has_every_replica_down(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "roll", {"echo": {"class": "Echo", "replicas": 3}})
    cli = clis(tmp_path)
    assert cli.run("up", "-d", "workers.yaml", timeout=60).returncode == 0
    before = pids(cli.ps())
    start = len(supervisor_lines(tmp_path, "roll"))

    rolled = cli.run("restart", "--rolling", "echo", timeout=60)
    assert rolled.returncode == 0, (rolled.stdout, rolled.stderr)
    after = cli.ps()
    assert all(w["state"] == "ready" and w["restarts"] == 1 for w in after["workers"])
    assert not set(pids(after).values()) & set(before.values())

    # Each replica goes down only once the one before it is ready again.
    lines = supervisor_lines(tmp_path, "roll")
    ready_again = start
    for name in ("echo.1", "echo.2", "echo.3"):
        down = index_of(lines, rf"^{re.escape(name)}: rolling restart", start)
        assert down >= ready_again, "\n".join(lines[start:])
        ready_again = index_of(lines, rf"^{re.escape(name)}: ready$", down)


@pytest.mark.timeout(120)
def test_a_rolling_restart_succeeds_beside_a_worker_backing_off_all_along(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    """The command follows the roll the supervisor reports: a worker that was crashing before
    it (not running, so not rolled) neither fails it nor is restarted out of turn."""
    write_project(tmp_path, "beside", {"echo": {"class": "Echo", "replicas": 2},
                                       "crasher": {"class": "Crasher"}})
    cli = clis(tmp_path)
    assert cli.run("up", "-d", "workers.yaml", timeout=60).returncode == 1  # the crasher

    def crasher_backing_off(status: dict[str, Any]) -> bool:
        return workers_by_name(status)["crasher"]["state"] == "backing off"

    cli.wait_ps(crasher_backing_off, timeout=30, what="the crasher to back off")
    before = pids(cli.ps())

    rolled = cli.run("restart", "--rolling", timeout=60)
    assert rolled.returncode == 0, (rolled.stdout, rolled.stderr)
    assert [line.split(":")[0] for line in rolled.stdout.splitlines()] == ["echo.1", "echo.2"]
    after = workers_by_name(cli.ps())
    assert all(after[n]["state"] == "ready" and after[n]["pid"] != before[n]
               for n in ("echo.1", "echo.2")), after
    assert len([line for line in supervisor_lines(tmp_path, "beside")
                if line.startswith("crasher: rolling restart")]) == 0

    one_line_error(cli.run("restart", "--rolling", "crasher"),
                   "nothing to restart: none of crasher is running")


@pytest.mark.timeout(120)
def test_max_restarts_leaves_a_crashing_worker_crashed(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "limit", {"keep": {"class": "Echo"},
                                      "crasher": {"class": "Crasher", "max_restarts": 2}})
    cli = clis(tmp_path)
    assert cli.run("up", "-d", "workers.yaml", timeout=60).returncode == 1

    def gave_up(status: dict[str, Any]) -> bool:
        return workers_by_name(status)["crasher"]["state"] == "crashed"

    status = cli.wait_ps(gave_up, timeout=30, what="the crasher to give up")
    crasher = workers_by_name(status)["crasher"]
    assert crasher["restarts"] == 2, brief(status)
    assert crasher["reason"].startswith("gave up after 2 restarts in a row (max_restarts: 2)")
    assert workers_by_name(status)["keep"]["state"] == "ready"


@pytest.mark.timeout(120)
def test_depends_on_completed_waits_for_the_job_and_fails_with_it(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "jobs", {
        "migrate": {"class": "jobs:Job", "restart": "no"},
        "api": {"class": "Echo", "depends_on": {"migrate": {"condition": "completed"}}},
        "broken": {"class": "jobs:Job", "args": {"code": 3}, "restart": "no"},
        "web": {"class": "Echo", "depends_on": {"broken": {"condition": "completed"}}},
    })
    (tmp_path / "jobs.py").write_text(JOBS_PY)
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 1, (up.stdout, up.stderr)

    def settled(status: dict[str, Any]) -> bool:
        states = {n: w["state"] for n, w in workers_by_name(status).items()}
        return states["api"] == "ready" and states["web"] == "failed"

    status = cli.wait_ps(settled, timeout=30, what="api ready and web failed")
    workers = workers_by_name(status)
    assert workers["migrate"]["state"] == "exited"
    assert workers["web"]["reason"] == "dependency 'broken' did not complete: it is crashed"
    # api started once migrate had exited, not when it was ready on the bus.
    lines = supervisor_lines(tmp_path, "jobs")
    assert index_of(lines, r"^migrate: ready$") < index_of(lines, r"^migrate: exited")
    assert index_of(lines, r"^migrate: exited with code 0") < index_of(lines, r"^api: started")


@pytest.mark.timeout(60)
def test_a_job_that_ends_in_on_activated_completes_and_its_dependents_start(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "instant", {
        "migrate": {"class": "jobs:Instant", "restart": "no"},
        "api": {"class": "Echo", "depends_on": {"migrate": {"condition": "completed"}}},
    })
    (tmp_path / "jobs.py").write_text(JOBS_PY)
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    workers = workers_by_name(cli.ps())
    assert (workers["migrate"]["state"], workers["migrate"]["exit_code"]) == ("exited", 0)
    assert workers["api"]["state"] == "ready"
