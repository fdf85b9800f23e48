"""Tiny projects in a temporary directory, driven through the real ``workers`` program.

Used by ``test_cli_integration.py``: :func:`write_project` writes a topology and the worker module
``app_workers.py`` next to it; a :class:`Cli` runs ``python -m pipecat_workers_cli ...`` there as a
subprocess, remembers every process id it sees (supervisor and workers), and :meth:`Cli.cleanup`
leaves nothing running, whatever the test did.

On Linux the test process makes itself a *child subreaper* while a :class:`Cli` lives: a
detached supervisor (and, when it is killed, its workers) is re-parented to the test rather
than to PID 1, so the test can reap it and check that its pid is really gone. (In a container
whose PID 1 does not reap orphans, a dead orphan would otherwise stay a zombie forever.)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

WORKER_MODULE = "app_workers"

WORKERS_PY = '''\
"""Workers of the CLI integration tests (written by tests/cli/cliproj.py)."""

from __future__ import annotations

import json
import os
import time

from pipecat_workers import BaseWorker, WorkerReadyData, job, worker_ready


class Echo(BaseWorker):
    """Answers ``echo`` jobs with the payload, its name and its pid; prints each job."""

    @job("echo")
    async def echo(self, message):
        payload = message.payload or {}
        print(f"echo-handled {json.dumps(payload, sort_keys=True)}", flush=True)
        return {"echo": payload, "by": self.name, "pid": os.getpid()}


class Crasher(BaseWorker):
    """Imports fine, then dies while it is being built: a runtime crash, not a config error."""

    def __init__(self, name, *, code=3):
        super().__init__(name)
        print(f"{name} crashing with {code}", flush=True)
        os._exit(code)


class Raiser(BaseWorker):
    """Imports fine, then raises while it is being built: it cannot start, and says why."""

    def __init__(self, name):
        super().__init__(name)
        raise RuntimeError("no API key configured")


class Sleeper(BaseWorker):
    """Takes ``seconds`` to be built: it stays starting meanwhile."""

    def __init__(self, name, *, seconds=30):
        super().__init__(name)
        time.sleep(seconds)


class Ender(BaseWorker):
    """Once ``echo`` is ready: asks it one job, prints the answer, ends the whole session."""

    def __init__(self, name):
        super().__init__(name)
        self._task = None

    @worker_ready("echo")
    async def on_echo_ready(self, data: WorkerReadyData) -> None:
        if self._task is None:
            self._task = self.create_task(self._once())

    async def _once(self):
        async with self.job("echo", name="echo", payload={"from": self.name},
                            timeout=10) as j:
            pass
        print(f"ender-got {json.dumps(j.response['echo'], sort_keys=True)}", flush=True)
        await self.end(reason="ender is done")
'''

CLI_TIMEOUT = 30.0
_UNSET = ("WORKERS_FILE", "PIPECAT_WORKERS_HOST", "PIPECAT_WORKERS_TEMPLATE", "WORKERS_NO_FORK",
          "NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE",
          "PY_COLORS", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
_PR_SET_CHILD_SUBREAPER = 36
# ``python -m pipecat_workers_cli ARGS`` with SIGINT back at its default (exec keeps the
# disposition).
_DEFAULT_SIGINT = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'pipecat_workers_cli', *sys.argv[1:]])",
]
_STARTED = re.compile(r"started, pid (\d+)")


def write_project(root: Path, name: str, workers: Mapping[str, Mapping[str, Any]], *,
                  channel: Mapping[str, Any] | None = None,
                  file: str = "workers.yaml") -> Path:
    """Write ``root/file`` (the topology) and ``root/app_workers.py``; returns the file.

    ``workers`` maps a worker key to its entry; ``class`` may be given as a bare class name
    of ``app_workers`` (a ``proxy`` entry has none). Every worker logs at WARNING so that
    its log holds only what the test prints.
    """
    entries: dict[str, Any] = {}
    for key, spec in workers.items():
        entry = dict(spec)
        if "class" in entry and ":" not in entry["class"]:
            entry["class"] = f"{WORKER_MODULE}:{entry['class']}"
        entry.setdefault("env", {"LOG_LEVEL": "WARNING"})
        entries[key] = entry
    document = {"name": name, "root": ".",
                "channels": {"main": dict(channel or {"backend": "local"})},
                "workers": entries}
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{WORKER_MODULE}.py").write_text(WORKERS_PY)
    path = root / file
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# -- polling ---------------------------------------------------------------------------


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(interval)


# -- processes -------------------------------------------------------------------------


def reap(pid: int) -> None:
    """Collect ``pid`` if it is a dead child of ours (a no-op otherwise)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists: signal 0 fails and ``/proc/<pid>`` is absent."""
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return not Path(f"/proc/{pid}").exists()
    except PermissionError:
        return False
    return False


def alive(pids: Iterable[int]) -> list[int]:
    return sorted(p for p in set(pids) if not pid_gone(p))


def wait_gone(pids: Iterable[int], timeout: float = 3.0) -> None:
    """Wait until every pid is gone; fail listing the survivors and what they are."""
    pids = set(pids)
    deadline = time.monotonic() + timeout
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        raise AssertionError(f"processes still there after {timeout:g} s: "
                             + "; ".join(f"{p}: {describe(p)}" for p in left))


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = next((line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("State:")), "")
    except OSError:
        return "?"
    return f"{cmd.strip()} ({state})"


def _ours(pid: int) -> bool:
    """Whether ``pid`` still runs one of our programs (guards against a reused pid)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # ``python -m pipecat_workers_cli ...``, or the title it gave itself
    return b"-m\0pipecat_workers_cli" in cmd or cmd.startswith(b"workers: ")


