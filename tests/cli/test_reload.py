"""``workers up -d --reload`` on a real project in a temporary directory, edited as a developer
would: a worker's module, a module two workers share, a syntax error and its fix, the topology
file, and files in directories that must be ignored.

The project has one module per worker (``agent_a.py``, ``agent_b.py`` which imports
``common.py``, ``watcher.py``); the watcher prints ``saw-ready a`` / ``saw-lost a`` when ``a``
comes and goes, so the tests count those lines in its log. Process handling (cleanup, the
child subreaper) comes from ``cliproj.py``; every test leaves nothing running.

The pure parts (which files mean what, the state machine in reload mode) are unit-tested in
``test_reload_plan.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliproj import (
    Cli,
    brief,
    pid_gone,
    wait_for,
    wait_gone,
    workers_by_name,
)

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

AGENT_A = '''\
"""Worker a (written by tests/cli/test_reload.py)."""

import asyncio
import os

from pipecat_workers import BaseWorker, job

VERSION = {version}


class A(BaseWorker):
    @job("version")
    async def version(self, message):
        return {{"version": VERSION, "pid": os.getpid()}}

    @job("slow")
    async def slow(self, message):
        print("slow-started", flush=True)
        await asyncio.sleep(60)
        return {{"slow": "done"}}
'''

AGENT_B = '''\
"""Worker b: imports common.py, which a does not."""

import os

from common import GREETING
from pipecat_workers import BaseWorker, job


class B(BaseWorker):
    @job("greet")
    async def greet(self, message):
        return {"greeting": GREETING, "pid": os.getpid()}
'''

COMMON = 'GREETING = "{greeting}"\n'

WATCHER = '''\
"""Watches a: prints when it is ready (each time) and when it is lost."""

from pipecat_workers import BaseWorker, worker_ready


class Watcher(BaseWorker):
    @worker_ready("a")
    async def on_a_ready(self, data):
        print(f"saw-ready {data.worker_name}", flush=True)

    async def on_worker_lost(self, data):
        await super().on_worker_lost(data)
        print(f"saw-lost {data.worker_name} ({data.reason})", flush=True)
'''

CRASHY = '''\
"""A worker that dies while it is built: a runtime crash, every time."""

import os

from pipecat_workers import BaseWorker


class Crasher(BaseWorker):
    def __init__(self, name):
        super().__init__(name)
        print("crashing", flush=True)
        os._exit(3)
'''

CLASSES = {"a": "agent_a:A", "b": "agent_b:B", "watcher": "watcher:Watcher",
           "crasher": "crashy:Crasher"}
THREE = ("a", "b", "watcher")


def topology(name: str, workers: Mapping[str, Mapping[str, Any]]) -> str:
    """A topology's text: ``workers`` maps a key to extra fields (``class`` defaults from
    :data:`CLASSES`); every worker logs at WARNING so that its log holds what it prints."""
    entries = {}
    for key, extra in workers.items():
        entry = {"class": CLASSES.get(key, ""), "env": {"LOG_LEVEL": "WARNING"}, **extra}
        entries[key] = entry
    text: str = yaml.safe_dump({"name": name, "channels": {"main": {"backend": "local"}},
                                "workers": entries}, sort_keys=False)
    return text


def write_project(root: Path, name: str, workers: Mapping[str, Mapping[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "agent_a.py").write_text(AGENT_A.format(version=1))
    (root / "agent_b.py").write_text(AGENT_B)
    (root / "common.py").write_text(COMMON.format(greeting="hello"))
    (root / "watcher.py").write_text(WATCHER)
    (root / "crashy.py").write_text(CRASHY)
    path = root / "workers.yaml"
    path.write_text(topology(name, workers))
    return path


# -- helpers -------------------------------------------------------------------------------


def start(cli: Cli, name: str, *, ok: bool = True) -> dict[str, dict[str, Any]]:
    """``up -d --reload``, then wait until every running worker is registered on the bus."""
    up = cli.run("up", "-d", "--reload", "workers.yaml", timeout=60)
    assert up.returncode == (0 if ok else 1), (up.stdout, up.stderr)
    status = cli.wait_ps(lambda s: all(w["registered"] for w in s["workers"]
                                       if w["state"] == "ready"),
                         timeout=10, what="every ready worker registered")
    assert status["project"] == name
    return workers_by_name(status)


def log_of(cli: Cli, project: str, worker: str) -> str:
    """A worker's log file as written (read directly: polling it costs no CLI start)."""
    path = cli.cwd / ".workers" / project / "logs" / f"{worker}.log"
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def supervisor_log(cli: Cli, project: str) -> str:
    return (cli.cwd / ".workers" / project / "supervisor.log").read_text()


