"""The supervisor's state machine, fed scripted event histories with a fake clock.

No processes and no sleeps: specs are built from the model dataclasses, time is a
:class:`FakeClock` that the test advances, and back-off jitter comes from a fixed random
source, so every delay and every action list is exact.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fakes import T0, FakeClock
from pipecat_workers_cli.host import EXIT_CONFIG
from pipecat_workers_cli.supervisor.machine import (
    Drain,
    Kill,
    Machine,
    Note,
    Spawn,
    State,
    Timing,
)
from pipecat_workers_cli.topology.model import (
    ChannelSpec,
    Condition,
    ProcessSpec,
    RestartPolicy,
    Topology,
    WorkerSpec,
    expand,
)

SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL


def scripted(*values: float) -> Iterator[float]:
    yield from values


def processes(workers: Mapping[str, Mapping[str, Any]]) -> list[ProcessSpec]:
    """The processes of a one-channel project whose workers are ``{key: WorkerSpec fields}``."""
    channel = ChannelSpec(key="main", channel="proj.main")
    specs = {
        key: WorkerSpec(key=key, class_path=f"app:{key.title()}", **fields)
        for key, fields in workers.items()
    }
    root = Path("/project")
    return expand(Topology(name="proj", path=root / "workers.yaml", root=root,
                           channels={"main": channel}, workers=specs))


def machine(workers: Mapping[str, Mapping[str, Any]], *, random: Any = None,
            **timing: Any) -> tuple[Machine, FakeClock]:
    clock = FakeClock()
    if random is None:
        random = lambda: 0.5  # noqa: E731 - jitter factor exactly 0.75
    elif not callable(random):
        random = random.__next__
    return Machine(processes(workers), clock, random, Timing(**timing)), clock


def up(m: Machine, name: str, pid: int = 1000) -> None:
    """Script ``name``'s spawn and registration (it must already be STARTING)."""
    assert m.procs[name].state is State.STARTING
    m.spawned(name, pid)
    m.ready(name)
    assert m.procs[name].state is State.READY


def state(m: Machine) -> dict[str, State]:
    return {name: proc.state for name, proc in m.procs.items()}


def crash(m: Machine, clock: FakeClock, name: str, code: int = 1) -> float:
    """Spawn-and-exit ``name`` from STARTING; returns its back-off delay."""
    m.spawned(name, 1000)
    m.exited(name, code)
    proc = m.procs[name]
    assert proc.state is State.BACKOFF
    assert proc.deadline is not None
    delay = proc.deadline - clock()
    clock.advance(delay)
    assert m.tick() == [Spawn(name)]
    return delay


ONE = {"w": {}}
CHAIN = {"db": {}, "api": {"depends_on": ("db",)}, "web": {"depends_on": ("api",)}}


# -- start ----------------------------------------------------------------------------


def test_a_new_machine_has_everything_stopped_and_done() -> None:
    m, _ = machine(CHAIN)
    assert set(state(m).values()) == {State.STOPPED}
    assert m.done
    assert m.next_deadline() is None
    assert m.exit_code() == 0


def test_start_spawns_independent_workers_at_once_and_dependents_once_ready() -> None:
    m, _ = machine({"db": {}, "api": {"depends_on": ("db",)}, "cache": {}})
    assert m.start() == [Spawn("db"), Spawn("cache")]
    assert state(m) == {"db": State.STARTING, "api": State.WAITING, "cache": State.STARTING}
    assert m.spawned("db", 11) == [Note("db", "started, pid 11")]
    assert m.ready("db") == [Note("db", "ready"), Spawn("api")]
    assert m.procs["api"].state is State.STARTING
    assert not m.done


def test_a_dependent_waits_for_every_replica_of_its_dependency() -> None:
    m, _ = machine({"db": {"replicas": 2}, "api": {"depends_on": ("db",)}})
    assert m.procs["api"].spec.depends_on == ("db.1", "db.2")
    assert m.start() == [Spawn("db.1"), Spawn("db.2")]
    m.spawned("db.1", 1)
    m.spawned("db.2", 2)
    assert m.ready("db.1") == [Note("db.1", "ready")]
    assert m.procs["api"].state is State.WAITING
    assert m.ready("db.2") == [Note("db.2", "ready"), Spawn("api")]


def test_a_dependent_starts_after_a_dependency_that_exited_cleanly() -> None:
    m, _ = machine({"migrate": {"restart": RestartPolicy.NO},
                    "api": {"depends_on": ("migrate",)}})
    assert m.start() == [Spawn("migrate")]
    m.spawned("migrate", 1)
    assert m.exited("migrate", 0) == [Note("migrate", "exited with code 0"), Spawn("api")]


def test_start_by_name_starts_its_dependencies_too() -> None:
    m, _ = machine({"db": {}, "api": {"depends_on": ("db",)}, "cache": {}})
    assert m.start(["api"]) == [Spawn("db")]
    assert state(m) == {"db": State.STARTING, "api": State.WAITING, "cache": State.STOPPED}
    up(m, "db")
    assert m.procs["api"].state is State.STARTING