def _orphans() -> list[int]:
    """Our programs that were re-parented to this (subreaper) process."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s*(\d+)", status, re.M)
        if ppid and int(ppid.group(1)) == me and _ours(int(entry.name)):
            found.append(int(entry.name))
    return found


def set_subreaper(on: bool) -> bool:
    """Make this process the child subreaper of its descendants (Linux); True if it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        result: int = libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return result == 0


class Lines:
    """The lines a process writes on a stream, read by a thread so that waits can time out."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed under us at cleanup
            for line in iter(stream.readline, ""):
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0, *, start: int = 0) -> str:
        """The first line from index ``start`` on (read already or coming) that matches
        the regular expression."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout:g} s"
                        f"{' (the stream ended)' if self.ended else ''}; got:\n"
                        + "\n".join(self.lines[-40:]))
                self._changed.wait(left)

    def rest(self, timeout: float = 5.0) -> list[str]:
        """Every line, once the stream has ended."""
        self._thread.join(timeout)
        with self._changed:
            return list(self.lines)


@dataclass
class Running:
    """A command started with :meth:`Cli.popen`."""

    proc: subprocess.Popen[str]
    out: Lines
    err: Lines
    args: tuple[str, ...]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"workers {' '.join(self.args)} still runs after {timeout:g} s; "
                "output:\n" + "\n".join(self.out.lines[-40:] + self.err.lines[-40:])
            ) from None


