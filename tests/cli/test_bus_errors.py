"""Errors where users look, on the bus side, through the real ``workers`` program.

A ``tail`` or ``call`` ended by SIGTERM leaves the bus as it does on Ctrl-C; a bus that cannot
be reached is one line with a hint, in every command and in every worker's log, repeated at
most a few times a minute; a worker waits for its bus instead of crash-looping; ``up`` runs
``check``'s pre-flight before it starts anything; ``check --connect`` tries every server.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cliproj import Cli, wait_for, write_project

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

SLOW_PY = '''

import asyncio


class Slow(BaseWorker):
    """Answers ``slow`` jobs after a long while; says when one starts."""

    @job("slow")
    async def slow(self, message):
        print("slow-started", flush=True)
        await asyncio.sleep(60)
        return {}
'''


def free_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def log_lines(cli: Cli, project: str, worker: str) -> list[str]:
    path = cli.cwd / ".workers" / project / "logs" / f"{worker}.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.timeout(90)
def test_tail_and_call_ended_by_sigterm_leave_the_bus(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "leaving", {"echo": {"class": "Echo"}, "slow": {"class": "Slow"}})
    with (tmp_path / "app_workers.py").open("a") as module:
        module.write(SLOW_PY)
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)

    tail = cli.popen("tail")
    tail.out.wait_for("WorkerRegistry", timeout=20)  # it has joined
    call = cli.popen("call", "slow", "--job", "slow")
    wait_for(lambda: any("slow-started" in line for line in log_lines(cli, "leaving", "slow")),
             timeout=20, what="the slow job to start")
    for running in (tail, call):
        running.proc.send_signal(signal.SIGTERM)
    assert tail.wait(timeout=15) == 143, tail.err.rest()
    assert call.wait(timeout=15) == 143, call.err.rest()
    assert not [line for line in tail.err.rest() + call.err.rest() if "Traceback" in line]

    # Its peers heard goodbyes: nobody reports the terminal's runners lost.
    time.sleep(2)  # a lost runner on the embedded bus is reported within milliseconds
    for worker in ("echo", "slow"):
        lost = [line for line in log_lines(cli, "leaving", worker) if "is lost" in line]
        assert not lost, lost
