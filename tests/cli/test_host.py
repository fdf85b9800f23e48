"""The worker host: building a worker's bus, and a worker that cannot be built."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipecat_workers_cli.host import EXIT_CONFIG, HostSpec, _Status, build_bus, host

from pipecat_workers.bus import BusHub, HubBus
from pipecat_workers.errors import ConfigurationError

WORKERS = """\
import asyncio
import json

from pipecat_workers import BaseWorker


class NoKey(BaseWorker):
    def __init__(self, name):
        super().__init__(name)
        raise RuntimeError("no API key configured\\nsecond line")


class BadConfig(BaseWorker):
    def __init__(self, name):
        super().__init__(name)
        self.config = json.loads("{not json")


class NoGreeting(BaseWorker):
    async def on_activated(self, args):
        raise LookupError("no greeting for today")


class LateFailure(BaseWorker):
    async def on_activated(self, args):
        await asyncio.sleep(0.2)  # registered and reported ready by now
        raise LookupError("no greeting for today")
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``th_workers.py`` on the import path, run from its directory (as the host is)."""
    path = tmp_path / "th_workers.py"
    path.write_text(textwrap.dedent(WORKERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    importlib.invalidate_caches()
    yield path
    sys.modules.pop("th_workers", None)


def run_host(class_path: str, hub: str | None = None) -> tuple[int, list[dict[str, object]]]:
    """Run the host on a local bus (never reached, unless ``hub`` is a ``BusHub``'s socket);
    its exit code and status events."""
    read_fd, write_fd = os.pipe()
    spec = HostSpec(name="w", class_path=class_path, args={}, backend="local",
                    channel="t.main", url=hub or "/nonexistent/hub.sock", status_fd=write_fd)
    status = _Status(spec.status_fd)

    async def hosted(status: _Status) -> int:
        if hub is None:
            return await host(spec, status)
        bus_hub = BusHub(hub)
        await bus_hub.start()
        try:
            return await host(spec, status)
        finally:
            await bus_hub.stop()

    code = asyncio.run(hosted(status))
    del status  # closes the write end
    with os.fdopen(read_fd) as events:
        return code, [json.loads(line) for line in events]


@pytest.mark.parametrize(("cls", "line", "message"), [
    ("NoKey", 10, "RuntimeError: no API key configured"),
    ("BadConfig", 16, "JSONDecodeError: Expecting property name enclosed in double quotes: "
                      "line 1 column 2 (char 1)"),
])
def test_a_worker_that_raises_while_built_is_one_line_and_not_restarted(
        module: Path, capsys: pytest.CaptureFixture[str], cls: str, line: int,
        message: str) -> None:
    code, events = run_host(f"th_workers:{cls}")
    assert code == EXIT_CONFIG
    expected = f"{message} (th_workers.py:{line})"  # the user's line, not json's or ours
    assert events == [{"event": "error", "message": expected}]
    assert capsys.readouterr().err == f"error: w: {expected}\n"


def test_a_missing_class_is_one_line_too(module: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, events = run_host("th_workers:Nope")
    assert code == EXIT_CONFIG
    assert events == [{"event": "error",
                       "message": "module 'th_workers' has no attribute 'Nope' "
                                  "(did you mean 'NoKey'?)"}]
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(("cls", "events_before"), [
    ("NoGreeting", []),  # raises before the host saw it registered
    ("LateFailure", ["ready"]),  # after: the host must not exit 0 as if it had ended well
])
def test_a_worker_whose_start_raises_says_why(
        module: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        cls: str, events_before: list[str]) -> None:
    stdin_read, stdin_write = os.pipe()  # the supervisor's end of the host's stdin
    monkeypatch.setattr(sys, "stdin", os.fdopen(stdin_read))
    with tempfile.TemporaryDirectory(dir="/tmp") as sockets, os.fdopen(stdin_write, "w"):
        code, events = run_host(f"th_workers:{cls}", hub=f"{sockets}/hub.sock")
    assert code == 1
    assert [e["event"] for e in events[:-1]] == events_before
    assert events[-1] == {"event": "error", "message": "failed to start: no greeting for today"}
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: w: failed to start: no greeting for today")


def test_build_bus_picks_the_backend_from_its_table() -> None:
    bus = build_bus("local", "/tmp/hub.sock", "p.main")
    assert isinstance(bus, HubBus)
    with pytest.raises(ConfigurationError, match=r"unknown backend 'kafka'.*local, redis, pgmq"):
        build_bus("kafka", "kafka://x", "p.main")
    with pytest.raises(ConfigurationError, match="a redis bus needs a URL"):
        build_bus("redis", None, "p.main")
