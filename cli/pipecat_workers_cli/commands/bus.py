"""``workers check``, ``call`` and ``tail``: the topology's classes, and the bus itself."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from pipecat_workers import BaseWorker, JobError, JobStatus, WorkerRunner
from pipecat_workers.bus import (
    BusHeartbeatMessage,
    BusMessage,
    BusUnregisteredMessage,
    JSONMessageSerializer,
    WorkerBus,
)
from pipecat_workers.bus.network import DISCONNECTED, NetworkBus
from pipecat_workers.bus.serializer import SECRET_ENV, UNVERIFIED
from pipecat_workers.errors import WorkersError
from pipecat_workers.monitor import BusMonitor
from pipecat_workers.tracing import JsonLinesSpanExporter, Span, SpanExporter, tracer
from pipecat_workers_cli.commands.channel import Where, joined, locate
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.host import build_bus, bus_class
from pipecat_workers_cli.render import plural
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.topology import ChannelSpec, Topology, load_topology
from pipecat_workers_cli.topology.classes import check_args, resolve_class
from pipecat_workers_cli.topology.preflight import proxy_problems

T = TypeVar("T")

SIGNED_CHANNEL = f"messages on this channel are signed; set {SECRET_ENV}"


@click.command()
@click.argument("file", required=False)
@click.option("--connect", is_flag=True, help="Also try each channel's server (a local "
              "channel: only while the project runs).")
@click.pass_context
def check(ctx: click.Context, file: str | None, connect: bool) -> None:
    """Validate FILE and import every worker class, without starting anything."""
    path = file or ctx.obj.get("file")
    if path is None:
        raise CommandError("which topology? `workers check FILE`")
    topology = load_topology(path, env_files=ctx.obj.get("env_files"))
    sys.path.insert(0, str(topology.root))
    failures = 0
    for channel in topology.channels.values():
        try:
            bus_class(channel.backend)  # its driver is installed
        except WorkersError as exc:
            failures += 1
            click.secho(f"error: {path}:{channel.line}: channels.{channel.key}.backend: {exc}",
                        fg="red", err=True)
    for spec in topology.workers.values():
        missing = proxy_problems(spec, os.environ)
        for problem in missing:
            click.secho(f"error: {path}:{problem.line}: {problem.field}: {problem.message}",
                        fg="red", err=True)
        failures += len(missing)
        if missing:
            continue
        field = f"workers.{spec.key}.class"
        try:
            cls = resolve_class(spec.class_path)
            field = f"workers.{spec.key}.args"
            check_args(cls, spec.key, spec.args)
        except WorkersError as exc:
            failures += 1
            click.secho(f"error: {path}:{spec.line}: {field}: {exc}", fg="red", err=True)
        else:
            click.echo(f"ok  {spec.key:<16} {spec.class_path}")
    if connect:
        failures += asyncio.run(_connect_all(topology, path))
    if failures:
        raise CommandError(f"{plural(failures, 'error')} in {path}")
    click.echo(f"{topology.name}: {plural(len(topology.workers), 'worker')}, "
               f"{plural(len(topology.channels), 'channel')}: ok")


async def _connect_all(topology: Topology, path: str) -> int:
    """Try every channel's server at once; print ok or the error of each; the failures."""
    from pipecat_workers_cli.topology.hints import channel_hint, with_hint

    channels = list(topology.channels.values())
    answers = await asyncio.gather(*(_reach(topology, spec) for spec in channels),
                                   return_exceptions=True)
    failures = 0
    for spec, answer in zip(channels, answers, strict=True):
        if isinstance(answer, WorkersError | OSError):
            failures += 1
            why = with_hint(str(answer), channel_hint(topology.path, spec, located=True))
            click.secho(f"error: {path}:{spec.line}: channels.{spec.key}.url: {why}", fg="red",
                        err=True)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            click.echo(f"ok  {'channel ' + spec.key:<16} {answer}")
    return failures