def test_a_worker_key_selects_all_its_replicas_and_a_replica_name_only_itself() -> None:
    m, _ = machine({"db": {"replicas": 2}, "api": {"depends_on": ("db",)}})
    assert m.start(["db.2"]) == [Spawn("db.2")]
    assert m.start(["db"]) == [Spawn("db.1")]
    assert m.procs["api"].state is State.STOPPED


def test_unknown_names_neither_a_process_nor_a_worker_key() -> None:
    m, _ = machine({"db": {"replicas": 2}, "api": {}})
    assert m.unknown(["db", "db.1", "db.2", "api"]) == []
    assert m.unknown(["db.3", "api", "nope", "api.1"]) == ["db.3", "nope", "api.1"]


def test_spawned_records_the_pid_and_sets_the_ready_deadline() -> None:
    m, clock = machine({"w": {"ready_timeout": 7.0}})
    m.start()
    clock.advance(2)
    m.spawned("w", 42)
    proc = m.procs["w"]
    assert (proc.pid, proc.started_at, proc.deadline) == (42, T0 + 2, T0 + 9)
    assert m.next_deadline() == T0 + 9
    clock.advance(1)
    assert m.ready("w") == [Note("w", "ready")]
    assert (proc.ready_at, proc.deadline) == (T0 + 3, None)  # no failures to forgive
    assert m.ready("w") == []  # a second report changes nothing


def test_spawn_failed_makes_the_worker_failed_with_the_error_as_reason() -> None:
    m, _ = machine(ONE)
    m.start()
    assert m.spawn_failed("w", "No such file") == [Note("w", "could not start: No such file")]
    proc = m.procs["w"]
    assert (proc.state, proc.reason, proc.pid, proc.deadline) == (
        State.FAILED, "No such file", None, None)
    assert m.done
    assert m.exit_code() == 1


# -- ready timeout ----------------------------------------------------------------------


def test_a_worker_not_ready_in_time_is_killed_and_its_exit_is_a_failure() -> None:
    m, clock = machine({"w": {"ready_timeout": 5.0}})
    m.start()
    m.spawned("w", 42)
    clock.advance(4.9)
    assert m.tick() == []
    clock.advance(0.1)
    assert m.tick() == [Note("w", "not ready within 5 s: killing it"), Kill("w", SIGKILL)]
    proc = m.procs["w"]
    assert (proc.state, proc.phase, proc.reason) == (
        State.STOPPING, "kill", "not ready within 5 s")
    assert m.next_deadline() == clock() + 5.0  # kill_timeout
    assert m.exited("w", -SIGKILL) == [Note("w", "exited with SIGKILL"),
                                       Note("w", "restarting in 0.4 s")]
    assert (proc.state, proc.failures, proc.exit_code) == (State.BACKOFF, 1, -9)


def test_a_worker_not_ready_in_time_under_policy_no_is_crashed() -> None:
    m, clock = machine({"w": {"ready_timeout": 5.0, "restart": RestartPolicy.NO}})
    m.start()
    m.spawned("w", 42)
    clock.advance(5)
    m.tick()
    assert m.exited("w", -SIGKILL) == [Note("w", "exited with SIGKILL")]
    assert m.procs["w"].state is State.CRASHED
    assert m.procs["w"].reason == "not ready within 5 s"
    assert m.done
    assert m.exit_code() == 1


def test_failures_of_a_worker_that_never_becomes_ready_accumulate() -> None:
    m, clock = machine({"w": {}}, crash_loop_after=3)  # default ready_timeout 30 s
    m.start()
    delays = []
    for _ in range(3):
        m.spawned("w", 42)
        clock.advance(30)
        assert m.tick()[-1] == Kill("w", SIGKILL)
        m.exited("w", -SIGKILL)
        delays.append(m.procs["w"].deadline - clock())
        assert m.procs["w"].deadline is not None
        clock.advance(delays[-1])
        assert m.tick() == [Spawn("w")]
    assert delays == [0.375, 0.75, 1.5]
    assert m.procs["w"].failures == 3
    assert m.in_crash_loop(m.procs["w"])


# -- exits, by policy -------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "code", "final"), [
    (RestartPolicy.NO, 0, State.EXITED),
    (RestartPolicy.NO, 1, State.CRASHED),
    (RestartPolicy.NO, -SIGKILL, State.CRASHED),
    (RestartPolicy.ON_FAILURE, 0, State.EXITED),
])
def test_exits_that_the_policy_does_not_restart(policy: RestartPolicy, code: int,
                                                final: State) -> None:
    m, _ = machine({"w": {"restart": policy}})
    m.start()
    m.spawned("w", 42)
    m.ready("w")
    text = "exited with SIGKILL" if code < 0 else f"exited with code {code}"
    assert m.exited("w", code) == [Note("w", text)]
    proc = m.procs["w"]
    assert (proc.state, proc.exit_code, proc.pid, proc.deadline) == (final, code, None, None)
    assert (proc.failures, proc.restarts) == (0, 0)
    assert m.done


def test_on_failure_backs_off_then_spawns_again_after_the_exact_delay() -> None:
    m, clock = machine(ONE)
    m.start()
    up(m, "w")
    clock.advance(1)
    assert m.exited("w", 3) == [Note("w", "exited with code 3"),
                                Note("w", "restarting in 0.4 s")]
    proc = m.procs["w"]
    assert (proc.state, proc.failures, proc.deadline) == (State.BACKOFF, 1, T0 + 1 + 0.375)
    assert m.next_deadline() == T0 + 1.375
    assert not m.done
    clock.advance(0.374)
    assert m.tick() == []
    clock.advance(0.001)
    assert m.tick() == [Spawn("w")]
    assert (proc.state, proc.restarts, proc.failures) == (State.STARTING, 1, 1)


