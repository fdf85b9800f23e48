"""Rich tables of a project's workers and channels, shared by ``ps`` and the live view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from pipecat_workers_cli.render import plural
from pipecat_workers_cli.supervisor.exits import explain_exit
from pipecat_workers_cli.supervisor.report import failing_loops
from pipecat_workers_cli.supervisor.status import ChannelStatus, ProjectStatus, WorkerStatus

if TYPE_CHECKING:
    from pipecat_workers_cli.listing import ProjectEntry

STATE_STYLES = {
    "ready": "green", "starting": "yellow", "waiting": "dim", "stopping": "yellow",
    "backing off": "red", "crashed": "bold red", "failed": "bold red", "exited": "dim",
    "stopped": "dim", "gone": "red",
}
"""A style for each word of :data:`pipecat_workers_cli.states.STATES`: the STATE column shows
the state as ``ps --json`` has it, and nothing else (the why goes to REASON)."""


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


def size(n: int | None) -> str:
    """``812K``, ``45.3M``, ``1.2G``: a memory size for a table cell."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit in ("B", "K") or value >= 100 else (
                f"{value:.1f}{unit}")
        value /= 1024
    raise AssertionError("unreachable")


def cpu_text(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.0f}%"


def state_text(worker: WorkerStatus) -> Text:
    return Text(worker.state, style=STATE_STYLES.get(worker.state, ""))


def reason_text(worker: WorkerStatus) -> str:
    """Why the worker is where it is: its reason, when it restarts, a crash loop."""
    parts = []
    if worker.crash_loop:
        parts.append("crash loop")
    if worker.reason:
        parts.append(worker.reason)
    elif worker.state in ("exited", "crashed", "failed") and worker.exit_code is not None:
        parts.append(explain_exit(worker.exit_code))
    if worker.state == "backing off" and worker.retry_in is not None:
        parts.append(f"restarting in {duration(worker.retry_in)}")
    return "; ".join(parts) or "-"


def bus_text(worker: WorkerStatus) -> str:
    bus = ("registered, active" if worker.active else "registered") if worker.registered else "-"
    if worker.failing:
        bus = f"{bus}; loop failing: {', '.join(worker.failing)}"
    return bus


def jobs_text(jobs: dict[str, int]) -> str:
    if not jobs:
        return "-"
    failed = jobs.get("failed", 0) + jobs.get("errored", 0)
    return f"{jobs.get('running', 0)}/{jobs.get('completed', 0)}/{failed}"


# Names, reasons and errors come from topologies, workers and the bus: every cell and title is
# a Text, so that none of it is read as rich markup ("[/]" in an error would not even print).


_COLUMNS = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU", "MEM", "JOBS run/ok/fail",
            "BUS", "REASON")
_SHORT = {"UPTIME": "UP", "RESTARTS": "RST", "JOBS run/ok/fail": "JOBS"}
NARROW = 120
"""Below this many columns the live view's headers are shortened, so 80 columns fit."""


def project_table(status: ProjectStatus, *, workers: list[WorkerStatus] | None = None,
                  more: int = 0, ellipsize: bool = False, narrow: bool = False) -> Table:
    """The workers of ``status`` (or the ``workers`` given), one row each, and a caption
    "... N more" when ``more`` were left out.

    ``ellipsize``: cut long cells short with "..." rather than wrap them (the live view keeps
    one line per worker); ``ps`` wraps, so that nothing is lost. ``narrow`` (a terminal under
    :data:`NARROW` columns): short headers, and no BUS column (a failing loop, the one thing
    in it that needs saying, joins REASON), so that 80 columns keep REASON.
    """
    title = Text(f"{status.project}" + ("" if status.running else " (not running)"),
                 no_wrap=True, overflow="ellipsis")
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in _COLUMNS:
        if narrow and column == "BUS":
            continue
        free = column in ("BUS", "REASON")  # long text: these give way first
        table.add_column(_SHORT.get(column, column) if narrow else column, no_wrap=not free,
                         overflow="ellipsis", min_width=6 if free else None)
    for w in status.workers if workers is None else workers:
        reason = reason_text(w)
        if narrow and w.failing:
            reason = ("" if reason == "-" else f"{reason}; ") + (
                f"loop failing: {', '.join(w.failing)}")
        # Ellipsized, a long cell keeps to one line: its column still narrows first.
        bus, why = (Text(t, no_wrap=ellipsize, overflow="ellipsis" if ellipsize else "fold")
                    for t in (bus_text(w), reason))
        cells: list[Text | str] = [
            Text(w.name), state_text(w), str(w.pid or "-"), duration(w.uptime),
            str(w.restarts), cpu_text(w.cpu_percent), size(w.rss_bytes), jobs_text(w.jobs),
            *([] if narrow else [bus]), why]
        table.add_row(*cells)
    if more:
        table.caption = Text(f"... {more} more", style="dim")
        table.caption_justify = "left"
    return table


def channel_table(channel: ChannelStatus, *, ellipsize: bool = False) -> Text:
    link = "connected" if channel.connected else "not connected"
    return Text(f"channel {channel.key} ({channel.backend}, '{channel.channel}'): {link}, "
                f"{plural(channel.runners, 'runner')}, {plural(len(channel.workers), 'worker')}, "
                f"{plural(channel.jobs_running, 'job')} running", style="dim",
                no_wrap=ellipsize, overflow="ellipsis" if ellipsize else None)


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


_PROJECT_STYLES = {"running": "green", "stopped": "dim", "crashed": "bold red"}


def projects_table(rows: list[tuple[ProjectEntry, str, str]]) -> Table:
    """What ``ls`` shows: each project with its state, and its root and topology file as
    given (``rows``: the entry, its root and its file as they should read)."""
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "STATE", "ROOT", "FILE"):
        table.add_column(column, overflow="fold")
    for entry, root, file in rows:
        table.add_row(Text(entry.name), Text(entry.describe(),
                                              style=_PROJECT_STYLES.get(entry.state, "")),
                      Text(root), Text(file))
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
