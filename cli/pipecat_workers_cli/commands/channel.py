"""Joining a project's channel from the terminal: ``ps --channel``, ``call`` and ``tail``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click

from pipecat_workers.bus import WorkerBus
from pipecat_workers.errors import WorkersError
from pipecat_workers.monitor import BusMonitor
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.host import build_bus
from pipecat_workers_cli.project import Project, find_project
from pipecat_workers_cli.topology.hints import channel_hint, with_hint
from pipecat_workers_cli.topology.model import Topology
from pipecat_workers_cli.topology.schema import URL_SCHEMES

_BACKEND_OF_SCHEME = {scheme: backend for backend, schemes in URL_SCHEMES.items()
                      for scheme in schemes}
_CALLABLE = ("ready", "starting")  # a call to a worker in another state would wait in vain
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a program ended by SIGTERM


@dataclass(frozen=True, slots=True)
class Where:
    """A bus to join: its backend, address and wire channel name."""

    backend: str
    url: str | None
    channel: str
    hint: str = ""  # what to change when the server cannot be reached
    traces: str = ""  # the project's span directory, where a call records its own spans

    def bus(self, *, everything: bool = False) -> WorkerBus:
        """A new bus on this channel; ``everything``: also see messages between others
        (only the embedded bus can; elsewhere a targeted message reaches its process only)."""
        if everything and self.backend == "local":
            from pipecat_workers.bus import HubBus, JSONMessageSerializer

            # Shows the application's own message types too, by name and raw fields.
            return HubBus(self.url or "", channel=self.channel, observe_all=True,
                          serializer=JSONMessageSerializer(keep_unknown=True))
        return build_bus(self.backend, self.url, self.channel)

    def cannot_join(self, reason: object) -> CommandError:
        return CommandError(f"cannot join channel '{self.channel}': "
                            f"{with_hint(str(reason), self.hint)}")


@contextlib.asynccontextmanager
async def joined(where: Where, bus: WorkerBus) -> AsyncIterator[None]:
    """Connect ``bus`` now and close it at the end, so that an unreachable server is one
    line at once (a runner that owns its bus first retries its goodbye for seconds).

    Make the runner or monitor that uses ``bus`` first: it binds the bus to its name.

    SIGTERM (``timeout``, a service manager) ends the work as Ctrl-C does: whatever runs
    inside is cancelled, says goodbye on the bus and closes it, and the program then exits
    with :data:`EXIT_TERMINATED` (a second SIGTERM ends it at once).

    Raises:
        CommandError: the bus cannot connect.
    """
    with _cancelled_by_sigterm() as terminated:
        try:
            try:
                await bus.start()
            except (WorkersError, OSError) as exc:
                raise where.cannot_join(exc) from None
            yield
        finally:
            await bus.close()
            if terminated():
                raise SystemExit(EXIT_TERMINATED)


@contextlib.contextmanager
def _cancelled_by_sigterm() -> Iterator[Callable[[], bool]]:
    """Cancel the current task on SIGTERM; yields whether that happened.

    Without it the default action kills the process outright, and the peers of a runner
    that never said goodbye report it lost.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received = False

    def on_sigterm() -> None:
        nonlocal received
        received = True
        loop.remove_signal_handler(signal.SIGTERM)  # a second one ends it at once
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: received
    finally:
        if not received:
            loop.remove_signal_handler(signal.SIGTERM)


