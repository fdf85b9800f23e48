"""One worker's OS process: spawned in its own session, its pipes read line by line.

Everything it does is reported to the supervisor's loop as events (:class:`Output`,
:class:`Status`, :class:`Exited`); nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.host import HOST_ENV, HostSpec
from cli.logs.writer import pump


@dataclass(frozen=True, slots=True)
class Output:
    name: str
    stream: str  # "out" or "err"
    raw: bytes


@dataclass(frozen=True, slots=True)
class Status:
    name: str
    pid: int
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Exited:
    name: str
    pid: int
    code: int


ProcessEvent = Output | Status | Exited


class WorkerProcess:
    """A running host process and the tasks that read its pipes."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process,
                 tasks: list[asyncio.Task[None]]) -> None:
        self.name = name
        self.pid = proc.pid
        self._proc = proc
        self._tasks = tasks

    @classmethod
    async def spawn(cls, spec: HostSpec, *, env: Mapping[str, str], cwd: Path,
                    emit: Callable[[ProcessEvent], None]) -> WorkerProcess:
        """Start ``python -m cli.host`` for ``spec``; raises OSError if it cannot start."""
        status_read, status_write = os.pipe()
        host = HostSpec(**{**_fields(spec), "status_fd": status_write,
                           "supervisor_pid": os.getpid()})
        full_env = {**env, HOST_ENV: host.to_json(), "PYTHONUNBUFFERED": "1"}
        try:
            proc = await asyncio.create_subprocess_exec(
                # -P: the project directory (its cwd) must not shadow our own modules.
                sys.executable, "-P", "-m", "cli.host", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                pass_fds=(status_write,), start_new_session=True, cwd=cwd, env=full_env)
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        name = spec.name
        loop = asyncio.get_running_loop()
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            loop.create_task(pump(proc.stdout, lambda raw: emit(Output(name, "out", raw)))),
            loop.create_task(pump(proc.stderr, lambda raw: emit(Output(name, "err", raw)))),
            loop.create_task(_read_status(status_read, name, proc.pid, emit)),
        ]
        waiter = loop.create_task(_wait(proc, name, readers, emit))
        return cls(name, proc, [*readers, waiter])

    def drain(self) -> None:
        """Ask the host for a graceful end (it reads ``drain`` on its stdin)."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(OSError):
                stdin.write(b"drain\n")

    def signal(self, sig: int) -> None:
        """Signal the whole process group: the worker and anything it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def close(self) -> None:
        """Stop reading its pipes (after it exited, or when the supervisor gives up)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _wait(proc: asyncio.subprocess.Process, name: str,
                readers: list[asyncio.Task[None]],
                emit: Callable[[ProcessEvent], None]) -> None:
    code = await proc.wait()
    # Whatever it started in its group goes with it: no orphan outlives its worker.
    if group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    # Its last lines come before the news of its exit.
    await asyncio.wait(readers, timeout=1.0)
    if proc.stdin is not None:
        proc.stdin.close()
    emit(Exited(name, proc.pid, code))


async def _read_status(fd: int, name: str, pid: int,
                       emit: Callable[[ProcessEvent], None]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    file = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), file)
    try:
        while line := await reader.readline():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    emit(Status(name, pid, event))
    finally:
        transport.close()


def _fields(spec: HostSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}
