"""Discoverable jobs (issue 13): ``workers ps --jobs`` lists each worker's job names, and
``workers call WORKER`` without ``--job`` names the choices instead of failing on the worker.

The real ``workers`` program on a tiny project, on the embedded bus and on Redis: the names
travel in the registry entries the runners announce, and the supervisor's monitor keeps them.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cliproj import Cli, write_project

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

MORE_WORKERS = '''

class Multi(BaseWorker):
    """Two job names."""

    @job("slow")
    async def slow(self, message):
        return {"slow": True}

    @job("echo")
    async def echo(self, message):
        return {"echo": message.payload}


class Catchall(BaseWorker):
    """Takes any job, with a name or without."""

    @job("named")
    async def named(self, message):
        return {"named": True}

    async def on_job_request(self, message):
        await self.send_job_response(message.job_id, {"any": message.job_name})


class Quiet(BaseWorker):
    """Takes no jobs at all."""
'''

WORKERS = {"echo": {"class": "Multi"}, "any": {"class": "Catchall"},
           "quiet": {"class": "Quiet"}}
BACKENDS = ["local", pytest.param("redis", marks=pytest.mark.redis)]


def one_line_error(result: Any, text: str) -> None:
    """Exit status 1 and exactly one line on stderr: ``error: <text>``."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [f"error: {text}"], result.stderr
    assert "Traceback" not in result.stdout


def row(output: str, name: str) -> str:
    """The text after ``name`` on its line of a table."""
    match = re.search(rf"^{re.escape(name)}\s+(.*?)\s*$", output, re.M)
    assert match is not None, f"no row {name!r} in:\n{output}"
    return match.group(1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ps_lists_job_names_and_call_without_a_job_offers_them(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path,
        clis: Callable[[Path], Cli]) -> None:
    channel: dict[str, Any] = {"backend": "local"}
    if backend == "redis":
        channel = {"backend": "redis", "url": request.getfixturevalue("redis_url"),
                   "channel": f"jobs-it-{uuid.uuid4().hex[:12]}"}
    write_project(tmp_path, "jobs", WORKERS, channel=channel)
    with (tmp_path / "app_workers.py").open("a") as module:
        module.write(MORE_WORKERS)
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)

    def listed(status: dict[str, Any]) -> bool:
        return all(name in status["channels"][0]["job_names"] for name in WORKERS)

    status = cli.wait_ps(listed, timeout=15, what="every worker's job names in ps")
    main = status["channels"][0]
    assert main["job_names"] == {"echo": ["echo", "slow"], "any": ["named"], "quiet": []}
    assert main["any_job"] == ["any"]

    no_job, catchall, quiet, named, table, survey = cli.run_many(
        ("call", "echo"),
        ("call", "any", "--json"),
        ("call", "quiet"),
        ("call", "echo", "--job", "slow"),
        ("ps", "--jobs"),
        ("ps", "--channel", "main", "--jobs"),
    )
    one_line_error(no_job, "echo has jobs: echo, slow; pass --job NAME")
    one_line_error(quiet, "quiet has no jobs: it has no @job handler")
    assert catchall.returncode == 0, (catchall.stdout, catchall.stderr)
    answer = json.loads(catchall.stdout.splitlines()[-1])
    assert (answer["status"], answer["data"]) == ("completed", {"any": None})
    assert named.returncode == 0 and "completed: {\"slow\": true}" in named.stdout, named
    assert table.returncode == 0, table.stderr
    usual, jobs = re.split(r"^NAME\s+JOBS\s*$", table.stdout, flags=re.M)  # after the usual
    assert row(usual, "NAME").startswith("STATE"), table.stdout
    assert row(jobs, "echo") == "echo, slow"
    assert row(jobs, "any") == "named (and any other name)"
    assert row(jobs, "quiet") == "none"
    assert survey.returncode == 0, survey.stderr
    assert row(survey.stdout, "echo") == "echo, slow"
