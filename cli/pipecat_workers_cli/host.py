"""The process that hosts one worker of a topology: ``python -m pipecat_workers_cli.host``.

The supervisor spawns one per worker replica, in the project directory, with the worker's
description as JSON in ``PIPECAT_WORKERS_HOST``. The host builds the worker's bus, runs it in a
:class:`WorkerRunner` and talks to the supervisor over two pipes:

- status (fd ``status_fd``, JSON lines out): ``{"event": "ready", "runner": ..., "imports":
  [...]}`` once the worker is registered on its bus (that is what *ready* means),
  ``{"event": "waiting", "message": ...}`` while its bus's server cannot be reached (the host
  keeps trying; said again every :data:`WAITING_EVERY` seconds), or ``{"event": "error",
  "message": ...}`` when it cannot start.
- stdin (lines in): ``drain`` asks for a graceful end; end of file means the supervisor is
  gone, and the host cancels its worker and exits.

It imports nothing of the command line (no click, rich or yaml), so it starts fast. With
``PIPECAT_WORKERS_TEMPLATE`` set instead, the same command is the project's process template
(:mod:`pipecat_workers_cli.forkserver`): it preloads modules and forks hosts, each of which then
goes on here exactly as a spawned one.

Run with no supervisor (``supervisor_pid`` 0: a container or a service unit that ``workers
export`` wrote), the host has no pipes to watch and ends on SIGTERM, gracefully. Two variables
complete its description there: ``PIPECAT_WORKERS_BUS_URL``, the bus's address when the
description has none (a secret kept out of it), and ``PIPECAT_WORKERS_REPLICA``, which names a
replica ``<name>.<replica>`` (``@hostname``: the container's or pod's host name).

Exit codes: 0 when the worker ended, 1 when it failed,
:data:`EXIT_CONFIG` when it could not be built: a bad class or arguments, or anything raised while
importing or constructing it (a missing API key, say), where restarting would not help. Then the
host prints one line to stderr, ``error: <name>: RuntimeError: no API key (workers.py:11)`` (the
type, the message and the place in the user's own code), and sends the same as the ``error`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipecat_workers_cli.forkserver import PR_SET_PDEATHSIG, TEMPLATE_ENV, prctl
from pipecat_workers_cli.imported import project_imports
from pipecat_workers_cli.titles import set_title

if TYPE_CHECKING:
    from pipecat_workers.bus import WorkerBus

HOST_ENV = "PIPECAT_WORKERS_HOST"
BUS_URL_ENV = "PIPECAT_WORKERS_BUS_URL"
REPLICA_ENV = "PIPECAT_WORKERS_REPLICA"
HOSTNAME_REPLICA = "@hostname"
EXIT_CONFIG = 78  # EX_CONFIG of sysexits.h: the supervisor does not restart it
WAITING_EVERY = 5.0  # seconds between two "waiting" events with the same message


@dataclass(frozen=True, slots=True)
class HostSpec:
    """What the supervisor tells a host (all of it JSON-friendly)."""

    name: str
    class_path: str
    args: Mapping[str, Any]
    backend: str
    channel: str
    url: str | None = None        # redis/pgmq address, or the hub socket for "local"
    runner: str = ""
    root: str = "."
    status_fd: int = -1
    supervisor_pid: int = 0
    hint: str = ""                # what to change when the bus's server cannot be reached
    traces: str = ""              # the directory for span files; "" records none
    project: str = ""             # the topology's name (the default OpenTelemetry service)

    def to_json(self) -> str:
        return json.dumps({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str) -> HostSpec:
        return cls(**json.loads(text))


def standalone(spec: HostSpec, environ: Mapping[str, str]) -> HostSpec:
    """The description of a host that runs without a supervisor, completed from its
    environment: the bus URL (:data:`BUS_URL_ENV`) and the replica's name (:data:`REPLICA_ENV`,
    :data:`HOSTNAME_REPLICA` for the host name: replicas of one container are alike)."""
    replica = environ.get(REPLICA_ENV, "")
    if replica == HOSTNAME_REPLICA:
        replica = socket.gethostname()
    name = f"{spec.name}.{replica}" if replica else spec.name
    runner = f"{spec.runner}.{replica}" if replica and spec.runner else spec.runner
    return replace(spec, name=name, runner=runner, url=spec.url or environ.get(BUS_URL_ENV))


class _Status:
    """The status pipe to the supervisor (a no-op when run by hand)."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", buffering=1, closefd=True) if fd >= 0 else None

    def send(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps({"event": event, **fields}) + "\n")
        except (BrokenPipeError, ValueError):
            self._file = None  # the supervisor is gone; stdin's end of file says so too


def die_with_parent(supervisor_pid: int) -> None:
    """Take the whole process group down when the supervisor dies, even by SIGKILL.

    On Linux the kernel sends SIGHUP when the parent dies (the parent-death signal); the
    handler kills the group, so whatever the worker started goes too. Elsewhere, stdin's
    end of file is the only notice. Checked once after arming, in case it died before.
    """
    signal.signal(signal.SIGHUP, lambda *_: kill_own_group())
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
    if supervisor_pid and os.getppid() != supervisor_pid:
        kill_own_group()


