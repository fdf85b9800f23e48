"""Starting and stopping peer runner processes (``peer.py``) from a test."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("peer.py")


class PeerProcess:
    """One ``peer.py`` runner process; its stderr goes to ``log``."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, log_dir: Path, *args: str) -> PeerProcess:
        log = log_dir / f"peer-{len(list(log_dir.glob('peer-*.log')))}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(PEER), *args, stdout=asyncio.subprocess.PIPE, stderr=err,
                env=env, start_new_session=True)
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, timeout: float = 15.0) -> None:
        """Wait for the ``READY`` line; fail with the process's log if it never comes."""
        assert self.proc.stdout is not None
        try:
            while True:
                line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
                if not line:
                    raise RuntimeError("peer exited")
                if line.startswith(b"READY"):
                    return
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"peer not ready ({exc}):\n{self.log.read_text()}") from None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to say goodbye."""
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        return self.proc.returncode
