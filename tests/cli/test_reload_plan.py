"""Hot reload without processes: what a batch of changed files means (:func:`plan`), which
files may trigger a reload at all (:class:`ProjectFilter`, :class:`ChangeWatcher`), and how
the supervisor's state machine behaves under ``reload=True`` (parking a crashed worker, quick
restarts, applying an edited topology), with a fake clock.

The end-to-end behaviour, with real files and processes, is in ``test_reload.py``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import T0, FakeClock
from pipecat_workers_cli.host import EXIT_CONFIG
from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.supervisor.driver import Supervisor
from pipecat_workers_cli.supervisor.machine import (
    Drain,
    Kill,
    Machine,
    Note,
    Spawn,
    State,
    Timing,
    same_process,
)
from pipecat_workers_cli.supervisor.reload import (
    DEBOUNCE_STEP_MS,
    ChangeWatcher,
    ProjectFilter,
    ReloadPlan,
    plan,
)
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.topology.model import (
    ChannelSpec,
    ProcessSpec,
    RestartPolicy,
    Topology,
    WorkerSpec,
    expand,
)
from watchfiles import Change

SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL
ROOT = Path("/project")
TOPOLOGY = ROOT / "workers.yaml"
A_PY, B_PY, COMMON_PY = ROOT / "agent_a.py", ROOT / "agent_b.py", ROOT / "common.py"


# -- plan() ------------------------------------------------------------------------------


def imports(**files: list[Path]) -> dict[str, set[str]]:
    """What each worker reported it imported (resolved path strings, as the host sends)."""
    return {worker: {str(p) for p in paths} for worker, paths in files.items()}


RUNNING = imports(a=[A_PY, COMMON_PY], b=[B_PY, COMMON_PY], watcher=[ROOT / "watcher.py"])


def test_an_imported_file_restarts_only_the_workers_that_imported_it() -> None:
    result = plan({A_PY}, topology=TOPOLOGY, imports=RUNNING, parked=())
    assert result == ReloadPlan(topology_changed=False, restart={"a": A_PY})
    assert result


def test_a_shared_module_restarts_every_worker_that_imported_it() -> None:
    result = plan({COMMON_PY}, topology=TOPOLOGY, imports=RUNNING, parked=())
    assert result.restart == {"a": COMMON_PY, "b": COMMON_PY}
    assert not result.topology_changed


def test_each_worker_is_named_with_a_file_of_its_own_that_changed() -> None:
    result = plan({A_PY, B_PY}, topology=TOPOLOGY, imports=RUNNING, parked=())
    assert result.restart == {"a": A_PY, "b": B_PY}


def test_of_several_changed_files_a_worker_imported_the_first_in_path_order_is_named() -> None:
    result = plan({COMMON_PY, A_PY}, topology=TOPOLOGY, imports=RUNNING, parked=())
    assert result.restart == {"a": A_PY, "b": COMMON_PY}  # agent_a.py < common.py


def test_a_python_file_nobody_imported_restarts_nobody() -> None:
    result = plan({ROOT / "scratch.py"}, topology=TOPOLOGY, imports=RUNNING, parked=())
    assert result == ReloadPlan()


def test_nothing_changed_is_an_empty_plan() -> None:
    assert plan(set(), topology=TOPOLOGY, imports=RUNNING, parked=["a"]) == ReloadPlan()


def test_the_topology_file_is_detected_and_restarts_nobody_by_itself() -> None:
    result = plan({TOPOLOGY}, topology=TOPOLOGY, imports=RUNNING, parked=["a"])
    assert result == ReloadPlan(topology_changed=True, restart={})
    assert result  # a plan with only a topology change is still something to do


def test_the_topology_path_is_compared_resolved(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    indirect = tmp_path / "sub" / ".." / "workers.yaml"
    result = plan({(tmp_path / "workers.yaml").resolve()}, topology=indirect, imports={},
                  parked=())
    assert result.topology_changed


def test_another_yaml_file_is_not_the_topology() -> None:
    result = plan({ROOT / "other.yaml"}, topology=TOPOLOGY, imports=RUNNING, parked=())
    assert result == ReloadPlan()


def test_the_topology_and_a_module_in_one_batch() -> None:
    result = plan({TOPOLOGY, B_PY}, topology=TOPOLOGY, imports=RUNNING, parked=())
    assert result == ReloadPlan(topology_changed=True, restart={"b": B_PY})


def test_a_parked_worker_restarts_on_any_python_change_named_by_the_first_source() -> None:
    """What broke it may be a file it never got to import (a syntax error, say)."""
    scratch, other = ROOT / "aaa.py", ROOT / "zzz.py"
    result = plan({other, scratch}, topology=TOPOLOGY, imports=RUNNING, parked=["a"])
    assert result.restart == {"a": scratch}  # sorted: the first of the batch


def test_a_parked_worker_that_imported_the_changed_file_is_named_with_it() -> None:
    result = plan({ROOT / "aaa.py", A_PY}, topology=TOPOLOGY, imports=RUNNING,
                  parked=["a"])
    assert result.restart == {"a": A_PY}


def test_a_parked_worker_that_never_got_ready_has_no_imports_and_still_restarts() -> None:
    result = plan({ROOT / "x.py"}, topology=TOPOLOGY, imports={}, parked=["newcomer"])
    assert result.restart == {"newcomer": ROOT / "x.py"}


@pytest.mark.parametrize("name", ["notes.txt", "README.md", "data.json", "other.yaml",
                                  "settings.toml"])
def test_non_python_changes_restart_nobody_not_even_a_parked_worker(name: str) -> None:
    result = plan({ROOT / name}, topology=TOPOLOGY, imports=imports(a=[ROOT / name]),
                  parked=["a", "b"])
    assert result == ReloadPlan()


def test_a_topology_edit_alone_does_not_restart_a_parked_worker() -> None:
    """It is restarted by the topology's difference (if its entry changed), not by plan()."""
    assert plan({TOPOLOGY}, topology=TOPOLOGY, imports={}, parked=["a"]).restart == {}


