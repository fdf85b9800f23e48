"""Where a running project keeps its lock, sockets, state file and logs.

``<project root>/.workers/<project name>/`` holds ``lock`` (held by the live supervisor),
``state.json`` (what ``ps`` shows when no supervisor answers), ``topology.json`` (the topology
the supervisor resolved, environment values and all: what commands that join its buses go by),
``supervisor.log``, ``logs/<worker>.log``, ``logs/_workers.log`` (the supervisor's news) and
``traces/<worker>.jsonl`` (the spans each worker recorded). Sockets go there too, unless the
path is too long for a Unix socket (about 100 bytes); then they go to a private directory under
the system's temporary directory, and ``state.json`` records where.

Everything here is private to the user who runs the project: the directories are 0700 and
the files 0600, and existing ones are tightened to that. Nothing is followed that another
user could have planted: ``.workers``, the project's directory and ``logs`` must each be a
directory of this user, or a symbolic link made by this user to a directory of this user.
Anything else (a link planted by someone else, a directory they own) is refused, because
whoever controls it could read the logs, drive the project through its socket or hide it
from ``workers down``. Files are opened without following links. (Those rules are
:mod:`pipecat_workers_cli.supervisor.private`.)

A directory that cannot be used (a read-only project, a file named ``.workers``, a link planted by
another user) raises :class:`~pipecat_workers_cli.errors.StateDirError`: one line naming the path,
never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipecat_workers_cli.errors import CommandError, StateDirError
from pipecat_workers_cli.supervisor.private import (
    open_private,
    private_dir,
    state_error,
    state_errors,
    tighten_files,
)

STATE_DIRNAME = ".workers"
GITIGNORE = ".gitignore"  # inside STATE_DIRNAME: ignores all of it
_SOCKET_PATH_MAX = 100  # AF_UNIX allows 108 bytes on Linux, fewer elsewhere


@dataclass(frozen=True, slots=True)
class StateDir:
    """The state directory of one project."""

    path: Path
    project: str

    @classmethod
    def of(cls, root: Path, project: str) -> StateDir:
        return cls(root / STATE_DIRNAME / project, project)

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def topology_file(self) -> Path:
        return self.path / "topology.json"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def traces_dir(self) -> Path:
        """Where each worker's spans go: ``traces/<worker>.jsonl``."""
        return self.path / "traces"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    def socket_path(self, kind: str) -> Path:
        """A socket path short enough for AF_UNIX, private to this user."""
        here = self.path / f"{kind}.sock"
        if len(os.fsencode(here)) <= _SOCKET_PATH_MAX:
            return here
        digest = hashlib.sha256(os.fsencode(self.path)).hexdigest()[:16]
        private = Path(tempfile.gettempdir()) / f"pipecat-workers-{os.getuid()}"
        private.mkdir(mode=0o700, exist_ok=True)
        info = private.lstat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISDIR(info.st_mode):
            # Someone else made it first: a socket there could be swapped under us.
            raise StateDirError(f"{private} is not a private directory of this user; "
                                "remove it, or use a shorter project path")
        return private / f"{digest}-{kind}.sock"

    def socket_from_state(self, kind: str) -> Path:
        """The ``kind`` socket (``control``, ``hub``) the supervisor recorded in its state
        file, else where it would be."""
        recorded = ((self.read_state() or {}).get("sockets") or {}).get(kind)
        return Path(recorded) if recorded else self.socket_path(kind)

    def make(self, *, logs: bool = True) -> None:
        """Create the state directory (and ``logs``), private to this user, or check it.

        Raises:
            StateDirError: a directory cannot be created, or is not this user's (see the
                module's rules).
        """
        base = self.path.parent
        private_dir(base, create=True, wanted=self.path)
        _ignore_for_git(base)
        private_dir(self.path, create=True)
        if logs:
            private_dir(self.logs_dir, create=True)
            private_dir(self.traces_dir, create=True)

    def check(self) -> bool:
        """Whether the state directory exists; tightens it when it is too open.

        Raises:
            StateDirError: it exists but is not this user's.
        """
        return (private_dir(self.path.parent, create=False, wanted=self.path)
                and private_dir(self.path, create=False))

    def open_supervisor_log(self) -> BinaryIO:
        """``supervisor.log`` opened for appending (0600), the state directory made first.

        Raises:
            StateDirError: the directory or the file cannot be used.
        """
        self.make(logs=False)
        fd = open_private(self.supervisor_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "ab")

    def lock(self) -> int:
        """Take the project's lock for this supervisor's lifetime; returns the open fd.

        Raises:
            CommandError: another supervisor runs this project.
            StateDirError: the state directory cannot be created or written.
        """
        self.make()
        tighten_files(self.path, self.logs_dir)  # left by an older version, or by hand
        fd = open_private(self.path / "lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = (self.read_state() or {}).get("supervisor_pid", "?")
            raise CommandError(
                f"project '{self.project}' is already running (supervisor pid {pid}); "
                "use `workers down` to stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def supervisor_alive(self) -> bool:
        """Whether a supervisor holds the lock right now.

        Raises:
            StateDirError: the lock exists but cannot be read, or the state directory is
                not this user's.
        """
        if not self.check():
            return False  # no state directory (or a file where it would be): none runs
        try:
            fd = open_private(self.path / "lock", os.O_RDONLY)
        except StateDirError as exc:
            if isinstance(exc.__cause__, FileNotFoundError | NotADirectoryError):
                return False
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def remove(self) -> bool:
        """Delete the state directory (logs included) unless a supervisor runs the project;
        True if it was deleted. The lock is held meanwhile, so that no supervisor starts in a
        directory being deleted. A link to the directory is removed, not what it links to.

        Raises:
            StateDirError: it is not this user's, or cannot be deleted.
        """
        if not self.check():
            return False
        fd = open_private(self.path / "lock", os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # running
            for kind in ("control", "hub"):  # sockets kept elsewhere when the path is long
                with contextlib.suppress(OSError, StateDirError):
                    if (socket := self.socket_path(kind)).parent != self.path:
                        socket.unlink(missing_ok=True)
            with state_errors():
                if self.path.is_symlink():
                    self.path.unlink()
                else:
                    shutil.rmtree(self.path)
        finally:
            os.close(fd)
        return True

    def read_state(self) -> dict[str, Any] | None:
        """What the supervisor last recorded; None when there is no (readable JSON) file.

        Raises:
            StateDirError: the file exists but cannot be read, or the state directory is
                not this user's.
        """
        return self._read_json(self.state_file)

    def read_topology(self) -> dict[str, Any] | None:
        """The topology the supervisor recorded (see :meth:`write_topology`); None when
        there is no (readable JSON) file.

        Raises:
            StateDirError: as :meth:`read_state`.
        """
        return self._read_json(self.topology_file)

    def _read_json(self, path: Path) -> dict[str, Any] | None:
        if not self.check():
            return None
        try:
            fd = open_private(path, os.O_RDONLY)
        except StateDirError as exc:
            if isinstance(exc.__cause__, FileNotFoundError | NotADirectoryError):
                return None
            raise
        try:
            with os.fdopen(fd, "rb") as file:
                data = json.loads(file.read())
        except ValueError:
            return None
        except OSError as exc:
            raise state_error(exc) from None
        return data if isinstance(data, dict) else None

    def write_state(self, data: dict[str, Any]) -> None:
        """Replace the state file atomically: a reader never sees half of it.

        Raises:
            StateDirError: the directory cannot be created or written.
        """
        self._write_json(self.state_file, data)

    def write_topology(self, data: dict[str, Any]) -> None:
        """Record the topology the supervisor runs (as
        :func:`~pipecat_workers_cli.topology.record.topology_record` makes it), atomically.
        It holds the values of environment variables, secrets too: private like the rest.

        Raises:
            StateDirError: the directory cannot be created or written.
        """
        self._write_json(self.topology_file, data)

    def forget_topology(self) -> None:
        """Remove the recorded topology (the supervisor exits): its secrets stay no longer
        than the project runs."""
        with contextlib.suppress(FileNotFoundError), state_errors():
            os.unlink(self.topology_file)

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        self.make(logs=False)
        with state_errors():
            # mkstemp makes the file 0600.
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{path.stem}-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as file:
                    # dumps, compact: the C encoder (dump, or an indent, is pure Python).
                    file.write(json.dumps(data, separators=(",", ":"), default=str))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


def _ignore_for_git(base: Path) -> None:
    """Write ``.workers/.gitignore`` (``*``) once: logs, sockets and state never belong in a
    repository, and the user need not remember to say so. A convenience only: if it cannot
    be written, what the project needs next (its lock, say) fails with its own message."""
    path = base / GITIGNORE
    if os.path.lexists(path):  # the user's own, or ours from before: left as it is
        return
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except StateDirError:
        return  # written meanwhile, or the directory cannot be written
    with os.fdopen(fd, "w") as file:
        file.write("# Written by `workers`: the state of running projects, never committed.\n"
                   "*\n")


def find_state_dirs(start: Path) -> list[StateDir]:
    """Projects with a state directory in ``start`` or the nearest parent that has any.

    Raises:
        StateDirError: the nearest ``.workers`` is not this user's.
    """
    for directory in (start, *start.parents):
        base = directory / STATE_DIRNAME
        if private_dir(base, create=False):  # one planted by another user is refused
            # A project's directory exists from `up` on; its state file only once the
            # supervisor has written it.
            found = [StateDir(p, p.name) for p in sorted(base.iterdir()) if p.is_dir()]
            if found:
                return found
    return []
