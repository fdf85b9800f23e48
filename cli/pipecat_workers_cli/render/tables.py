"""Rich tables of a project's workers and channels, shared by ``ps`` and the live view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from pipecat_workers_cli.render import plural
from pipecat_workers_cli.supervisor.report import failing_loops
from pipecat_workers_cli.supervisor.status import ChannelStatus, ProjectStatus, WorkerStatus

STATE_STYLES = {
    "ready": "green", "starting": "yellow", "waiting": "dim", "stopping": "yellow",
    "backing off": "red", "crashed": "bold red", "failed": "bold red", "exited": "dim",
    "stopped": "dim", "gone": "red",
}


def duration(seconds: float | None) -> str:
    """``4s``, ``3m12s``, ``2h05m``: short enough for a table cell."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def state_text(worker: WorkerStatus) -> Text:
    label = worker.state
    if worker.state == "backing off" and worker.retry_in is not None:
        label += f" ({duration(worker.retry_in)})"
    if worker.crash_loop:
        label = f"crash loop, {label}"
    if worker.parked:
        label = "crashed, waiting for a change"
    if worker.state in ("exited", "crashed") and worker.exit_code is not None:
        label += f" ({worker.exit_code})"
    if worker.state == "ready" and worker.active:
        label = "active"
    return Text(label, style=STATE_STYLES.get(worker.state, ""))


def jobs_text(jobs: dict[str, int]) -> str:
    if not jobs:
        return "-"
    failed = jobs.get("failed", 0) + jobs.get("errored", 0)
    return f"{jobs.get('running', 0)}/{jobs.get('completed', 0)}/{failed}"


# Names, reasons and errors come from topologies, workers and the bus: every cell and title is
# a Text, so that none of it is read as rich markup ("[/]" in an error would not even print).


def project_table(status: ProjectStatus) -> Table:
    title = Text(f"{status.project}" + ("" if status.running else " (not running)"))
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "JOBS run/ok/fail", "BUS"):
        table.add_column(column, no_wrap=column != "BUS")
    for w in status.workers:
        bus = "registered" if w.registered else "-"
        if w.reason and w.state not in ("ready",):
            bus = w.reason
        if w.failing:
            bus = f"{bus}; loop failing: {', '.join(w.failing)}"
        table.add_row(Text(w.name), state_text(w), str(w.pid or "-"), duration(w.uptime),
                      str(w.restarts), jobs_text(w.jobs), Text(bus))
    return table


def channel_table(channel: ChannelStatus) -> Text:
    link = "connected" if channel.connected else "not connected"
    return Text(f"channel {channel.key} ({channel.backend}, '{channel.channel}'): {link}, "
                f"{plural(channel.runners, 'runner')}, {plural(len(channel.workers), 'worker')}, "
                f"{plural(channel.jobs_running, 'job')} running", style="dim")


def runners_table(survey: dict[str, Any]) -> Table:
    """What ``ps --channel`` heard on a channel: each runner and its workers."""
    table = Table(title=Text(f"channel '{survey['channel']}' ({survey['backend']})"),
                  title_justify="left", box=None, pad_edge=False)
    for column in ("RUNNER", "WORKERS", "JOBS run/ok/fail", "LAST HEARD"):
        table.add_column(column)
    for runner in survey["runners"]:
        stats = runner.get("stats") or {}
        workers = stats.get("workers") or {}
        listed = ", ".join(f"{name} ({info.get('state', '?')}"
                           + (", active)" if info.get("active") else ")")
                           for name, info in workers.items()) or "-"
        failing = failing_loops(stats)
        heard = f"{runner['seen_ago']:.1f}s ago" + (
            f"; loop failing: {', '.join(failing)}" if failing else "")
        table.add_row(Text(runner["name"]), Text(listed), jobs_text(stats.get("jobs") or {}),
                      Text(heard))
    if not survey["runners"]:
        table.caption = "no runner heard"
    return table


def jobs_table(status: ProjectStatus) -> Table:
    """``ps --jobs``: the job names each worker takes, as the bus's registry lists them."""
    table = Table(box=None, pad_edge=False)
    table.add_column("NAME", no_wrap=True)
    table.add_column("JOBS")
    channels = {c.key: c for c in status.channels}
    for w in status.workers:
        channel = channels.get(w.channel)
        names = channel.job_names.get(w.name) if channel is not None else None
        if channel is None or w.name not in channel.workers:
            listed = "- (not on the bus)"
        else:
            listed = job_list(names, w.name in channel.any_job)
        table.add_row(Text(w.name), Text(listed))
    return table


def channel_jobs_table(survey: dict[str, Any]) -> Table:
    """``ps --channel --jobs``: the job names of every worker heard on a channel."""
    table = Table(box=None, pad_edge=False)
    table.add_column("WORKER", no_wrap=True)
    table.add_column("JOBS")
    for worker in survey["workers"]:
        listed = job_list(worker.get("jobs"), bool(worker.get("any_job")))
        table.add_row(Text(worker["name"]), Text(listed))
    return table


def job_list(names: Sequence[str] | None, any_job: bool) -> str:
    """A worker's job names for a cell: ``None`` when its runner does not announce them."""
    if names is None:
        listed = "? (its runner does not announce them)"
    else:
        listed = ", ".join(names) or "none"
    return f"{listed} (and any other name)" if any_job else listed
