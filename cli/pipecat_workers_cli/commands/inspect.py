"""``workers ps`` and ``workers logs``: look at a project from any terminal."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from pipecat_workers_cli.errors import CommandError, SeveralProjects
from pipecat_workers_cli.logs.news import NEWS, as_shown, file_stem
from pipecat_workers_cli.logs.reader import follow, merge, read_records
from pipecat_workers_cli.logs.timespec import parse_since
from pipecat_workers_cli.project import Project, find_project
from pipecat_workers_cli.states import ENDED, GONE
from pipecat_workers_cli.supervisor.private import state_errors
from pipecat_workers_cli.supervisor.status import ProjectStatus

if TYPE_CHECKING:
    from pipecat_workers_cli.logs.reader import Keep
    from pipecat_workers_cli.render.plain import PlainRenderer
    from pipecat_workers_cli.traces.lookup import LineSelector

STALE = "supervisor not answering; showing its last recorded state"
_ANSWER_WITHIN = 3.0  # seconds: a supervisor that takes longer is stuck, its data stale


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--channel", metavar="KEY|NAME", help="Show what is on a channel, from its "
              "heartbeats, with no supervisor: a channel of the topology (KEY), or with "
              "--url the channel's NAME on the wire.")
@click.option("--url", metavar="URL", help="With --channel: the bus (redis://..., "
              "postgresql://...).")
@click.option("--wait", type=float, default=None, help="With --channel: seconds to listen "
              "(default: one and a half heartbeat intervals).")
@click.option("--jobs", "list_jobs", is_flag=True, help="Also list the job names each worker "
              "takes (its @job handlers), as `workers call --job` wants them.")
@click.pass_context
def ps(ctx: click.Context, as_json: bool, channel: str | None, url: str | None,
       wait: float | None, list_jobs: bool) -> None:
    """Show the project's workers: state, pid, uptime, restarts, CPU, memory, jobs, the bus
    view, and the reason each is where it is."""
    if channel is not None or url is not None:
        from pipecat_workers_cli.commands.channel import show_channel

        show_channel(ctx.obj, channel, url, as_json=as_json, wait=wait, list_jobs=list_jobs)
        return
    try:
        project = find_project(ctx.obj.get("file"), ctx.obj.get("project"))
    except SeveralProjects as none_running:
        if as_json:
            raise
        click.echo(f"no project is running here ({', '.join(none_running.names)}); "
                   "`workers -p NAME ps` shows one's last state")
        return
    status, stale = current_status(project)
    if as_json:
        click.echo(json.dumps({**status.to_json(), "stale": stale}, indent=2))
        return
    from pipecat_workers_cli.render import table_console
    from pipecat_workers_cli.render.tables import NARROW, channel_table, project_table

    console = table_console()
    console.print(project_table(status, narrow=console.width < NARROW))
    if list_jobs:
        from pipecat_workers_cli.render.tables import jobs_table

        console.print(jobs_table(status))
    for view in status.channels:
        console.print(channel_table(view))
    if status.running:
        console.print(status.template.describe(), style="dim", highlight=False)
    if stale:
        console.print(f"{STALE} (supervisor pid {status.supervisor_pid})", style="yellow")


def current_status(project: Project) -> tuple[ProjectStatus, bool]:
    """Live from the supervisor, or the last state it recorded; and whether that is stale:
    recorded by a supervisor that still holds the lock but does not answer."""
    alive = project.state.supervisor_alive()
    if alive:
        from pipecat_workers_cli.commands.control import status_of

        try:
            return status_of(project, _ANSWER_WITHIN), False
        except CommandError:
            pass  # stopping right now, or stuck: show what it last wrote, marked
    status = project.last_status()
    if status is None:
        raise CommandError(f"project '{project.name}' has never run here")
    if alive and project.state.supervisor_alive():
        return status, True
    # What it recorded last; nothing of it runs now (its workers die with it).
    status.running = False
    status.channels = []
    for worker in status.workers:
        worker.jobs, worker.registered = {}, False
        if worker.state not in ENDED:
            worker.state, worker.reason = GONE, "supervisor not running"
            worker.pid = worker.uptime = worker.retry_in = None
            worker.cpu_percent = worker.rss_bytes = None
    return status, False


@click.command()
@click.argument("workers", nargs=-1)
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--tail", type=click.IntRange(min=0), default=None, metavar="N",
              help="Only the last N lines of each worker.")
@click.option("--since", metavar="TIME", help="Only lines since a duration ago (10m, 1h30m) "
              "or a time (2026-11-22T05:00).")
@click.option("-t", "--timestamps", is_flag=True, help="Show each line's time (local time, "
              "as --since reads it).")
@click.option("--trace", "trace_id", metavar="ID", help="Only lines logged in trace ID (its "
              "32 hex digits, or the first 8 or more).")
@click.option("--job", "job_id", metavar="ID", help="Only lines logged for job ID and for "
              "what it caused (the spans under it).")
@click.pass_context
def logs(ctx: click.Context, workers: tuple[str, ...], follow_: bool, tail: int | None,
         since: str | None, timestamps: bool, trace_id: str | None,
         job_id: str | None) -> None:
    """Show the output of WORKERS (all if none), merged in time order, with the supervisor's
    own news as the `workers` stream (`workers logs workers` shows it alone).

    With --trace or --job, only the lines logged in that trace or job, of every worker
    (-n then counts those lines).
    """
    project = find_project(ctx.obj.get("file"), ctx.obj.get("project"))
    logs_dir = project.state.logs_dir
    chosen = _chosen(project, workers)
    try:
        start = parse_since(since, datetime.now(UTC)) if since else None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    from pipecat_workers_cli.render.plain import PlainRenderer

    renderer = PlainRenderer(chosen, timestamps=timestamps)
    with state_errors():
        keep = _selector(project, trace_id, job_id, follow_)
        if not follow_:
            records = merge([read_records(logs_dir, file_stem(n), since=start, tail=tail,
                                          keep=keep) for n in chosen])
            if keep is not None:
                _check_found(project, keep, trace_id, job_id, bool(records))
            for record in records:
                renderer.record(as_shown(record))
            return
        try:
            asyncio.run(_follow(project, chosen, start, tail, renderer, keep))
        except KeyboardInterrupt:
            sys.exit(130)


def _selector(project: Project, trace_id: str | None, job_id: str | None,
              following: bool) -> LineSelector | None:
    """What chooses the lines of ``--trace`` or ``--job``; None without them."""
    if trace_id is None and job_id is None:
        return None
    if trace_id is not None and job_id is not None:
        raise CommandError("--trace and --job: give one of them")
    from pipecat_workers_cli.commands.trace import project_traces
    from pipecat_workers_cli.traces.lookup import (
        LineSelector,
        NotFound,
        is_trace_prefix,
        resolve_trace,
    )

    where = project_traces(project)
    if job_id is not None:
        return LineSelector(where, job=job_id.strip(), refresh=1.0 if following else None)
    assert trace_id is not None
    trace_id = trace_id.strip()
    if not is_trace_prefix(trace_id):
        raise CommandError(f"--trace: expected a trace id (32 hex digits, or the first 8 or "
                           f"more), got {trace_id!r}")
    try:
        found = resolve_trace(where, trace_id)
    except NotFound as exc:
        raise CommandError(f"--trace: {exc}") from None
    return LineSelector(where, trace=found or trace_id.lower())


def _check_found(project: Project, selector: LineSelector, trace_id: str | None,
                 job_id: str | None, any_line: bool) -> None:
    """Refuse an ID that names nothing, or a short trace id that several lines match."""
    if job_id is not None and selector.trace is None and not any_line:
        raise CommandError(f"no job {job_id!r} in the spans or logs of project "
                           f"'{project.name}'")
    if trace_id is not None and len(selector.traces_seen) > 1:
        shown = ", ".join(sorted(selector.traces_seen)[:5])
        raise CommandError(f"--trace: {trace_id!r} starts {len(selector.traces_seen)} trace "
                           f"ids in the logs ({shown}): give more digits")
    if trace_id is not None and not any_line and len(selector.trace or "") < 32:
        raise CommandError(f"no trace {trace_id!r} in the spans or logs of project "
                           f"'{project.name}'")


async def _follow(project: Project, names: list[str], since: datetime | None,
                  tail: int | None, renderer: PlainRenderer, keep: Keep | None) -> None:
    """Print lines as they come; stop once the supervisor is gone and the files are read."""
    stop = asyncio.Event()

    async def watch_supervisor() -> None:
        while project.state.supervisor_alive():
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.3)  # its last lines
        stop.set()

    watcher = asyncio.get_running_loop().create_task(watch_supervisor())
    try:
        async for record in follow(project.state.logs_dir, [file_stem(n) for n in names],
                                   since=since, tail=tail, stop=stop, keep=keep):
            renderer.record(as_shown(record))
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def _chosen(project: Project, workers: tuple[str, ...]) -> list[str]:
    """The logs to show: every worker's and the news, or those named (a worker's key names
    all its replicas; ``workers`` names the news, unless a worker has that name)."""
    known = _known_workers(project)
    if not workers:
        return [*known, NEWS]
    replicas = {w: [k for k in known if k == w or k.startswith(f"{w}.")] for w in workers}
    if NEWS in replicas and not replicas[NEWS]:
        replicas[NEWS] = [NEWS]
    if unknown := [w for w, found in replicas.items() if not found]:
        raise CommandError(f"no worker named {', '.join(map(repr, unknown))} in project "
                           f"'{project.name}' (it has {', '.join(known) or 'none'}; "
                           f"`{NEWS}` is the supervisor's news)")
    return [n for found in replicas.values() for n in found]


def _known_workers(project: Project) -> list[str]:
    status = project.last_status()
    if status is not None:
        return [w.name for w in status.workers]
    if project.topology is not None:
        from pipecat_workers_cli.topology import expand

        return [p.name for p in expand(project.topology)]
    return sorted(p.name.removesuffix(".log") for p in project.state.logs_dir.glob("*.log")
                  if not p.name.startswith("_"))  # "_workers.log" holds the news