def test_always_restarts_even_after_a_clean_exit() -> None:
    m, clock = machine({"w": {"restart": RestartPolicy.ALWAYS}})
    m.start()
    up(m, "w")
    assert m.exited("w", 0) == [Note("w", "exited with code 0"),
                                Note("w", "restarting in 0.4 s")]
    assert m.procs["w"].state is State.BACKOFF
    clock.advance(0.375)
    assert m.tick() == [Spawn("w")]


@pytest.mark.parametrize("policy", list(RestartPolicy))
def test_exit_config_fails_the_worker_and_never_restarts_it(policy: RestartPolicy) -> None:
    m, clock = machine({"w": {"restart": policy, "line": 7}})
    m.start()
    m.spawned("w", 42)
    assert m.reported_error("w", "no class app:W") == []
    assert m.exited("w", EXIT_CONFIG) == [
        Note("w", "exited with code 78"),
        Note("w", "not restarted: fix its entry in the topology (workers.w, line 7) or "
                  "install what it needs")]
    proc = m.procs["w"]
    assert (proc.state, proc.reason, proc.deadline) == (State.FAILED, "no class app:W", None)
    clock.advance(3600)
    assert m.tick() == []
    assert m.done
    assert m.exit_code() == EXIT_CONFIG


def test_back_off_doubles_up_to_the_cap_with_jitter() -> None:
    m, clock = machine(ONE, backoff_max=10.0)
    m.start()
    delays = [crash(m, clock, "w") for _ in range(7)]
    # 0.5 * 2**(n-1), capped at 10, times (0.5 + 0.5/2)
    assert delays == [0.375, 0.75, 1.5, 3.0, 6.0, 7.5, 7.5]
    assert m.procs["w"].restarts == 7


def test_jitter_comes_from_the_random_source() -> None:
    m, clock = machine(ONE, random=scripted(0.0, 1.0, 0.25))
    m.start()
    assert [crash(m, clock, "w") for _ in range(3)] == [0.25, 1.0, 1.25]


def test_failures_are_forgiven_at_exit_after_a_long_enough_uptime() -> None:
    m, clock = machine(ONE, stable_after=10.0)
    m.start()
    crash(m, clock, "w")
    crash(m, clock, "w")
    assert m.procs["w"].failures == 2
    m.spawned("w", 42)
    m.ready("w")
    clock.advance(10)  # no tick: the forgiveness happens at the exit itself
    m.exited("w", 1)
    assert m.procs["w"].failures == 1
    assert m.procs["w"].deadline == clock() + 0.375


def test_failures_are_not_forgiven_after_a_short_uptime() -> None:
    m, clock = machine(ONE, stable_after=10.0)
    m.start()
    crash(m, clock, "w")
    m.spawned("w", 42)
    m.ready("w")
    clock.advance(9.9)
    m.exited("w", 1)
    assert m.procs["w"].failures == 2
    assert m.procs["w"].deadline == pytest.approx(clock() + 0.75)


def test_failures_are_forgiven_by_tick_while_ready_for_stable_after() -> None:
    m, clock = machine(ONE, stable_after=10.0)
    m.start()
    crash(m, clock, "w")
    crash(m, clock, "w")
    m.spawned("w", 42)
    clock.advance(2)  # starting time does not count as stable
    m.ready("w")
    ready = clock()
    assert m.next_deadline() == ready + 10
    clock.advance(9.9)
    assert m.tick() == []
    assert m.procs["w"].failures == 2
    clock.advance(0.1)
    assert m.tick() == []
    assert (m.procs["w"].failures, m.next_deadline()) == (0, None)
    m.exited("w", 1)  # ready exactly 10 s here either way; the tick already forgave
    assert m.procs["w"].failures == 1


def test_crash_loop_is_flagged_after_enough_failures_and_cleared_after_a_stable_period() -> None:
    m, clock = machine(ONE, crash_loop_after=3, stable_after=10.0)
    m.start()
    proc = m.procs["w"]
    crash(m, clock, "w")
    crash(m, clock, "w")
    assert not m.in_crash_loop(proc)
    m.spawned("w", 42)
    assert m.exited("w", 1) == [Note("w", "exited with code 1"), Note(
        "w", "restarting in 1.5 s (crash loop: 3 failures in a row)")]
    assert m.in_crash_loop(proc)  # backing off
    clock.advance(1.5)
    m.tick()
    assert m.in_crash_loop(proc)  # starting again
    m.spawned("w", 43)
    m.ready("w")
    assert not m.in_crash_loop(proc)  # up, but not yet forgiven
    clock.advance(1)
    m.exited("w", 1)
    assert (proc.failures, m.in_crash_loop(proc)) == (4, True)
    clock.advance(3.0)
    m.tick()
    m.spawned("w", 44)
    m.ready("w")
    clock.advance(10)
    m.tick()
    assert proc.failures == 0
    m.exited("w", 1)
    assert (proc.failures, m.in_crash_loop(proc)) == (1, False)