# -- ProjectFilter -----------------------------------------------------------------------


@pytest.mark.parametrize("directory", [
    ".git", ".hg", ".svn", ".venv", "venv", "env", "__pycache__", ".workers", "node_modules",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".tox", ".nox", ".idea",
    "build", "dist", ".eggs",
])
def test_files_in_ignored_directories_never_trigger(directory: str) -> None:
    accept = ProjectFilter()
    for path in (f"/project/{directory}/agent.py", f"/project/{directory}/deep/er/x.py",
                 f"/project/pkg/{directory}/workers.yaml"):
        for change in Change:
            assert not accept(change, path), (change, path)


@pytest.mark.parametrize("name", [
    "notes.txt", "README.md", "state.json", "agent.pyc", "agent.pyo", "supervisor.log",
    "pyproject.toml", "agent.py~", "agent.py.swp", ".agent.py.swp", "Makefile", "agent.pyi",
    "agent.py___jb_tmp___",
])
def test_non_source_files_never_trigger(name: str) -> None:
    accept = ProjectFilter()
    assert not accept(Change.modified, f"/project/{name}")
    assert not accept(Change.added, f"/project/pkg/{name}")


def test_editor_lock_files_that_end_in_py_never_trigger() -> None:
    assert not ProjectFilter()(Change.added, "/project/.#agent_a.py")  # emacs


@pytest.mark.parametrize("name", ["agent_a.py", "pkg/sub/mod.py", "workers.yaml",
                                  "configs/topology.yml", ".hidden_module.py",
                                  "environment.py", "builder/x.py", "my.venv.py",
                                  ".services/x.py", ".benchmarks/x.py"])
