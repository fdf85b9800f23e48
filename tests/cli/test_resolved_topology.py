"""Commands that talk to a running project go by what its supervisor resolved.

``up`` resolves ``${VAR}`` in its own environment; ``call``, ``ps --channel`` and ``config``,
run later from another shell, must not resolve the file again in theirs (a variable missing
there, or set to something else). Each test runs the real ``workers`` program.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliproj import Cli, wait_for, write_project
from pipecat_workers_cli.topology import load_topology
from pipecat_workers_cli.topology.record import (
    RecordError,
    topology_from_record,
    topology_record,
)

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

GREETERS_PY = '''\
"""A worker that answers with what its environment says."""

import os

from pipecat_workers import BaseWorker, job


class Greeter(BaseWorker):
    @job("greet")
    async def greet(self, message):
        return {"greeting": os.environ.get("GREETING")}
'''
GREETER = {"class": "greeters:Greeter", "env": {"LOG_LEVEL": "WARNING",
                                                 "GREETING": "${GREETING}"}}


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_record_rebuilds_the_topology_exactly(config: Path) -> None:
    topology = load_topology(config, env={"REDIS_URL": "redis://h:1/0"},
                             env_files=[os.devnull])
    data = json.loads(json.dumps(topology_record(topology)))  # as written and read back
    assert topology_from_record(data) == topology


def test_a_record_of_another_shape_is_refused() -> None:
    topology = load_topology(ROOT / "configs" / "research.yaml", env={})
    data = topology_record(topology)
    with pytest.raises(RecordError):
        topology_from_record({**data, "version": 0})
    data["topology"]["workers"]["researcher"]["replicas"] = "three"
    with pytest.raises(RecordError):
        topology_from_record(data)


def answer_of(stdout: str) -> dict[str, Any]:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("completed: ")), None)
    assert line is not None, f"no 'completed:' line in:\n{stdout}"
    answer: dict[str, Any] = json.loads(line.removeprefix("completed: "))
    return answer


def up_with(cli: Cli, env: dict[str, str], *args: str) -> None:
    """``up -d`` with ``env`` set for it alone."""
    saved = dict(cli.env)
    cli.env.update(env)
    try:
        result = cli.run("up", "-d", *args, "workers.yaml", timeout=60)
    finally:
        cli.env.clear()
        cli.env.update(saved)
    assert result.returncode == 0, (result.stdout, result.stderr)


@pytest.mark.timeout(120)
def test_a_variable_set_only_for_up_serves_call_ps_and_config(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    path = write_project(tmp_path, "resolved", {"answerer": GREETER})
    (tmp_path / "greeters.py").write_text(GREETERS_PY)
    cli = clis(tmp_path)
    assert "GREETING" not in cli.env
    up_with(cli, {"GREETING": "Yo"}, "--reload")

    call, call_f, channel, shown, from_file = cli.run_many(
        ("call", "answerer", "--job", "greet"),
        ("-f", "workers.yaml", "call", "answerer", "--job", "greet"),
        ("ps", "--channel", "main", "--json", "--wait", "3"),
        ("config", "--json"),
        ("-f", "workers.yaml", "config"),  # the file, resolved here: GREETING is not set
    )
    assert call.returncode == 0, (call.stdout, call.stderr)
    assert answer_of(call.stdout) == {"greeting": "Yo"}
    assert call_f.returncode == 0, (call_f.stdout, call_f.stderr)  # the file it runs
    assert answer_of(call_f.stdout) == {"greeting": "Yo"}
    assert channel.returncode == 0, (channel.stdout, channel.stderr)
    assert "answerer" in {w["name"] for w in json.loads(channel.stdout)["workers"]}
    assert shown.returncode == 0, (shown.stdout, shown.stderr)
    assert json.loads(shown.stdout)["workers"]["answerer"]["env"]["GREETING"] == "Yo"
    assert from_file.returncode == 1
    assert from_file.stderr.strip().splitlines() == [
        "error: workers.yaml:11: workers.answerer.env.GREETING: variable GREETING is not set "
        "(give a default with ${GREETING:-default})"], from_file.stderr

    # The record holds the environment's values: it is private, as state.json is.
    record = tmp_path / ".workers" / "resolved" / "topology.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600

    # An edit applied by the running supervisor is resolved, and recorded, there too.
    document = yaml.safe_load(path.read_text())
    document["workers"]["answerer"]["env"]["GREETING"] = "${GREETING}, again"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    def greeting() -> str | None:
        result = cli.run("config", "--json")
        value = json.loads(result.stdout)["workers"]["answerer"]["env"]["GREETING"]
        return value if value != "Yo" else None

    assert wait_for(greeting, timeout=30, what="the edit recorded") == "Yo, again"


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_a_bus_url_set_only_for_up_is_the_one_call_joins(
        tmp_path: Path, clis: Callable[[Path], Cli], redis_url: str) -> None:
    # Without the record, call would resolve the default: a port where nothing listens.
    channel = {"backend": "redis", "url": "${BUS_URL:-redis://127.0.0.1:1/0}",
               "channel": f"resolved-{uuid.uuid4().hex[:12]}"}
    write_project(tmp_path, "resolved-url", {"answerer": {**GREETER, "env": {
        "LOG_LEVEL": "WARNING", "GREETING": "hi"}}}, channel=channel)
    (tmp_path / "greeters.py").write_text(GREETERS_PY)
    cli = clis(tmp_path)
    up_with(cli, {"BUS_URL": redis_url})

    call = cli.run("call", "answerer", "--job", "greet", "--timeout", "20")
    assert call.returncode == 0, (call.stdout, call.stderr)
    assert answer_of(call.stdout) == {"greeting": "hi"}

    # Once the project is down, the file is what there is: resolved here. The record, with
    # the values of the environment it was resolved in, is gone with the supervisor.
    assert cli.run("down").returncode == 0
    assert not (tmp_path / ".workers" / "resolved-url" / "topology.json").exists()
    after = cli.run("config", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["channels"]["main"]["url"] == "redis://127.0.0.1:1/0"


@pytest.mark.timeout(150)
def test_up_d_again_resolves_with_its_own_env_files_and_environment_which_later_edits_keep(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    answerer = {**GREETER, "env": {"LOG_LEVEL": "WARNING", "GREETING": "${GREETING}${SUFFIX:-}"}}
    path = write_project(tmp_path, "reapplied", {"answerer": answerer, "peer": {"class": "Echo"}})
    (tmp_path / "greeters.py").write_text(GREETERS_PY)
    (tmp_path / ".env").write_text("GREETING=from-dotenv\n")
    (tmp_path / "prod.env").write_text("GREETING=from-prod\n")
    cli = clis(tmp_path)

    def greeting() -> str:
        call = cli.run("call", "answerer", "--job", "greet")
        assert call.returncode == 0, (call.stdout, call.stderr)
        return str(answer_of(call.stdout)["greeting"])

    first = cli.run("--env-file", "prod.env", "up", "-d", "--reload", "workers.yaml", timeout=60)
    assert first.returncode == 0, (first.stdout, first.stderr)
    assert greeting() == "from-prod"
    # A second `up -d` without --env-file reads the .env beside the file, as `config` does.
    up_with(cli, {})
    assert greeting() == "from-dotenv"
    up_with(cli, {"SUFFIX": "!"})
    assert greeting() == "from-dotenv!"
    before = {w["name"]: w["pid"] for w in cli.ps()["workers"]}

    # An edit of another worker, under --reload: the file is read again with what the last
    # `up -d` gave it, so the answerer neither changes nor restarts.
    document = yaml.safe_load(path.read_text())
    document["workers"]["peer"]["env"]["EDITED"] = "yes"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    def peer_restarted() -> dict[str, Any] | None:
        now = {w["name"]: w for w in cli.ps()["workers"]}
        peer = now["peer"]
        return now if peer["pid"] not in (None, before["peer"]) and peer["registered"] else None

    now = wait_for(peer_restarted, timeout=30, what="the edited peer restarted")
    assert now["answerer"]["pid"] == before["answerer"]
    assert greeting() == "from-dotenv!"