# -- stop -------------------------------------------------------------------------------


def test_stop_escalates_from_drain_to_sigterm_to_sigkill() -> None:
    m, clock = machine({"w": {"stop_timeout": 3.0}}, term_timeout=2.0, kill_timeout=1.0)
    m.start()
    up(m, "w")
    assert m.stop() == [Drain("w")]
    proc = m.procs["w"]
    assert (proc.state, proc.phase, m.next_deadline()) == (State.STOPPING, "drain", T0 + 3)
    clock.advance(2.9)
    assert m.tick() == []
    clock.advance(0.1)
    assert m.tick() == [Note("w", "did not drain in time: SIGTERM"), Kill("w", SIGTERM)]
    assert (proc.phase, m.next_deadline()) == ("term", T0 + 5)
    clock.advance(2)
    assert m.tick() == [Note("w", "still running after SIGTERM: SIGKILL"), Kill("w", SIGKILL)]
    assert (proc.phase, m.next_deadline()) == ("kill", T0 + 6)
    clock.advance(1)
    assert m.tick() == [Note("w", "still running after SIGKILL")]
    assert m.next_deadline() is None
    clock.advance(100)
    assert m.tick() == []
    assert not m.done
    assert m.exited("w", -SIGKILL) == [Note("w", "exited with SIGKILL")]
    assert (proc.state, proc.phase, proc.pid) == (State.STOPPED, None, None)
    assert m.done
    assert m.exit_code() == 0


@pytest.mark.parametrize("ticks", [0, 1, 2, 3])
def test_an_exit_at_any_phase_of_the_stop_is_stopped(ticks: int) -> None:
    m, clock = machine(ONE)
    m.start()
    up(m, "w")
    m.stop()
    for _ in range(ticks):
        clock.advance(10)
        m.tick()
    assert m.exited("w", -SIGTERM) == [Note("w", "exited with SIGTERM")]
    assert m.procs["w"].state is State.STOPPED
    assert m.procs["w"].deadline is None
    assert (m.done, m.exit_code()) == (True, 0)


def test_a_starting_worker_is_not_drained_but_sent_sigterm() -> None:
    m, clock = machine(ONE, term_timeout=2.0)
    m.start()
    m.spawned("w", 42)
    assert m.stop() == [Kill("w", SIGTERM)]
    assert (m.procs["w"].phase, m.next_deadline()) == ("term", T0 + 2)
    assert m.ready("w") == []  # registering now changes nothing
    clock.advance(2)
    assert m.tick() == [Note("w", "still running after SIGTERM: SIGKILL"), Kill("w", SIGKILL)]


def test_a_worker_backing_off_or_waiting_is_stopped_at_once() -> None:
    m, _ = machine({"db": {}, "api": {"depends_on": ("db",)}, "w": {}})
    m.start()
    m.spawned("w", 1)
    m.exited("w", 1)
    assert state(m) == {"db": State.STARTING, "api": State.WAITING, "w": State.BACKOFF}
    assert m.stop(["api", "w"]) == [Note("api", "stopped"), Note("w", "stopped")]
    assert state(m) == {"db": State.STARTING, "api": State.STOPPED, "w": State.STOPPED}
    assert m.next_deadline() == T0 + 30  # only db's readiness, counted from its spawn request
    up(m, "db")  # and nothing spawns api
    assert m.procs["api"].state is State.STOPPED


def test_stop_while_a_spawn_is_in_flight_sends_sigterm_once_spawned() -> None:
    m, _ = machine(ONE)
    m.start()
    assert m.stop() == [Kill("w", SIGTERM)]  # nothing to signal yet
    assert m.procs["w"].state is State.STOPPING
    assert m.spawned("w", 42) == [Note("w", "started, pid 42"), Kill("w", SIGTERM)]
    assert m.exited("w", -SIGTERM) == [Note("w", "exited with SIGTERM")]
    assert m.procs["w"].state is State.STOPPED


def test_stop_while_a_respawn_is_in_flight_sends_sigterm_once_spawned() -> None:
    m, clock = machine(ONE)
    m.start()
    up(m, "w")
    m.exited("w", 1)
    clock.advance(0.375)
    assert m.tick() == [Spawn("w")]  # the back-off is over; the spawn is in flight
    assert m.stop() == [Kill("w", SIGTERM)]
    assert m.spawned("w", 43) == [Note("w", "started, pid 43"), Kill("w", SIGTERM)]


def test_force_while_a_spawn_is_in_flight_sends_sigkill_once_spawned() -> None:
    m, _ = machine(ONE)
    m.start()
    assert m.force() == [Kill("w", SIGKILL)]
    assert m.spawned("w", 42) == [Note("w", "started, pid 42"), Kill("w", SIGKILL)]


# -- down: stop everything --------------------------------------------------------------


def test_down_stops_in_reverse_dependency_order() -> None:
    m, _ = machine(CHAIN)
    m.start()
    up(m, "db")
    up(m, "api")
    up(m, "web")
    assert m.stop() == [Drain("web")]
    assert state(m) == {"db": State.READY, "api": State.READY, "web": State.STOPPING}
    assert m.exited("web", 0) == [Note("web", "exited with code 0"), Drain("api")]
    assert not m.done
    assert m.exited("api", 0) == [Note("api", "exited with code 0"), Drain("db")]
    assert not m.done
    assert m.exited("db", 0) == [Note("db", "exited with code 0")]
    assert set(state(m).values()) == {State.STOPPED}
    assert (m.done, m.exit_code()) == (True, 0)