def test_python_and_yaml_files_trigger_on_every_kind_of_change(name: str) -> None:
    accept = ProjectFilter()
    for change in Change:
        assert accept(change, f"/project/{name}"), (change, name)


# -- ChangeWatcher, on real files ------------------------------------------------------------


async def _first_batch(watcher: ChangeWatcher, write: Any, timeout: float = 5.0
                       ) -> set[Path]:
    """Start watching, let the watcher settle, call ``write``, return the first batch."""

    async def first() -> set[Path]:
        async for batch in watcher.changes():
            return batch
        raise AssertionError("the watcher stopped without a batch")

    task = asyncio.ensure_future(first())
    try:
        await asyncio.sleep(0.3)  # awatch has no "now watching" signal
        write()
        return await asyncio.wait_for(task, timeout)
    finally:
        watcher.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_watcher_reports_sources_and_skips_ignored_directories(tmp_path: Path
                                                                         ) -> None:
    root = tmp_path / "proj"
    for directory in (".git", ".venv/lib", "__pycache__", ".workers/proj/logs",
                      "node_modules/x", "venv"):
        (root / directory).mkdir(parents=True)

    def write() -> None:
        for directory in (".git", ".venv/lib", "__pycache__", ".workers/proj/logs",
                          "node_modules/x", "venv"):
            (root / directory / "ignored.py").write_text("x = 1\n")
        (root / ".workers/proj/logs/a.log").write_text("a log line\n")
        (root / "notes.txt").write_text("not a source\n")
        (root / "agent_a.py").write_text("x = 1\n")

    batch = await _first_batch(ChangeWatcher(root), write)
    assert batch == {(root / "agent_a.py").resolve()}


async def test_the_watcher_groups_a_save_burst_into_one_batch(tmp_path: Path) -> None:
    def write() -> None:
        (tmp_path / "agent_a.py").write_text("a = 1\n")
        (tmp_path / "agent_b.py").write_text("b = 1\n")
        (tmp_path / "workers.yaml").write_text("name: x\n")

    batch = await _first_batch(ChangeWatcher(tmp_path), write)
    assert batch == {(tmp_path / n).resolve() for n in ("agent_a.py", "agent_b.py",
                                                         "workers.yaml")}
    assert DEBOUNCE_STEP_MS <= 100  # a reload waits for this much quiet, no more


async def test_the_watcher_also_watches_a_topology_outside_the_project(tmp_path: Path
                                                                       ) -> None:
    root, elsewhere = tmp_path / "proj", tmp_path / "configs"
    root.mkdir()
    elsewhere.mkdir()
    batch = await _first_batch(ChangeWatcher(root, extra=[elsewhere]),
                               lambda: (elsewhere / "workers.yaml").write_text("name: x\n"))
    assert batch == {(elsewhere / "workers.yaml").resolve()}


async def test_a_project_inside_a_directory_with_an_ignored_name_still_reloads(
        tmp_path: Path) -> None:
    root = tmp_path / "build" / "proj"
    root.mkdir(parents=True)
    batch = await _first_batch(ChangeWatcher(root),
                               lambda: (root / "agent_a.py").write_text("x = 1\n"),
                               timeout=2.0)
    assert batch == {(root / "agent_a.py").resolve()}


# -- the machine in reload mode ------------------------------------------------------------


def specs(workers: Mapping[str, Mapping[str, Any]], *, root: Path = ROOT
          ) -> list[ProcessSpec]:
    """The processes of a one-channel project whose workers are ``{key: WorkerSpec fields}``
    (the class defaults to ``app:<Key>``)."""
    channel = ChannelSpec(key="main", channel="proj.main")
    made = {}
    for key, fields in workers.items():
        fields = dict(fields)
        fields.setdefault("class_path", f"app:{key.title()}")
        made[key] = WorkerSpec(key=key, **fields)
    return expand(Topology(name="proj", path=root / "workers.yaml", root=root,
                           channels={"main": channel}, workers=made))