def wait_log(cli: Cli, project: str, worker: str, needle: str, *, count: int = 1,
             timeout: float = 10) -> str:
    """Wait until ``needle`` is in ``worker``'s log ``count`` times; the log."""

    def probe() -> str | None:
        text = log_of(cli, project, worker)
        return text if text.count(needle) >= count else None

    return wait_for(probe, timeout=timeout, what=f"{needle!r} x{count} in {worker}'s log")


def reloads(log: str) -> list[str]:
    """The files named by the supervisor's reload notes in a worker's log."""
    return re.findall(r" sup reloading: (.+) changed$", log, re.M)


def pids(workers: Mapping[str, Mapping[str, Any]]) -> dict[str, int | None]:
    return {name: w["pid"] for name, w in workers.items()}


def edit(path: Path, text: str) -> None:
    """Replace a file's content (always with something new: editors' saves differ too)."""
    assert path.read_text() != text
    path.write_text(text)


def restarted(name: str, old_pid: int, restarts: int) -> Callable[[dict[str, Any]], bool]:
    """A ``wait_ps`` predicate: ``name`` is ready and registered with a new pid."""

    def check(status: dict[str, Any]) -> bool:
        worker = workers_by_name(status).get(name)
        return bool(worker and worker["state"] == "ready" and worker["registered"]
                    and worker["pid"] not in (None, old_pid)
                    and worker["restarts"] == restarts)

    return check


def untouched(now: Mapping[str, Mapping[str, Any]], before: Mapping[str, Mapping[str, Any]],
              *names: str) -> None:
    for name in names:
        assert (now[name]["pid"], now[name]["restarts"], now[name]["state"]) == (
            before[name]["pid"], before[name]["restarts"], "ready"), (name, dict(now))


# -- a worker's module -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_editing_a_module_restarts_only_the_workers_that_imported_it(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "edits", {k: {} for k in THREE})
    cli = clis(tmp_path)
    before = start(cli, "edits")
    assert all(w["state"] == "ready" for w in before.values()), before
    wait_log(cli, "edits", "watcher", "saw-ready a")

    # A job in flight to a: it must end when a restarts, not hang.
    call = cli.popen("call", "a", "--job", "slow", "--timeout", "30")
    wait_log(cli, "edits", "a", "slow-started")
    edited_at = time.monotonic()
    edit(tmp_path / "agent_a.py", AGENT_A.format(version=2))

    code = call.wait(timeout=10)
    ended_after = time.monotonic() - edited_at
    output = "\n".join(call.out.rest() + call.err.rest())
    assert code == 1, output
    assert re.search(r"^(cancelled|error): ", output, re.M), output
    assert ended_after < 5, f"the job ended {ended_after:.1f} s after the edit"

    after = workers_by_name(cli.wait_ps(restarted("a", before["a"]["pid"], 1), timeout=10,
                                        what="a restarted once"))
    untouched(after, before, "b", "watcher")
    wait_gone([before["a"]["pid"]], timeout=3)
    assert reloads(log_of(cli, "edits", "a")) == ["agent_a.py"]
    assert reloads(log_of(cli, "edits", "b")) == reloads(log_of(cli, "edits", "watcher")) == []

    # Its watcher saw it go and come back: @worker_ready ran again.
    watched = wait_log(cli, "edits", "watcher", "saw-ready a", count=2)
    assert watched.count("saw-lost a") == 1, watched
    assert watched.index("saw-lost a") < watched.rindex("saw-ready a"), watched

    # The new code runs; `workers logs` shows the note naming the file.
    answer, logs = cli.run_many(("call", "a", "--job", "version", "--json"), ("logs", "a"))
    assert answer.returncode == 0, (answer.stdout, answer.stderr)
    response = json.loads(answer.stdout.splitlines()[-1])
    assert response["data"] == {"version": 2, "pid": after["a"]["pid"]}, response
    assert re.search(r"^a \| \[reloading: agent_a\.py changed\]$", logs.stdout, re.M), (
        logs.stdout)

    # A module only b imports (through agent_b.py) restarts b, not a nor the watcher.
    edit(tmp_path / "common.py", COMMON.format(greeting="bonjour"))
    final = workers_by_name(cli.wait_ps(restarted("b", before["b"]["pid"], 1), timeout=10,
                                        what="b restarted once"))
    untouched(final, after, "a", "watcher")
    assert reloads(log_of(cli, "edits", "b")) == ["common.py"]
    greet = cli.run("call", "b", "--job", "greet", "--json")
    assert greet.returncode == 0, (greet.stdout, greet.stderr)
    assert json.loads(greet.stdout.splitlines()[-1])["data"]["greeting"] == "bonjour"


