"""PgmqBus survives a PostgreSQL restart: on a server of the test's own, so that restarting
it disturbs no other test."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipecat_workers import (
    Settings,
    WorkerRunner,
)
from tests.bus.outage import survive_a_restart

pytestmark = pytest.mark.postgres

SETTINGS = Settings(heartbeat_interval=0.5, lost_after=3, end_grace=1.0, cancel_timeout=0.5)


def _bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if (Path(out) / "initdb").exists() else None


class OwnPostgres:
    """A throwaway PostgreSQL server on a free loopback port (as ``postgres`` under root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="pw-pg-", dir="/tmp"))
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def own_postgres(postgres_dsn: str) -> Iterator[OwnPostgres]:
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("PostgreSQL server binaries not found (pg_config --bindir)")
        pytest.skip("PostgreSQL server binaries not found: run scripts/services.sh start")
    server = OwnPostgres(bindir)
    server.init()
    server.start()
    yield server
    server.remove()


async def test_the_bus_survives_a_postgres_restart(own_postgres: OwnPostgres) -> None:
    from pipecat_workers.bus import PgmqBus

    channel = f"pgrestart-{uuid.uuid4().hex[:8]}"
    # The first bus installs the PGMQ schema into the fresh database.
    a, b = (WorkerRunner(name=name, handle_sigint=False, settings=SETTINGS,
                         bus=PgmqBus(own_postgres.dsn, channel=channel, publish_timeout=0.5))
            for name in ("a", "b"))
    await survive_a_restart(a, b, own_postgres.stop, own_postgres.start, patience=15)