def reload_machine(workers: Mapping[str, Mapping[str, Any]], **timing: Any
                   ) -> tuple[Machine, FakeClock]:
    clock = FakeClock()
    return Machine(specs(workers), clock, lambda: 0.5, Timing(**timing), reload=True), clock


def running(workers: Mapping[str, Mapping[str, Any]], **timing: Any
            ) -> tuple[Machine, FakeClock]:
    """A reload-mode machine with every worker started and ready (pids from 1000)."""
    m, clock = reload_machine(workers, **timing)
    m.start()
    for pid, name in enumerate(list(m.procs), start=1000):
        if m.procs[name].state is State.STARTING:
            m.spawned(name, pid)
            m.ready(name)
    assert all(p.state is State.READY for p in m.procs.values()), states(m)
    return m, clock


def states(m: Machine) -> dict[str, State]:
    return {name: proc.state for name, proc in m.procs.items()}


def spawns(actions: list[Any]) -> list[str]:
    return [a.name for a in actions if isinstance(a, Spawn)]


THREE: dict[str, dict[str, Any]] = {"a": {}, "b": {}, "watcher": {}}


@pytest.mark.parametrize("code", [1, 3, -SIGKILL, EXIT_CONFIG])
def test_a_crash_in_reload_mode_parks_the_worker_without_backoff(code: int) -> None:
    m, clock = running(THREE)
    actions = m.exited("a", code)
    assert actions == [Note("a", f"exited with {'SIGKILL' if code < 0 else f'code {code}'}"),
                       Note("a", "crashed: waiting for a change to restart it")]
    proc = m.procs["a"]
    assert (proc.state, proc.reason, proc.deadline, proc.exit_code) == (
        State.CRASHED, "waiting for a change", None, code)
    assert m.parked() == ["a"]
    assert m.is_parked(proc)
    assert not m.in_crash_loop(proc)
    # No back-off: time passing never spawns it again.
    assert m.next_deadline() is None
    clock.advance(3600)
    assert m.tick() == []
    assert proc.state is State.CRASHED and proc.restarts == 0
    assert states(m) == {"a": State.CRASHED, "b": State.READY, "watcher": State.READY}


def test_a_worker_that_crashes_before_it_is_ready_is_parked_too() -> None:
    m, _ = reload_machine({"a": {}})
    assert m.start() == [Spawn("a")]
    m.spawned("a", 7)
    assert m.exited("a", 1)[-1] == Note("a", "crashed: waiting for a change to restart it")
    assert m.parked() == ["a"]


def test_a_clean_exit_in_reload_mode_follows_the_restart_policy() -> None:
    m, _ = running({"ends": {"restart": RestartPolicy.ON_FAILURE},
                    "loops": {"restart": RestartPolicy.ALWAYS}})
    assert m.exited("ends", 0) == [Note("ends", "exited with code 0")]
    assert m.procs["ends"].state is State.EXITED
    assert m.exited("loops", 0)[-1] == Note("loops", "restarting in 0.4 s")
    assert m.procs["loops"].state is State.BACKOFF
    assert m.parked() == []


def test_without_reload_a_crash_backs_off_and_nothing_is_parked() -> None:
    clock = FakeClock()
    m = Machine(specs({"a": {}}), clock, lambda: 0.5, Timing())
    m.start()
    m.spawned("a", 1)
    m.ready("a")
    assert m.exited("a", 1)[-1] == Note("a", "restarting in 0.4 s")
    assert m.parked() == []


def test_a_stopped_or_removed_crash_is_not_parked() -> None:
    m, _ = running(THREE)
    m.exited("a", 1)
    m.stop(["a"], hold=True)  # stopped by request: not waiting for a change any more
    assert m.parked() == []


