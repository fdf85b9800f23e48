"""Files and directories only this user can use, reached through no link someone else made.

The rules of the project's state directory (:mod:`pipecat_workers_cli.supervisor.statedir`):
a directory must be this user's (or a link this user made to one of theirs) and is tightened
to 0700; a file is opened without following links, must be this user's, and is tightened to
0600. Whatever breaks a rule, or cannot be done, is one
:class:`~pipecat_workers_cli.errors.StateDirError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

from pipecat_workers_cli.errors import StateDirError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def private_dir(path: Path, *, create: bool, wanted: Path | None = None) -> bool:
    """Make sure ``path`` is a directory only this user can use, tightening it to 0700.

    It must be a directory of this user, or a symbolic link made by this user to one.

    Args:
        path: The directory.
        create: Make it (0700) when missing; else a missing one (or a file, or a link to
            nothing) is answered False.
        wanted: What the directory is for, named in messages; default: ``path``.

    Returns:
        Whether the directory is there (always True when ``create``).

    Raises:
        StateDirError: It is not this user's, or cannot be made or tightened.
    """
    def refuse(why: str) -> StateDirError:
        return StateDirError(f"cannot use {wanted or path} for the project's state: {why}")

    uid = os.getuid()
    with state_errors():
        try:
            link = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return False
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                os.mkdir(path, PRIVATE_DIR)
            link = os.lstat(path)
        info = link
        if stat.S_ISLNK(link.st_mode):
            if link.st_uid != uid:
                raise refuse(f"{path} is a symbolic link made by {_who(link.st_uid)}; "
                             "remove it")
            try:
                info = os.stat(path)
            except OSError:
                info = link  # a link to nothing: refused below
            if not stat.S_ISDIR(info.st_mode):
                if not create:
                    return False
                raise refuse(f"{path} links to {_target(path)}, which is not a directory")
            if info.st_uid != uid:
                raise refuse(f"{path} links to {_target(path)}, a directory of "
                             f"{_who(info.st_uid)}")
        elif not stat.S_ISDIR(link.st_mode):
            if not create:
                return False
            raise refuse(f"{path} is a file, not a directory")
        elif link.st_uid != uid:
            raise refuse(f"{path} belongs to {_who(link.st_uid)}; remove it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, PRIVATE_DIR)
            if os.lstat(path).st_ino != link.st_ino:  # swapped since it was checked
                raise refuse(f"{path} was replaced while it was checked")
    return True


def open_private(path: Path, flags: int) -> int:
    """Open a file of the state directory (``os.open`` flags), never through a link.

    A file it creates is 0600; an existing one must be this user's and is tightened to
    0600. Returns the open fd.

    Raises:
        StateDirError: It cannot be opened, is a link, or is not this user's file. An
            OSError that caused it is its ``__cause__``.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW, PRIVATE_FILE)
    except OSError as exc:
        raise state_error(exc) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            what = "is not a file" if not stat.S_ISREG(info.st_mode) else (
                f"belongs to {_who(info.st_uid)}")
            raise StateDirError(f"cannot use {path} for the project's state: it {what}; "
                                "remove it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError) and not isinstance(exc, StateDirError):
            raise state_error(exc) from exc
        raise
    return fd


def tighten_files(*directories: Path) -> None:
    """Make the files of our own directories 0600 (an older version left them 0644)."""
    uid = os.getuid()
    for directory in directories:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
                os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    info = entry.stat(follow_symlinks=False)
                    if (stat.S_ISREG(info.st_mode) and info.st_uid == uid
                            and stat.S_IMODE(info.st_mode) & 0o077):
                        os.chmod(entry.path, PRIVATE_FILE)


def _who(uid: int) -> str:
    """``another user (alice)``, or ``another user (uid 1234)``."""
    try:
        return f"another user ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"another user (uid {uid})"


def _target(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return "?"


def state_error(exc: OSError) -> StateDirError:
    """``exc`` as one line naming the path, and the file in the way if that is the trouble:
    ``cannot use /p/.workers/x for the project's state: /p/.workers is a file``."""
    if exc.filename is None:
        return StateDirError(f"cannot use the project's state directory: {exc}")
    where = Path(os.fsdecode(exc.filename))
    why = exc.strerror or str(exc)
    if exc.errno == errno.ELOOP and where.is_symlink():
        why = "it is a symbolic link; remove it"
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
