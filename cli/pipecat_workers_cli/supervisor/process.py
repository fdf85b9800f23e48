"""One worker's OS process: spawned, or forked from the process template, in its own session;
its pipes read line by line.

Everything it does is reported to the supervisor's loop as events (:class:`Output`,
:class:`Status`, :class:`Exited`); nothing here decides anything. A forked worker is the
supervisor's child like a spawned one (the template forks it through a middle process that
exits, and the supervisor is a child subreaper); its end is read from a pidfd.
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
from typing import Any, Protocol

from pipecat_workers_cli.forkserver import STATUS_FD
from pipecat_workers_cli.host import HOST_ENV, HostSpec
from pipecat_workers_cli.logs.writer import pump
from pipecat_workers_cli.supervisor.template import ANSWER_TIMEOUT, ForkUnavailable, Template


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


class _Child(Protocol):
    """What the supervisor holds of a host process: a spawned one or a forked one."""

    @property
    def pid(self) -> int: ...

    @property
    def stdin(self) -> asyncio.StreamWriter | None: ...

    async def wait(self) -> int: ...


class WorkerProcess:
    """A running host process and the tasks that read its pipes."""

    def __init__(self, name: str, proc: _Child, tasks: list[asyncio.Task[None]]) -> None:
        self.name = name
        self.pid = proc.pid
        self._proc = proc
        self._tasks = tasks

    @classmethod
    async def spawn(cls, spec: HostSpec, *, env: Mapping[str, str], cwd: Path,
                    emit: Callable[[ProcessEvent], None]) -> WorkerProcess:
        """Start ``python -m pipecat_workers_cli.host`` for ``spec``; raises OSError if it
        cannot start."""
        status_read, status_write = os.pipe()
        host = HostSpec(**{**_fields(spec), "status_fd": status_write,
                           "supervisor_pid": os.getpid()})
        full_env = {**env, HOST_ENV: host.to_json(), "PYTHONUNBUFFERED": "1"}
        try:
            proc = await asyncio.create_subprocess_exec(
                # -P: the project directory (its cwd) must not shadow our own modules.
                sys.executable, "-P", "-m", "pipecat_workers_cli.host",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                pass_fds=(status_write,), start_new_session=True, cwd=cwd, env=full_env)
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        assert proc.stdout is not None and proc.stderr is not None
        status, closing = await _status_reader(status_read)
        return cls(spec.name, proc, _watch(proc, proc.stdout, proc.stderr, status, closing,
                                           spec.name, emit))

    @classmethod
    async def fork(cls, template: Template, spec: HostSpec, *, env: Mapping[str, str],
                   cwd: Path, emit: Callable[[ProcessEvent], None]) -> WorkerProcess:
        """Fork the host for ``spec`` from the process template.

        Raises:
            ForkUnavailable: it cannot be forked; spawn it.
        """
        host = HostSpec(**{**_fields(spec), "status_fd": STATUS_FD,
                           "supervisor_pid": os.getpid()})
        full_env = {**env, HOST_ENV: host.to_json(), "PYTHONUNBUFFERED": "1"}
        pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, status
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
        ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
        try:
            await template.fork(env=full_env, cwd=cwd, fds=theirs)
        except BaseException:
            _close(ours)
            raise
        finally:
            _close(theirs)
        status, closing = await _status_reader(ours[3])
        try:
            pid = await _announced(status)
            child = await _Forked.open(pid, ours[0], ours[1], ours[2])
        except BaseException:
            closing.close()
            _close(ours[:3])
            raise
        return cls(spec.name, child, _watch(child, child.stdout, child.stderr, status,
                                            closing, spec.name, emit))

    def drain(self) -> None:
        """Ask the host for a graceful end (it reads ``drain`` on its stdin)."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(OSError):
                stdin.write(b"drain\n")

    def signal(self, sig: int) -> None:
        """Signal the whole process group: the worker and anything it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)  # a forked worker leads its session before it says its pid

    async def close(self) -> None:
        """Stop reading its pipes (after it exited, or when the supervisor gives up)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Forked:
    """A forked host: the supervisor's child, its end learnt from a pidfd."""

    def __init__(self, pid: int, pidfd: int, stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._pidfd = pidfd

    @classmethod
    async def open(cls, pid: int, stdin: int, stdout: int, stderr: int) -> _Forked:
        """Take over its pipes' ends (closed here if that fails) and a pidfd."""
        loop = asyncio.get_running_loop()
        files = [os.fdopen(stdin, "wb", buffering=0), os.fdopen(stdout, "rb", buffering=0),
                 os.fdopen(stderr, "rb", buffering=0)]
        transports: list[asyncio.BaseTransport] = []
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
            # A pid that is not our child (a worker's status pipe says it) is never ours to
            # wait for or signal.
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            write, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, files[0])
            transports.append(write)
            writer = asyncio.StreamWriter(write, protocol, None, loop)
            readers = []
            for file in files[1:]:
                reader = asyncio.StreamReader()
                read, _ = await loop.connect_read_pipe(
                    lambda r=reader: asyncio.StreamReaderProtocol(r), file)  # type: ignore[misc]
                transports.append(read)
                readers.append(reader)
        except BaseException as exc:
            for done in transports:
                done.close()
            for file in files:
                file.close()
            if pidfd >= 0:
                os.close(pidfd)
            if isinstance(exc, ChildProcessError):
                raise ForkUnavailable(f"the forked worker said pid {pid}, not a child of "
                                      "the supervisor") from None
            raise
        return cls(pid, pidfd, writer, readers[0], readers[1])

    async def wait(self) -> int:
        """Its exit code (negative: the signal that ended it), once it has exited."""
        if self.returncode is not None:
            return self.returncode
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(self._pidfd, readable)
        try:
            await ended
        finally:
            loop.remove_reader(self._pidfd)
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            self.returncode = 255  # collected by someone else: what asyncio says then
        os.close(self._pidfd)
        return self.returncode


def _watch(proc: _Child, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
           status: asyncio.StreamReader, closing: asyncio.BaseTransport, name: str,
           emit: Callable[[ProcessEvent], None]) -> list[asyncio.Task[None]]:
    """The tasks that read a host's pipes and learn of its end."""
    loop = asyncio.get_running_loop()
    readers = [
        loop.create_task(pump(stdout, lambda raw: emit(Output(name, "out", raw)))),
        loop.create_task(pump(stderr, lambda raw: emit(Output(name, "err", raw)))),
        loop.create_task(_read_status(status, closing, name, proc.pid, emit)),
    ]
    return [*readers, loop.create_task(_wait(proc, name, readers, emit))]


async def _status_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """The read end of a status pipe as a stream (and its transport, to close)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    file = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), file)
    except BaseException:
        file.close()
        raise
    return reader, transport


async def _announced(status: asyncio.StreamReader) -> int:
    """The pid a forked host says first on its status pipe.

    Raises:
        ForkUnavailable: it ended first, or did not say in time.
    """
    try:
        line = await asyncio.wait_for(status.readline(), ANSWER_TIMEOUT)
    except TimeoutError:
        line = b""
    with contextlib.suppress(ValueError, TypeError, KeyError):
        event = json.loads(line)
        pid = event["pid"]
        if event["event"] == "forked" and type(pid) is int and pid > 1:
            return pid
    raise ForkUnavailable("the forked worker did not start")


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _wait(proc: _Child, name: str,
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


async def _read_status(reader: asyncio.StreamReader, transport: asyncio.BaseTransport,
                       name: str, pid: int, emit: Callable[[ProcessEvent], None]) -> None:
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
