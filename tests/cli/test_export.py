"""``workers export compose|kubernetes|systemd`` (issue 13), through the real ``workers`` program.

The output is checked by the engines' own rules: the compose file against the compose
specification's JSON Schema (as ``check-jsonschema`` ships it), the manifests with
``kubernetes-validate``, the units with ``systemd-analyze verify`` where it exists (and their
keys read back everywhere). And the process they describe is run as they would run it: the
host without a supervisor, its bus URL from the environment, answering a call on Redis.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cliproj import WORKER_MODULE, WORKERS_PY, Cli
from pipecat_workers_cli.host import HOST_ENV, HostSpec, standalone

SECRET = "s3cret-value-never-written"

TOPOLOGY = """\
name: shop
channels:
  main:
    backend: redis
    url: ${REDIS_URL:-redis://localhost:6379/0}
workers:
  echo:
    class: app_workers:Echo
    replicas: 2
    restart: always
    stop_timeout: 4
    env:
      GREETING: "Hi $$5 for 100%"
      API_KEY: ${SHOP_KEY}
  front:
    class: app_workers:Echo
    depends_on: [echo]
    restart: "no"
"""


def project(root: Path, text: str = TOPOLOGY) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{WORKER_MODULE}.py").write_text(WORKERS_PY)
    path = root / "workers.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def cli(tmp_path: Path, clis: Callable[[Path], Cli]) -> Cli:
    project(tmp_path)
    made = clis(tmp_path)
    made.env.update(SHOP_KEY=SECRET, REDIS_URL="redis://cache:6379/0")
    return made


def exported(cli: Cli, kind: str, *args: str) -> str:
    result = cli.run("export", kind, "workers.yaml", *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert SECRET not in result.stdout
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def host_spec(env: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(env["PIPECAT_WORKERS_HOST"])
    return spec


# -- compose -------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "deploy" / "compose.yaml"
    result = cli.run("export", "compose", "workers.yaml", "-o", str(out), "--image", "shop:1")
    assert result.returncode == 0, result.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(out)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = out.read_text()
    assert SECRET not in text
    document = yaml.safe_load(text)
    assert document["name"] == "shop"
    echo, front = document["services"]["echo"], document["services"]["front"]
    assert echo["deploy"] == {"replicas": 2} and front["deploy"] == {"replicas": 1}
    assert echo["image"] == "shop:1" and echo["working_dir"] == "/app"
    assert echo["command"] == ["python", "-P", "-m", "pipecat_workers_cli.host"]
    assert (echo["restart"], front["restart"]) == ("always", "no")
    assert front["depends_on"] == ["echo"]
    env = echo["environment"]
    assert env["API_KEY"] == "${SHOP_KEY}"  # compose resolves it, as the topology would
    assert env["PIPECAT_WORKERS_BUS_URL"] == "${REDIS_URL:-redis://localhost:6379/0}"
    assert env["GREETING"] == "Hi $$5 for 100%"  # compose reads "$$" back as "$"
    assert env["PIPECAT_WORKERS_REPLICA"] == "@hostname"
    assert "PIPECAT_WORKERS_REPLICA" not in front["environment"]
    spec = host_spec(env)
    assert spec["name"] == "echo" and spec["class_path"] == "app_workers:Echo"
    assert (spec["backend"], spec["channel"], spec["url"]) == ("redis", "shop.main", None)
    assert spec["supervisor_pid"] == 0


# -- kubernetes ----------------------------------------------------------------------------


def test_kubernetes_manifests_are_valid_and_read_secrets_from_secrets(
        cli: Cli, tmp_path: Path) -> None:
    stream = exported(cli, "kubernetes")
    assert "kubectl create secret generic shop-bus --from-literal=main=URL" in stream
    assert "redis://cache" not in stream  # the resolved bus URL is a secret
    documents = list(yaml.safe_load_all(stream))
    assert [d["metadata"]["name"] for d in documents] == ["shop-echo", "shop-front"]
    version = kubernetes_validate.latest_version()
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)
    echo = documents[0]
    assert echo["kind"] == "Deployment" and echo["spec"]["replicas"] == 2
    container = echo["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["PIPECAT_WORKERS_BUS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "shop-bus", "key": "main"}}
    assert env["API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "shop-env", "key": "API_KEY"}}
    assert env["GREETING"]["value"] == "Hi $5 for 100%"
    assert env["PIPECAT_WORKERS_REPLICA"]["value"] == "@hostname"
    assert host_spec({k: v["value"] for k, v in env.items() if "value" in v})["name"] == "echo"
    # One file per Deployment with -o DIR/, each valid on its own.
    result = cli.run("export", "kubernetes", "workers.yaml", "-o", "k8s/")
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "k8s").iterdir())
    assert [f.name for f in files] == ["shop-echo.yaml", "shop-front.yaml"]
    for file in files:
        kubernetes_validate.validate(yaml.safe_load(file.read_text()), version, strict=True)


def test_a_local_channel_cannot_be_exported(tmp_path: Path,
                                            clis: Callable[[Path], Cli]) -> None:
    project(tmp_path, "name: solo\nworkers:\n  echo:\n    class: app_workers:Echo\n"
                      "channels:\n  main:\n    backend: local\n")
    cli = clis(tmp_path)
    for kind in ("kubernetes", "compose", "systemd"):
        one_line_error(cli.run("export", kind, "workers.yaml"),
                       "workers.yaml:6: channels.main: a local channel",
                       "use a redis or pgmq channel")


def test_args_that_reference_variables_are_refused(tmp_path: Path,
                                                   clis: Callable[[Path], Cli]) -> None:
    project(tmp_path, TOPOLOGY.replace("    restart: \"no\"\n",
                                       "    args: {token: \"${SHOP_KEY}\"}\n"))
    cli = clis(tmp_path)
    cli.env["SHOP_KEY"] = SECRET
    one_line_error(cli.run("export", "compose", "workers.yaml"),
                   "workers.yaml:15: workers.front: its args hold", "pass secrets through env")


# -- systemd -------------------------------------------------------------------------------


def read_unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def environment_of(path: Path) -> dict[str, str]:
    """The Environment= lines of a unit, unquoted as systemd reads them (a reader of INI
    files keeps only the last of a repeated key)."""
    env = {}
    for line in path.read_text().splitlines():
        if not line.startswith("Environment="):
            continue
        text = line.removeprefix("Environment=")
        if text.startswith('"'):
            text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        name, _, value = text.partition("=")
        env[name] = value.replace("%%", "%")
    return env


def test_systemd_units_verify_and_follow_the_topology(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("export", "systemd", "workers.yaml", "-o", "units", "--env-dir",
                     str(tmp_path / "etc"))
    assert result.returncode == 0, result.stderr
    units = tmp_path / "units"
    names = sorted(p.name for p in units.iterdir())
    assert names == ["shop-echo@.service", "shop-front.service", "shop-main.env.example",
                     "shop.target"]
    assert SECRET not in "".join(p.read_text() for p in units.iterdir())
    echo, front = read_unit(units / "shop-echo@.service"), read_unit(units / "shop-front.service")
    assert echo["Service"]["Restart"] == "always" and front["Service"]["Restart"] == "no"
    assert echo["Service"]["RestartPreventExitStatus"] == "78"
    assert echo["Service"]["TimeoutStopSec"] == "9"
    assert echo["Service"]["WorkingDirectory"] == str(tmp_path)
    assert echo["Service"]["EnvironmentFile"] == f"{tmp_path}/etc/shop-main.env"
    assert echo["Service"]["ExecStart"].endswith(" -P -m pipecat_workers_cli.host")
    assert echo["Install"]["WantedBy"] == "shop.target"
    env = environment_of(units / "shop-echo@.service")
    assert env["PIPECAT_WORKERS_REPLICA"] == "%i" and env["GREETING"] == "Hi $5 for 100%"
    assert "API_KEY" not in env  # from the environment file
    assert host_spec(env)["name"] == "echo"
    assert front["Unit"]["After"].split() == ["network-online.target", "shop-echo@1.service",
                                              "shop-echo@2.service"]
    target = read_unit(units / "shop.target")
    assert target["Unit"]["Wants"].split() == ["shop-echo@1.service", "shop-echo@2.service",
                                               "shop-front.service"]
    assert (units / "shop-main.env.example").read_text().splitlines()[1:] == [
        "PIPECAT_WORKERS_BUS_URL=", "API_KEY="]
    if shutil.which("systemd-analyze") is None:
        return
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "shop-echo@1.service", "shop-echo@2.service",
         "shop-front.service", "shop.target"], cwd=units, capture_output=True, text=True,
        timeout=60, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_several_files_need_a_directory(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    one_line_error(cli.run("export", "systemd", "workers.yaml", "-o", "taken"),
                   "-o taken: systemd writes several files: name a directory")
    stdout = exported(cli, "systemd")
    assert re.findall(r"^# ==> (\S+) <==$", stdout, re.M) == [
        "shop-echo@.service", "shop-front.service", "shop.target", "shop-main.env.example"]


# -- the exported process runs -------------------------------------------------------------


def test_standalone_names_a_replica_and_takes_the_url_from_the_environment() -> None:
    spec = HostSpec(name="echo", class_path="m:C", args={}, backend="redis", channel="c",
                    runner="shop/echo")
    alone = standalone(spec, {"PIPECAT_WORKERS_BUS_URL": "redis://r/0",
                              "PIPECAT_WORKERS_REPLICA": "3"})
    assert (alone.name, alone.runner, alone.url) == ("echo.3", "shop/echo.3", "redis://r/0")
    by_host = standalone(spec, {"PIPECAT_WORKERS_REPLICA": "@hostname"})
    assert by_host.name == f"echo.{socket.gethostname()}" and by_host.url is None
    assert standalone(spec, {}).name == "echo"


@pytest.mark.redis
@pytest.mark.timeout(90)
def test_the_exported_service_runs_and_answers_on_redis(cli: Cli, tmp_path: Path,
                                                        redis_url: str) -> None:
    """The compose service's command and environment, as a container would run them (the
    references resolved as compose would): the worker joins Redis under its replica's name,
    answers a call, and ends cleanly on SIGTERM, with nothing on its stdin."""
    channel = f"export-{uuid.uuid4().hex[:10]}"
    project(tmp_path, TOPOLOGY.replace("    backend: redis\n",
                                       f"    backend: redis\n    channel: {channel}\n"))
    service = yaml.safe_load(exported(cli, "compose"))["services"]["echo"]
    env = {k: v.replace("$$", "$") for k, v in service["environment"].items()}
    env.update(PIPECAT_WORKERS_BUS_URL=redis_url, API_KEY=SECRET, LOG_LEVEL="WARNING")
    command = [sys.executable if service["command"][0] == "python" else service["command"][0],
               *service["command"][1:]]
    worker = subprocess.Popen(command, cwd=tmp_path, env={**cli.env, **env},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    cli.pids.add(worker.pid)
    name = f"echo.{socket.gethostname()}"
    try:
        called = cli.run("call", name, "--job", "echo", "--url", redis_url, "--channel",
                         channel, "--payload", '{"n": 1}', "--json", timeout=40)
        assert called.returncode == 0, (called.stdout, called.stderr, worker.poll())
        answer = json.loads(called.stdout.splitlines()[-1])
        assert answer["status"] == "completed"
        assert answer["data"]["by"] == name and answer["data"]["pid"] == worker.pid
        assert HOST_ENV in env
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=10)
