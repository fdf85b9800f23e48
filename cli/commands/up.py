"""``workers up``: start a project and supervise it, in the foreground or detached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from cli.errors import CommandError
from cli.logs.reader import LogRecord
from cli.render.plain import PlainRenderer
from cli.supervisor.driver import Renderer, Supervisor
from cli.supervisor.statedir import StateDir
from cli.supervisor.status import ProjectStatus, WorkerStatus
from cli.topology import Topology, load_topology

_DAEMON_FLAG = "--supervise-detached"
_POLL = 0.02


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
@click.option(_DAEMON_FLAG, "daemon", is_flag=True, hidden=True)
@click.pass_context
def up(ctx: click.Context, args: tuple[str, ...], detach: bool, no_ui: bool, reload: bool,
       timeout: float, daemon: bool) -> None:
    """Start the workers of FILE (or only WORKER... and what they depend on).

    In a terminal it shows a live view; otherwise each worker's output, prefixed with its
    name. Ctrl-C stops every worker (drain, then SIGTERM, then SIGKILL); a second Ctrl-C
    kills them at once. Exits with 0 when every worker ended well, else with the code of
    the first that failed.
    """
    file, names = _split(ctx.obj.get("file"), args)
    topology = load_topology(file)
    state = StateDir.of(topology.root, topology.name)
    if state.supervisor_alive():
        raise CommandError(f"project '{topology.name}' is already running; "
                           "`workers ps` shows it, `workers down` stops it")
    if detach:
        sys.exit(_detach(topology, state, names, timeout, reload=reload))
    renderer: Renderer
    if daemon:
        renderer = _NotesOnly()
    elif sys.stdout.isatty() and not no_ui:
        from cli.render.live import LiveRenderer

        renderer = LiveRenderer(topology)
    else:
        renderer = PlainRenderer()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    supervisor = Supervisor(topology, renderer, only=names, reload=reload)
    code = asyncio.run(_run(supervisor, renderer))
    sys.exit(code)


async def _run(supervisor: Supervisor, renderer: Renderer) -> int:
    start = getattr(renderer, "start", None)
    if start is not None:
        start()
    try:
        return await supervisor.run()
    finally:
        stop = getattr(renderer, "stop", None)
        if stop is not None:
            stop()


def _split(file: str | None, args: tuple[str, ...]) -> tuple[str, list[str]]:
    """``up FILE WORKER...``, or ``-f FILE up WORKER...``."""
    if file is not None:
        return file, list(args)
    if not args:
        raise CommandError("which topology? `workers up FILE` (or `workers -f FILE up`)")
    return args[0], list(args[1:])


class _NotesOnly:
    """The detached supervisor's output: its own notes (worker output is in the logs)."""

    def record(self, record: LogRecord) -> None:
        if record.stream == "sup":
            print(f"{record.time:%Y-%m-%dT%H:%M:%S} {record.worker}: {record.text}",
                  flush=True)

    def status(self, status: ProjectStatus) -> None:
        pass


def _detach(topology: Topology, state: StateDir, names: list[str], timeout: float, *,
            reload: bool) -> int:
    """Start a supervisor in its own session, wait until the workers are ready, report."""
    state.path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        state.state_file.unlink()  # so that waiting never reads the previous run's
    log = open(state.supervisor_log, "ab")  # noqa: SIM115  (the child keeps it)
    child = subprocess.Popen(
        [sys.executable, "-m", "cli", "-f", str(topology.path), "up", _DAEMON_FLAG,
         *(["--reload"] if reload else []), *names],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=Path.cwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        status = _running_status(state)
        verdict = _verdict(status, bool(names)) if status is not None else None
        if verdict is not None:
            ok, lines = verdict
            for line in lines:
                click.echo(line)
            return 0 if ok else 1
        if child.poll() is not None:
            raise CommandError(f"the supervisor exited with code {child.returncode}; "
                               f"see {state.supervisor_log}")
        if time.monotonic() > deadline:
            raise CommandError(f"not every worker was ready within {timeout:g} s; "
                               "`workers ps` shows where they are")
        time.sleep(_POLL)


def _running_status(state: StateDir) -> ProjectStatus | None:
    data = state.read_state()
    if data is None or not data.get("running"):
        return None
    try:
        return ProjectStatus.from_json(data)
    except (KeyError, TypeError):
        return None


def _verdict(status: ProjectStatus, partial: bool) -> tuple[bool, list[str]] | None:
    """None while workers are still starting; else success and one line per worker.
    A stopped worker is one not asked for (``partial``: some workers were named)."""
    settled = {"ready", "exited", "stopped"} if partial else {"ready", "exited"}
    bad = {"crashed", "failed", "backing off"}
    if any(w.state in bad for w in status.workers):
        lines = [_line(w) for w in status.workers]
        return False, lines
    if all(w.state in settled for w in status.workers):
        return True, [_line(w) for w in status.workers if w.state != "stopped"]
    return None


def _line(worker: WorkerStatus) -> str:
    extra = f" pid {worker.pid}" if worker.pid else ""
    if worker.reason:
        extra += f" ({worker.reason})"
    return f"{worker.name}: {worker.state}{extra}"
