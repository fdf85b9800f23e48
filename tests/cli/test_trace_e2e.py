"""``workers trace`` and ``workers logs --job`` on real workers: ``workers call`` asks ``front``,
whose handler asks ``back``; one trace holds the call's request, front's run, front's request
to back and back's run, and the job's lines of both workers are found by the job's id."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliproj import Cli, wait_for

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

APP = '''\
import logging

from pipecat_workers import BaseWorker, job

log = logging.getLogger("app")


class Front(BaseWorker):
    @job("ask")
    async def ask(self, message):
        log.warning("front asks back about %s", message.payload["topic"])
        async with self.job("back", name="answer", payload=message.payload, timeout=10) as j:
            pass
        return {"answer": j.response}


class Back(BaseWorker):
    @job("answer")
    async def answer(self, message):
        log.warning("back answers about %s", message.payload["topic"])
        if message.payload["topic"] == "nothing":
            raise ValueError("nothing to say about nothing")
        return {"text": "42"}
'''


def call(cli: Cli, topic: str) -> str:
    """Ask front about ``topic``; the job's id."""
    result = cli.run("call", "front", "--job", "ask", "--payload", json.dumps({"topic": topic}),
                     "--json")
    assert result.returncode == 0, (result.stdout, result.stderr)
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["data"] == {"answer": {"text": "42"}}
    job: str = answer["job"]
    return job


@pytest.mark.timeout(90)
def test_a_called_job_is_one_trace_and_its_lines_are_found(tmp_path: Path, clis: Any) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "workers.yaml").write_text(yaml.safe_dump({
        "name": "traced", "channels": {"main": {"backend": "local"}},
        "workers": {"front": {"class": "app:Front", "env": {"LOG_LEVEL": "WARNING"}},
                    "back": {"class": "app:Back", "env": {"LOG_LEVEL": "WARNING"}}}}))
    cli: Cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    cli.ps()
    job = call(cli, "wind")
    other = call(cli, "rain")

    # Spans are written as they end: the run ends just after its answer went out.
    def whole_tree() -> list[dict[str, Any]] | None:
        result = cli.run("trace", job, "--json")
        assert result.returncode in (0, 1), result.stderr
        spans = [json.loads(line) for line in result.stdout.splitlines()]
        return spans if len(spans) == 4 else None

    spans = wait_for(whole_tree, timeout=20, what=f"the 4 spans of job {job}")
    by_kind = {(s["kind"], s["worker"]): s for s in spans}
    request = next(s for s in spans if s["kind"] == "job.request" and s["parent"] is None)
    assert request["worker"].startswith("workers-call-")
    assert request["attrs"]["job.id"] == job
    run = by_kind[("job.run", "front")]
    inner = by_kind[("job.request", "front")]
    back = by_kind[("job.run", "back")]
    assert (run["parent"], inner["parent"], back["parent"]) == (
        request["span"], run["span"], inner["span"])
    assert run["attrs"]["job.id"] == job and inner["attrs"]["job.id"] == back["attrs"]["job.id"]
    assert len({s["trace"] for s in spans}) == 1

    drawn = cli.run("trace", job)
    assert drawn.returncode == 0, drawn.stderr
    lines = drawn.stdout.splitlines()
    assert lines[0].startswith(f"job {job} in trace {request['trace']}: 4 spans, 3 workers")
    rows = [re.match(r"([ │├└─]*)(.+?)\s{2,}(\S+)", line) for line in lines[2:]]
    assert [row.groups() if row else None for row in rows] == [
        ("", request["name"], request["worker"]),
        ("└─ ", run["name"], "front"),
        ("   └─ ", inner["name"], "front"),
        ("      └─ ", back["name"], "back"),
    ]
    assert "(parent not found)" not in drawn.stdout

    # Its lines: front's, logged in the handler, and back's, logged in the job it caused.
    def lines_of_job() -> list[str] | None:
        result = cli.run("logs", "--job", job)
        assert result.returncode == 0, result.stderr
        found = result.stdout.splitlines()
        return found if len(found) == 2 else None

    found = wait_for(lines_of_job, timeout=10, what=f"the 2 log lines of job {job}")
    assert re.fullmatch(r"front +\| WARNING app: front asks back about wind "
                        rf"\[trace={request['trace']} span={run['span']} job={job}\]",
                        found[0]), found
    assert re.fullmatch(r"back +\| WARNING app: back answers about wind \[trace=.* job=.*\]",
                        found[1]), found
    by_trace = cli.run("logs", "--trace", request["trace"][:10])
    assert by_trace.stdout.splitlines() == found, by_trace.stderr

    # A job that fails: its spans and their errors, in red on a terminal.
    failed = cli.run("call", "front", "--job", "ask", "--payload", '{"topic": "nothing"}',
                     "--json")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    failed_job = json.loads(failed.stdout.splitlines()[-1])["job"]

    def failed_tree() -> str | None:
        result = cli.run("trace", failed_job)
        rows = result.stdout.splitlines()[2:]
        return result.stdout if len(rows) == 4 and all(" error: " in r for r in rows) else None

    drawn = wait_for(failed_tree, timeout=20, what=f"the 4 failed spans of job {failed_job}")
    assert "error: ValueError: nothing to say about nothing" in drawn, drawn
    assert "Traceback" not in drawn

    # Following: the job's lines, not the other job's, until the project stops.
    follower = cli.popen("logs", "-f", "--job", job)
    follower.out.wait_for("back answers about wind", timeout=20)
    listed = cli.run("trace", "--json")
    traces = [json.loads(line) for line in listed.stdout.splitlines()]
    assert request["trace"] in [t["trace"] for t in traces]
    assert all(t["kinds"] != ["worker"] for t in traces), traces  # starts: with --all
    assert cli.run("down").returncode == 0
    assert follower.wait(timeout=20) == 0
    shown = follower.out.rest()
    assert [line.split(" | ")[0].strip() for line in shown] == ["front", "back"], shown
    assert not any("rain" in line for line in shown), (other, shown)