class Cli:
    """Runs ``workers`` commands in one project directory, and cleans up after them."""

    def __init__(self, cwd: Path, *, subreaper: bool = False) -> None:
        self.cwd = cwd
        self.subreaper = subreaper  # orphans of ours are re-parented to this process
        self.pids: set[int] = set()       # every supervisor and worker pid seen
        self.popens: list[subprocess.Popen[str]] = []
        # Output to a pipe, as in CI, without anything that forces colours on or off.
        self.env = {k: v for k, v in os.environ.items() if k not in _UNSET}
        self.env.update(PYTHONUNBUFFERED="1", COLUMNS="200")

    # -- running commands --------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipecat_workers_cli", *args]

    def run(self, *args: str, timeout: float = CLI_TIMEOUT,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run one command to its end; its output is text."""
        return subprocess.run(self.command(*args), cwd=cwd or self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def run_many(self, *commands: tuple[str, ...], timeout: float = CLI_TIMEOUT
                 ) -> list[subprocess.CompletedProcess[str]]:
        """Run several commands at once (each start of the CLI costs about half a second)."""
        procs = [subprocess.Popen(self.command(*c), cwd=self.cwd, env=self.env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in commands]
        results = []
        try:
            for command, proc in zip(commands, procs, strict=True):
                out, err = proc.communicate(timeout=timeout)
                results.append(subprocess.CompletedProcess(list(command), proc.returncode,
                                                           out, err))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return results

    def popen(self, *args: str) -> Running:
        """Start a command in its own session; its output is read line by line.

        It starts with SIGINT at its default, as from a terminal, even when this process
        ignores it (as a job started with ``&`` by a shell does, and passes on).
        """
        proc = subprocess.Popen([*_DEFAULT_SIGINT, *args], cwd=self.cwd, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.popens.append(proc)
        return Running(proc, Lines(proc.stdout), Lines(proc.stderr), args)

    def note_pids(self, lines: Iterable[str]) -> list[int]:
        """Remember the worker pids announced in ``up`` output (``[started, pid N]``)."""
        found = [int(m.group(1)) for line in lines if (m := _STARTED.search(line))]
        self.pids.update(found)
        return found

    # -- the project's state -----------------------------------------------------------

    def ps(self) -> dict[str, Any]:
        """``workers ps --json``, parsed; remembers every pid in it."""
        result = self.run("ps", "--json")
        assert result.returncode == 0, f"ps --json: {result.returncode}\n{result.stderr}"
        data: dict[str, Any] = json.loads(result.stdout)
        self._remember(data)
        return data

    def _remember(self, data: Mapping[str, Any]) -> None:
        if data.get("supervisor_pid"):
            self.pids.add(int(data["supervisor_pid"]))
        self.pids.update(int(w["pid"]) for w in data.get("workers", []) if w.get("pid"))
        template = data.get("template")
        if isinstance(template, dict) and template.get("pid"):
            self.pids.add(int(template["pid"]))

    def wait_ps(self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float,
                what: str) -> dict[str, Any]:
        """Poll ``ps --json`` until ``predicate`` holds."""
        last: dict[str, Any] = {}

        def probe() -> dict[str, Any] | None:
            nonlocal last
            last = self.ps()
            return last if predicate(last) else None

        try:
            return wait_for(probe, timeout=timeout, what=what, interval=0.1)
        except AssertionError:
            raise AssertionError(f"timed out waiting for {what}; last ps: "
                                 f"{json.dumps(brief(last))}") from None

    def state_files(self) -> list[Path]:
        return list(self.cwd.glob(".workers/*/state.json"))

    # -- cleaning up -------------------------------------------------------------------

    def cleanup(self) -> None:
        """``down`` every project here, then kill whatever is left of ours."""
        for proc in self.popens:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for state in self.state_files():
            with contextlib.suppress(OSError, ValueError):
                self._remember(json.loads(state.read_text()))
            if (state.parent / "lock").exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.run("-p", state.parent.name, "down", "--timeout", "10",
                             timeout=15)
        if self.subreaper:
            self.pids.update(_orphans())
        for pid in self.pids:
            if not pid_gone(pid) and _ours(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            wait_gone(self.pids, timeout=3)


def brief(status: Mapping[str, Any]) -> dict[str, Any]:
    """The interesting part of a ``ps --json`` answer, for failure messages."""
    return {w["name"]: {k: w.get(k) for k in ("state", "pid", "restarts", "registered",
                                             "crash_loop", "exit_code", "reason")}
            for w in status.get("workers", [])}


def workers_by_name(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in status["workers"]}