def test_a_parked_worker_is_started_again_by_a_quick_restart() -> None:
    m, _ = running(THREE)
    m.exited("a", 1)
    assert m.restart(["a"], quick=True) == [Spawn("a")]
    proc = m.procs["a"]
    assert (proc.state, proc.restarts, proc.reason) == (State.STARTING, 1, "")
    m.spawned("a", 2000)
    assert m.ready("a") == [Note("a", "ready")]
    assert m.parked() == []


def test_a_parked_worker_does_not_stop_the_project_from_running_others() -> None:
    m, _ = running(THREE)
    m.exited("a", 1)
    assert not m.done  # b and watcher still run
    assert m.exit_code() == 1  # were everything to stop now, a's crash is the verdict


def test_a_quick_restart_of_a_ready_worker_sends_sigterm_without_draining() -> None:
    m, _ = running(THREE, term_timeout=5.0, kill_timeout=5.0)
    actions = m.restart(["a"], quick=True)
    assert actions == [Kill("a", SIGTERM)]
    assert not any(isinstance(a, Drain) for a in actions)
    proc = m.procs["a"]
    assert (proc.state, proc.phase, proc.deadline) == (State.STOPPING, "term", T0 + 5.0)
    assert m.exited("a", -SIGTERM) == [Note("a", "exited with SIGTERM"), Spawn("a")]
    assert (proc.state, proc.restarts, proc.quick_stop) == (State.STARTING, 1, False)
    m.spawned("a", 2000)
    m.ready("a")
    # The next ordinary restart drains again: quick was for that one stop only.
    assert m.restart(["a"]) == [Drain("a")]
    assert states(m) == {"a": State.STOPPING, "b": State.READY, "watcher": State.READY}


def test_a_quick_restart_that_ignores_sigterm_is_killed() -> None:
    m, clock = running(THREE, term_timeout=2.0)
    m.restart(["a"], quick=True)
    clock.advance(2.0)
    assert m.tick() == [Note("a", "still running after SIGTERM: SIGKILL"), Kill("a", SIGKILL)]
    assert m.exited("a", -SIGKILL)[-1] == Spawn("a")


def test_a_quick_restart_during_a_drain_keeps_the_drain_under_way() -> None:
    m, _ = running(THREE)
    assert m.restart(["a"]) == [Drain("a")]
    assert m.restart(["a"], quick=True) == []
    assert m.exited("a", 0) == [Note("a", "exited with code 0"), Spawn("a")]


def test_a_quick_restart_of_a_starting_worker_sends_sigterm() -> None:
    m, _ = reload_machine({"a": {}})
    m.start()
    m.spawned("a", 1)
    assert m.restart(["a"], quick=True) == [Kill("a", SIGTERM)]
    assert m.exited("a", -SIGTERM)[-1] == Spawn("a")


def test_a_quick_restart_leaves_dependents_running() -> None:
    m, _ = running({"db": {}, "api": {"depends_on": ("db",)}})
    assert m.restart(["db"], quick=True) == [Kill("db", SIGTERM)]
    assert m.procs["api"].state is State.READY
    assert m.exited("db", -SIGTERM)[-1] == Spawn("db")
    assert m.procs["api"].state is State.READY


# -- update(): applying an edited topology ------------------------------------------------


def test_update_with_the_same_topology_changes_nothing() -> None:
    m, _ = running(THREE)
    before = dict(m.procs)
    assert m.update(specs(THREE)) == []
    assert m.procs == before
    assert all(p.state is State.READY and p.restarts == 0 for p in m.procs.values())


def test_update_ignores_a_change_of_line_numbers_only() -> None:
    m, _ = running(THREE)
    moved = {key: {"line": 40 + i} for i, key in enumerate(THREE)}
    new = specs(moved)
    assert all(p.worker.line for p in new)
    assert m.update(new) == []
    assert all(p.state is State.READY for p in m.procs.values())
    channel_moved = [replace(p, channel=replace(p.channel, line=3)) for p in specs(THREE)]
    assert m.update(channel_moved) == []