def test_down_waits_for_every_replica_of_a_dependent() -> None:
    m, _ = machine({"db": {}, "api": {"replicas": 2, "depends_on": ("db",)}})
    m.start()
    up(m, "db")
    up(m, "api.1")
    up(m, "api.2")
    assert m.stop() == [Drain("api.1"), Drain("api.2")]
    assert m.exited("api.1", 0) == [Note("api.1", "exited with code 0")]
    assert m.exited("api.2", 0) == [Note("api.2", "exited with code 0"), Drain("db")]


def test_down_while_starting_stops_waiting_workers_at_once() -> None:
    m, _ = machine(CHAIN)
    m.start()
    m.spawned("db", 1)
    assert m.stop() == [Note("api", "stopped"), Note("web", "stopped"), Kill("db", SIGTERM)]
    m.exited("db", -SIGTERM)
    assert (m.done, m.exit_code()) == (True, 0)


def test_exit_code_is_the_crashed_workers_code_after_down() -> None:
    m, _ = machine({"db": {}, "job": {"restart": RestartPolicy.NO}})
    m.start()
    up(m, "db")
    up(m, "job")
    m.exited("job", 3)
    assert m.procs["job"].state is State.CRASHED
    assert not m.done
    assert m.stop() == [Drain("db")]
    m.exited("db", 0)
    assert state(m) == {"db": State.STOPPED, "job": State.CRASHED}
    assert (m.done, m.exit_code()) == (True, 3)


# -- stop of one worker -----------------------------------------------------------------


def test_stopping_a_dependency_leaves_its_dependents_running() -> None:
    m, _ = machine(CHAIN)
    m.start()
    for name in ("db", "api", "web"):
        up(m, name)
    assert m.stop(["db"]) == [Drain("db")]  # not held back by its running dependents
    assert m.exited("db", 0) == [Note("db", "exited with code 0")]
    assert state(m) == {"db": State.STOPPED, "api": State.READY, "web": State.READY}


def test_stopping_a_dependent_leaves_its_dependency_running() -> None:
    m, _ = machine(CHAIN)
    m.start()
    for name in ("db", "api", "web"):
        up(m, name)
    assert m.stop(["api"]) == [Drain("api")]
    assert m.exited("api", 0) == [Note("api", "exited with code 0")]
    assert state(m) == {"db": State.READY, "api": State.STOPPED, "web": State.READY}


def test_start_while_stopping_starts_it_again_once_it_exits() -> None:
    m, _ = machine(ONE)
    m.start()
    up(m, "w")
    m.stop()
    assert m.start() == []
    assert m.exited("w", 0) == [Note("w", "exited with code 0"), Spawn("w")]
    assert m.procs["w"].failures == 0


# -- restart ----------------------------------------------------------------------------


def test_restart_of_a_ready_worker_drains_it_then_spawns_it_again() -> None:
    m, clock = machine(ONE)
    m.start()
    crash(m, clock, "w")
    up(m, "w")
    assert m.restart(["w"]) == [Drain("w")]
    assert m.procs["w"].state is State.STOPPING
    assert m.exited("w", 0) == [Note("w", "exited with code 0"), Spawn("w")]
    proc = m.procs["w"]
    assert (proc.state, proc.restarts, proc.failures) == (State.STARTING, 2, 0)


def test_restart_of_a_stopped_worker_spawns_it() -> None:
    m, _ = machine(ONE)
    m.start()
    up(m, "w")
    m.stop()
    m.exited("w", 0)
    assert m.restart(["w"]) == [Spawn("w")]
    assert (m.procs["w"].state, m.procs["w"].restarts) == (State.STARTING, 1)


def test_restart_by_key_restarts_every_replica_and_leaves_dependents_running() -> None:
    m, _ = machine({"db": {"replicas": 2}, "api": {"depends_on": ("db",)}})
    m.start()
    up(m, "db.1")
    up(m, "db.2")
    up(m, "api")
    assert m.restart(["db"]) == [Drain("db.1"), Drain("db.2")]
    assert m.exited("db.1", 0) == [Note("db.1", "exited with code 0"), Spawn("db.1")]
    assert m.procs["api"].state is State.READY


def test_stop_during_a_restart_cancels_the_restart() -> None:
    m, _ = machine(ONE)
    m.start()
    up(m, "w")
    m.restart(["w"])
    assert m.stop() == []  # already stopping
    assert m.exited("w", 0) == [Note("w", "exited with code 0")]
    assert (m.procs["w"].state, m.procs["w"].restarts) == (State.STOPPED, 0)


def test_restart_of_a_stopping_worker_keeps_its_stop_escalation() -> None:
    m, clock = machine({"w": {"stop_timeout": 3.0}})
    m.start()
    up(m, "w")
    m.stop()
    clock.advance(3)
    assert m.tick()[-1] == Kill("w", SIGTERM)
    deadline = m.next_deadline()
    assert m.restart(["w"]) == []
    assert (m.procs["w"].phase, m.next_deadline()) == ("term", deadline)