# -- a syntax error parks the worker ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_syntax_error_parks_the_worker_until_the_next_edit_fixes_it(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "parks", {k: {} for k in THREE})
    cli = clis(tmp_path)
    before = start(cli, "parks")
    module = tmp_path / "agent_a.py"
    edit(module, AGENT_A.format(version=2) + "\ndef broken(:\n")

    def parked(status: dict[str, Any]) -> bool:
        a = workers_by_name(status)["a"]
        return bool(a["state"] == "crashed" and a["reason"] == "waiting for a change")

    status = cli.wait_ps(parked, timeout=10, what="a crashed and waiting for a change")
    a = workers_by_name(status)["a"]
    assert a["pid"] is None and a["restarts"] == 1, a  # the reload's restart, no more
    untouched(workers_by_name(status), before, "b", "watcher")
    log = wait_log(cli, "parks", "a", "crashed: waiting for a change to restart it")
    assert re.search(r"syntax error in agent_a\.py:\d+", log), log
    assert log.count(" sup started, pid ") == 2, log

    # Not a restart loop: it stays down, however long we look.
    for _ in range(3):
        time.sleep(0.3)
        again = workers_by_name(cli.ps())["a"]
        assert (again["state"], again["restarts"], again["pid"]) == ("crashed", 1, None), again
    assert log_of(cli, "parks", "a").count(" sup started, pid ") == 2
    table = cli.run("ps")
    assert table.returncode == 0, table.stderr
    assert re.search(r"^a\s+crashed.*waiting for a", table.stdout, re.M), table.stdout

    # The fix brings it back, with the fixed code.
    edit(module, AGENT_A.format(version=3))
    after = workers_by_name(cli.wait_ps(restarted("a", before["a"]["pid"], 2), timeout=10,
                                        what="a ready again after the fix"))
    untouched(after, before, "b", "watcher")
    assert reloads(log_of(cli, "parks", "a")) == ["agent_a.py", "agent_a.py"]
    answer = cli.run("call", "a", "--job", "version", "--json")
    assert answer.returncode == 0, (answer.stdout, answer.stderr)
    assert json.loads(answer.stdout.splitlines()[-1])["data"]["version"] == 3


@pytest.mark.timeout(60)
def test_ps_says_a_crashed_worker_is_parked(tmp_path: Path,
                                            clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "flagged", {"crasher": {}, "b": {}})
    cli = clis(tmp_path)
    start(cli, "flagged", ok=False)  # up -d reports the crash, and the project keeps running
    status = cli.wait_ps(lambda s: workers_by_name(s)["crasher"]["state"] == "crashed",
                         timeout=10, what="the crasher parked")
    crasher = workers_by_name(status)["crasher"]
    assert status["running"] is True
    assert crasher["reason"] == "waiting for a change", crasher
    assert crasher["parked"] is True, crasher
    table = cli.run("ps")
    assert re.search(r"^crasher\s+crashed\s.*\swaiting for a change\s*$", table.stdout,
                     re.M), (
        table.stdout)


