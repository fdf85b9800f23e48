"""``.env`` files: the project's (``.env``, ``--env-file``) for ``${VAR}``, and ``env_file:``
for the workers' environment, with docker compose's precedence.

The loader's rules first, then the real ``workers`` program: ``up`` (forked and spawned
supervisors), ``call``, ``config`` and ``check``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliproj import Cli, write_project
from pipecat_workers_cli.commands.config import topology_document
from pipecat_workers_cli.topology import TopologyError, TopologyErrors, load_topology

WORKER = "workers:\n  a:\n    class: m:A\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- ${VAR}: the shell first, then the project's env files -----------------------------------

def test_dot_env_beside_the_file_fills_variables_the_shell_does_not_set(tmp_path: Path) -> None:
    write(tmp_path / ".env", "NAME=from-dotenv\nREPLICAS=3\n# a comment\n\nexport X='a b'\n")
    path = write(tmp_path / "t.yaml", "name: ${NAME}\n" + WORKER + "    replicas: ${REPLICAS}\n"
                 "    env: {X: '${X}'}\n")
    topology = load_topology(path, env={"NAME": "from-shell"})
    assert topology.name == "from-shell"  # the shell wins
    assert topology.workers["a"].replicas == 3
    assert topology.workers["a"].env == {"X": "a b"}  # only what env: says (compose's rule)
    assert topology.env_files is None


def test_env_files_given_replace_dot_env_and_a_later_one_wins(tmp_path: Path) -> None:
    write(tmp_path / ".env", "A=dotenv\nB=dotenv\n")
    one = write(tmp_path / "one.env", "A=one\nB=one\n")
    two = write(tmp_path / "two.env", "B=two\n")
    path = write(tmp_path / "t.yaml", WORKER + "    env: {A: '${A}', B: '${B}', "
                 "C: '${C:-unset}'}\n")
    topology = load_topology(path, env={}, env_files=[str(one), str(two)])
    assert topology.workers["a"].env == {"A": "one", "B": "two", "C": "unset"}
    assert topology.env_files == (str(one), str(two))

    with pytest.raises(TopologyError) as info:
        load_topology(path, env={}, env_files=[str(tmp_path / "nope.env")])
    assert str(info.value) == f"{tmp_path / 'nope.env'}: --env-file: file not found"


# -- env_file: the workers' environment --------------------------------------------------------

def test_worker_env_is_top_env_file_then_its_own_in_order_then_env(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "shared.env", "S=shared\nO=shared\n")
    write(tmp_path / "conf" / "a.env", "O=a\nP=a\n")
    write(tmp_path / "conf" / "b.env", "P=b\nQ=${S:-none}-b\n")
    path = write(tmp_path / "conf" / "t.yaml", "env_file: shared.env\n" + WORKER +
                 "    env_file: [a.env, b.env]\n    env: {Q: env}\n"
                 "  b:\n    class: m:B\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = Path.cwd()
    os.chdir(elsewhere)  # env files are relative to the topology's directory
    try:
        topology = load_topology(path, env={})
    finally:
        os.chdir(cwd)
    assert topology.workers["a"].env == {"S": "shared", "O": "a", "P": "b", "Q": "env"}
    assert topology.workers["b"].env == {"S": "shared", "O": "shared"}


def test_a_missing_env_file_is_an_error_where_it_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", WORKER + "    env_file:\n      - here.env\n"
                 "      - gone.env\n")
    write(tmp_path / "here.env", "A=1\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path, env={})
    assert str(info.value) == (f"{path}:6: workers.a.env_file: env file not found: "
                               f"{tmp_path / 'gone.env'}")


def test_a_bad_line_is_an_error_at_its_line_in_the_env_file(tmp_path: Path) -> None:
    env = write(tmp_path / "a.env", "A=1\n# fine\nthis is not an assignment\nB=2\n")
    path = write(tmp_path / "t.yaml", WORKER + "    env_file: a.env\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path, env={})
    assert str(info.value) == f"{env}:3: expected NAME=value, got 'this is not an assignment'"

    write(tmp_path / ".env", "OK=1\n'unclosed\n")
    with pytest.raises(TopologyError, match=r"\.env:2: expected NAME=value"):
        load_topology(write(tmp_path / "u.yaml", WORKER), env={})


def test_env_file_errors_come_with_the_others(tmp_path: Path) -> None:
    env = write(tmp_path / "bad.env", "=\n")
    path = write(tmp_path / "t.yaml", WORKER + "    env_file: [bad.env, gone.env]\n"
                 "    replicas: 0\n")
    with pytest.raises(TopologyErrors) as info:
        load_topology(path, env={})
    assert str(info.value).splitlines() == [
        f"{path}:4: workers.a.env_file: env file not found: {tmp_path / 'gone.env'}",
        f"{path}:5: workers.a.replicas: expected an integer >= 1, got 0",
        f"{env}:1: expected NAME=value, got '='",
    ]


# -- workers config: the resolved file --------------------------------------------------------

def test_the_config_document_is_a_topology_that_resolves_to_the_same(tmp_path: Path) -> None:
    write(tmp_path / "w.env", "SHOWN=p$x${NOT_A_VAR}\nPASSWORD='p${x}'\n")
    path = write(tmp_path / "t.yaml", "channels:\n  main:\n    backend: redis\n"
                 "    url: ${URL}\n" + WORKER + "    env_file: w.env\n"
                 "    args: {greeting: '$${literally}'}\n    depends_on: b\n"
                 "  b:\n    class: m:B\n    restart: 'no'\n    stop_timeout: 500ms\n")
    topology = load_topology(path, env={"URL": "redis://h:1/0", "NOT_A_VAR": "!"})
    document = topology_document(topology)
    # A lone $ is kept as it is; where interpolation would read one, every $ is doubled.
    assert document["workers"]["a"]["env"] == {"SHOWN": "p$x!", "PASSWORD": "p$${x}"}
    assert document["workers"]["a"]["args"] == {"greeting": "$${literally}"}
    assert document["workers"]["b"]["stop_timeout"] == 0.5
    again = load_topology(write(tmp_path / "again.yaml", yaml.safe_dump(document)), env={})
    assert unplaced(again.workers) == unplaced(topology.workers)
    assert unplaced(again.channels) == unplaced(topology.channels)
    assert (again.name, again.root) == (topology.name, topology.root)


def unplaced(specs: Mapping[str, Any]) -> dict[str, Any]:
    """The entries without their lines (which differ from file to file)."""
    return {key: dataclasses.replace(spec, line=0) for key, spec in specs.items()}


# -- the real program ------------------------------------------------------------------------

ENV_PY = '''\
"""A worker that answers with its environment."""

import os

from pipecat_workers import BaseWorker, job


class Env(BaseWorker):
    @job("env")
    async def env(self, message):
        return {k: os.environ.get(k) for k in message.payload["names"]}
'''


def call_env(cli: Cli, *names: str) -> dict[str, Any]:
    result = cli.run("call", "w", "--job", "env", "--payload", json.dumps({"names": names}))
    assert result.returncode == 0, (result.stdout, result.stderr)
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("completed: "))
    answer: dict[str, Any] = json.loads(line.removeprefix("completed: "))
    return answer


def env_project(tmp_path: Path, **entry: Any) -> Path:
    path = write_project(tmp_path, "envs", {"w": {"class": "envworker:Env", **entry}})
    (tmp_path / "envworker.py").write_text(ENV_PY)
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="the supervisor is tested on Linux")
@pytest.mark.timeout(120)
def test_up_reads_dot_env_and_env_files_with_compose_precedence(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    env_project(tmp_path, env_file="worker.env",
                env={"LOG_LEVEL": "WARNING", "GREETING": "${GREETING}", "LAST": "env"})
    write(tmp_path / ".env", "GREETING=from-dotenv\nONLY_DOTENV=1\n")
    write(tmp_path / "worker.env", "SECRET=s3\nLAST=file\nFROM_SHELL=file\n")
    cli = clis(tmp_path)
    cli.env["FROM_SHELL"] = "shell"
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    assert call_env(cli, "GREETING", "SECRET", "LAST", "FROM_SHELL", "ONLY_DOTENV") == {
        "GREETING": "from-dotenv",  # ${GREETING} from .env
        "SECRET": "s3",             # from env_file:
        "LAST": "env",              # env: wins over env_file:
        "FROM_SHELL": "file",       # env_file: wins over the supervisor's environment
        "ONLY_DOTENV": None,        # .env is for ${VAR}, not the workers' environment
    }


@pytest.mark.skipif(sys.platform != "linux", reason="the supervisor is tested on Linux")
@pytest.mark.timeout(120)
def test_env_file_option_reaches_a_spawned_supervisor_and_config(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    env_project(tmp_path, env={"LOG_LEVEL": "WARNING", "GREETING": "${GREETING:-default}"})
    write(tmp_path / ".env", "GREETING=from-dotenv\n")
    write(tmp_path / "other.env", "GREETING=from-other\n")
    cli = clis(tmp_path)
    up = cli.run("--env-file", "other.env", "up", "-d", "--no-fork", "workers.yaml",
                 timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    assert call_env(cli, "GREETING") == {"GREETING": "from-other"}
    running, from_file, as_yaml = cli.run_many(
        ("config", "--json"),
        ("config", "workers.yaml", "--json"),
        ("--env-file", "other.env", "config", "workers.yaml"))
    assert json.loads(running.stdout)["workers"]["w"]["env"]["GREETING"] == "from-other"
    assert json.loads(from_file.stdout)["workers"]["w"]["env"]["GREETING"] == "from-dotenv"
    assert yaml.safe_load(as_yaml.stdout)["workers"]["w"]["env"]["GREETING"] == "from-other"


def test_check_reports_env_file_errors_in_one_line_each(tmp_path: Path) -> None:
    env_project(tmp_path, env_file=["gone.env", "bad.env"])
    write(tmp_path / "bad.env", "A=1\nnot valid\n")
    result = subprocess.run([sys.executable, "-m", "pipecat_workers_cli", "check",
                             "workers.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: workers.yaml:10: workers.w.env_file: env file not found: gone.env",
        "error: bad.env:2: expected NAME=value, got 'not valid'",
    ], result.stderr