def test_same_process_compares_everything_but_where_it_sits_in_the_file() -> None:
    old = specs({"a": {"line": 3}})[0]
    assert same_process(old, replace(old, worker=replace(old.worker, line=9)))
    for change in ({"args": {"x": 1}}, {"env": {"V": "1"}}, {"class_path": "app:Other"},
                   {"stop_timeout": 1.0}, {"ready_timeout": 1.0},
                   {"restart": RestartPolicy.NO}, {"depends_on": ("b",)},
                   {"max_restarts": 3}):
        assert not same_process(old, replace(old, worker=replace(old.worker, **change))), change
    assert not same_process(old, replace(old, channel=replace(old.channel, channel="x")))
    # The process names of its dependencies change when they are scaled: not a change.
    assert same_process(old, replace(old, depends_on=("b.1", "b.2")))


def test_update_starts_added_stops_removed_restarts_changed_and_keeps_the_rest() -> None:
    m, _ = running(THREE)
    untouched = m.procs["watcher"]
    edited = specs({"a": {"args": {"greeting": "hi"}}, "watcher": {}, "c": {}})
    actions = m.update(edited)
    assert Note("a", "changed in the topology") in actions
    assert Note("b", "removed from the topology") in actions
    assert Note("c", "added to the topology") in actions
    assert Kill("a", SIGTERM) in actions
    assert Kill("b", SIGTERM) in actions  # quick: a removed worker is not drained either
    assert not any(isinstance(a, Drain) for a in actions)
    assert spawns(actions) == ["c"]
    assert not any(getattr(a, "name", "") == "watcher" for a in actions)
    assert states(m) == {"a": State.STOPPING, "watcher": State.READY, "c": State.STARTING,
                         "b": State.STOPPING}
    assert m.procs["watcher"] is untouched and untouched.pid is not None
    assert m.procs["a"].spec.worker.args == {"greeting": "hi"}  # the new spec is taken

    # The changed worker comes back; the removed one is forgotten once it has stopped.
    assert m.exited("a", -SIGTERM) == [Note("a", "exited with SIGTERM"), Spawn("a")]
    assert m.procs["a"].restarts == 1
    assert m.exited("b", -SIGTERM) == [Note("b", "exited with SIGTERM")]
    assert "b" not in m.procs
    assert list(m.procs) == ["a", "watcher", "c"]
    m.spawned("c", 3000)
    m.ready("c")
    m.spawned("a", 3001)
    m.ready("a")
    assert all(p.state is State.READY for p in m.procs.values())
    assert m.unknown(["b"]) == ["b"]


def test_a_removed_worker_escalates_to_sigkill_and_is_then_forgotten() -> None:
    m, clock = running(THREE, term_timeout=1.0, kill_timeout=1.0)
    m.update(specs({"a": {}, "watcher": {}}))
    clock.advance(1.0)
    assert m.tick() == [Note("b", "still running after SIGTERM: SIGKILL"), Kill("b", SIGKILL)]
    assert "b" in m.procs
    m.exited("b", -SIGKILL)
    assert "b" not in m.procs


def test_a_removed_worker_that_is_not_running_is_forgotten_at_once() -> None:
    m, _ = running(THREE)
    m.exited("b", 1)  # parked
    actions = m.update(specs({"a": {}, "watcher": {}}))
    assert actions == [Note("b", "removed from the topology")]
    assert list(m.procs) == ["a", "watcher"]
    assert m.parked() == []


def test_a_changed_parked_worker_is_started_with_its_new_spec() -> None:
    m, _ = running(THREE)
    m.exited("a", 1)
    actions = m.update(specs({"a": {"class_path": "app:Fixed"}, "b": {}, "watcher": {}}))
    assert actions == [Note("a", "changed in the topology"), Spawn("a")]
    assert m.procs["a"].spec.worker.class_path == "app:Fixed"


