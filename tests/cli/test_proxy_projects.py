"""Two projects on different buses joined by ``proxy:`` workers, through the real ``workers``
program: a call in one project reaches a worker of the other."""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cliproj import WORKER_MODULE, WORKERS_PY, Cli, wait_for, workers_by_name, write_project

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-token-for-the-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ready(status: dict[str, Any]) -> bool:
    return all(w["state"] == "ready" and w["registered"] for w in status["workers"])


@pytest.mark.timeout(180)
def test_a_call_in_one_project_reaches_a_worker_of_another_through_proxies(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    port = free_port()
    token = {"token": "${PROXY_TOKEN}"}
    write_project(tmp_path / "back", "back", {
        "echo": {"class": "Echo"},
        "door": {"proxy": {"listen": f"127.0.0.1:{port}", "expose": ["echo"], **token}},
    })
    write_project(tmp_path / "front", "front", {
        "link": {"proxy": {"url": f"ws://127.0.0.1:{port}/", "remote": ["echo"], **token}},
    })
    back, front = clis(tmp_path / "back"), clis(tmp_path / "front")
    for cli in (back, front):
        cli.env["PROXY_TOKEN"] = TOKEN

    # The front first: its client is ready on its own bus and keeps trying the server.
    up_front = front.run("up", "-d", "workers.yaml", timeout=60)
    assert up_front.returncode == 0, (up_front.stdout, up_front.stderr)
    assert re.search(r"^link: ready \(pid \d+\)$", up_front.stdout, re.M), up_front.stdout
    up_back = back.run("up", "-d", "workers.yaml", timeout=60)
    assert up_back.returncode == 0, (up_back.stdout, up_back.stderr)
    back_status = back.wait_ps(ready, timeout=30, what="echo and door registered")
    assert set(workers_by_name(back_status)) == {"echo", "door"}
    echo_pid = workers_by_name(back_status)["echo"]["pid"]

    # `call echo` in the front: echo is no worker of its own, but its client's stand-in.
    marker = uuid.uuid4().hex[:8]
    call = front.run("call", "echo", "--job", "echo", "--payload",
                     json.dumps({"marker": marker}), "--json", "--timeout", "60",
                     timeout=90)
    assert call.returncode == 0, (call.stdout, call.stderr)
    last = json.loads(call.stdout.splitlines()[-1])
    assert last["event"] == "response" and last["status"] == "completed", last
    assert last["data"] == {"echo": {"marker": marker}, "by": "echo", "pid": echo_pid}

    def handled() -> str | None:
        logs = back.run("logs", "echo")
        return logs.stdout if marker in logs.stdout else None

    wait_for(handled, timeout=10, what="the job in the back project's echo log")
    front_status = front.ps()
    assert [(w["name"], w["state"]) for w in front_status["workers"]] == [("link", "ready")]
    scaled = front.run("scale", "link=2")
    assert scaled.returncode == 1 and scaled.stderr.splitlines() == [
        "error: 'link' is a proxy worker: it runs as one process"], scaled.stderr

    # A client with another token is refused: its call gets no answer.
    write_project(tmp_path / "stranger", "stranger", {
        "link": {"proxy": {"url": f"ws://127.0.0.1:{port}/", "remote": ["echo"],
                           "token": "not-the-token"}},
    })
    stranger = clis(tmp_path / "stranger")
    assert stranger.run("up", "-d", "workers.yaml", timeout=60).returncode == 0
    refused = stranger.run("call", "echo", "--job", "echo", "--timeout", "5", timeout=60)
    assert refused.returncode == 124, (refused.stdout, refused.stderr)

    for cli in (stranger, front, back):
        down = cli.run("down", timeout=60)
        assert down.returncode == 0, (down.stdout, down.stderr)


@pytest.mark.timeout(180)
def test_the_example_pair_holds_a_conversation_across(clis: Callable[[Path], Cli]) -> None:
    cli = clis(ROOT)
    cli.env["PROXY_PORT"] = str(free_port())
    back = "configs/proxy.back.yaml"
    up = cli.run("up", "-d", back, timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    try:
        front = cli.run("up", "configs/proxy.front.yaml", timeout=120)
        assert front.returncode == 0, (front.stdout, front.stderr)
        said = [line.removeprefix("acme        | ") for line in front.stdout.splitlines()
                if line.startswith("acme ")]
        assert said.index("greeter -> user: Let me get you to support.") < said.index(
            "support -> user: Billing support here. You said: 'It charges me twice for "
            "March.'.") < said.index("support -> user: Let me get you to greeter."), said
    finally:
        down = cli.run("-f", back, "down", timeout=60)
        assert down.returncode == 0, (down.stdout, down.stderr)


EXPORTED = """\
name: shop
channels:
  main: {backend: redis, url: '${REDIS_URL}'}
workers:
  door:
    proxy:
      listen: 0.0.0.0:8765
      expose: [echo]
      token: ${PROXY_TOKEN}
  link:
    proxy:
      url: ws://partner:9000/
      remote: [partner-desk]
      forward: [end]
      token: ${PROXY_TOKEN}
  echo:
    class: app_workers:Echo
"""


@pytest.mark.timeout(120)
def test_proxies_export_like_workers_and_a_server_publishes_its_port(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    (tmp_path / f"{WORKER_MODULE}.py").write_text(WORKERS_PY)
    (tmp_path / "workers.yaml").write_text(EXPORTED)
    cli = clis(tmp_path)
    for name in ("REDIS_URL", "PROXY_TOKEN"):  # references: an export needs no value
        cli.env.pop(name, None)
    compose, kubernetes, systemd = cli.run_many(
        ("export", "compose", "workers.yaml"), ("export", "kubernetes", "workers.yaml"),
        ("export", "systemd", "workers.yaml", "-o", "units/"))
    for result in (compose, kubernetes, systemd):
        assert result.returncode == 0, (result.stdout, result.stderr)

    services = yaml.safe_load(compose.stdout)["services"]
    door, link = services["door"], services["link"]
    assert door["ports"] == ["8765:8765"] and "ports" not in link
    assert door["command"] == link["command"] == services["echo"]["command"]
    assert door["environment"]["PIPECAT_WORKERS_PROXY_TOKEN"] == "${PROXY_TOKEN}"
    door_host = json.loads(door["environment"]["PIPECAT_WORKERS_HOST"])
    assert door_host["class_path"] == "pipecat_workers.proxy:WebSocketProxyServer"
    assert door_host["args"] == {"worker_name": ["echo"], "host": "0.0.0.0", "port": 8765}
    link_host = json.loads(link["environment"]["PIPECAT_WORKERS_HOST"])
    assert link_host["args"] == {"url": "ws://partner:9000/",
                                 "remote_worker_name": ["partner-desk"],
                                 "forward_messages": ["end"]}
    assert "listens on" not in compose.stdout  # 0.0.0.0 is reached from outside

    documents = {d["metadata"]["name"]: d for d in yaml.safe_load_all(kubernetes.stdout)}
    version = kubernetes_validate.latest_version()
    for document in documents.values():
        kubernetes_validate.validate(document, version, strict=True)
    container = documents["shop-door"]["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "proxy", "containerPort": 8765}]
    env = {e["name"]: e for e in container["env"]}
    assert env["PIPECAT_WORKERS_PROXY_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "shop-env", "key": "PIPECAT_WORKERS_PROXY_TOKEN"}}
    assert "--from-literal=PIPECAT_WORKERS_PROXY_TOKEN=..." in kubernetes.stdout
    assert (tmp_path / "units" / "shop-door.service").exists()

    # A server on a loopback address answers only inside its container: the header says so.
    (tmp_path / "workers.yaml").write_text(EXPORTED.replace("0.0.0.0:8765", "127.0.0.1:8765"))
    loopback = cli.run("export", "compose", "workers.yaml")
    assert loopback.returncode == 0, loopback.stderr
    assert ("# Proxy server 'door' listens on 127.0.0.1:8765, which only its own container "
            "reaches: listen on 0.0.0.0 (with a token) to serve others.") in loopback.stdout