# -- the topology file ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_editing_the_topology_applies_the_difference(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    path = write_project(tmp_path, "topo", {k: {} for k in THREE})
    cli = clis(tmp_path)
    before = start(cli, "topo")
    wait_log(cli, "topo", "watcher", "saw-ready a")

    # b removed, c added (it runs B's code), a changed (its env); the watcher moves up in the
    # file, but its entry is the same: it keeps running.
    edit(path, topology("topo", {"watcher": {}, "c": {"class": CLASSES["b"]},
                                 "a": {"env": {"LOG_LEVEL": "WARNING", "EDITED": "1"}}}))

    def applied(status: dict[str, Any]) -> bool:
        workers = workers_by_name(status)
        return set(workers) == {"a", "watcher", "c"} and all(
            w["state"] == "ready" and w["registered"] for w in workers.values()) and (
            workers["a"]["pid"] != before["a"]["pid"])

    after = workers_by_name(cli.wait_ps(applied, timeout=10, what="the edit applied"))
    assert after["a"]["restarts"] == 1, after["a"]
    assert after["c"]["restarts"] == 0, after["c"]
    untouched(after, before, "watcher")
    wait_gone([before["a"]["pid"], before["b"]["pid"]], timeout=3)
    assert " sup changed in the topology" in log_of(cli, "topo", "a")
    assert " sup removed from the topology" in log_of(cli, "topo", "b")
    assert " sup added to the topology" in log_of(cli, "topo", "c")
    assert "applying the edited workers.yaml" in supervisor_log(cli, "topo")
    watched = wait_log(cli, "topo", "watcher", "saw-ready a", count=2)
    assert watched.count("saw-lost a") == 1, watched

    # The new worker is a real one; the removed one is really gone.
    answer, gone = cli.run_many(("call", "c", "--job", "greet", "--json"),
                                ("call", "b", "--job", "greet", "--timeout", "3"))
    assert answer.returncode == 0, (answer.stdout, answer.stderr)
    assert json.loads(answer.stdout.splitlines()[-1])["data"]["pid"] == after["c"]["pid"]
    assert gone.returncode != 0, (gone.stdout, gone.stderr)

    # A broken edit changes nothing, and says why.
    edit(path, path.read_text().replace("  watcher:\n", "  watcher:\n    colour: blue\n"))
    wait_for(lambda: "topology not applied" in supervisor_log(cli, "topo"), timeout=10,
             what="'topology not applied' in supervisor.log")
    assert "colour" in supervisor_log(cli, "topo")
    untouched(workers_by_name(cli.ps()), after, "a", "watcher", "c")


@pytest.mark.timeout(60)
def test_removing_a_worker_while_editing_its_module_stops_it(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    path = write_project(tmp_path, "race", {k: {} for k in THREE})
    cli = clis(tmp_path)
    before = start(cli, "race")
    supervisor = cli.ps()["supervisor_pid"]
    try:
        path.write_text(topology("race", {"a": {}, "watcher": {}}))
        (tmp_path / "agent_b.py").write_text(AGENT_B + "# b is going away\n")
        status = cli.wait_ps(lambda s: set(workers_by_name(s)) == {"a", "watcher"},
                             timeout=4, what="b gone from ps")
        untouched(workers_by_name(status), before, "a", "watcher")
        down = cli.run("down", "--timeout", "5", timeout=10)
        assert down.returncode == 0, (down.stdout, down.stderr)
    finally:
        if not pid_gone(supervisor):  # stuck: do not leave it to cleanup's 10 s `down`
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)


# -- what must not trigger a reload ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_edits_in_ignored_directories_restart_nothing(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    """A parked worker restarts on *any* Python change, so it shows whether an ignored file
    got through: it must restart for the control edit only."""
    write_project(tmp_path, "ignores", {"crasher": {}, "a": {}, "b": {}})
    cli = clis(tmp_path)
    before = start(cli, "ignores", ok=False)
    status = cli.wait_ps(lambda s: workers_by_name(s)["crasher"]["state"] == "crashed",
                         timeout=10, what="the crasher parked")
    assert workers_by_name(status)["crasher"]["restarts"] == 0

    ignored = [".venv/lib/python3/site-packages/agent_a.py", "venv/bin/x.py",
               "__pycache__/agent_a.py", ".workers/ignores/x.py", ".workers/x.yaml",
               ".git/hooks/post_commit.py", ".git/workers.yaml", "node_modules/pkg/x.py",
               ".mypy_cache/x.py", ".pytest_cache/x.py", ".ruff_cache/x.py",
               "pkg/__pycache__/mod.py", "notes.txt", "README.md", "data.json",
               "agent_a.pyc", ".#agent_a.py", "other.yaml"]
    for name in ignored:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x = 1\n")
    time.sleep(0.2)  # a batch ends after 50 ms of quiet: these would be a batch of their own
    for name in ignored:
        (tmp_path / name).write_text("x = 2\n")
    time.sleep(0.2)

    # The control: a Python file nobody imports restarts the parked worker (only).
    (tmp_path / "scratch.py").write_text("# a new file\n")
    wait_log(cli, "ignores", "crasher", "crashing", count=2)
    status = cli.wait_ps(lambda s: workers_by_name(s)["crasher"]["state"] == "crashed",
                         timeout=10, what="the crasher parked again")
    time.sleep(0.3)
    after = workers_by_name(cli.ps())
    assert after["crasher"]["restarts"] == 1, brief(cli.ps())
    assert reloads(log_of(cli, "ignores", "crasher")) == ["scratch.py"]
    untouched(after, before, "a", "b")
    assert reloads(log_of(cli, "ignores", "a")) == reloads(log_of(cli, "ignores", "b")) == []
    assert "applying the edited" not in supervisor_log(cli, "ignores")