def locate(obj: dict[str, Any], channel: str | None, url: str | None, *,
           worker: str | None = None) -> Where:
    """The bus named by ``--url``/``--channel``, or by the project (a worker's channel, the
    channel KEY, or its only channel).

    Raises:
        CommandError: no such channel or worker, a worker key with replicas, a worker the
            project's supervisor says is not running, or a local channel of a project that
            is not running.
    """
    if url is not None:
        backend = _BACKEND_OF_SCHEME.get(url.split("://", 1)[0])
        if backend is None:
            schemes = ", ".join(f"{scheme}://" for scheme in _BACKEND_OF_SCHEME)
            raise CommandError(f"--url: expected a URL starting with one of {schemes}; "
                               f"got '{url}'")
        if not channel:
            raise CommandError("--url needs --channel NAME (the channel's name on the wire)")
        return Where(backend, url, channel, hint="check --url")
    project = find_project(obj.get("file"), obj.get("project"))
    topology = project.topology_or_recorded()
    if worker is not None:
        channel = channel or _channel_of(topology, worker)
        _check_running(project, worker)
    elif channel is None:
        if len(topology.channels) != 1:
            raise CommandError(f"which channel? --channel one of "
                               f"{', '.join(topology.channels)}")
        channel = next(iter(topology.channels))
    spec = topology.channels.get(channel)
    if spec is None:
        raise CommandError(f"no channel '{channel}' in {topology.path.name} (it has "
                           f"{', '.join(topology.channels)})")
    traces = str(project.state.traces_dir)
    if spec.backend != "local":
        return Where(spec.backend, spec.url, spec.channel,
                     hint=channel_hint(topology.path, spec), traces=traces)
    if not project.state.supervisor_alive():
        raise CommandError(f"project '{project.name}' is not running: its local channel "
                           f"'{channel}' exists only while `workers up` runs")
    return Where("local", str(project.state.socket_from_state("hub")), spec.channel,
                 traces=traces)


def _channel_of(topology: Topology, worker: str) -> str:
    """The channel key of one worker process (a key with replicas names several)."""
    spec = topology.workers.get(worker.partition(".")[0])  # keys hold no dots
    proxy = topology.proxy_for(worker) if spec is None else None
    if proxy is not None:  # a stand-in for a worker of another project
        return proxy.channel
    if spec is not None and worker == spec.key and spec.replicas > 1:
        raise CommandError(f"'{worker}' has {spec.replicas} replicas: "
                           f"{', '.join(spec.instance_names())}; call one of them")
    if spec is None or worker not in spec.instance_names():
        raise CommandError(f"no worker named '{worker}' in {topology.path.name}")
    return spec.channel


def _check_running(project: Project, worker: str) -> None:
    """Refuse at once a worker that its supervisor says is not running (when it answers)."""
    if not project.state.supervisor_alive():
        return  # on a shared bus, the worker may run elsewhere: the call will tell
    from pipecat_workers_cli.commands.control import status_of

    try:
        found = status_of(project).worker(worker)
    except CommandError:
        return  # the supervisor does not answer: nothing to go by
    if found is None or found.state in _CALLABLE:
        return
    reason = f" ({found.reason})" if found.reason else ""
    hint = (f"; `{project.command()} start {worker}` starts it" if found.state == "stopped"
            else "")
    raise CommandError(f"cannot call '{worker}': it is {found.state}{reason}{hint}")


def show_channel(obj: dict[str, Any], channel: str | None, url: str | None, *,
                 as_json: bool, wait: float | None, list_jobs: bool = False) -> None:
    where = locate(obj, channel, url)
    data = asyncio.run(_survey(where, wait))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from pipecat_workers_cli.render import table_console
    from pipecat_workers_cli.render.tables import runners_table

    table_console().print(runners_table(data))
    if list_jobs:
        from pipecat_workers_cli.render.tables import channel_jobs_table

        table_console().print(channel_jobs_table(data))


async def _survey(where: Where, wait: float | None) -> dict[str, Any]:
    bus = where.bus()
    monitor = BusMonitor(bus)
    async with joined(where, bus):
        try:
            async with monitor:
                await monitor.wait_for_heartbeats(wait)
                runners = monitor.runners()
                registry = monitor.registry
                workers = [{"name": name, "runner": data.runner, "jobs": data.jobs,
                            "any_job": data.any_job}
                           for name in sorted(registry.remote_workers)
                           if (data := registry.get(name)) is not None]
        except (WorkersError, OSError) as exc:
            raise where.cannot_join(exc) from None
    return {
        "channel": where.channel, "backend": where.backend,
        "runners": [{"name": r.name, "incarnation": r.incarnation,
                     "seen_ago": round(r.seen_ago, 3), "stats": r.stats} for r in runners],
        "workers": workers,
    }
