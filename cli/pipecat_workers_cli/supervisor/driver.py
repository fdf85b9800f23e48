"""The supervisor: runs a project's worker processes and carries out the machine's decisions.

One loop owns everything: process events, control requests and signals arrive on one queue; the
:class:`~pipecat_workers_cli.supervisor.machine.Machine` decides; the loop spawns, drains and
signals, writes each worker's log, keeps the state file current and tells the renderer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipecat_workers.errors import WorkersError
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.host import HostSpec
from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.supervisor.machine import (
    Action,
    Drain,
    Kill,
    Machine,
    Note,
    Spawn,
    State,
    Timing,
)
from pipecat_workers_cli.supervisor.process import (
    Exited,
    Output,
    ProcessEvent,
    Status,
    WorkerProcess,
)
from pipecat_workers_cli.supervisor.reaper import Reaper
from pipecat_workers_cli.supervisor.records import ProjectRecords, Renderer
from pipecat_workers_cli.supervisor.reload import (
    ChangeWatcher,
    drop_bytecode,
    plan,
    reload_topology,
    shown,
)
from pipecat_workers_cli.supervisor.report import (
    FeedHandler,
    exit_news,
    exit_reason,
    is_news,
    job_news,
    project_status,
)
from pipecat_workers_cli.supervisor.requests import (
    ApplyRequest,
    Request,
    RestartRequest,
    ScaleRequest,
    StartRequest,
    StatusRequest,
    StopRequest,
    parse_request,
)
from pipecat_workers_cli.supervisor.services import ProjectServices
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.supervisor.status import ProjectStatus, RollStatus
from pipecat_workers_cli.supervisor.template import ForkUnavailable, Template
from pipecat_workers_cli.supervisor.usage import UsageSampler
from pipecat_workers_cli.topology.hints import channel_hint
from pipecat_workers_cli.topology.model import ProcessSpec, Topology, expand

if TYPE_CHECKING:
    from pipecat_workers_cli.dashboard.listener import Listener

logger = logging.getLogger("pipecat_workers_cli.supervisor")

_STATE_EVERY = 0.2  # seconds between state file writes while things change


@dataclass(frozen=True, slots=True)
class _Request:
    payload: dict[str, Any]
    answer: asyncio.Future[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Signal:
    sig: int


@dataclass(frozen=True, slots=True)
class _Changed:
    paths: set[Path]


_Event = ProcessEvent | _Request | _Signal | _Changed


class Supervisor:
    """Runs one project until every worker has ended or it is told to stop.

    Args:
        topology: The loaded project.
        renderer: Where records and status go.
        only: Worker names (or keys) to start with their dependencies; all by default.
        timing: Delays of the stop sequence and restart back-off.
        reload: Watch the project's files: restart the workers whose code changed, apply
            edits of the topology, and park a crashed worker until the next change.
        no_fork: Why workers are spawned rather than forked from the process template
            (``--no-fork``), if they are.
        template: The process template, if it was launched already (with ``env``).
        dashboard: Serve the dashboard page on this bound socket while the project runs.
        clock, rng: Injected for tests.
    """

    def __init__(
        self, topology: Topology, renderer: Renderer, *, only: Sequence[str] | None = None,
        timing: Timing | None = None, env: Mapping[str, str] | None = None,
        reload: bool = False, no_fork: str | None = None, template: Template | None = None,
        dashboard: Listener | None = None,
        clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random,
    ) -> None:
        self._topology = topology
        self._renderer = renderer
        self._only = list(only) if only else None
        self._env = dict(os.environ if env is None else env)
        # What the topology file was last interpolated with: the environment of the
        # `up -d` that applied it, kept for later edits under --reload (None: ours).
        self._file_env: dict[str, str] | None = None
        self._clock = clock
        self._machine = Machine(expand(topology), clock, rng,
                                timing or Timing(), reload=reload)
        self._reload = reload
        self._watcher: ChangeWatcher | None = None
        self._imports: dict[str, set[str]] = {}
        self._stopping = False
        self._state = StateDir.of(topology.root, topology.name)
        self._events: deque[_Event] = deque()
        self._wakeup = asyncio.Event()
        self._last_err: dict[str, str] = {}
        self._jobs_seen: dict[str, dict[str, int]] = {}
        self._processes: dict[str, WorkerProcess] = {}
        self._records = ProjectRecords(self._state, renderer)
        self._last_exits: dict[str, str] = {}
        self._usage = UsageSampler(clock)
        self._services = ProjectServices(
            self._state, self._on_control, self._records.news, dashboard=dashboard,
            status=lambda: self.status(running=not self._loop_over))
        self._signalled: int | None = None
        self._runners: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_over = False
        self._dirty = True
        self._template = template or Template(topology, self._env, off=no_fork)
        self._reaper = Reaper()  # a child subreaper's orphans (see pipecat_workers_cli.forkserver)

    @property
    def state_dir(self) -> StateDir:
        return self._state

    async def run(self) -> int:
        """Supervise until the end; returns the exit code for the command."""
        if self._only and (wrong := self._topology.unknown_workers(self._only)):
            raise CommandError(wrong)
        lock = self._state.lock()
        self._records.topology(self._topology)
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        root, handlers = logging.getLogger(), logging.getLogger().handlers[:]
        # Our own warnings (and the library's) join the feed: printed around a live view,
        # they would tear it.
        root.handlers = [FeedHandler(self._records.news)]
        try:
            await self._open()
            self._perform(self._machine.start(self._only))
            self._write_state()
            await self._loop()
        finally:
            self._remove_signals(loop, installed)
            await self._close()
            os.close(lock)
            root.handlers = handlers
        if self._signalled is not None:
            return 128 + self._signalled
        return self._machine.exit_code()

    # -- resources --------------------------------------------------------------------

    async def _open(self) -> None:
        self._state.logs_dir.mkdir(parents=True, exist_ok=True)
        self._template.start(self._records.news, self._reaper)
        await self._services.start(self._topology)
        if self._reload:
            self._watcher = ChangeWatcher(self._topology.root,
                                          extra=[self._topology.path.parent])
            self._background(self._watch(self._watcher))

    async def _close(self) -> None:
        for event in self._events:  # requests that came too late for the loop
            if isinstance(event, _Request) and not event.answer.done():
                event.answer.set_result({"ok": False, "error": "the supervisor is stopping"})
        await self._services.stop_control()  # first: nobody waits on a loop that has ended
        if self._watcher is not None:
            self._watcher.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for process in list(self._processes.values()):
            process.signal(signal.SIGKILL)  # only left if the loop itself failed
            await process.close()
        await self._template.close()
        await self._services.stop()
        self._write_state(running=False)
        self._records.close()

    # -- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        last_state = 0.0
        while not (self._machine.done and not self._processes and (
                self._stopping or not (self._reload or self._machine.holding))):
            deadline = self._machine.next_deadline()
            timeout = _STATE_EVERY if deadline is None else min(
                _STATE_EVERY, max(0.0, deadline - self._clock()))
            if not self._events:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
            self._wakeup.clear()
            while self._events:
                self._handle(self._events.popleft())
            self._reaper.reap({p.pid for p in self._processes.values()})
            self._perform(self._machine.tick())
            now = self._clock()
            if self._dirty or now - last_state >= _STATE_EVERY:
                last_state = now
                self._publish_status()
        self._loop_over = True
        self._publish_status()

    def _emit(self, event: _Event) -> None:
        """Queue an event for the loop. Output is written at once instead: the pipe's
        reader then goes only as fast as the log, so a chatty worker slows down rather
        than fill the supervisor's memory, and requests and signals never wait behind it."""
        if isinstance(event, Output):
            text = event.raw.decode("utf-8", "replace")
            if event.stream == "err" and text.strip():
                self._last_err[event.name] = text.strip()
            self._records.log(event.name, event.stream, text)
            return
        self._events.append(event)
        self._wakeup.set()

    def _handle(self, event: _Event) -> None:
        machine = self._machine
        if isinstance(event, Status):
            process = self._processes.get(event.name)
            if process is None or process.pid != event.pid:
                return  # from a process that has been replaced since
            kind = event.event.get("event")
            if kind == "ready":
                self._runners[event.name] = str(event.event.get("runner", ""))
                self._imports[event.name] = set(event.event.get("imports") or ())
                self._perform(machine.ready(event.name))
            elif kind == "error":
                self._perform(machine.reported_error(event.name,
                                                     str(event.event.get("message", ""))))
            elif kind == "waiting":
                self._perform(machine.waiting_for_bus(event.name,
                                                      str(event.event.get("message", ""))))
                self._dirty = True  # its reason changed: ps and up -d read it
        elif isinstance(event, Exited):
            process = self._processes.get(event.name)
            if process is not None and process.pid == event.pid:
                del self._processes[event.name]
                self._reaper.exited(event.pid)
                self._background(process.close())
                last = self._last_err.pop(event.name, "")
                proc = machine.procs[event.name]
                reason = exit_reason(event.code, proc.reason or last)
                self._last_exits[event.name] = reason
                if event.code != 0 and not proc.reason:  # what the host said is clearer
                    proc.reason = reason
                # News: an exit nobody asked for that failed, or that is restarted.
                asked = not proc.wanted or proc.restart_when_stopped
                actions = machine.exited(event.name, event.code)
                if not asked and (event.code != 0 or proc.state is State.BACKOFF):
                    self._records.news(exit_news(proc, reason, [
                        a.text for a in actions if isinstance(a, Note) and a.name == proc.name]))
                self._perform(actions, news=False)
        elif isinstance(event, _Request):
            self._answer(event)
        elif isinstance(event, _Signal):
            self._on_signal(event.sig)
        elif isinstance(event, _Changed):
            self._on_changes(event.paths)

    def _perform(self, actions: list[Action], *, news: bool = True) -> None:
        """Carry out the machine's actions; its notes that matter go to the ``workers``
        stream too, unless the caller says them there itself (``news=False``)."""
        for action in actions:
            if isinstance(action, Spawn):
                self._background(self._spawn(action.name))
            elif isinstance(action, Drain):
                if (process := self._processes.get(action.name)) is not None:
                    process.drain()
            elif isinstance(action, Kill):
                if (process := self._processes.get(action.name)) is not None:
                    process.signal(action.sig)
            elif isinstance(action, Note):
                self._records.log(action.name, "sup", action.text)
                if news and is_news(action.text):
                    self._records.news(f"{action.name}: {action.text}")
        if actions:
            self._dirty = True

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, name: str) -> None:
        spec = self._machine.procs[name].spec
        channel = spec.channel
        host = HostSpec(
            name=name, class_path=spec.worker.class_path, args=dict(spec.worker.args),
            backend=channel.backend, channel=channel.channel,
            url=self._services.hub_path if channel.backend == "local" else channel.url,
            runner=f"{self._topology.name}/{name}", root=str(self._topology.root),
            hint=channel_hint(self._topology.path, channel),
            traces=str(self._state.traces_dir), project=self._topology.name)
        env = {**self._env, **spec.worker.env}
        try:
            process = await self._start_process(host, env)
        except Exception as exc:  # a missing interpreter, a NUL in an env value, ...
            self._perform(self._machine.spawn_failed(name, f"{type(exc).__name__}: {exc}"))
            return
        self._processes[name] = process
        self._perform(self._machine.spawned(name, process.pid))

    async def _start_process(self, host: HostSpec, env: Mapping[str, str]) -> WorkerProcess:
        """Forked from the process template when it can, else spawned."""
        if self._template.on:
            try:
                return await WorkerProcess.fork(self._template, host, env=env,
                                                cwd=self._topology.root, emit=self._emit)
            except ForkUnavailable as refused:
                if refused.note:
                    self._records.log(host.name, "sup", refused.note)
        return await WorkerProcess.spawn(host, env=env, cwd=self._topology.root,
                                         emit=self._emit)

    # -- logs and status --------------------------------------------------------------

    def status(self, *, running: bool = True) -> ProjectStatus:
        """The project as of now, joined with what the bus monitors see."""
        views = self._services.views()
        status = project_status(self._topology, self._machine, views, self._runners,
                                now=self._clock(), running=running,
                                last_exits=self._last_exits, usage=self._usage.usage)
        status.template = self._template.describe()
        status.rolls = [RollStatus(r.id, r.state, list(r.restarted), list(r.pending), r.reason)
                        for r in (*self._machine.rolls, *self._machine.rolled)]
        return status

    def _publish_status(self) -> None:
        """Tell the renderer; rewrite the state file when a process changed state (so
        ``up -d`` and ``ps`` see a worker ready as soon as it is)."""
        if self._usage.due():  # the figures of the last sample are shown meanwhile
            self._background(self._usage.refresh(
                {p.name: p.pid for p in self._machine.procs.values() if p.pid is not None}))
        status = self.status()
        for name, text in job_news(self._jobs_seen, status):  # the feed's, not the log's
            self._renderer.record(LogRecord(time=datetime.now(UTC), worker=name,
                                            stream="news", text=text))
        self._jobs_seen = {w.name: w.jobs for w in status.workers if w.jobs}
        self._renderer.status(status)
        if self._dirty:
            self._dirty = False
            self._write_state(status)

    def _write_state(self, status: ProjectStatus | None = None, *, running: bool = True
                     ) -> None:
        status = status or self.status(running=running)
        status.running = running
        self._records.state(status, sockets=self._services.sockets(),
                            env_files=self._topology.env_files)

    # -- control and signals ----------------------------------------------------------

    async def _on_control(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._loop_over:
            return {"ok": False, "error": "the supervisor is stopping"}
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._emit(_Request(payload, answer))
        return await answer

    def _answer(self, request: _Request) -> None:
        try:
            result = self._carry_out(parse_request(request.payload))
        except CommandError as exc:
            request.answer.set_result({"ok": False, "error": str(exc)})
            return
        request.answer.set_result({"ok": True, **result})

    def _carry_out(self, request: Request) -> dict[str, Any]:
        """Act on a control request; what the answer carries besides ``ok``."""
        machine = self._machine
        if isinstance(request, ApplyRequest):  # its names are those of the file it applies
            return {"applied": self._apply_file(request)}
        names = getattr(request, "names", None)
        if names and (unknown := machine.unknown(names)):
            raise CommandError(f"no worker named {', '.join(map(repr, unknown))}")
        if isinstance(request, StatusRequest):
            return {"status": self.status().to_json()}
        if isinstance(request, StopRequest):
            self._stopping = self._stopping or request.down
            self._perform(machine.stop(None if request.down else names, hold=not request.down))
        elif isinstance(request, StartRequest):
            self._perform(machine.start(names))
        elif isinstance(request, RestartRequest) and request.rolling:
            roll, actions = machine.roll(names)
            self._perform(actions)
            return {"roll": roll.id}
        elif isinstance(request, RestartRequest):
            self._perform(machine.restart(names or list(machine.procs)))
        elif isinstance(request, ScaleRequest):
            self._scale(request.counts)
        return {}

    def _apply_file(self, request: ApplyRequest) -> dict[str, list[str]]:
        """``up`` on the running project: load the file it names with its environment and
        run the difference. A file with an error changes nothing."""
        if self._stopping:
            raise CommandError("the project is stopping")
        try:
            # `[]`, not None, without --env-file: the caller's default (.env), not ours.
            topology = reload_topology(self._topology, Path(request.file), request.env,
                                       env_files=request.env_files)
        except WorkersError as exc:
            raise CommandError(str(exc)) from None
        if request.names and (wrong := topology.unknown_workers(request.names)):
            raise CommandError(wrong)
        self._file_env = request.env
        self._records.news(f"applying {topology.path.name}")
        applied, actions = self._machine.apply(self._use(topology), request.names)
        self._perform(actions)
        return applied.to_json()

    def _scale(self, counts: dict[str, int]) -> None:
        """Run this many replicas of these worker keys until the topology is next applied;
        0 stops them all."""
        if self._stopping:
            raise CommandError("the project is stopping")
        for key in counts:
            if key not in self._topology.workers:
                raise CommandError(f"no worker key {key!r} in {self._topology.path.name} (it "
                                   f"has {', '.join(self._topology.workers)})")
            if counts[key] > 1 and self._topology.workers[key].proxy is not None:
                raise CommandError(f"{key!r} is a proxy worker: it runs as one process")
        for key, count in counts.items():
            self._records.news(f"scaling {key} to {count} until the topology is next applied")
            if count == 0:
                self._perform(self._machine.stop([key], hold=True))
                continue
            workers = {**self._topology.workers,
                       key: replace(self._topology.workers[key], replicas=count)}
            self._topology = replace(self._topology, workers=workers)
            self._records.topology(self._topology)
            self._perform(self._machine.scale(key, expand(self._topology)))

    def _on_signal(self, sig: int) -> None:
        self._stopping = True
        if self._signalled is None:
            self._signalled = sig
            logger.warning("%s: stopping every worker (again to force)",
                           signal.Signals(sig).name)
            self._perform(self._machine.stop())
        else:
            logger.warning("forcing: killing every worker")
            self._perform(self._machine.force())

    # -- reload -----------------------------------------------------------------------

    async def _watch(self, watcher: ChangeWatcher) -> None:
        async for paths in watcher.changes():
            self._emit(_Changed(paths))

    def _on_changes(self, paths: set[Path]) -> None:
        if self._stopping:
            return
        live = {n: files for n, files in self._imports.items()
                if n in self._machine.procs and not self._machine.procs[n].removed}
        result = plan(paths, topology=self._topology.path, imports=live,
                      parked=self._machine.parked())
        drop_bytecode(paths)  # before any worker imports the new code
        self._template.changed(paths)  # first: the workers restarted next fork from a new one
        if result.topology_changed:
            self._apply_topology()
        for name, path in result.restart.items():
            if name in self._machine.procs:
                self._records.log(name, "sup",
                                  f"reloading: {shown(path, self._topology.root)} changed")
                self._perform(self._machine.restart([name], quick=True))

    def _apply_topology(self) -> None:
        """Run the edited topology's difference; a broken edit changes nothing."""
        try:
            topology = reload_topology(self._topology, env=self._file_env)
        except WorkersError as exc:
            # Several errors are a line each: one note keeps them together.
            self._records.news(f"topology not applied: {'; '.join(str(exc).splitlines())}")
            return
        self._records.news(f"applying the edited {topology.path.name}")
        self._perform(self._machine.update(self._use(topology)))

    def _use(self, topology: Topology) -> list[ProcessSpec]:
        """Make ``topology`` the project's from now on; its processes."""
        if topology.channels != self._topology.channels:
            self._background(self._services.channels_changed(topology))
        self._template.update(topology)
        self._topology = topology
        self._records.topology(topology)
        return expand(topology)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: terminal closed
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._emit, _Signal(sig))
                installed.append(sig)
        return installed

    @staticmethod
    def _remove_signals(loop: asyncio.AbstractEventLoop, installed: list[int]) -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
