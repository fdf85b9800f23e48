"""The supervisor's side of the process template (:mod:`pipecat_workers_cli.forkserver`).

:class:`Template` starts the template once, forks workers from it, starts a new one when what
it preloaded changes (a file it imported was edited or upgraded, or the topology's preloads
changed), and falls back to plain spawning, saying why in one line, when forking is not
possible: not Linux, turned off (``--no-fork``, ``WORKERS_NO_FORK=1``), a module under
``preload:`` fails or starts a thread when imported, or the template dies.

While it forks, the supervisor is a child subreaper: forked workers become its children, and
so do the orphans of a worker's process group once the worker is gone
(:class:`~pipecat_workers_cli.supervisor.reaper.Reaper` collects those).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipecat_workers_cli.forkserver import MAX_MESSAGE, Config, decode, send
from pipecat_workers_cli.forkserver.environment import difference, refused, template_env
from pipecat_workers_cli.forkserver.launch import Launched, launch, prepare, template_config
from pipecat_workers_cli.supervisor.model import describe_exit
from pipecat_workers_cli.supervisor.reaper import Reaper
from pipecat_workers_cli.supervisor.status import TemplateStatus
from pipecat_workers_cli.topology.model import Topology

READY_TIMEOUT = 60.0   # seconds for the template to import its modules
ANSWER_TIMEOUT = 10.0  # seconds for it to answer one request
MAX_EXCLUSIONS = 3     # inferred modules left out for being unsafe, before giving up


class ForkUnavailable(Exception):
    """This worker cannot be forked: spawn it. ``note`` says why, for its log, when the
    reason is the worker's own (the template's are said once for the project)."""

    def __init__(self, why: str, *, note: str | None = None) -> None:
        super().__init__(why)
        self.note = note


@dataclass(slots=True)
class _Instance:
    """One template process."""

    config: Config
    pid: int
    pidfd: int
    sock: socket.socket
    stderr_fd: int
    ready: asyncio.Future[dict[str, Any]] | None = None  # these two: once attached to the loop
    done: asyncio.Future[int] | None = None
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=3))
    info: dict[str, Any] = field(default_factory=dict)
    closing: bool = False
    exit_code: int | None = None

    @classmethod
    def of(cls, launched: Launched) -> _Instance:
        return cls(launched.config, launched.pid, launched.pidfd, launched.sock,
                   launched.stderr_fd)


class Template:
    """Forks the project's workers from a warm process, or says why it does not.

    Args:
        topology: The project (its root, channels, workers and ``preload:``).
        env: The supervisor's environment, the template's (and, with each worker's own
            ``env:``, the workers').
        off: Why forking is turned off (``--no-fork``), if it is.
        launched: What :func:`~pipecat_workers_cli.forkserver.launch.launch_early` started
            (with ``env``), or why it did not.
    """

    def __init__(self, topology: Topology, env: Mapping[str, str], *,
                 off: str | None = None, launched: Launched | str | None = None) -> None:
        self._topology = topology
        self._supervisor_env = dict(env)
        self._early = launched
        self._note: Callable[[str], None] = lambda text: None
        self._off = off
        self._retry_on_change = False  # off because of the topology's preloads: retry on edit
        self._launched = False
        self._current: _Instance | None = None
        self._excluded: list[str] = []
        self._ids = itertools.count(1)
        self._reaper: Reaper | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def on(self) -> bool:
        return self._off is None

    def describe(self) -> TemplateStatus:
        """Its pid and state, or why there is none."""
        instance = self._current
        if self._off is not None or instance is None:
            return TemplateStatus(state="off", reason=self._off or "")
        ready = instance.ready is not None and instance.ready.done() and not (
            instance.ready.exception())
        return TemplateStatus(state="ready" if ready else "starting", pid=instance.pid)

    # -- life -------------------------------------------------------------------------

    def launch(self) -> None:
        """Start the template process now, even before the event loop runs (so that it
        imports while the supervisor does); :meth:`start` says what came of it."""
        if self._launched or self._off is not None:
            return
        self._launched = True
        early, self._early = self._early, None
        if isinstance(early, str):
            self._off = early
            return
        if early is None and (why := prepare()) is not None:
            self._off = why
            return
        try:
            self._current = _Instance.of(early) if early is not None else self._spawn()
        except OSError as exc:
            self._off = f"cannot start the process template: {exc}"

    def start(self, note: Callable[[str], None], reaper: Reaper) -> None:
        """Start (or take over) the template in the running loop, or say why there is none.

        Args:
            note: Shows one line about the whole project.
            reaper: Collects the middle processes a template that died left behind.
        """
        self._note, self._reaper = note, reaper
        self.launch()
        if self._off is not None:
            note(f"workers start without a process template: {self._off}")
        elif self._current is not None:
            self._attach(self._current)

    async def close(self) -> None:
        """Stop the template and wait for it (workers it forked are not its children)."""
        instance, self._current = self._current, None
        if instance is not None:
            self._retire(instance, "the supervisor is stopping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended(instance), 2.0)
            if instance.exit_code is None and instance.done is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(instance.pid, signal.SIGKILL)
                await self._ended(instance)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def changed(self, paths: Collection[Path]) -> None:
        """Start a new template if it imported one of ``paths``."""
        instance = self._current
        files = set(instance.info.get("files") or ()) if instance is not None else set()
        hit = next((p for p in sorted(paths) if str(p) in files), None)
        if hit is not None and instance is not None:
            self._replace(instance, f"{_shown(hit, self._topology.root)} changed")

    def update(self, topology: Topology) -> None:
        """The topology was edited: a new template if its preloads changed."""
        before = template_config(self._topology, self._excluded)
        self._topology = topology
        if template_config(topology, self._excluded) == before:
            return
        if self._off is not None and self._retry_on_change:
            self._off, self._retry_on_change = None, False
            self._excluded.clear()
            self._note("the topology's preloads changed: starting a process template again")
            self._launch()
        elif (instance := self._current) is not None:
            self._replace(instance, "the topology's preloads changed")

    # -- forking ----------------------------------------------------------------------

    async def fork(self, *, env: Mapping[str, str], cwd: Path, fds: Sequence[int]) -> None:
        """Fork a worker with this environment, directory and stdin, stdout, stderr and
        status pipes; returns once the template has forked (the worker then says its pid on
        its status pipe).

        Raises:
            ForkUnavailable: spawn this worker instead.
        """
        for _ in range(3):
            instance = self._usable()
            assert instance.ready is not None  # attached when started
            try:
                info = await asyncio.wait_for(asyncio.shield(instance.ready), READY_TIMEOUT)
            except TimeoutError:
                self._fall_back(f"the process template was not ready within "
                                f"{READY_TIMEOUT:g} s", instance)
                raise ForkUnavailable("no template") from None
            except ForkUnavailable:
                continue  # it failed or was replaced: the next one, if any
            if (why := refused(env, self._env_of(instance), info.get("env"))) is not None:
                raise ForkUnavailable(why, note=f"spawned, not forked: {why}")
            answer = await self._ask(instance, env, cwd, fds)
            if answer.get("forked"):
                return
            if "stale" in answer:
                self._replace(instance, f"{_shown(Path(answer['stale']), self._topology.root)}"
                                        " changed")
                continue
            raise ForkUnavailable(str(answer.get("error", "no answer")))
        raise ForkUnavailable("no usable template")

    def _usable(self) -> _Instance:
        instance = self._current
        if self._off is not None or instance is None or instance.closing:
            raise ForkUnavailable(self._off or "no template")  # said once, when it went
        return instance

    def _env_of(self, instance: _Instance) -> dict[str, str]:
        return template_env(self._supervisor_env, dict(instance.config.env))

    async def _ask(self, instance: _Instance, env: Mapping[str, str], cwd: Path,
                   fds: Sequence[int]) -> dict[str, Any]:
        ident = next(self._ids)
        message = {"id": ident, "cwd": str(cwd), **difference(env, self._env_of(instance))}
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        instance.pending[ident] = answer
        try:
            await _send(instance.sock, message, fds)
            return await asyncio.wait_for(answer, ANSWER_TIMEOUT)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:  # this worker's env alone: the template is fine
                raise ForkUnavailable("too large", note="spawned, not forked: its "
                                      "environment is too large to send") from None
            if instance is self._current:
                self._fall_back(f"the process template did not answer ({exc})", instance)
            raise ForkUnavailable("no answer") from None
        except TimeoutError:
            if instance is self._current:
                self._fall_back(f"the process template did not answer within "
                                f"{ANSWER_TIMEOUT:g} s", instance)
            raise ForkUnavailable("no answer") from None
        finally:
            instance.pending.pop(ident, None)

    # -- the template process ---------------------------------------------------------

    def _spawn(self) -> _Instance:
        """Start a template process (synchronously: no loop needed); raises OSError."""
        return _Instance.of(launch(template_config(self._topology, self._excluded),
                                   self._supervisor_env))

    def _launch(self) -> None:
        """A new template, in the running loop."""
        try:
            instance = self._spawn()
        except OSError as exc:
            self._fall_back(f"cannot start the process template: {exc}")
            return
        self._current = instance
        self._attach(instance)

    def _attach(self, instance: _Instance) -> None:
        loop = asyncio.get_running_loop()
        instance.ready = loop.create_future()
        instance.ready.add_done_callback(_consume)
        instance.done = loop.create_future()
        loop.add_reader(instance.pidfd, self._collect, instance)
        loop.add_reader(instance.sock.fileno(), self._readable, instance)
        self._background(self._watch(instance))

    async def _watch(self, instance: _Instance) -> None:
        """Keep the last lines of its stderr, and learn of its end."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(instance.stderr_fd, "rb", buffering=0))
        try:
            while line := await reader.readline():
                if text := line.decode("utf-8", "replace").strip():
                    instance.stderr.append(text)
        finally:
            transport.close()
        code = await self._ended(instance)
        self._retire(instance, "the process template exited")
        if self._reaper is not None:  # a middle process it left behind, if it was killed
            self._reaper.exited(instance.pid)
        if instance is self._current and self._off is None:
            last = f": {instance.stderr[-1]}" if instance.stderr else ""
            self._fall_back(f"the process template died ({describe_exit(code)}){last}")

    def _collect(self, instance: _Instance) -> None:
        """Its pidfd is readable: it has ended; collect it."""
        asyncio.get_running_loop().remove_reader(instance.pidfd)
        try:
            _, status = os.waitpid(instance.pid, 0)
            instance.exit_code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            instance.exit_code = 255
        os.close(instance.pidfd)
        if instance.done is not None and not instance.done.done():
            instance.done.set_result(instance.exit_code)

    async def _ended(self, instance: _Instance) -> int:
        """Its exit code, once it has ended."""
        if instance.done is None:
            return instance.exit_code if instance.exit_code is not None else 255
        return await asyncio.shield(instance.done)

    def _readable(self, instance: _Instance) -> None:
        sock = instance.sock
        while not instance.closing:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._retire(instance, "the process template exited")
                return
            message = decode(data)
            if message is not None:
                self._received(instance, message)

    def _received(self, instance: _Instance, message: dict[str, Any]) -> None:
        if message.get("event") == "ready":
            instance.info = message
            if instance.ready is not None and not instance.ready.done():
                instance.ready.set_result(message)
        elif message.get("event") == "failed":
            self._failed(instance, message)
        elif isinstance(ident := message.get("id"), int):
            answer = instance.pending.get(ident)
            if answer is not None and not answer.done():
                answer.set_result(message)

    def _failed(self, instance: _Instance, message: Mapping[str, Any]) -> None:
        """A module could not be preloaded: leave it out (an inferred one that is unsafe),
        or stop forking until the topology's preloads change."""
        module, error = str(message.get("module")), str(message.get("error"))
        if message.get("optional") is True and len(self._excluded) < MAX_EXCLUSIONS:
            self._excluded.append(module)
            self._note(f"not preloading '{module}': {error}")
            self._replace(instance, "", quiet=True)
            return
        self._retry_on_change = True
        self._fall_back(f"preloading '{module}' failed: {error}", instance)

    def _replace(self, instance: _Instance, why: str, *, quiet: bool = False) -> None:
        """A new template for the old one (once, however many requests found it stale)."""
        if instance is not self._current:
            return
        if not quiet:
            self._note(f"restarting the process template: {why}")
        self._retire(instance, why, retry=True)
        self._launch()

    def _fall_back(self, why: str, instance: _Instance | None = None) -> None:
        if self._off is None:
            self._off = why
            self._note(f"workers start without a process template: {why}")
        if instance is not None:
            self._retire(instance, why)
        self._current = None

    def _retire(self, instance: _Instance, why: str, *, retry: bool = False) -> None:
        """Close its socket (it exits) and end what waits on it: a retry, or a refusal."""
        if not instance.closing:
            instance.closing = True
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(instance.sock.fileno())
            instance.sock.close()
        if instance.ready is not None and not instance.ready.done():
            instance.ready.set_exception(ForkUnavailable(why or "replaced"))
        for answer in instance.pending.values():
            if not answer.done():
                answer.set_result({"stale": why} if retry else {"error": why or "closed"})

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int]) -> None:
    """Send on the non-blocking socket, waiting while its buffer is full."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            send(sock, message, fds)
            return
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(sock.fileno(), writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a template nobody asked of fails quietly


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
