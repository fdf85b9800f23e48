"""Which project a command is about: from ``-f FILE``, ``-p NAME``, or the current directory."""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from pipecat_workers_cli.errors import CommandError, SeveralProjects
from pipecat_workers_cli.supervisor.statedir import STATE_DIRNAME, StateDir, find_state_dirs
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.topology.model import Topology


@dataclass(frozen=True, slots=True)
class Project:
    """A project's state directory, and its topology when a file was given."""

    state: StateDir
    topology: Topology | None = None

    @property
    def name(self) -> str:
        return self.state.project

    def topology_or_recorded(self) -> Topology:
        """The topology to go by: the one the running supervisor resolved, else the one
        given (``-f``), else the file the project was started from, loaded here (with the
        ``--env-file`` files it was started with)."""
        if self.state.supervisor_alive() and (running := self.running_topology()):
            return running
        if self.topology is not None:
            return self.topology
        state = self.state.read_state() or {}
        recorded = state.get("file")
        if not recorded:
            raise CommandError(f"project '{self.name}' records no topology file; pass -f FILE")
        from pipecat_workers_cli.topology import load_topology

        env_files = state.get("env_files")  # the last run's --env-file files
        if not (isinstance(env_files, list) and all(isinstance(f, str) for f in env_files)):
            env_files = None
        return load_topology(recorded, env_files=env_files or None)

    def running_topology(self) -> Topology | None:
        """The topology the supervisor recorded when it started or last applied an edit
        (environment variables resolved as in its own environment); None without one."""
        from pipecat_workers_cli.topology.record import RecordError, topology_from_record

        data = self.state.read_topology()
        if data is None:
            return None
        try:
            return topology_from_record(data)
        except RecordError:
            return None  # another version's: the file will do

    def command(self, cwd: Path | None = None) -> str:
        """How to name this project in a hint: see :func:`command_for`."""
        here = cwd or Path.cwd()
        found = find_state_dirs(here)
        if any(s.path == self.state.path for s in found):
            return "workers" if len(found) == 1 else f"workers -p {shlex.quote(self.name)}"
        file = self.topology.path if self.topology else (self.state.read_state() or {}).get(
            "file")
        if not file:
            return f"workers -p {shlex.quote(self.name)}"
        return f"workers -f {shlex.quote(os.path.relpath(file, here))}"

    def last_status(self) -> ProjectStatus | None:
        return ProjectStatus.recorded(self.state.read_state())


def command_for(topology: Topology, cwd: Path | None = None) -> str:
    """How to name this project in a hint, from ``cwd``: ``workers`` when it is the only one
    found from here, ``workers -p NAME`` among others, else ``workers -f FILE``."""
    return Project(StateDir.of(topology.root, topology.name), topology).command(cwd)


def find_project(file: str | None, name: str | None, cwd: Path | None = None) -> Project:
    """The project named by the options, or the only one found from ``cwd`` upwards.

    Raises:
        CommandError: none or several match.
    """
    if file is not None:
        from pipecat_workers_cli.topology import TopologyError, load_topology

        try:
            topology = load_topology(file)
        except TopologyError:
            # Resolved here, the file may lack a variable that its running supervisor had.
            running = _running_from(Path(file))
            if running is None:
                raise
            topology = running
        return Project(StateDir.of(topology.root, topology.name), topology)
    found = find_state_dirs(cwd or Path.cwd())
    if name is not None:
        found = [s for s in found if s.project == name]
        if not found:
            raise CommandError(f"no project named '{name}' here; pass -f FILE")
    if not found:
        raise CommandError(f"no project found here: a project keeps its state in "
                           f"{STATE_DIRNAME}/ under its root (the topology's `root:`), "
                           "looked for from this directory upwards; pass -f FILE "
                           "(the topology) or run this under the project's root")
    if len(found) > 1:
        live = [s for s in found if s.supervisor_alive()]
        if len(live) == 1:
            found = live
        elif live:
            names = ", ".join(s.project for s in live)
            raise CommandError(f"several projects run here ({names}): choose one with -p NAME")
        else:
            raise SeveralProjects([s.project for s in found])
    return Project(found[0])


def _running_from(file: Path) -> Topology | None:
    """The topology a running supervisor recorded for ``file``, found from its directory
    upwards (where a project's ``root:`` is); None if none runs it."""
    with contextlib.suppress(OSError, ValueError):
        path = file.resolve()
        for state in find_state_dirs(path.parent):
            running = Project(state).running_topology() if state.supervisor_alive() else None
            if running is not None and running.path == path:
                return running
    return None
