"""A conversation's trace survives its worker being restarted and reloaded: under
``workers up -d --reload``, a caller keeps asking worker ``a`` within one trace while ``a`` is
restarted (``workers restart a``) and reloaded (its module edited). Every process of ``a``
writes its spans to ``.workers/<project>/traces/a.jsonl``: new processes, new spans, the same
trace, each run a child of the caller's request."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliproj import Cli, wait_for, workers_by_name

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

AGENT = '''\
import os

from pipecat_workers import BaseWorker, job

VERSION = {version}


class A(BaseWorker):
    @job("version")
    async def version(self, message):
        return {{"version": VERSION, "pid": os.getpid()}}
'''

CALLER = '''\
import asyncio

from pipecat_workers import BaseWorker
from pipecat_workers.tracing import span


class Caller(BaseWorker):
    """Asks ``a`` for its version five times a second, all in one conversation."""

    async def on_activated(self, args):
        self.create_task(self._talk())

    async def _talk(self):
        with span("conversation", worker=self.name):
            while True:
                try:
                    async with self.job("a", name="version", timeout=2):
                        pass
                except Exception as exc:  # a is restarting: try again
                    print(f"not now: {exc}", flush=True)
                await asyncio.sleep(0.2)
'''


def _spans(root: Path, worker: str) -> list[dict[str, Any]]:
    path = root / ".workers" / "traced" / "traces" / f"{worker}.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


def _runs(root: Path) -> list[dict[str, Any]]:
    return [s for s in _spans(root, "a") if s["kind"] == "job.run"]


@pytest.mark.timeout(90)
def test_the_trace_survives_a_restart_and_a_reload(tmp_path: Path, clis: Any) -> None:
    (tmp_path / "agent.py").write_text(AGENT.format(version=1))
    (tmp_path / "caller.py").write_text(CALLER)
    (tmp_path / "workers.yaml").write_text(yaml.safe_dump({
        "name": "traced", "channels": {"main": {"backend": "local"}},
        "workers": {"a": {"class": "agent:A"}, "caller": {"class": "caller:Caller"}}}))
    cli: Cli = clis(tmp_path)
    up = cli.run("up", "-d", "--reload", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)

    def pids_seen() -> set[int]:
        return {s["pid"] for s in _runs(tmp_path)}

    first = wait_for(lambda: pids_seen() or None, timeout=15, what="a's first run spans")
    restart = cli.run("restart", "a", timeout=60)
    assert restart.returncode == 0, (restart.stdout, restart.stderr)
    wait_for(lambda: len(pids_seen()) >= 2 or None, timeout=15, what="runs of the new a")
    (tmp_path / "agent.py").write_text(AGENT.format(version=2))
    wait_for(lambda: len(pids_seen()) >= 3 or None, timeout=20, what="runs of the reloaded a")
    status = cli.wait_ps(lambda s: workers_by_name(s)["a"]["restarts"] >= 2, timeout=10,
                         what="a restarted twice")
    assert workers_by_name(status)["caller"]["restarts"] == 0

    def caller_requests() -> dict[str, dict[str, Any]]:
        return {s["span"]: s for s in _spans(tmp_path, "caller") if s["kind"] == "job.request"}

    def parents_written() -> bool | None:  # the caller writes its spans a moment later
        requests = caller_requests()
        return {s["pid"] for s in _runs(tmp_path) if s["parent"] in requests} == pids_seen() \
            or None

    wait_for(parents_written, timeout=10, what="the caller's request spans")
    runs, requests = _runs(tmp_path), caller_requests()
    assert len(pids_seen()) == 3 and first < pids_seen()
    assert len({s["trace"] for s in runs}) == 1  # one conversation, three processes
    (trace,) = {s["trace"] for s in runs}
    assert all(requests[s["parent"]]["trace"] == trace for s in runs if s["parent"] in requests)
    assert len({s["span"] for s in runs}) == len(runs)  # new spans, never one twice