def kill_own_group() -> None:
    """SIGKILL this process's group, this process included; only when the host leads its
    group (the supervisor starts it in a session of its own), never a shell's group."""
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


# backend -> its bus class in pipecat_workers.bus, imported (with its driver) when used
BUS_CLASSES: Mapping[str, str] = {"local": "HubBus", "redis": "RedisBus", "pgmq": "PgmqBus"}


def build_bus(backend: str, url: str | None, channel: str) -> WorkerBus:
    """A new bus on ``channel`` of ``backend``; its driver is imported only now.

    Args:
        backend: A key of :data:`BUS_CLASSES`.
        url: The server's URL, or the hub's socket path for ``local``.
        channel: The channel's name on the wire.

    Raises:
        ConfigurationError: an unknown backend, or no URL.
        MissingDependencyError: the backend's driver is not installed.
    """
    from pipecat_workers.errors import ConfigurationError

    if not url and backend in BUS_CLASSES:
        raise ConfigurationError(f"a {backend} bus needs a URL")
    bus: WorkerBus = bus_class(backend)(url, channel=channel)
    return bus


def bus_class(backend: str) -> Callable[..., WorkerBus]:
    """The bus class of ``backend``, its driver imported.

    Raises:
        ConfigurationError: an unknown backend.
        MissingDependencyError: the backend's driver is not installed.
    """
    from pipecat_workers.errors import ConfigurationError

    class_name = BUS_CLASSES.get(backend)
    if class_name is None:
        raise ConfigurationError(f"unknown backend '{backend}' (expected one of "
                                 f"{', '.join(BUS_CLASSES)})")
    cls: Callable[..., WorkerBus] = getattr(importlib.import_module("pipecat_workers.bus"),
                                            class_name)
    return cls


def constructor_args(cls: type, args: Mapping[str, Any]) -> Mapping[str, Any]:
    """``args`` as ``cls`` takes them: a proxy's ``forward_messages``, short names in the
    description (``["end"]``, JSON-friendly), become the message classes they mean."""
    names = args.get("forward_messages")
    if not names or not all(isinstance(n, str) for n in names):
        return args
    from pipecat_workers.proxy import ProxyWorker

    if not issubclass(cls, ProxyWorker):
        return args
    from pipecat_workers.errors import ConfigurationError
    from pipecat_workers_cli.topology.model import FORWARD_MESSAGES

    bus = importlib.import_module("pipecat_workers.bus")
    unknown = [n for n in names if n not in FORWARD_MESSAGES]
    if unknown:
        raise ConfigurationError(f"forward_messages: unknown {', '.join(map(repr, unknown))} "
                                 f"(expected {', '.join(FORWARD_MESSAGES)})")
    return {**args, "forward_messages": [getattr(bus, FORWARD_MESSAGES[n]) for n in names]}


async def _watch_stdin(runner: Any, stopping: asyncio.Event) -> None:
    """Drain on ``drain`` (and set ``stopping``); cancel at end of file (the supervisor is
    gone)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        return  # no usable stdin (run by hand with it closed): nothing to watch
    while True:
        line = await reader.readline()
        if not line:  # the supervisor is gone: so is everything it started
            kill_own_group()
        if line.strip() == b"drain":
            stopping.set()
            await runner.end(reason="stopped by the supervisor")


async def host(spec: HostSpec, status: _Status, *, supervised: bool = True) -> int:
    """Build and run the worker; the process's exit code. ``supervised``: stdin is the
    supervisor's (a drain request, or its end)."""
    from pipecat_workers import WorkerRunner
    from pipecat_workers.errors import WorkersError, WorkerStateError
    from pipecat_workers_cli.hosttracing import tag_loguru_lines
    from pipecat_workers_cli.topology.classes import check_args, raised_at, resolve_class

    if not supervised and not spec.url and spec.backend != "local":
        return _cannot_start(spec, status, f"{BUS_URL_ENV} is not set: the {spec.backend} "
                                           "bus needs its URL there")
    try:
        cls = resolve_class(spec.class_path)
        args = constructor_args(cls, spec.args)
        check_args(cls, spec.name, args)
        bus = build_bus(spec.backend, spec.url, spec.channel)
    except Exception as exc:  # ours say what and where; anything else gets its place
        return _cannot_start(spec, status,
                             str(exc) if isinstance(exc, WorkersError) else raised_at(exc))
    try:
        worker = cls(spec.name, **args)
    except Exception as exc:  # the worker's own code: one line, not a traceback
        return _cannot_start(spec, status, raised_at(exc))
    tag_loguru_lines()  # now that the worker's imports are done
    runner = WorkerRunner(name=spec.runner or None, bus=bus, handle_sigint=False,
                          handle_sigterm=True)
    await runner.add_workers(worker)
    start_errors: list[str] = []

    async def on_error(runner: Any, data: Any) -> None:
        start_errors.append(data.error)

    runner.add_event_handler("on_error", on_error)
    stopping = asyncio.Event()
    stdin = asyncio.ensure_future(_watch_stdin(runner, stopping) if supervised
                                  else asyncio.sleep(0))
    connected: bool | WorkersError
    try:
        connected = await _connected(bus, spec, status, stopping)
    except WorkersError as exc:
        connected = exc
    if connected is not True:  # stopped while it waited for its bus, or it cannot start
        stdin.cancel()
        await asyncio.gather(stdin, return_exceptions=True)
        return 0 if connected is False else _cannot_start(spec, status, str(connected))
    run = asyncio.ensure_future(runner.run(auto_end=True))
    registered = asyncio.ensure_future(worker.wait_registered())
    try:
        await asyncio.wait({registered, run}, return_when=asyncio.FIRST_COMPLETED)
        if registered.done() and not run.done():
            # Gone from the registry already: start() gave up, or the worker was ready and
            # ended at once (a one-shot job whose on_activated did its work and ended).
            if runner.registry.get(spec.name) is None:
                await asyncio.sleep(0)  # let the runner's on_error handlers run
                if start_errors or not _ended_by_itself(worker):
                    why = start_errors[-1] if start_errors else "it did not register on its bus"
                    raise WorkerStateError(f"failed to start: {why}")
            status.send("ready", runner=runner.name, pid=os.getpid(),
                        imports=project_imports(Path(spec.root).resolve()))
        await run
        if start_errors:  # it was ready, then its start failed (a raising on_activated)
            raise WorkerStateError(f"failed to start: {start_errors[-1]}")
    except WorkersError as exc:
        status.send("error", message=str(exc))
        print(f"error: {spec.name}: {exc}", file=sys.stderr)
        return 1
    finally:
        if not run.done():  # leaving early: the runner ends with us
            await runner.cancel(reason="host exiting")
        for task in (registered, stdin):
            task.cancel()
        await asyncio.gather(run, registered, stdin, return_exceptions=True)
        await bus.close()  # started here, so closed here: the runner leaves it alone
    return 0


