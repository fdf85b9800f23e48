"""``workers up --dashboard`` and ``workers dashboard`` as a user runs them: what they print,
what they refuse, and that the page goes when the project does."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cliproj import Cli, wait_for, write_project

WORKERS = {"greeter": {"class": "Echo"}, "support": {"class": "Echo"}}


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def snapshot(url: str) -> dict[str, Any]:
    base, _, token = url.partition("/?token=")
    code, body = fetch(f"{base}/api/snapshot?token={token}")
    assert code == 200
    data: dict[str, Any] = json.loads(body)
    return data


def test_up_serves_it_beside_the_workers_and_stops_with_them(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    cli = clis(tmp_path)
    write_project(tmp_path, "demo", WORKERS)
    running = cli.popen("up", "--no-ui", "--dashboard", "--dashboard-host", "0.0.0.0",
                        "workers.yaml")
    line = running.out.wait_for(r"^dashboard: ", timeout=60)
    url = line.removeprefix("dashboard: ").replace("0.0.0.0", "127.0.0.1")
    assert running.err.wait_for(r"^warning: the dashboard listens on 0\.0\.0\.0, beyond this "
                                r"machine")
    port = int(url.split(":")[2].split("/")[0])

    def all_ready() -> dict[str, Any] | None:
        data = snapshot(url)
        return data if [w["state"] for w in data.get("workers", [])] == ["ready"] * 2 else None

    ready = wait_for(all_ready, timeout=60, what="both workers ready on the page")
    cli.pids.update(w["pid"] for w in ready["workers"])
    assert ready["project"] == "demo" and ready["running"] is True
    assert fetch(url.split("?")[0])[0] == 403
    os.killpg(running.proc.pid, signal.SIGINT)
    assert running.wait(60) == 128 + signal.SIGINT
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more
    assert sum(line.startswith("dashboard: ") for line in running.out.rest()) == 1


def test_what_it_refuses(tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    cli = clis(tmp_path)
    write_project(tmp_path, "demo", WORKERS)
    detached = cli.run("up", "-d", "--dashboard", "workers.yaml")
    assert detached.returncode != 0
    assert detached.stderr.strip().splitlines() == [
        "error: --dashboard serves the page from `up` in the foreground; for a detached "
        "project, `workers -f workers.yaml dashboard` serves it"]
    alone = cli.run("-f", "workers.yaml", "dashboard")
    assert alone.returncode != 0
    assert "project 'demo' is not running" in alone.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli.run("up", "--no-ui", "--dashboard", "--dashboard-port", str(port),
                       "workers.yaml")
    assert busy.returncode != 0
    assert busy.stderr.strip().splitlines() == [
        f"error: dashboard: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert cli.state_files() == []  # nothing started


@pytest.mark.redis
def test_on_redis_it_shows_the_workers_and_their_heartbeat_counters(
        tmp_path: Path, clis: Callable[[Path], Cli], redis_url: str) -> None:
    cli = clis(tmp_path)
    write_project(tmp_path, "demo", WORKERS, channel={
        "backend": "redis", "url": redis_url, "channel": f"dash-{uuid.uuid4().hex[:12]}"})
    started = cli.run("up", "-d", "workers.yaml", timeout=90)
    assert started.returncode == 0, started.stdout + started.stderr
    cli.ps()
    served = cli.popen("dashboard")
    url = served.out.wait_for(r"^dashboard: ", timeout=60).removeprefix("dashboard: ")
    first = wait_for(lambda: (s := snapshot(url)).get("channels") and s, timeout=30,
                     what="a snapshot with the channel")  # "{}" until the first one
    [channel] = first["channels"]
    assert channel["backend"] == "redis" and channel["sees_all"] is False
    called = cli.run("call", "support", "--job", "echo")
    assert called.returncode == 0, called.stdout + called.stderr

    def counted() -> dict[str, Any] | None:
        data = snapshot(url)
        support = next((w for w in data.get("workers", []) if w["name"] == "support"), {})
        return data if support.get("jobs", {}).get("completed") == 1 else None

    wait_for(counted, timeout=30, what="the job in support's counters")
    down = cli.run("down", timeout=60)
    assert down.returncode == 0, down.stderr
    assert served.wait(30) == 0