# -- force ------------------------------------------------------------------------------


def test_force_kills_everything_alive_at_once_and_stops_the_rest() -> None:
    m, clock = machine({"db": {}, "api": {"depends_on": ("db",)}, "w": {}, "x": {}},
                       kill_timeout=2.0)
    m.start()
    up(m, "db")
    m.spawned("api", 2)        # starting
    m.spawned("w", 3)
    m.exited("w", 1)           # backing off
    up(m, "x")
    m.stop(["x"])              # draining
    assert state(m) == {"db": State.READY, "api": State.STARTING,
                        "w": State.BACKOFF, "x": State.STOPPING}
    assert m.force() == [Kill("db", SIGKILL), Kill("api", SIGKILL), Kill("x", SIGKILL)]
    assert state(m) == {"db": State.STOPPING, "api": State.STOPPING,
                        "w": State.STOPPED, "x": State.STOPPING}
    assert {p.phase for p in m.procs.values() if p.state is State.STOPPING} == {"kill"}
    assert m.next_deadline() == clock() + 2.0
    for name in ("db", "api", "x"):
        m.exited(name, -SIGKILL)
    assert set(state(m).values()) == {State.STOPPED}
    assert (m.done, m.exit_code()) == (True, 0)


def test_force_during_a_restart_does_not_restart() -> None:
    m, _ = machine(ONE)
    m.start()
    up(m, "w")
    m.restart(["w"])
    assert m.force() == [Kill("w", SIGKILL)]
    assert m.exited("w", -SIGKILL) == [Note("w", "exited with SIGKILL")]
    assert m.procs["w"].state is State.STOPPED


# -- failing dependencies ---------------------------------------------------------------


def _crash(m: Machine) -> None:
    m.spawned("db", 1)
    m.exited("db", 1)


def _config(m: Machine) -> None:
    m.spawned("db", 1)
    m.exited("db", EXIT_CONFIG)


def _spawn_error(m: Machine) -> None:
    m.spawn_failed("db", "exec format error")


@pytest.mark.parametrize(("fail", "how"), [
    (_crash, "crashed"), (_config, "failed"), (_spawn_error, "failed")])
def test_waiting_dependents_of_a_failed_dependency_fail_naming_it(fail: Any, how: str) -> None:
    m, _ = machine({"db": {"restart": RestartPolicy.NO}, "api": {"depends_on": ("db",)},
                    "web": {"depends_on": ("api",)}})
    m.start()
    fail(m)
    assert state(m) == {"db": State(how), "api": State.FAILED, "web": State.FAILED}
    assert m.procs["api"].reason == f"dependency 'db' is {how}"
    assert m.procs["web"].reason == "dependency 'api' is failed"
    assert m.done
    assert m.exit_code() == (EXIT_CONFIG if fail is _config else 1)


def test_the_failing_dependency_is_noted_on_the_dependent() -> None:
    m, _ = machine({"db": {"restart": RestartPolicy.NO}, "api": {"depends_on": ("db",)}})
    m.start()
    m.spawned("db", 1)
    assert m.exited("db", 2) == [Note("db", "exited with code 2"),
                                 Note("api", "not started: dependency 'db' is crashed")]


def test_dependents_keep_waiting_while_their_dependency_backs_off() -> None:
    m, clock = machine({"db": {}, "api": {"depends_on": ("db",)}})
    m.start()
    m.spawned("db", 1)
    m.exited("db", 1)
    assert m.procs["api"].state is State.WAITING
    clock.advance(0.375)
    assert m.tick() == [Spawn("db")]
    up(m, "db")
    assert m.procs["api"].state is State.STARTING


# -- deadlines --------------------------------------------------------------------------


def test_next_deadline_is_the_earliest_pending_one() -> None:
    m, clock = machine({"a": {"ready_timeout": 20.0}, "b": {"stop_timeout": 4.0}, "c": {}},
                       term_timeout=9.0)
    m.start()
    m.spawned("a", 1)                # ready deadline T0 + 20
    up(m, "b")
    clock.advance(1)
    m.stop(["b"])                    # drain deadline T0 + 5
    m.spawned("c", 3)
    m.exited("c", 1)                 # back-off deadline T0 + 1.375
    assert m.next_deadline() == T0 + 1.375
    clock.advance(0.375)
    m.tick()                         # c spawns again: no deadline until spawned
    assert m.next_deadline() == T0 + 5
    clock.advance(3.625)
    assert m.tick() == [Note("b", "did not drain in time: SIGTERM"), Kill("b", SIGTERM)]
    assert m.next_deadline() == T0 + 14
    m.exited("b", -SIGTERM)
    assert m.next_deadline() == T0 + 20


def test_the_exit_code_is_the_first_failure_in_time_not_in_file_order() -> None:
    m, clock = machine({"a": {"restart": RestartPolicy.NO}, "b": {"restart": RestartPolicy.NO}})
    m.start()
    m.spawned("a", 1)
    m.spawned("b", 2)
    m.exited("b", 7)
    clock.advance(1)
    m.exited("a", 5)
    assert m.done and m.exit_code() == 7