def _ended_by_itself(worker: Any) -> bool:
    """Whether the worker is ending or ended, and not because its start failed."""
    from pipecat_workers.workers.base import WorkerState

    return worker.state in (WorkerState.STOPPING, WorkerState.STOPPED)


async def _connected(bus: WorkerBus, spec: HostSpec, status: _Status,
                     stopping: asyncio.Event) -> bool:
    """Start the worker's bus, waiting as long as its server cannot be reached; False if
    the supervisor (``drain``) or SIGTERM stopped it first.

    Meanwhile the supervisor hears ``waiting`` events, so that ``ps`` shows why the worker
    is still starting, and the log gets a line now and then (not a crash per attempt).

    Raises:
        WorkersError: the bus cannot start for another reason than an unreachable server.
    """
    from pipecat_workers.bus.backends.unreachable import start_when_reachable
    from pipecat_workers_cli.topology.hints import with_hint

    loop = asyncio.get_running_loop()
    said: tuple[str, float] = ("", float("-inf"))

    def waiting(error: Exception) -> None:
        nonlocal said
        message = with_hint(str(error), spec.hint)
        if message != said[0] or loop.time() - said[1] >= WAITING_EVERY:
            status.send("waiting", message=message)
            said = (message, loop.time())

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
    starting = asyncio.ensure_future(start_when_reachable(
        bus, hint=spec.hint, on_waiting=waiting))
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)  # the runner installs its own
        for task in (starting, stopped):
            task.cancel()
        await asyncio.gather(starting, stopped, return_exceptions=True)
    if starting.cancelled():
        await bus.close()
        return False
    starting.result()  # raises what stopped it
    if stopping.is_set():  # SIGTERM or a drain in the very turn the bus connected
        await bus.close()
        return False
    return True


def _cannot_start(spec: HostSpec, status: _Status, message: str) -> int:
    status.send("error", message=message)
    print(f"error: {spec.name}: {message}", file=sys.stderr)
    return EXIT_CONFIG


def main() -> None:
    if TEMPLATE_ENV in os.environ:
        from pipecat_workers_cli.forkserver.server import serve

        serve()  # returns only in a forked worker, now what a spawned host is
    raw = os.environ.get(HOST_ENV)
    if not raw:
        sys.exit(f"{HOST_ENV} is not set: this program is started by `workers up`")
    spec = HostSpec.from_json(raw)
    supervised = spec.supervisor_pid != 0
    if not supervised:
        spec = standalone(spec, os.environ)
    set_title(f"workers: {spec.runner or spec.name}", name=spec.name)
    if supervised:
        die_with_parent(spec.supervisor_pid)
    if spec.root not in sys.path:
        sys.path.insert(0, spec.root)
    from pipecat_workers_cli.hosttracing import configure_logging, start_tracing

    configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())
    stop_tracing = start_tracing(spec.name, spec.runner, spec.traces, spec.project)
    status = _Status(spec.status_fd)
    try:
        code = asyncio.run(host(spec, status, supervised=supervised))
    finally:
        stop_tracing()
    sys.exit(code)


if __name__ == "__main__":
    main()
