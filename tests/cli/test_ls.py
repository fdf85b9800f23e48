"""``workers ls``: the projects found from a directory and their state, and ``--prune``, which
deletes the state of projects that are not running and never of a running one."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cliproj import Cli, pid_gone, wait_for, write_project
from pipecat_workers_cli.listing import list_projects, project_entry, prune
from pipecat_workers_cli.supervisor.statedir import StateDir

# -- the logic, on state directories written by hand ---------------------------------------


def state_dir(root: Path, name: str, *, running: bool = False,
              states: tuple[str, ...] = ("stopped",)) -> StateDir:
    """A project's state directory as a supervisor leaves it."""
    state = StateDir.of(root, name)
    state.make()
    state.write_state({
        "project": name, "file": str(root / f"{name}.yaml"), "running": running,
        "supervisor_pid": 4242,
        "workers": [{"name": f"w{i}", "worker": f"w{i}", "channel": "main", "state": s}
                    for i, s in enumerate(states)],
        "channels": []})
    (state.logs_dir / "w0.log").write_text("x\n")
    return state


@contextmanager
def held(state: StateDir) -> Iterator[None]:
    """Hold the project's lock, as its live supervisor does."""
    fd = os.open(state.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_a_project_is_running_stopped_or_crashed(tmp_path: Path) -> None:
    live = state_dir(tmp_path, "live", running=True, states=("ready", "starting", "backing off"))
    done = state_dir(tmp_path, "done", states=("exited", "stopped"))
    killed = state_dir(tmp_path, "killed", running=True, states=("ready",))
    failed = state_dir(tmp_path, "failed", states=("stopped", "failed"))
    with held(live):
        entries = {e.name: e for _, e in list_projects(tmp_path)}
    assert {n: e.describe() for n, e in entries.items()} == {
        "live": "running (2 of 3 workers)", "done": "stopped", "killed": "crashed",
        "failed": "crashed"}
    entry = entries["live"]
    assert (entry.root, entry.file, entry.state_dir, entry.supervisor_pid) == (
        str(tmp_path), str(tmp_path / "live.yaml"), str(live.path), 4242)
    assert entries["done"].supervisor_pid is None
    assert json.loads(json.dumps(entry.to_json()))["state"] == "running"
    assert project_entry(done).workers == 0 and project_entry(done).total == 2
    assert {s.project for s in (killed, failed)} <= set(entries)


def test_a_project_found_from_a_subdirectory(tmp_path: Path) -> None:
    state_dir(tmp_path, "up-here")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert [e.name for _, e in list_projects(tmp_path / "a" / "b")] == ["up-here"]
    assert list_projects(tmp_path.parent / "elsewhere-that-does-not-exist") == []


def test_prune_deletes_what_does_not_run_and_keeps_a_running_project(tmp_path: Path) -> None:
    live = state_dir(tmp_path, "live", running=True, states=("ready",))
    done = state_dir(tmp_path, "done")
    crashed = state_dir(tmp_path, "crashed", running=True, states=("ready",))
    with held(live):
        assert [e.name for e in prune(tmp_path, "done")] == ["done"]  # that one only
        assert crashed.path.is_dir()
        done = state_dir(tmp_path, "done")
        removed = prune(tmp_path)
        assert sorted(e.name for e in removed) == ["crashed", "done"]
        assert live.path.is_dir() and (live.logs_dir / "w0.log").exists()
    assert not done.path.exists() and not crashed.path.exists()
    # Its supervisor gone without recording its end: crashed, and pruned.
    assert [(e.name, e.state) for e in prune(tmp_path)] == [("live", "crashed")]
    assert not live.path.exists() and prune(tmp_path) == []


def test_prune_removes_a_link_but_not_what_it_links_to(tmp_path: Path) -> None:
    elsewhere = tmp_path / "kept"
    elsewhere.mkdir()
    state = state_dir(elsewhere, "linked")
    (tmp_path / ".workers").mkdir(mode=0o700)
    (tmp_path / ".workers" / "linked").symlink_to(state.path)
    assert [e.name for e in prune(tmp_path)] == ["linked"]
    assert not (tmp_path / ".workers" / "linked").exists()
    assert (state.logs_dir / "w0.log").exists()


# -- the real program ----------------------------------------------------------------------


def ls_json(cli: Cli, *args: str) -> list[dict[str, Any]]:
    result = cli.run("ls", "--json", *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


@pytest.mark.skipif(sys.platform != "linux", reason="the supervisor is tested on Linux")
@pytest.mark.timeout(90)
def test_ls_and_prune_with_the_real_program(tmp_path: Path,
                                            clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "alpha", {"echo": {"class": "Echo"}, "peer": {"class": "Echo"}},
                  file="alpha.yaml")
    write_project(tmp_path, "beta", {"echo": {"class": "Echo"}}, file="beta.yaml")
    write_project(tmp_path, "gamma", {"echo": {"class": "Echo"}}, file="gamma.yaml")
    cli = clis(tmp_path)
    for file in ("alpha.yaml", "beta.yaml", "gamma.yaml"):
        up = cli.run("up", "-d", file, timeout=60)
        assert up.returncode == 0, (up.stdout, up.stderr)
    assert cli.run("-p", "beta", "down").returncode == 0
    gamma = json.loads((tmp_path / ".workers/gamma/state.json").read_text())["supervisor_pid"]
    os.kill(gamma, signal.SIGKILL)  # its workers die with it
    wait_for(lambda: pid_gone(gamma), timeout=5, what="gamma's supervisor gone")

    entries = {e["name"]: e for e in ls_json(cli)}
    assert {n: e["state"] for n, e in entries.items()} == {
        "alpha": "running", "beta": "stopped", "gamma": "crashed"}
    assert (entries["alpha"]["workers"], entries["alpha"]["total"]) == (2, 2)
    assert entries["alpha"]["file"] == str(tmp_path / "alpha.yaml")
    assert entries["alpha"]["root"] == str(tmp_path)

    (tmp_path / "sub").mkdir()
    table = cli.run("ls", cwd=tmp_path / "sub")
    assert table.returncode == 0, table.stderr
    rows = {ln.split()[0]: ln for ln in table.stdout.splitlines()[1:] if ln.strip()}
    assert "running (2 workers)" in rows["alpha"] and str(tmp_path / "alpha.yaml") in rows[
        "alpha"]
    assert rows["beta"].split()[1] == "stopped" and rows["gamma"].split()[1] == "crashed"

    pruned = cli.run("ls", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert sorted(pruned.stdout.splitlines()) == [
        "removed beta (stopped): .workers/beta", "removed gamma (crashed): .workers/gamma"]
    assert [e["name"] for e in ls_json(cli)] == ["alpha"]
    assert cli.ps()["running"] is True  # the running project is untouched
    again = cli.run("ls", "--prune")
    assert again.stdout.strip() == "nothing to prune: no stopped project here"
    named = cli.run("-p", "alpha", "ls", "--prune")
    assert named.stdout.strip() == "nothing to prune: 'alpha' is running", named
    unknown = cli.run("-p", "nope", "ls")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1, "error: no project named 'nope' here"), unknown
    assert cli.run("down").returncode == 0
    assert [e["name"] for e in ls_json(cli, "--prune")] == ["alpha"]
    assert ls_json(cli) == []