def test_a_spawn_that_never_reports_times_out_from_the_request() -> None:
    m, clock = machine({"w": {}})
    assert m.start() == [Spawn("w")]
    assert m.next_deadline() == T0 + 30
    clock.advance(30)
    actions = m.tick()
    assert Kill("w", SIGKILL) in actions and m.procs["w"].reason == "not ready within 30 s"


def test_under_reload_a_dependent_waits_for_a_parked_dependency() -> None:
    m, _ = machine({"dep": {}, "app": {"depends_on": ("dep",)}})
    m.reload = True
    m.start()
    m.spawned("dep", 1)
    m.exited("dep", 1)  # a syntax error, say: parked
    assert m.parked() == ["dep"] and m.procs["app"].state is State.WAITING
    assert m.restart(["dep"], quick=True) == [Spawn("dep")]
    up(m, "dep")
    assert m.procs["app"].state is State.STARTING



# -- max_restarts -----------------------------------------------------------------------


def test_max_restarts_leaves_the_worker_crashed_saying_why() -> None:
    m, clock = machine({"w": {"max_restarts": 2}})
    m.start()
    crash(m, clock, "w", 3)
    crash(m, clock, "w", 3)
    m.spawned("w", 1000)
    m.procs["w"].reason = "code 3: boom"  # what the driver sets from the last stderr line
    actions = m.exited("w", 3)
    proc = m.procs["w"]
    assert proc.state is State.CRASHED
    assert proc.reason == ("gave up after 2 restarts in a row (max_restarts: 2); "
                           "last: code 3: boom")
    assert actions == [Note("w", "exited with code 3"),
                       Note("w", f"not restarted: {proc.reason}")]
    assert m.next_deadline() is None and m.done and m.exit_code() == 3


def test_max_restarts_zero_never_restarts_and_unset_is_unlimited() -> None:
    m, clock = machine({"once": {"max_restarts": 0}, "ever": {}})
    m.start()
    m.spawned("once", 1)
    m.exited("once", 1)
    assert m.procs["once"].state is State.CRASHED
    assert "max_restarts: 0" in m.procs["once"].reason
    for _ in range(20):
        crash(m, clock, "ever")
    assert m.procs["ever"].state is State.STARTING


def test_max_restarts_counts_restarts_in_a_row_a_stable_run_resets_it() -> None:
    m, clock = machine({"w": {"max_restarts": 1}})
    m.start()
    crash(m, clock, "w")           # restart 1 of 1
    up(m, "w")
    clock.advance(10)              # ready for stable_after: forgiven
    assert m.tick() == []
    assert m.procs["w"].auto_restarts == 0
    m.exited("w", 1)
    assert m.procs["w"].state is State.BACKOFF  # one more restart allowed


def test_a_restart_on_request_resets_the_count() -> None:
    m, clock = machine({"w": {"max_restarts": 1}})
    m.start()
    crash(m, clock, "w")
    m.spawned("w", 1)
    m.exited("w", 1)
    assert m.procs["w"].state is State.CRASHED
    assert m.restart(["w"]) == [Spawn("w")]
    crash(m, clock, "w")  # allowed again
    assert m.procs["w"].state is State.STARTING


# -- depends_on conditions ----------------------------------------------------------------


JOB_FIRST = {"migrate": {"restart": RestartPolicy.NO},
             "api": {"depends_on": ("migrate",),
                     "conditions": {"migrate": Condition.COMPLETED}}}


def test_a_completed_condition_waits_for_the_job_to_exit_not_to_be_ready() -> None:
    m, _ = machine(JOB_FIRST)
    assert m.start() == [Spawn("migrate")]
    up(m, "migrate", 1)
    assert m.procs["api"].state is State.WAITING  # ready is not enough
    assert m.exited("migrate", 0) == [Note("migrate", "exited with code 0"), Spawn("api")]


def test_a_failed_job_fails_its_dependent_with_a_reason() -> None:
    m, _ = machine(JOB_FIRST)
    m.start()
    m.spawned("migrate", 1)
    actions = m.exited("migrate", 2)
    api = m.procs["api"]
    assert api.state is State.FAILED
    assert api.reason == "dependency 'migrate' did not complete: it is crashed"
    assert Note("api", f"not started: {api.reason}") in actions


def test_a_job_retried_by_its_policy_is_waited_for() -> None:
    m, clock = machine({"migrate": {"max_restarts": 1},
                        "api": {"depends_on": ("migrate",),
                                "conditions": {"migrate": Condition.COMPLETED}}})
    m.start()
    crash(m, clock, "migrate")
    assert m.procs["api"].state is State.WAITING
    m.spawned("migrate", 2)
    m.exited("migrate", 1)  # out of restarts: now the dependent fails
    assert m.procs["api"].state is State.FAILED


def test_starting_a_dependent_does_not_run_a_completed_job_again() -> None:
    m, _ = machine(JOB_FIRST)
    m.start()
    m.spawned("migrate", 1)
    m.exited("migrate", 0)
    up(m, "api")
    m.stop(["api"], hold=True)
    m.exited("api", 0)
    assert m.start(["api"]) == [Spawn("api")]
    assert m.procs["migrate"].state is State.EXITED


# -- rolling restart ----------------------------------------------------------------------


