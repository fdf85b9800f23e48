"""``workers ls``: the projects found from a directory, their state, and pruning stopped ones.

A project is known by its state directory (``.workers/<name>/`` under its root). Its state
comes from the lock (a supervisor holds it while the project runs) and from the last status
the supervisor recorded; no supervisor is asked, so ``ls`` answers at once however many
projects there are. Plain data here; the command renders it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.render import plural
from pipecat_workers_cli.supervisor.model import ALIVE, State
from pipecat_workers_cli.supervisor.statedir import StateDir, find_state_dirs

ProjectState = Literal["running", "stopped", "crashed"]

_RUNNING = frozenset(s.value for s in ALIVE)
_BROKEN = frozenset({State.CRASHED.value, State.FAILED.value})


@dataclass(frozen=True, slots=True)
class ProjectEntry:
    """One project, as ``ls`` shows it.

    ``state``: ``running`` while a supervisor holds its lock; ``crashed`` when its
    supervisor is gone without recording its end (killed), or some worker ended crashed or
    failed; else ``stopped``. ``workers``: how many of ``total`` run (last recorded).
    """

    name: str
    state: ProjectState
    workers: int
    total: int
    root: str
    file: str | None
    state_dir: str
    supervisor_pid: int | None

    def describe(self) -> str:
        """``running (2 workers)``, ``running (1 of 2 workers)``, ``stopped``, ``crashed``."""
        if self.state != "running":
            return self.state
        if self.workers == self.total:
            return f"running ({plural(self.workers, 'worker')})"
        return f"running ({self.workers} of {plural(self.total, 'worker')})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def project_entry(state: StateDir) -> ProjectEntry:
    """What the state directory says of its project.

    Raises:
        StateDirError: the directory or its files are not this user's.
    """
    running = state.supervisor_alive()
    data = state.read_state() or {}
    workers = [w for w in data.get("workers") or [] if isinstance(w, dict)]
    states = [str(w.get("state")) for w in workers]
    if running:
        verdict: ProjectState = "running"
    elif data.get("running") or _BROKEN.intersection(states):
        verdict = "crashed"
    else:
        verdict = "stopped"
    file = data.get("file")
    pid = data.get("supervisor_pid")
    return ProjectEntry(
        name=state.project, state=verdict,
        workers=sum(s in _RUNNING for s in states) if running else 0, total=len(workers),
        root=str(state.path.parent.parent), file=str(file) if file else None,
        state_dir=str(state.path),
        supervisor_pid=pid if running and isinstance(pid, int) else None)


def list_projects(start: Path, only: str | None = None) -> list[tuple[StateDir, ProjectEntry]]:
    """Every project found from ``start`` (see :func:`find_state_dirs`), by name; or only
    the one named ``only``.

    Raises:
        CommandError: no project is named ``only``.
        StateDirError: a state directory is not this user's.
    """
    found = find_state_dirs(start)
    if only is not None:
        found = [s for s in found if s.project == only]
        if not found:
            raise CommandError(f"no project named '{only}' here")
    return [(state, project_entry(state)) for state in found]


def prune(start: Path, only: str | None = None) -> list[ProjectEntry]:
    """Delete the state directories (logs included) of the projects found from ``start``
    (or of the one named ``only``) that are not running; returns those deleted. A project
    that starts meanwhile is kept: the deletion holds its lock.

    Raises:
        CommandError: no project is named ``only``.
        StateDirError: a state directory is not this user's, or cannot be deleted.
    """
    return [entry for state, entry in list_projects(start, only)
            if entry.state != "running" and state.remove()]
