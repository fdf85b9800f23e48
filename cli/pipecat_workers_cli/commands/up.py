"""``workers up``: start a project and supervise it, in the foreground or detached.

``up -d`` imports only what it needs to wait for the project (the supervisor's modules are
for the supervisor). On Linux it forks the detached supervisor instead of starting another
interpreter, which would import and load everything again; ``--no-fork`` spawns it, and
its workers, the old way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import click

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.forkserver import close_other_fds, drop_command_dir
from pipecat_workers_cli.project import command_for
from pipecat_workers_cli.states import ENDED, FAILING, worker_line
from pipecat_workers_cli.supervisor.machine import WAITING_FOR_BUS
from pipecat_workers_cli.supervisor.private import state_errors
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.topology import Topology, expand, load_topology
from pipecat_workers_cli.topology.preflight import preflight_or_exit

if TYPE_CHECKING:
    from pipecat_workers_cli.dashboard.listener import Listener
    from pipecat_workers_cli.logs.reader import LogRecord
    from pipecat_workers_cli.supervisor.driver import Supervisor

_DAEMON_FLAG = "--supervise-detached"
NO_FORK_ENV = "WORKERS_NO_FORK"
_POLL = 0.005  # seconds between looks at the state file while waiting
_APPLY_POLL = 0.05  # seconds between status requests to a running supervisor


@click.command()
@click.argument("args", nargs=-1, metavar="[FILE] [WORKER]...")
@click.option("-d", "--detach", is_flag=True, help="Run in the background and return once "
              "every worker is ready.")
@click.option("--no-ui", is_flag=True, help="Plain prefixed log lines, even in a terminal.")
@click.option("--reload", is_flag=True, help="Restart a worker when code it imported "
              "changes, apply edits of FILE, and hold a crashed worker until the next "
              "change.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="With -d: seconds to wait for every worker to be ready.")
@click.option("--no-fork", is_flag=True, help="Spawn each worker in a fresh interpreter "
              "instead of forking it from the project's process template (also "
              "WORKERS_NO_FORK=1).")
@click.option("--dashboard", is_flag=True, help="Also serve a live web page of the project "
              "while it runs (its URL, with a secret token, is printed once).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Where the dashboard listens. Beyond loopback, anyone who can reach it "
              "and learns the URL sees the project.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=0, metavar="PORT",
              help="The dashboard's port (default: a free one).")
@click.option(_DAEMON_FLAG, "daemon", is_flag=True, hidden=True)
@click.pass_context
def up(ctx: click.Context, args: tuple[str, ...], detach: bool, no_ui: bool, reload: bool,
       timeout: float, no_fork: bool, dashboard: bool, dashboard_host: str,
       dashboard_port: int, daemon: bool) -> None:
    """Start the workers of FILE (or only WORKER... and what they depend on).

    With -d on a project that runs already, apply FILE to it: start new workers, restart
    changed ones, stop removed ones, and leave the rest running.

    In a terminal it shows a live view; otherwise each worker's output, prefixed with its
    name. Ctrl-C stops every worker (drain, then SIGTERM, then SIGKILL); a second Ctrl-C
    kills them at once. Exits with 0 when every worker ended well, else with the code of
    the first that failed.
    """
    file, names = _split(ctx.obj.get("file"), args)
    topology = load_topology(file, env_files=ctx.obj.get("env_files"))
    state = StateDir.of(topology.root, topology.name)
    if wrong := topology.unknown_workers(names):
        raise CommandError(wrong)
    if dashboard and (detach or daemon):
        raise CommandError(f"--dashboard serves the page from `up` in the foreground; for a "
                           f"detached project, `{command_for(topology)} dashboard` serves it")
    if not daemon:
        preflight_or_exit(topology)  # check's findings first: nothing starts (or changes)
    if state.supervisor_alive() and not daemon:
        how = command_for(topology)
        if not detach:
            raise CommandError(f"project '{topology.name}' is already running; `{how} up -d "
                               f"{file}` applies the file to it, `{how} logs -f` follows it, "
                               f"`{how} down` stops it")
        if reload or no_fork:
            click.echo("note: --reload and --no-fork take effect on the next `up` after "
                       f"`{how} down`", err=True)
        sys.exit(_apply_to_running(topology, state, names, timeout))
    if state.supervisor_alive():
        raise CommandError(f"project '{topology.name}' is already running")
    off = _no_fork(no_fork)
    if detach:
        sys.exit(_detach(topology, state, names, timeout, reload=reload, no_fork=off))
    renderer: _Shown
    if daemon:
        _title_detached(topology)
        renderer = _NotesOnly()
    elif sys.stdout.isatty() and not no_ui:
        from pipecat_workers_cli.render.live import LiveRenderer

        renderer = LiveRenderer(topology)
    else:
        from pipecat_workers_cli.render.plain import PlainRenderer

        renderer = PlainRenderer([p.name for p in expand(topology)])
    listener = None
    if dashboard:  # bound first: a port in use is one line before anything starts
        from pipecat_workers_cli.commands.dashboard import announce
        from pipecat_workers_cli.dashboard.listener import Listener

        listener = Listener.bind(dashboard_host, dashboard_port)
        announce(listener)
    sys.exit(_supervise(topology, renderer, names, reload=reload, no_fork=off,
                        dashboard=listener))


def _apply_to_running(topology: Topology, state: StateDir, names: list[str], timeout: float
                      ) -> int:
    """``up -d`` on a running project: its supervisor loads FILE (interpolated with this
    command's environment) and runs the difference; wait as a first ``up -d`` does, then say
    what changed."""
    import asyncio

    from pipecat_workers_cli.supervisor.control import request

    socket = state.socket_from_state("control")
    applied = asyncio.run(request(socket, {
        "cmd": "apply", "file": str(topology.path), "env": dict(os.environ),
        "env_files": list(topology.env_files) if topology.env_files else None,
        "workers": names}))
    changes: dict[str, list[str]] = applied["applied"]
    deadline = time.monotonic() + timeout
    try:
        while True:
            answer = asyncio.run(request(socket, {"cmd": "status"}))
            status = ProjectStatus.from_json(answer["status"])
            ok = _verdict(status, partial=bool(names))
            if ok is not None or time.monotonic() > deadline:
                break
            time.sleep(_APPLY_POLL)
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; the changes go on in the background: "
                   f"`{command_for(topology)} ps` shows them", err=True)
        return 130
    shown = {w.name: w for w in status.workers}
    for verb in ("started", "restarted"):
        for name in changes[verb]:
            click.echo(f"{verb} {worker_line(shown[name]) if name in shown else name}")
    for name in changes["stopped"]:
        click.echo(f"stopped {name}")
    if unchanged := len(changes["unchanged"]):
        click.echo(f"unchanged: {unchanged} worker{'' if unchanged == 1 else 's'}")
    if ok is None:
        raise CommandError(f"not every worker was ready within {timeout:g} s; "
                           f"`{command_for(topology)} ps` shows where they are")
    moved = {n for verb in ("started", "restarted") for n in changes[verb]}
    for worker in status.workers:
        if not ok and worker.state in FAILING and worker.name not in moved:
            click.echo(worker_line(worker))
    return 0 if ok else 1


class _Shown(Protocol):
    """A renderer with a start and a stop around the supervisor's run."""

    def record(self, record: LogRecord) -> None: ...

    def status(self, status: ProjectStatus) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _supervise(topology: Topology, renderer: _Shown, names: list[str], *, reload: bool,
               no_fork: str | None, dashboard: Listener | None = None) -> int:
    """Supervise the project until it ends; the exit code. The process template is forked
    once the supervisor has imported the library, before its event loop starts."""
    import asyncio

    from pipecat_workers_cli.forkserver.launch import launch_early
    from pipecat_workers_cli.supervisor.driver import Supervisor
    from pipecat_workers_cli.supervisor.template import Template

    launched = launch_early(topology, os.environ) if no_fork is None else None
    template = Template(topology, os.environ, off=no_fork, launched=launched)

    supervisor = Supervisor(topology, renderer, only=names, reload=reload, template=template,
                            dashboard=dashboard)
    return asyncio.run(_run(supervisor, renderer))


async def _run(supervisor: Supervisor, renderer: _Shown) -> int:
    renderer.start()
    try:
        return await supervisor.run()
    finally:
        renderer.stop()


def _split(file: str | None, args: tuple[str, ...]) -> tuple[str, list[str]]:
    """``up FILE WORKER...``, or ``-f FILE up WORKER...``."""
    if file is not None:
        if args and args[0].endswith((".yaml", ".yml")):
            raise CommandError(f"two topologies: {file} (-f or WORKERS_FILE) and {args[0]}; "
                               "give one")
        return file, list(args)
    if not args:
        raise CommandError("which topology? `workers up FILE` (or `workers -f FILE up`)")
    return args[0], list(args[1:])


class _NotesOnly:
    """The detached supervisor's output: its own notes (worker output is in the logs)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def record(self, record: LogRecord) -> None:
        if record.stream == "sup":
            print(f"{record.time.astimezone():%Y-%m-%dT%H:%M:%S%z} {record.worker}: "
                  f"{record.text}", flush=True)

    def status(self, status: ProjectStatus) -> None:
        pass


def _no_fork(flag: bool) -> str | None:
    """Why workers are not forked from a template, if the user said so."""
    if flag:
        return "--no-fork"
    if os.environ.get(NO_FORK_ENV, "").strip() not in ("", "0"):
        return f"{NO_FORK_ENV} is set"
    return None


def _detach(topology: Topology, state: StateDir, names: list[str], timeout: float, *,
            reload: bool, no_fork: str | None) -> int:
    """Start a supervisor in its own session, wait until the workers are ready, report."""
    start = (_fork_supervisor if no_fork is None and sys.platform.startswith("linux")
             else _spawn_supervisor)
    child, log_start = start(topology, state, names, reload=reload, no_fork=no_fork)
    try:
        return _await_ready(topology, state, child, log_start, timeout, partial=bool(names),
                            reload=reload)
    except KeyboardInterrupt:
        how = command_for(topology)
        click.echo(f"\nstopped waiting; project '{topology.name}' keeps starting in the "
                   f"background: `{how} ps` shows it, `{how} down` stops it", err=True)
        return 130


class _Child(Protocol):
    """The detached supervisor, as this command waits for it."""

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...


class _Forked:
    """A detached supervisor forked from this process (polled as a ``Popen`` is)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 255
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _fork_supervisor(topology: Topology, state: StateDir, names: list[str], *,
                     reload: bool, no_fork: str | None) -> tuple[_Child, int]:
    """The detached supervisor, forked from this process (which has loaded the topology and
    imported nothing else yet), and where its output starts in ``supervisor.log``."""
    with state.open_supervisor_log() as log:
        with state_errors(), contextlib.suppress(FileNotFoundError):
            state.state_file.unlink()
        start = log.tell()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write it again
        pid = os.fork()
        if pid == 0:
            _become_detached(log.fileno())
            _title_detached(topology)
            sys.exit(_supervise(topology, _NotesOnly(), names, reload=reload,
                                no_fork=no_fork))
    return _Forked(pid), start


def _title_detached(topology: Topology) -> None:
    from pipecat_workers_cli.titles import set_title

    set_title(f"workers: {topology.name} supervisor", name="workers-sup")


def _become_detached(log: int) -> None:
    """What ``start_new_session``, the redirections and ``python -P`` give a spawned one."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(log, 1)
    os.dup2(log, 2)
    close_other_fds(log)  # the log closes with its file object, on the way out
    drop_command_dir()


def _spawn_supervisor(topology: Topology, state: StateDir, names: list[str], *,
                      reload: bool, no_fork: str | None) -> tuple[_Child, int]:
    """The detached supervisor, and where its output starts in ``supervisor.log``."""
    with state.open_supervisor_log() as log:  # private; the state directory made first
        with state_errors(), contextlib.suppress(FileNotFoundError):
            state.state_file.unlink()  # so that waiting never reads the previous run's
        start = log.tell()  # before the child writes: it shares this file offset
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", "pipecat_workers_cli", "-f", str(topology.path),
             *(a for f in topology.env_files or () for a in ("--env-file", f)), "up",
             _DAEMON_FLAG,
             *(["--reload"] if reload else []),
             *(["--no-fork"] if no_fork == "--no-fork" else []), *names],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=Path.cwd(),
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return child, start


def _await_ready(topology: Topology, state: StateDir, child: _Child,
                 log_start: int, timeout: float, *, partial: bool, reload: bool) -> int:
    """Print each worker's line once all are ready (0) or one fails (1).

    Raises:
        CommandError: the supervisor exited first, or the time ran out.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = ProjectStatus.recorded(state.read_state())
        ok = _verdict(status, partial) if status is not None and status.running else None
        if status is not None and ok is not None:
            _print_lines(status, only_started=ok)
            if not ok and child.poll() is None and (
                    reload or not all(w.state in ENDED for w in status.workers)):
                click.echo(f"the project is still running: `{command_for(topology)} down` "
                           "stops it")
            return 0 if ok else 1
        if (code := child.poll()) is not None:
            raise _exited_early(state, code, log_start)
        if time.monotonic() > deadline:
            if status is not None:
                _print_lines(status, only_started=False)
            how = command_for(topology)
            raise CommandError(f"not every worker was ready within {timeout:g} s; the "
                               f"project keeps starting: `{how} ps` shows where it is, "
                               f"`{how} down` stops it")
        time.sleep(_POLL)


def _verdict(status: ProjectStatus, partial: bool) -> bool | None:
    """None while workers are still starting; else whether every one got going.
    A stopped worker is one not asked for (``partial``: some workers were named)."""
    settled = {"ready", "exited", "stopped"} if partial else {"ready", "exited"}
    if any(w.state in FAILING for w in status.workers):
        return False
    # A worker waiting for its bus's server will not be ready until someone starts it.
    waiting = [w for w in status.workers if w.reason.startswith(WAITING_FOR_BUS)]
    if all(w.state in settled for w in status.workers if w not in waiting):
        return not waiting
    return None


def _print_lines(status: ProjectStatus, *, only_started: bool) -> None:
    for worker in status.workers:
        if not (only_started and worker.state == "stopped"):
            click.echo(worker_line(worker))


def _exited_early(state: StateDir, code: int, log_start: int) -> CommandError:
    """What the supervisor that exited before its workers were ready left to say."""
    status = ProjectStatus.recorded(state.read_state())
    if status is not None and status.workers:
        _print_lines(status, only_started=False)
        why = (" as no worker was left running"
               if all(w.state in ENDED for w in status.workers) else "")
        return CommandError(f"the supervisor exited with code {code}{why}; "
                            f"its log: {state.supervisor_log}")
    last = _last_line(state.supervisor_log, log_start)
    return CommandError(f"the supervisor exited with code {code}"
                        + (f": {last.removeprefix('error: ')}" if last else "")
                        + f"; its log: {state.supervisor_log}")


def _last_line(path: Path, start: int) -> str:
    """The last non-blank line written to ``path`` from byte ``start`` on."""
    try:
        with open(path, "rb") as file:
            file.seek(start)
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
