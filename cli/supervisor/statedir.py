"""Where a running project keeps its lock, sockets, state file and logs.

``<project root>/.workers/<project name>/`` holds ``lock`` (held by the live supervisor),
``state.json`` (what ``ps`` shows when no supervisor answers), ``supervisor.log`` and
``logs/<worker>.log``. Sockets go there too, unless the path is too long for a Unix socket
(about 100 bytes); then they go to a private directory under the system's temporary
directory, and ``state.json`` records where.

A directory that cannot be used (a read-only project, a file named ``.workers``) raises
:class:`~cli.errors.StateDirError`: one line naming the path, never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.errors import CommandError, StateDirError

STATE_DIRNAME = ".workers"
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
    def logs_dir(self) -> Path:
        return self.path / "logs"

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

    def lock(self) -> int:
        """Take the project's lock for this supervisor's lifetime; returns the open fd.

        Raises:
            CommandError: another supervisor runs this project.
            StateDirError: the state directory cannot be created or written.
        """
        with state_errors():
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
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
            StateDirError: the lock exists but cannot be read.
        """
        try:
            fd = os.open(self.path / "lock", os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return False  # no state directory (or a file where it would be): none runs
        except OSError as exc:
            raise state_error(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def read_state(self) -> dict[str, Any] | None:
        """What the supervisor last recorded; None when there is no (readable JSON) file.

        Raises:
            StateDirError: the file exists but cannot be read.
        """
        try:
            data = json.loads(self.state_file.read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        except OSError as exc:
            raise state_error(exc) from None
        return data if isinstance(data, dict) else None

    def write_state(self, data: dict[str, Any]) -> None:
        """Replace the state file atomically: a reader never sees half of it.

        Raises:
            StateDirError: the directory cannot be created or written.
        """
        with state_errors():
            self.path.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as file:
                    json.dump(data, file, indent=1, default=str)
                os.replace(tmp, self.state_file)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


def state_error(exc: OSError) -> StateDirError:
    """``exc`` as one line naming the path, and the file in the way if that is the trouble:
    ``cannot use /p/.workers/x for the project's state: /p/.workers is a file``."""
    if exc.filename is None:
        return StateDirError(f"cannot use the project's state directory: {exc}")
    where = Path(os.fsdecode(exc.filename))
    why = exc.strerror or str(exc)
    if isinstance(exc, NotADirectoryError | FileExistsError):
        blocking = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()),
                        None)
        if blocking is not None:
            why = f"{blocking} is a file, not a directory"
    return StateDirError(f"cannot use {where} for the project's state: {why}")


@contextlib.contextmanager
def state_errors() -> Iterator[None]:
    """Turn an OSError of the block into :class:`StateDirError`."""
    try:
        yield
    except StateDirError:
        raise
    except OSError as exc:
        raise state_error(exc) from None


def find_state_dirs(start: Path) -> list[StateDir]:
    """Projects with a state directory in ``start`` or the nearest parent that has any."""
    for directory in (start, *start.parents):
        base = directory / STATE_DIRNAME
        if base.is_dir():
            # A project's directory exists from `up` on; its state file only once the
            # supervisor has written it.
            found = [StateDir(p, p.name) for p in sorted(base.iterdir()) if p.is_dir()]
            if found:
                return found
    return []