async def _reach(topology: Topology, spec: ChannelSpec) -> str:
    """What ``check --connect`` says of one reachable channel.

    Raises:
        WorkersError: it cannot be reached (or its driver is missing).
    """
    from pipecat_workers.bus.backends.probe import probe
    from pipecat_workers.bus.backends.unreachable import safe_url

    if spec.backend != "local":
        url = spec.url or ""
        note = await probe(url)
        return f"{spec.backend} {safe_url(url)}: reachable" + (f"; {note}" if note else "")
    state = StateDir.of(topology.root, topology.name)
    if not state.supervisor_alive():
        return "local: not running (the embedded bus exists while `workers up` runs)"
    bus = build_bus("local", str(state.socket_from_state("hub")), spec.channel)
    try:
        await bus.start()
    finally:
        await bus.close()
    return "local: the project's bus answers"


@click.command()
@click.argument("worker")
@click.option("--job", "job_name", metavar="NAME", help="The job's name (its @job handler).")
@click.option("--payload", metavar="JSON", default="{}", help="The job's payload, a JSON "
              "object.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the worker and its answer.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@click.option("--channel", metavar="KEY|NAME", help="The channel (default: the worker's).")
@click.option("--url", metavar="URL", help="Join this bus instead of the project's.")
@click.pass_context
def call(ctx: click.Context, worker: str, job_name: str | None, payload: str,
         timeout: float, as_json: bool, channel: str | None, url: str | None) -> None:
    """Send a job to WORKER and show its updates, stream and answer.

    Without --job, it lists the worker's job names (and exits 1), unless the worker takes
    jobs without a name. Exits 0 when the job completed, 1 when it failed, errored or was
    cancelled, 124 when no answer came in time.
    """
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise CommandError(f"--payload: not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError("--payload: expected a JSON object, like '{\"topic\": \"solar\"}'")
    where = locate(ctx.obj, channel, url, worker=worker)
    sys.exit(asyncio.run(_call(where, worker, job_name, body, timeout, as_json)))


class _Caller(BaseWorker):
    """The terminal's stand-in on the bus."""


class _RequestSpans(SpanExporter):
    """Passes on the job's request span only: the caller's own start and stop on the bus are
    nobody's concern."""

    def __init__(self, into: SpanExporter) -> None:
        self._into = into

    def export(self, span: Span) -> None:
        if span.kind == "job.request":
            self._into.export(span)

    def shutdown(self) -> None:
        self._into.shutdown()


@contextlib.asynccontextmanager
async def _spans_recorded(where: Where, name: str) -> AsyncIterator[None]:
    """Record the call's own span (the job's request) with the project's spans, so that
    ``workers trace`` shows the job under it. Calls share one file (``_calls.jsonl``: no
    worker's key starts with ``_``)."""
    if not where.traces:
        yield
        return
    exporter = _RequestSpans(JsonLinesSpanExporter(Path(where.traces) / "_calls.jsonl",
                                                   runner=name))
    tracer.add_exporter(exporter)
    try:
        yield
    finally:
        tracer.remove_exporter(exporter)


async def _call(where: Where, target: str, job_name: str | None, payload: dict[str, Any],
                timeout: float, as_json: bool) -> int:
    name = f"workers-call-{os.getpid()}"
    _hide(UNVERIFIED)  # a signed channel ends the call with one line that says it
    bus = where.bus()
    runner = WorkerRunner(name=f"{name}-runner", bus=bus, handle_sigint=False)
    caller = _Caller(name)
    await runner.add_workers(caller)
    async with _spans_recorded(where, name), joined(where, bus):
        run = asyncio.ensure_future(runner.run(auto_end=False))

        async def call() -> int:
            await _registered(where, caller, run)
            if job_name is None:
                await _needs_no_job_name(caller, target)
            return await _request(caller, target, job_name, payload, timeout, as_json)

        try:
            return await asyncio.wait_for(_unless_signed(bus, call()), timeout)
        except TimeoutError:
            click.secho(f"error: no answer from '{target}' within {timeout:g} s", fg="red",
                        err=True)
            return 124
        except CommandError:
            raise
        except WorkersError as exc:
            raise CommandError(str(exc)) from None
        finally:
            await runner.cancel(reason="call done")
            await asyncio.gather(run, return_exceptions=True)


async def _unless_signed(bus: WorkerBus, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, unless the channel turns out to be signed and we have no secret: our
    messages are dropped there, so say so at once instead of waiting for nothing.

    Raises:
        CommandError: a signed message arrived and this process cannot sign.
    """
    serializer = bus.serializer if isinstance(bus, NetworkBus) else None
    if not isinstance(serializer, JSONMessageSerializer) or serializer.signed:
        return await work
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            if serializer.unverified:  # the peers' heartbeats arrive every second
                raise CommandError(SIGNED_CHANNEL)
            await asyncio.wait({task}, timeout=0.05)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _registered(where: Where, caller: _Caller, run: asyncio.Future[None]) -> None:
    """Wait until the caller is on the bus, or fail as soon as its runner does."""
    registered = asyncio.ensure_future(caller.wait_registered())
    try:
        await asyncio.wait({registered, run}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        registered.cancel()
        await asyncio.gather(registered, return_exceptions=True)
    if run.done():
        raise where.cannot_join(run.exception() or "the bus stopped")


async def _needs_no_job_name(caller: _Caller, target: str) -> None:
    """Refuse a call without a job name to a worker that only takes named jobs, listing its
    names (as its registry entry has them; an older runner does not say, and is asked).

    Raises:
        CommandError: the worker takes named jobs only.
    """
    data = await caller.registry.wait_for(target)
    if data.jobs is None or data.any_job:
        return
    if not data.jobs:
        raise CommandError(f"{target} has no jobs: it has no @job handler")
    raise CommandError(f"{target} has jobs: {', '.join(data.jobs)}; pass --job NAME")


async def _request(caller: _Caller, target: str, job_name: str | None,
                   payload: dict[str, Any], timeout: float, as_json: bool) -> int:
    try:
        async with caller.job(target, name=job_name, payload=payload, timeout=timeout) as job:
            async for event in job:
                _show(as_json, {"event": str(event.type), "data": event.data})
    except JobError as exc:
        status = exc.statuses.get(target) if exc.statuses else None
        _show(as_json, {"event": "response", "status": str(status or "error"),
                        "data": (exc.responses or {}).get(target), "error": exc.reason,
                        "job": exc.job_id})
        return 1
    status = job.status
    _show(as_json, {"event": "response", "status": str(status), "data": job.response,
                    "job": job.job_id})
    return 0 if status is JobStatus.COMPLETED else 1


def _show(as_json: bool, event: dict[str, Any]) -> None:
    if as_json:
        click.echo(json.dumps(event, default=str))
        return
    kind = event["event"]
    data = json.dumps(event.get("data"), default=str)
    if kind == "response":
        if event.get("error"):
            click.secho(f"{event['status']}: {event['error']}", fg="red")
        else:
            colour = "green" if event["status"] == "completed" else "red"
            click.secho(f"{event['status']}: {data}", fg=colour)
        if event.get("job"):  # what `workers trace` and `workers logs --job` take
            click.secho(f"job {event['job']}", err=True, dim=True)
    else:
        click.echo(f"{kind:<13} {data}")


@click.command()
@click.option("--channel", metavar="KEY|NAME", help="The channel (default: the only one).")
@click.option("--url", metavar="URL", help="Join this bus instead of the project's.")
@click.option("--heartbeats", is_flag=True, help="Also show heartbeats (sent when a runner's "
              "counters change).")
@click.option("--json", "as_json", is_flag=True, help="Print messages as JSON lines.")
@click.pass_context
def tail(ctx: click.Context, channel: str | None, url: str | None, heartbeats: bool,
         as_json: bool) -> None:
    """Print the messages on a channel as they pass, until Ctrl-C, until the project stops
    (on the embedded bus), or (piped into `head`, say) until the reader stops.

    On the embedded bus it shows every message. On Redis and PGMQ it shows what reaches
    every runner (registry, heartbeats, broadcasts): a message for one worker travels only
    to its process.
    """
    where = locate(ctx.obj, channel, url)
    printer = _Printer(f"workers-tail-{os.getpid()}", heartbeats=heartbeats, as_json=as_json)
    try:
        asyncio.run(_tail(where, printer))
    except KeyboardInterrupt:
        sys.exit(130)
    if printer.project_stopped:
        click.echo("the project stopped (its supervisor hosted the bus)", err=True)
        return
    # The reader of our output went away (`workers tail | head`). End quietly, as Unix
    # tools do: stdout on devnull, so that the interpreter's last flush (of what the pipe
    # refused) does not fail too.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def describe(message: BusMessage) -> tuple[str, dict[str, Any]]:
    """A message's short type name (``JobRequest``; an application type by its registered
    name) and its fields that are set."""
    if isinstance(message, BusUnregisteredMessage):
        kind, values = message.type_name, message.body
    else:
        kind = type(message).__name__.removeprefix("Bus").removesuffix("Message")
        values = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)
                  if f.name not in ("source", "target")}
    return kind, {k: v for k, v in values.items() if v not in (None, "", [], {})}


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


class _Printer:
    """Prints the messages ``tail`` shows, until the reader of its output goes away.

    Args:
        name: ``tail``'s own runner, whose messages are not shown.
        heartbeats: Show heartbeats too.
        as_json: One JSON object a line, instead of a timed line of text.
        out: Where to print; default: stdout.
    """

    def __init__(self, name: str, *, heartbeats: bool, as_json: bool,
                 out: IO[str] | None = None) -> None:
        self.name = name
        self.closed = asyncio.Event()  # the output's reader went away, or the project stopped
        self.project_stopped = False
        self._heartbeats = heartbeats
        self._as_json = as_json
        self._out = out

    def __call__(self, message: BusMessage) -> None:
        if self.closed.is_set() or message.source == self.name or (
                not self._heartbeats and isinstance(message, BusHeartbeatMessage)):
            return
        try:
            click.echo(self._line(message), file=self._out)
        except BrokenPipeError:
            self.closed.set()

    def _line(self, message: BusMessage) -> str:
        kind, fields = describe(message)
        if self._as_json:
            return json.dumps({"type": kind, "source": message.source,
                               "target": message.target, **fields}, default=_plain)
        to = f" -> {message.target}" if message.target else ""
        when = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        body = " ".join(f"{k}={json.dumps(v, default=_plain)}" for k, v in fields.items())
        return f"{when} {kind:<16} {message.source}{to}  {body[:300]}"


def _hide(event: dict[str, str]) -> None:
    """Leave the library's log record of ``event`` out: the command says it in its own way."""
    def shown(record: logging.LogRecord) -> bool:
        return getattr(record, "bus_event", None) != event["bus_event"]

    for handler in logging.getLogger().handlers:
        handler.addFilter(shown)


async def _tail(where: Where, printer: _Printer) -> None:
    """Print the channel's messages until the output's reader goes away, or the supervisor
    that hosts an embedded bus does (the project stopped: there will be nothing more)."""
    bus = where.bus(everything=True)
    if where.backend == "local" and isinstance(bus, NetworkBus):
        async def hub_gone(bus: object) -> None:
            printer.project_stopped = True
            printer.closed.set()

        bus.add_event_handler("on_disconnected", hub_gone)
        _hide(DISCONNECTED)  # one line at the end says it instead
    _hide(UNVERIFIED)
    serializer = bus.serializer if isinstance(bus, NetworkBus) else None

    def show(message: BusMessage) -> None:
        # What this process cannot check is not shown: on a signed channel, tail fails instead.
        if not (isinstance(serializer, JSONMessageSerializer) and serializer.unverified):
            printer(message)

    monitor = BusMonitor(bus, name=printer.name, on_message=show)
    async with joined(where, bus):
        try:
            async with monitor:
                await _unless_signed(bus, printer.closed.wait())
        except CommandError:
            raise
        except (WorkersError, OSError) as exc:
            raise where.cannot_join(exc) from None
