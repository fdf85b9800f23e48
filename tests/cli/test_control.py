"""The supervisor's control socket: answers, and a quiet stop while requests wait."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pipecat_workers_cli.supervisor.control import ControlServer, request


async def test_a_stop_while_a_request_waits_ends_its_connection_quietly(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    started = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("cmd") == "status":
            return {"ok": True, "status": "fine"}
        started.set()
        await asyncio.Event().wait()  # a request the supervisor never gets to
        return {"ok": True}

    server = ControlServer(tmp_path / "control.sock", handler)
    await server.start()
    try:
        assert await request(tmp_path / "control.sock", {"cmd": "status"}) == {
            "ok": True, "status": "fine"}
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "control.sock"))
        writer.write(json.dumps({"cmd": "down"}).encode() + b"\n")
        await asyncio.wait_for(started.wait(), 5)
    finally:
        await server.stop()
    assert await reader.read() == b""  # closed without an answer
    writer.close()
    for _ in range(3):
        await asyncio.sleep(0)  # done callbacks run on the next turns
    assert reported == [], reported
    assert not (tmp_path / "control.sock").exists()
