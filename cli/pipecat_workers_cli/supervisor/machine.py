"""The supervisor's brain: every worker process's state and every decision, with no I/O.

The driver (:mod:`pipecat_workers_cli.supervisor.driver`) feeds it what happened (a process was
spawned, reported ready, exited; time passed; a user asked for something) and carries out the
actions it returns (spawn, drain, signal). Time comes from an injected clock and back-off jitter
from an injected random source, so tests replay scripted histories exactly.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.host import EXIT_CONFIG
from pipecat_workers_cli.supervisor.model import (
    ALIVE,
    FINAL,
    Action,
    Applied,
    Drain,
    Kill,
    Note,
    Proc,
    Roll,
    RollState,
    Spawn,
    State,
    Timing,
    describe_exit,
    same_process,
)
from pipecat_workers_cli.topology.model import ProcessSpec, RestartPolicy

WAITING_FOR_BUS = "waiting for the bus"  # the reason of a worker whose bus cannot connect yet

__all__ = ["ALIVE", "FINAL", "Action", "Drain", "Kill", "Machine", "Note", "Proc", "Roll",
           "Spawn", "State", "Timing", "describe_exit", "same_process"]


_ROLLS_KEPT = 16  # ended rolls remembered for the commands that wait on them


@dataclass(slots=True)
class Machine:
    """The state of every process of a project, and the policy that moves it."""

    specs: Sequence[ProcessSpec]
    clock: Callable[[], float]
    random: Callable[[], float]
    timing: Timing = field(default_factory=Timing)
    reload: bool = False   # a crashed worker waits for a change instead of restarting
    procs: dict[str, Proc] = field(init=False)
    rolls: list[Roll] = field(init=False, default_factory=list)  # under way
    rolled: deque[Roll] = field(init=False, default_factory=lambda: deque(maxlen=_ROLLS_KEPT))
    _roll_ids: Iterator[int] = field(init=False, default_factory=lambda: count(1))

    def __post_init__(self) -> None:
        self.procs = {spec.name: Proc(spec, wanted=False, state=State.STOPPED)
                      for spec in self.specs}

    # -- requests ---------------------------------------------------------------------

    def start(self, names: Iterable[str] | None = None) -> list[Action]:
        """Run these processes (all by default), their dependencies first.

        A dependency that already ended well (a one-shot job) is not run again for it.
        """
        named = None if names is None else {p.name for p in self._select(names)}
        for proc in self._select(names, with_dependencies=True):
            if named is None or proc.name in named or not self._ended_well(proc):
                self._want(proc)
        return self._advance()

    def _want(self, proc: Proc) -> None:
        proc.wanted, proc.held = True, False
        if proc.state is State.STOPPING:
            proc.restart_when_stopped = True  # it is on its way down: bring it back
        elif proc.state in FINAL:
            proc.state, proc.failures, proc.reason = State.WAITING, 0, ""
            proc.auto_restarts = 0

    @staticmethod
    def _ended_well(proc: Proc) -> bool:
        return proc.state is State.EXITED and proc.exit_code == 0

    def stop(self, names: Iterable[str] | None = None, *, hold: bool = False
             ) -> list[Action]:
        """Stop these processes (all by default); of those, dependents stop first.

        ``hold``: they were stopped on request and may be started again, so the project is
        not over when nothing else runs.
        """
        actions: list[Action] = []
        for proc in self._select(names):
            actions += self._stop(proc, hold=hold)
        return actions + self._advance()

    def _stop(self, proc: Proc, *, hold: bool) -> list[Action]:
        proc.wanted, proc.held = False, hold
        proc.restart_when_stopped = False
        if proc.state in (State.WAITING, State.BACKOFF):
            proc.state, proc.deadline = State.STOPPED, None
            return [Note(proc.name, "stopped")]
        return []

    def restart(self, names: Iterable[str], *, quick: bool = False) -> list[Action]:
        """Stop and start these processes again (their dependents keep running).

        ``quick`` skips the graceful drain: SIGTERM cancels the worker's jobs at once.
        """
        actions: list[Action] = []
        for proc in self._select(names):
            actions += self._restart(proc, quick=quick)
        return actions + self._advance()

    def roll(self, names: Sequence[str] | None = None) -> tuple[Roll, list[Action]]:
        """Restart the running ones of these processes (all by default) one at a time, each
        once the one before is ready again, so a replicated worker always has replicas up.
        It stops at one that does not come back; :attr:`Roll.state` says how it ended.

        Raises:
            CommandError: none of them runs, or some are in a rolling restart already (two
                at once would take down the same replicas together).
        """
        chosen = self._select(names)
        rolling = {n for r in self.rolls for n in r.names}
        if busy := [p.name for p in chosen if p.name in rolling]:
            raise CommandError(f"{', '.join(busy)} {'is' if len(busy) == 1 else 'are'} in a "
                               "rolling restart already: wait for it to end")
        running = [p.name for p in chosen if self._running(p)]
        if not running:
            what = ", ".join(names) if names else "the project's processes"
            raise CommandError(f"nothing to restart: none of {what} is running")
        roll = Roll(next(self._roll_ids), running)
        self.rolls.append(roll)
        return roll, self._advance()

    @staticmethod
    def _running(proc: Proc) -> bool:
        """Whether it runs and is meant to: not ended, backing off or on its way down."""
        return proc.state in ALIVE and proc.wanted and not proc.removed

    def _restart(self, proc: Proc, *, quick: bool) -> list[Action]:
        if proc.removed:
            return []  # on its way out of the topology
        proc.quick_stop, proc.held, proc.wanted = quick, False, True
        if proc.state is State.STOPPING:
            proc.restart_when_stopped = True  # keep the stop already under way
            return []
        if proc.state in ALIVE:
            proc.restart_when_stopped = True
            return self._begin_stop(proc)
        proc.restarts += 1
        proc.state, proc.failures, proc.reason, proc.deadline = State.WAITING, 0, "", None
        proc.auto_restarts = 0
        return []

    def apply(self, specs: Sequence[ProcessSpec], names: Sequence[str] | None = None
              ) -> tuple[Applied, list[Action]]:
        """``up`` on a running project: :meth:`update`, then start what is stopped, crashed
        or failed (only ``names`` and their dependencies, if given); a process that ended
        well (a one-shot job) and did not change is not run again."""
        before = {n: p.spec for n, p in self.procs.items() if not p.removed}
        wanted = {s.name: s for s in specs}
        changed = [n for n, s in wanted.items() if n in before and not same_process(before[n], s)]
        actions = self.update(specs)
        if names:
            idle = [p.name for p in self._select(names, with_dependencies=True)
                    if p.state in FINAL and not self._ended_well(p)]
            actions += self.start(names)
        else:
            idle = [p.name for p in self.procs.values() if not p.removed and (
                p.held or (p.state in FINAL and not self._ended_well(p)))]
            actions += self.start(idle)
        started = [n for n in wanted if n not in before or (n in idle and n not in changed)]
        applied = Applied(
            started=tuple(started), restarted=tuple(changed),
            stopped=tuple(n for n in before if n not in wanted),
            unchanged=tuple(n for n in wanted if n not in started and n not in changed))
        return applied, actions

    def scale(self, key: str, specs: Sequence[ProcessSpec]) -> list[Action]:
        """Run worker ``key`` with the replicas of ``specs`` (the topology with its count
        changed): replicas that go are drained, its replicas start, nothing else moves."""
        actions = self.update(specs, drain_removed=True)
        for proc in self.procs.values():
            if proc.spec.worker.key == key and not proc.removed:
                self._want(proc)
        return actions + self._advance()

    def update(self, specs: Sequence[ProcessSpec], *, drain_removed: bool = False
               ) -> list[Action]:
        """Apply an edited topology: start what is new, stop what is gone (quickly, unless
        ``drain_removed``), restart what changed (quickly), and leave the rest running."""
        old = self.procs
        actions: list[Action] = []
        new: dict[str, Proc] = {}
        for spec in specs:
            proc = old.get(spec.name)
            if proc is None:
                new[spec.name] = Proc(spec)
                actions.append(Note(spec.name, "added to the topology"))
                continue
            new[spec.name] = proc
            if proc.removed:  # back before its old process is gone: start it once that is
                proc.removed, proc.spec = False, spec
                actions.append(Note(spec.name, "added to the topology again"))
                actions += self._restart(proc, quick=True)
            elif not same_process(proc.spec, spec):
                proc.spec = spec
                actions.append(Note(spec.name, "changed in the topology"))
                if not proc.held:  # stopped on request: it starts with its new spec later
                    actions += self._restart(proc, quick=True)
            else:
                proc.spec = spec  # the same process; its dependencies' names may differ
        for name, proc in old.items():
            if name not in new:
                proc.removed, proc.quick_stop = True, not drain_removed
                new[name] = proc  # kept until it has stopped
                actions.append(Note(name, "removed from the topology"))
                actions += self._stop(proc, hold=False)
        self.procs = new
        self._forget_removed()
        return actions + self._advance()

    def force(self) -> list[Action]:
        """Kill everything now (a second Ctrl-C)."""
        actions: list[Action] = []
        for proc in self.procs.values():
            proc.wanted = proc.restart_when_stopped = False
            if proc.state in ALIVE:
                proc.state, proc.phase = State.STOPPING, "kill"
                proc.deadline = self.clock() + self.timing.kill_timeout
                actions.append(Kill(proc.name, signal.SIGKILL))
            elif proc.state in (State.WAITING, State.BACKOFF):
                proc.state, proc.deadline = State.STOPPED, None
        return actions

    # -- what happened ----------------------------------------------------------------

    def spawned(self, name: str, pid: int) -> list[Action]:
        proc = self.procs[name]
        proc.pid, proc.started_at, proc.ready_at = pid, self.clock(), None
        proc.exit_code, proc.reason = None, ""
        actions: list[Action] = [Note(name, f"started, pid {pid}")]
        if proc.state is State.STARTING:
            proc.deadline = proc.started_at + proc.spec.worker.ready_timeout
        elif proc.state is State.STOPPING:  # stopped while it was being spawned
            actions.append(Kill(name, signal.SIGKILL if proc.phase == "kill"
                                else signal.SIGTERM))
        return actions

    def spawn_failed(self, name: str, error: str) -> list[Action]:
        proc = self.procs[name]
        proc.reason, proc.deadline, proc.pid, proc.exit_code = error, None, None, None
        proc.phase, proc.restart_when_stopped = None, False
        self._settle(proc, State.FAILED if proc.wanted else State.STOPPED)
        return [Note(name, f"could not start: {error}"), *self._advance()]

    def reported_error(self, name: str, message: str) -> list[Action]:
        """The host said why it cannot start (it exits next)."""
        self.procs[name].reason = message
        return []

    def waiting_for_bus(self, name: str, message: str) -> list[Action]:
        """The host is alive, and waits for its bus's server (it says so every few seconds):
        it stays starting, with the reason, and its ready deadline runs from now. Nothing is
        logged: the host's own line says it already."""
        proc = self.procs[name]
        if proc.state is State.STARTING:
            proc.reason = f"{WAITING_FOR_BUS}: {message}"
            proc.deadline = self.clock() + proc.spec.worker.ready_timeout
        return []

    def ready(self, name: str) -> list[Action]:
        proc = self.procs[name]
        if proc.state is not State.STARTING:
            return []
        proc.state, proc.ready_at, proc.reason = State.READY, self.clock(), ""
        proc.deadline = self._forgive_at(proc)
        return [Note(name, "ready"), *self._advance()]

    def exited(self, name: str, code: int) -> list[Action]:
        proc = self.procs[name]
        now = self.clock()
        # Only time spent ready counts as stable: a worker that never got ready is failing.
        stable = proc.ready_at is not None and now - proc.ready_at >= self.timing.stable_after
        proc.pid, proc.exit_code, proc.phase, proc.deadline = None, code, None, None
        proc.ready_at, proc.quick_stop = None, False
        actions: list[Action] = [Note(name, f"exited with {describe_exit(code)}")]
        if proc.restart_when_stopped:
            proc.restart_when_stopped = False
            proc.restarts += 1
            proc.state, proc.failures = State.WAITING, 0
        elif not proc.wanted:
            proc.state = State.STOPPED
        else:
            if stable:
                proc.failures = proc.auto_restarts = 0
            actions += self._after_exit(proc, code)
        self._forget_removed()
        return actions + self._advance()

    def tick(self) -> list[Action]:
        """Act on every deadline that has passed."""
        now = self.clock()
        actions: list[Action] = []
        for proc in self.procs.values():
            if proc.deadline is not None and proc.deadline <= now:
                proc.deadline = None
                actions += self._on_deadline(proc)
        return actions + self._advance()

    # -- questions --------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [p.deadline for p in self.procs.values() if p.deadline is not None]
        return min(deadlines, default=None)

    def in_crash_loop(self, proc: Proc) -> bool:
        return proc.failures >= self.timing.crash_loop_after and proc.state in (
            State.BACKOFF, State.WAITING, State.STARTING)

    def parked(self) -> list[str]:
        """Workers that crashed in reload mode and wait for a change."""
        return [p.name for p in self.procs.values() if self.is_parked(p)]

    def is_parked(self, proc: Proc) -> bool:
        return self.reload and proc.state is State.CRASHED and proc.wanted

    def unknown(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that are neither a process nor a worker of the project."""
        known = {p.name for p in self.procs.values()} | {
            p.spec.worker.key for p in self.procs.values()}
        return [n for n in names if n not in known]

    @property
    def done(self) -> bool:
        """Nothing runs and nothing will: every process is in a final state."""
        return all(p.state in FINAL for p in self.procs.values())

    @property
    def holding(self) -> bool:
        """Some process was stopped on request and waits to be started again."""
        return any(p.held for p in self.procs.values())

    def exit_code(self) -> int:
        """0 if every process ended well, else the code of the one that failed first."""
        failed = [p for p in self.procs.values()
                  if p.state in (State.CRASHED, State.FAILED) and p.failed_at is not None]
        if not failed:
            return 0
        code = min(failed, key=lambda p: p.failed_at or 0.0).exit_code
        return code if code is not None and code > 0 else 1

    def _settle(self, proc: Proc, state: State) -> None:
        """Put it in a final state, noting when it failed (for the exit code)."""
        proc.state = state
        if state in (State.CRASHED, State.FAILED):
            proc.failed_at = self.clock()

    # -- policy -----------------------------------------------------------------------

    def _after_exit(self, proc: Proc, code: int) -> list[Action]:
        policy = proc.spec.worker.restart
        if self.reload and code != 0:
            self._settle(proc, State.CRASHED)
            proc.reason = "waiting for a change"
            return [Note(proc.name, "crashed: waiting for a change to restart it")]
        if code == EXIT_CONFIG:
            self._settle(proc, State.FAILED)
            worker = proc.spec.worker
            return [Note(proc.name, "not restarted: fix its entry in the topology "
                                    f"(workers.{worker.key}, line {worker.line}) or install "
                                    "what it needs")]
        if not (policy is RestartPolicy.ALWAYS
                or (policy is RestartPolicy.ON_FAILURE and code != 0)):
            self._settle(proc, State.EXITED if code == 0 else State.CRASHED)
            return []
        limit = proc.spec.worker.max_restarts
        if limit is not None and proc.auto_restarts >= limit:
            self._settle(proc, State.EXITED if code == 0 else State.CRASHED)
            proc.reason = (f"gave up after {limit} restart{'' if limit == 1 else 's'} in a "
                           f"row (max_restarts: {limit}); last: "
                           f"{proc.reason or describe_exit(code)}")
            return [Note(proc.name, f"not restarted: {proc.reason}")]
        proc.auto_restarts += 1
        if code != 0:
            proc.failures += 1
        delay = self._backoff(max(proc.failures, 1))
        proc.state, proc.deadline = State.BACKOFF, self.clock() + delay
        text = f"restarting in {delay:.1f} s"
        if proc.failures >= self.timing.crash_loop_after:
            text += f" (crash loop: {proc.failures} failures in a row)"
        return [Note(proc.name, text)]

    def _backoff(self, failures: int) -> float:
        """Exponential, capped, with jitter so that crashed peers do not restart in step."""
        base = min(self.timing.backoff_max, self.timing.backoff_first * 2 ** (failures - 1))
        return float(base * (0.5 + self.random() / 2))

    def _forgive_at(self, proc: Proc) -> float | None:
        if (proc.failures or proc.auto_restarts) and proc.ready_at is not None:
            return proc.ready_at + self.timing.stable_after
        return None

    def _on_deadline(self, proc: Proc) -> list[Action]:
        now = self.clock()
        if proc.state is State.BACKOFF:
            proc.state = State.WAITING
            proc.restarts += 1
            return []
        if proc.state is State.READY:
            proc.failures = proc.auto_restarts = 0  # stable for long enough
            return []
        if proc.state is State.STARTING:
            limit = proc.spec.worker.ready_timeout
            proc.reason = f"not ready within {limit:g} s"
            proc.state, proc.phase = State.STOPPING, "kill"
            proc.deadline = now + self.timing.kill_timeout
            return [Note(proc.name, f"{proc.reason}: killing it"),
                    Kill(proc.name, signal.SIGKILL)]
        if proc.phase == "drain":
            proc.phase, proc.deadline = "term", now + self.timing.term_timeout
            return [Note(proc.name, "did not drain in time: SIGTERM"),
                    Kill(proc.name, signal.SIGTERM)]
        if proc.phase == "term":
            proc.phase, proc.deadline = "kill", now + self.timing.kill_timeout
            return [Note(proc.name, "still running after SIGTERM: SIGKILL"),
                    Kill(proc.name, signal.SIGKILL)]
        if proc.phase == "kill":
            return [Note(proc.name, "still running after SIGKILL")]
        return []

    def _advance(self) -> list[Action]:
        """Start what may start and stop what must stop, in dependency order."""
        actions: list[Action] = []
        for roll in list(self.rolls):
            actions += self._roll_on(roll)
        for proc in self.procs.values():
            if proc.state is State.WAITING and proc.wanted:
                actions += self._maybe_spawn(proc)
            elif (proc.state in ALIVE and not proc.wanted and proc.phase is None
                  and not self._stopping_dependents(proc)):
                actions += self._begin_stop(proc)
        return actions

    def _roll_on(self, roll: Roll) -> list[Action]:
        """Restart the roll's next process once its current one is back (ready, or ended
        well); end the roll if that one failed instead. One that stopped running meanwhile
        (stopped, removed, or ended by itself) is left alone."""
        current = self.procs.get(roll.current) if roll.current is not None else None
        if current is not None and not current.removed and current.wanted:
            back = current.restarts > roll.mark
            if back and current.state in (State.BACKOFF, State.CRASHED, State.FAILED):
                detail = current.reason or (describe_exit(current.exit_code)
                                            if current.exit_code is not None else "")
                self._end_roll(roll, "stopped", f"{current.name} is {current.state} after "
                               "its restart" + (f" ({detail})" if detail else ""))
                return [Note(current.name, f"rolling restart stopped: it is {current.state} "
                                           "after its restart; the others keep running")]
            if not back or not (current.state is State.READY or self._ended_well(current)):
                return []
        while roll.pending:
            proc = self.procs.get(roll.pending.pop(0))
            if proc is None or not self._running(proc):
                continue  # gone, stopped or ended meanwhile: not ours to start
            roll.current, roll.mark = proc.name, proc.restarts
            roll.restarted.append(proc.name)
            return [Note(proc.name, "rolling restart: restarting it"),
                    *self._restart(proc, quick=False)]
        self._end_roll(roll, "done")
        return []

    def _end_roll(self, roll: Roll, state: RollState, reason: str = "") -> None:
        roll.state, roll.reason, roll.current = state, reason, None
        self.rolls.remove(roll)
        self.rolled.append(roll)

    def _maybe_spawn(self, proc: Proc) -> list[Action]:
        deps = [self.procs[n] for n in proc.spec.depends_on]
        for dep in deps:
            if self.is_parked(dep):
                return []  # under --reload it comes back with the next change: wait for it
            if dep.state in (State.CRASHED, State.FAILED):
                self._settle(proc, State.FAILED)
                proc.reason = (f"dependency '{dep.name}' did not complete: it is {dep.state}"
                               if dep.name in proc.spec.completed
                               else f"dependency '{dep.name}' is {dep.state}")
                return [Note(proc.name, f"not started: {proc.reason}")]
        if all(self._ended_well(d) or (d.state is State.READY and d.name not in
                                       proc.spec.completed) for d in deps):
            proc.state = State.STARTING
            # Counted from the request, so a spawn that never reports cannot hang the project.
            proc.deadline = self.clock() + proc.spec.worker.ready_timeout
            return [Spawn(proc.name)]
        return []

    def _begin_stop(self, proc: Proc) -> list[Action]:
        now = self.clock()
        proc.state = State.STOPPING
        if proc.ready_at is not None and not proc.quick_stop:
            proc.phase, proc.deadline = "drain", now + proc.spec.worker.stop_timeout
            return [Drain(proc.name)]
        proc.phase, proc.deadline = "term", now + self.timing.term_timeout
        return [Kill(proc.name, signal.SIGTERM)]

    def _forget_removed(self) -> None:
        for name in [p.name for p in self.procs.values() if p.removed and p.state in FINAL]:
            del self.procs[name]

    def _stopping_dependents(self, proc: Proc) -> bool:
        """Whether something that depends on it is still on its way down: it goes first."""
        return any(d.state in ALIVE and not d.wanted for d in self._dependents(proc))

    def _dependents(self, proc: Proc) -> list[Proc]:
        return [p for p in self.procs.values() if proc.name in p.spec.depends_on]

    def _select(self, names: Iterable[str] | None, *,
                with_dependencies: bool = False) -> list[Proc]:
        """The named processes (a worker key names all its replicas), in file order."""
        if names is None:
            return list(self.procs.values())
        chosen: set[str] = set()
        pending = [p.name for n in names for p in self.procs.values()
                   if n in (p.name, p.spec.worker.key)]
        while pending:
            name = pending.pop()
            if name in chosen:
                continue
            chosen.add(name)
            proc = self.procs[name]
            if with_dependencies:
                pending.extend(proc.spec.depends_on)
        return [p for p in self.procs.values() if p.name in chosen]
