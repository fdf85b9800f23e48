"""The dashboard's server on a real loopback socket: the token, the stream, the trace view,
a clean stop. The page itself is tested in a browser (test_dashboard_browser.py)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from pipecat_workers_cli.dashboard.listener import Listener
from pipecat_workers_cli.dashboard.server import Dashboard
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.supervisor.status import ProjectStatus, WorkerStatus
from spanfiles import HANDOFF, HOSTILE, ROOT, RUN, TRACE, write_trace

from tests.helpers import leftover_tasks


def status() -> ProjectStatus:
    return ProjectStatus(project="demo", file="workers.yaml", running=True, supervisor_pid=1,
                         workers=[WorkerStatus(name="greeter", worker="greeter",
                                               channel="main", state="ready", pid=42,
                                               restarts=2)], channels=[])


async def http(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                 .encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def first_event(port: int, token: str) -> tuple[dict[str, Any], asyncio.StreamWriter,
                                                         asyncio.StreamReader]:
    """Open the event stream and read its first snapshot (the stream stays open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /events?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    seen = b""
    while not (match := re.search(rb"data: (.*?)\n\n", seen, re.S)):
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, f"the stream ended: {seen!r}"
        seen += chunk
    assert b"text/event-stream" in seen
    return json.loads(match.group(1)), writer, reader


@pytest.fixture
async def served(tmp_path: Path):
    listener = Listener.bind("127.0.0.1", 0)

    async def now() -> ProjectStatus:
        return status()

    write_trace(tmp_path / "traces", time.time())
    dashboard = Dashboard(listener, status=now, channels={}, trace_dir=tmp_path / "traces")
    task = asyncio.ensure_future(dashboard.run())
    yield listener
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_without_the_token_every_request_is_refused(served: Listener) -> None:
    token = served.token
    wrong = [("", ""), ("?token=", ""), ("?token=" + token[:-1], ""),
             ("?token=" + token + "x", ""), ("?token=" + token.upper(), ""),
             ("?tok=" + token, "")]
    for path in ("/", "/events", "/api/snapshot", f"/api/trace/{TRACE}", "/nothing"):
        for query, _ in wrong:
            code, headers, body = await http(served.port, path + query)
            assert code == 403, (path, query, body)
            assert token.encode() not in body
    code, headers, body = await http(served.port, f"/?token={token}")
    assert code == 200
    assert headers["content-type"].startswith("text/html")
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'sha")
    # Nothing is fetched from anywhere: no URL in an attribute, no stylesheet or script file.
    page = body.decode()
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:|//)""", page)
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page
    code, _, _ = await http(served.port, f"/nothing?token={token}")
    assert code == 404


async def test_the_stream_sends_the_supervisor_s_status(served: Listener) -> None:
    snapshot, writer, _ = await first_event(served.port, served.token)
    writer.close()
    assert snapshot["project"] == "demo"
    [worker] = snapshot["workers"]
    assert (worker["name"], worker["state"], worker["pid"], worker["restarts"]) == (
        "greeter", "ready", 42, 2)
    assert snapshot["traffic"]["edges"] == []


async def test_a_trace_is_a_tree_across_files_whatever_else_they_hold(
        served: Listener) -> None:
    async def listed() -> list[dict[str, Any]]:
        while True:
            code, _, body = await http(served.port, f"/api/snapshot?token={served.token}")
            traces = json.loads(body).get("traces") if code == 200 else None
            if traces:
                return traces
            await asyncio.sleep(0.05)

    [summary] = await asyncio.wait_for(listed(), 15)
    assert summary["trace"] == TRACE and summary["spans"] == 3
    code, _, body = await http(served.port, f"/api/trace/{TRACE}?token={served.token}")
    assert code == 200
    tree = json.loads(body)
    [root] = tree["roots"]
    assert (root["span"], root["worker"], root["orphan"]) == (ROOT, "greeter", False)
    [run] = root["children"]
    assert (run["span"], run["worker"]) == (RUN, "support")
    [handoff] = run["children"]
    assert handoff["span"] == HANDOFF and handoff["name"] == HOSTILE  # data, shown as text
    assert handoff["status"] == "error" and HOSTILE in handoff["error"]
    for path in (f"/api/trace/{'0' * 31}1", "/api/trace/..%2F..%2Fetc", "/api/trace/XYZ"):
        code, _, _ = await http(served.port, f"{path}?token={served.token}")
        assert code == 404, path


async def test_stopping_ends_open_streams_and_leaves_no_task(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    listener = Listener.bind("127.0.0.1", 0)

    async def now() -> ProjectStatus:
        return status()

    dashboard = Dashboard(listener, status=now, channels={}, trace_dir=tmp_path)
    task = asyncio.ensure_future(dashboard.run())
    _, writer, reader = await first_event(listener.port, listener.token)
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)
    rest = await asyncio.wait_for(reader.read(), 10)  # the server closed the stream
    assert b"data:" not in rest or rest.endswith(b"\r\n")
    writer.close()
    assert await leftover_tasks(before, timeout=5) == set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()


async def test_the_dashboard_ends_with_its_project(tmp_path: Path) -> None:
    listener = Listener.bind("127.0.0.1", 0)
    asked = 0

    async def gone_after_a_while() -> ProjectStatus | None:
        nonlocal asked
        asked += 1
        return status() if asked < 3 else None

    dashboard = Dashboard(listener, status=gone_after_a_while, channels={}, trace_dir=tmp_path)
    await asyncio.wait_for(dashboard.run(), 15)
    assert asked == 3


def test_a_port_in_use_is_one_line() -> None:
    taken = Listener.bind("127.0.0.1", 0)
    try:
        with pytest.raises(CommandError) as caught:
            Listener.bind("127.0.0.1", taken.port)
        message = str(caught.value)
        assert message.startswith(f"dashboard: cannot listen on 127.0.0.1:{taken.port}: ")
        assert "\n" not in message
    finally:
        taken.close()
    with pytest.raises(CommandError, match=r"cannot listen on no-such-host\.invalid"):
        Listener.bind("no-such-host.invalid", 0)


def test_beyond_loopback_it_warns() -> None:
    for host, warned in (("127.0.0.1", False), ("::1", False), ("localhost", False),
                         ("0.0.0.0", True), ("192.168.1.10", True), ("::", True)):
        listener = Listener(socket.socket(), host, 8000, "t")
        listener.close()
        assert (listener.warning() is not None) is warned, host
    listener = Listener.bind("127.0.0.1", 0)
    listener.close()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]{32}", listener.url)
    assert listener.allows(listener.token) and not listener.allows(listener.token[:-1])
    assert not listener.allows(None)


async def test_channels_changed_while_serving_leaves_no_task(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    listener = Listener.bind("127.0.0.1", 0)

    async def now() -> ProjectStatus:
        return status()

    unreachable: dict[str, Any] = {"front": lambda: None, "back": lambda: None}
    dashboard = Dashboard(listener, status=now, channels=unreachable, trace_dir=tmp_path)
    task = asyncio.ensure_future(dashboard.run())
    _, writer, _ = await first_event(listener.port, listener.token)
    dashboard.channels_changed({"front": lambda: None, "new": lambda: None})
    dashboard.channels_changed({"new": lambda: None})
    task.cancel()
    writer.close()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)
    assert await leftover_tasks(before, timeout=5) == set()
