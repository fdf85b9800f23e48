"""What ``ps``, ``up -d`` and the live view know of a project: plain, JSON-ready data."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class WorkerStatus:
    """One worker process: the supervisor's view joined with the bus's."""

    name: str
    worker: str                   # its key in the topology (replicas share it)
    channel: str
    state: str
    pid: int | None = None
    uptime: float | None = None   # seconds since it was spawned, while it runs
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    retry_in: float | None = None
    crash_loop: bool = False
    parked: bool = False          # crashed under --reload: waits for the next change
    registered: bool = False      # the bus's registry lists it
    active: bool | None = None
    jobs: dict[str, int] = field(default_factory=dict)
    failing: list[str] = field(default_factory=list)  # its runner's loops that keep failing
    cpu_percent: float | None = None  # of one core, with its children, over the last second
    rss_bytes: int | None = None      # resident memory of its process and its children


@dataclass(slots=True)
class ChannelStatus:
    """One bus, as the supervisor's monitor sees it."""

    key: str
    backend: str
    channel: str
    connected: bool = False
    runners: int = 0
    workers: list[str] = field(default_factory=list)
    jobs_running: int = 0
    # Per worker, the job names its runner announced (an older runner announces none) ...
    job_names: dict[str, list[str]] = field(default_factory=dict)
    any_job: list[str] = field(default_factory=list)  # ... and those that take any name


@dataclass(slots=True)
class TemplateStatus:
    """The process template workers are forked from (:mod:`pipecat_workers_cli.forkserver`)."""

    state: str = "off"            # off (workers are spawned), starting or ready
    pid: int | None = None
    reason: str = ""              # why it is off

    def describe(self) -> str:
        """One line for ``ps``."""
        if self.state == "off":
            return f"workers are spawned, not forked: {self.reason or 'no process template'}"
        return f"workers are forked from the process template (pid {self.pid}, {self.state})"


@dataclass(slots=True)
class RollStatus:
    """A rolling restart (``restart --rolling``), so the command that asked for it learns
    how far it got and how it ended instead of guessing from the workers' states."""

    id: int
    state: str                    # rolling, done or stopped
    restarted: list[str] = field(default_factory=list)  # so far, in order
    pending: list[str] = field(default_factory=list)    # not yet restarted
    reason: str = ""              # why it stopped


@dataclass(slots=True)
class ProjectStatus:
    project: str
    file: str
    running: bool
    supervisor_pid: int | None
    workers: list[WorkerStatus]
    channels: list[ChannelStatus]
    template: TemplateStatus = field(default_factory=TemplateStatus)
    rolls: list[RollStatus] = field(default_factory=list)  # under way or lately ended

    def to_json(self) -> dict[str, Any]:
        data = _flat(self)
        data["workers"] = [_flat(w) for w in self.workers]
        data["channels"] = [_flat(c) for c in self.channels]
        data["template"] = _flat(self.template)
        data["rolls"] = [_flat(r) for r in self.rolls]
        return data

    @classmethod
    def recorded(cls, data: dict[str, Any] | None) -> ProjectStatus | None:
        """The status in a state file's data; None without one, or one of another shape."""
        if data is None:
            return None
        try:
            return cls.from_json(data)
        except (KeyError, TypeError):
            return None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProjectStatus:
        template = data.get("template")
        return cls(
            project=data["project"], file=data["file"], running=data["running"],
            supervisor_pid=data.get("supervisor_pid"),
            workers=[WorkerStatus(**w) for w in data.get("workers", [])],
            channels=[ChannelStatus(**c) for c in data.get("channels", [])],
            template=TemplateStatus(**template) if isinstance(template, dict)
            else TemplateStatus(),
            rolls=[RollStatus(**r) for r in data.get("rolls", [])])

    def worker(self, name: str) -> WorkerStatus | None:
        return next((w for w in self.workers if w.name == name), None)

    def roll(self, roll_id: int) -> RollStatus | None:
        return next((r for r in self.rolls if r.id == roll_id), None)


def _flat(item: Any) -> dict[str, Any]:
    """A dataclass of plain values as a dict, its lists and dicts copied: what ``asdict``
    gives here, without deep-copying every value (the state file is written often)."""
    data = {}
    for f in fields(item):
        value = getattr(item, f.name)
        data[f.name] = value.copy() if isinstance(value, list | dict) else value
    return data
