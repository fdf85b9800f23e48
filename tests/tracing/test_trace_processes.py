"""One trace across processes: a job group fanned out to three runner processes, and a
worker that is restarted in the middle of a conversation (new process, new spans, same
trace). Each peer writes its spans to a file, as workers under ``workers up`` do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipecat_workers import BaseWorker
from pipecat_workers.tracing import InMemorySpanExporter, span
from tests.helpers import wait_until
from tests.procs.cluster import Cluster


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _runs(path: Path) -> list[dict[str, Any]]:
    return [record for record in _read(path) if record["kind"] == "job.run"]


async def test_a_job_group_across_three_processes_is_one_trace(
        cluster: Cluster, spans: InMemorySpanExporter, tmp_path: Path) -> None:
    client = BaseWorker("client")
    runner = await cluster.local(client)
    files = {name: tmp_path / f"{name}.jsonl" for name in ("p0", "p1", "p2")}
    peers = {name: await cluster.peer(name, spans=path) for name, path in files.items()}
    await wait_until(lambda: all(name in runner.registry for name in files), timeout=10)
    with span("user request", worker="client") as root:
        async with client.job_group(*files, name="echo", payload={"n": 1}, timeout=10):
            pass
    assert root is not None
    await wait_until(lambda: all(_runs(path) for path in files.values()), timeout=5)
    (group,) = [s for s in spans.spans if s.kind == "job.group"]
    requests = {s.attributes["job.target"]: s for s in spans.spans if s.kind == "job.request"}
    assert group.parent_id == root.context.span_id
    for name, path in files.items():
        (run,) = _runs(path)
        request = requests[name]
        assert run["trace"] == root.context.trace_hex
        assert run["parent"] == request.context.span_hex
        assert request.parent_id == group.context.span_id
        assert run["pid"] == peers[name].pid and run["worker"] == name
        assert run["status"] == "ok" and run["attrs"]["job.id"] == group.attributes["group.id"]


async def test_a_restarted_worker_continues_the_trace(
        cluster: Cluster, spans: InMemorySpanExporter, tmp_path: Path) -> None:
    client = BaseWorker("client")
    runner = await cluster.local(client)
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    first = await cluster.peer("remote", spans=before)
    await wait_until(lambda: "remote" in runner.registry, timeout=10)
    with span("conversation", worker="client") as root:
        async with client.job("remote", name="echo", payload={}, timeout=10):
            pass
        await first.stop()
        await wait_until(lambda: "remote" not in runner.registry, timeout=10)
        second = await cluster.peer("remote", spans=after)
        await wait_until(lambda: "remote" in runner.registry, timeout=10)
        async with client.job("remote", name="echo", payload={}, timeout=10):
            pass
    assert root is not None
    await wait_until(lambda: _runs(after), timeout=5)
    (old,), (new,) = _runs(before), _runs(after)
    requests = [s for s in spans.spans if s.kind == "job.request"]
    assert old["trace"] == new["trace"] == root.context.trace_hex
    assert (old["parent"], new["parent"]) == tuple(r.context.span_hex for r in requests)
    assert (old["pid"], new["pid"]) == (first.pid, second.pid) and first.pid != second.pid
    assert old["span"] != new["span"]