def test_an_added_worker_waits_for_its_dependencies_and_a_removed_dependent_goes_first(
) -> None:
    m, _ = running({"db": {}, "api": {"depends_on": ("db",)}})
    actions = m.update(specs({"db": {}, "api": {"depends_on": ("db",)},
                              "web": {"depends_on": ("api",)}}))
    assert actions == [Note("web", "added to the topology"), Spawn("web")]
    m.spawned("web", 5)
    m.ready("web")
    # Removing api and web: web (the dependent) is stopped before api.
    actions = m.update(specs({"db": {}}))
    assert [a for a in actions if isinstance(a, Kill)] == [Kill("web", SIGTERM)]
    assert m.procs["api"].state is State.READY
    assert m.exited("web", -SIGTERM) == [Note("web", "exited with SIGTERM"),
                                         Kill("api", SIGTERM)]
    m.exited("api", -SIGTERM)
    assert list(m.procs) == ["db"]


def test_a_worker_removed_and_added_back_after_it_stopped_starts_afresh() -> None:
    m, _ = running(THREE)
    m.update(specs({"a": {}, "watcher": {}}))
    m.exited("b", -SIGTERM)
    actions = m.update(specs(THREE))
    assert actions == [Note("b", "added to the topology"), Spawn("b")]
    assert m.procs["b"].restarts == 0


def test_a_worker_added_back_while_still_stopping_waits_for_the_old_process() -> None:
    m, _ = running(THREE)
    m.update(specs({"a": {}, "watcher": {}}))
    assert m.procs["b"].state is State.STOPPING
    actions = m.update(specs(THREE))  # undone before the old b exited
    assert spawns(actions) == []
    assert spawns(m.exited("b", -SIGTERM)) == ["b"]


def test_scaling_a_worker_up_starts_its_new_replicas() -> None:
    m, _ = running({"w": {}, "other": {}})
    actions = m.update(specs({"w": {"replicas": 2}, "other": {}}))
    assert Kill("w", SIGTERM) in actions
    assert spawns(actions) == ["w.1", "w.2"]
    assert m.procs["w.1"].state is State.STARTING


def test_scaling_a_worker_down_to_one_replica_starts_it() -> None:
    m, _ = running({"w": {"replicas": 2}, "other": {}})
    actions = m.update(specs({"w": {}, "other": {}}))
    assert Kill("w.1", SIGTERM) in actions and Kill("w.2", SIGTERM) in actions
    assert spawns(actions) == ["w"]
    m.exited("w.1", -SIGTERM)
    m.exited("w.2", -SIGTERM)
    assert list(m.procs) == ["w", "other"]


# -- what the supervisor publishes about a parked worker ---------------------------------


class _Quiet:
    def record(self, record: LogRecord) -> None:
        pass

    def status(self, status: ProjectStatus) -> None:
        pass


def test_the_supervisors_status_says_a_crashed_worker_is_parked(tmp_path: Path) -> None:
    channel = ChannelSpec(key="main", channel="proj.main")
    topology = Topology(name="proj", path=tmp_path / "workers.yaml", root=tmp_path,
                        channels={"main": channel},
                        workers={"a": WorkerSpec(key="a", class_path="app:A"),
                                 "b": WorkerSpec(key="b", class_path="app:B")})
    supervisor = Supervisor(topology, _Quiet(), reload=True, clock=FakeClock(), env={})
    machine = supervisor._machine  # driven by hand: no processes, no loop
    machine.start()
    for pid, name in ((1, "a"), (2, "b")):
        machine.spawned(name, pid)
        machine.ready(name)
    machine.exited("a", 1)
    status = supervisor.status()
    a, b = status.worker("a"), status.worker("b")
    assert a is not None and b is not None
    assert (a.state, a.reason) == ("crashed", "waiting for a change")
    assert (b.state, b.parked) == ("ready", False)
    assert a.parked is True