def running(workers: Mapping[str, Mapping[str, Any]]) -> tuple[Machine, FakeClock]:
    m, clock = machine(workers)
    m.start()
    for i, name in enumerate(list(m.procs)):
        up(m, name, 100 + i)
    return m, clock


def back(m: Machine, name: str, pid: int) -> None:
    """Its old process exits after the drain, and the new one gets ready."""
    m.exited(name, 0)
    assert m.procs[name].state is State.STARTING
    up(m, name, pid)


def test_a_rolling_restart_restarts_one_replica_at_a_time() -> None:
    m, _ = running({"w": {"replicas": 3}})
    assert m.restart(["w"], rolling=True) == [Note("w.1", "rolling restart: restarting it"),
                                              Drain("w.1")]
    assert [p.state for p in m.procs.values()] == [State.STOPPING, State.READY, State.READY]
    m.exited("w.1", 0)
    assert m.procs["w.2"].state is State.READY  # not before w.1 is ready again
    m.spawned("w.1", 201)
    assert m.ready("w.1") == [Note("w.1", "ready"),
                              Note("w.2", "rolling restart: restarting it"), Drain("w.2")]
    back(m, "w.2", 202)
    assert m.procs["w.3"].state is State.STOPPING
    back(m, "w.3", 203)
    assert m.rolls == []
    assert [p.restarts for p in m.procs.values()] == [1, 1, 1]


def test_a_rolling_restart_stops_at_a_replica_that_does_not_come_back() -> None:
    m, _ = running({"w": {"replicas": 2}})
    m.restart(["w"], rolling=True)
    m.exited("w.1", 0)
    m.spawned("w.1", 201)
    actions = m.exited("w.1", 1)  # crashed while starting
    assert Note("w.1", "rolling restart stopped: it is backing off after its restart; "
                       "the others keep running") in actions
    assert m.procs["w.2"].state is State.READY and m.rolls == []


def test_a_rolling_restart_skips_replicas_stopped_meanwhile() -> None:
    m, _ = running({"w": {"replicas": 3}})
    m.restart(["w"], rolling=True)
    m.stop(["w.2"], hold=True)
    m.exited("w.2", 0)
    back(m, "w.1", 201)
    assert m.procs["w.2"].state is State.STOPPED
    assert m.procs["w.3"].state is State.STOPPING


# -- scale and apply ----------------------------------------------------------------------


def test_scale_up_starts_new_replicas_and_keeps_the_others_and_dependents() -> None:
    m, _ = running({"w": {"replicas": 2}, "api": {"depends_on": ("w",)}})
    actions = m.scale("w", processes({"w": {"replicas": 3}, "api": {"depends_on": ("w",)}}))
    assert Spawn("w.3") in actions
    assert [n for n, p in m.procs.items() if p.state is State.READY] == ["w.1", "w.2", "api"]
    assert m.procs["api"].spec.depends_on == ("w.1", "w.2", "w.3")


def test_scale_down_drains_the_replicas_that_go() -> None:
    m, _ = running({"w": {"replicas": 3}})
    actions = m.scale("w", processes({"w": {"replicas": 2}}))
    assert Drain("w.3") in actions
    m.exited("w.3", 0)
    assert list(m.procs) == ["w.1", "w.2"]


def test_scale_starts_replicas_stopped_on_request() -> None:
    m, _ = running({"w": {"replicas": 2}})
    m.stop(["w"], hold=True)
    m.exited("w.1", 0)
    m.exited("w.2", 0)
    assert m.scale("w", processes({"w": {"replicas": 2}})) == [Spawn("w.1"), Spawn("w.2")]


def test_apply_reports_what_it_started_restarted_stopped_and_left_alone() -> None:
    m, _ = running({"a": {}, "b": {}, "c": {}, "d": {}})
    m.stop(["d"], hold=True)
    m.exited("d", 0)
    edited = processes({"a": {}, "b": {"args": {"x": 1}}, "d": {}, "e": {}})
    applied, actions = m.apply(edited)
    assert applied.to_json() == {"started": ["d", "e"], "restarted": ["b"],
                                 "stopped": ["c"], "unchanged": ["a"]}
    assert {Spawn("d"), Spawn("e"), Kill("c", SIGTERM), Kill("b", SIGTERM)} <= set(actions)
    assert m.procs["a"].state is State.READY and m.procs["a"].restarts == 0
    assert m.procs["b"].state is State.STOPPING and m.procs["b"].restart_when_stopped


def test_apply_of_the_same_file_changes_nothing_and_leaves_a_finished_job_alone() -> None:
    m, _ = machine(JOB_FIRST)
    m.start()
    m.spawned("migrate", 1)
    m.exited("migrate", 0)
    up(m, "api")
    applied, actions = m.apply(processes(JOB_FIRST))
    assert applied.to_json() == {"started": [], "restarted": [], "stopped": [],
                                 "unchanged": ["migrate", "api"]}
    assert actions == []


def test_apply_starts_a_crashed_worker_again() -> None:
    m, _ = machine({"w": {"restart": RestartPolicy.NO}})
    m.start()
    m.spawned("w", 1)
    m.exited("w", 1)
    applied, actions = m.apply(processes({"w": {"restart": RestartPolicy.NO}}))
    assert applied.started == ("w",) and actions == [Spawn("w")]
