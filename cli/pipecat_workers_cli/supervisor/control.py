"""The supervisor's control socket: one JSON request per line, one JSON answer per line.

Requests are ``{"cmd": "status" | "start" | "stop" | "restart" | "down", "workers": [...]}``,
with ``"rolling": true`` for a restart one process at a time; ``{"cmd": "scale", "replicas":
{"key": N}}``; and ``{"cmd": "apply", "file": "...", "env": {...}}``, an ``up`` on the running
project, answered with what it started, restarted and stopped (``"applied"``); each is
checked by :mod:`pipecat_workers_cli.supervisor.requests` before it is acted on. Answers are
``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``. The socket is
created with mode 0600: only its owner may drive the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pipecat_workers_cli.errors import CommandError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_LIMIT = 16 * 1024 * 1024  # a status answer of a large project fits
_ANSWER_GRACE = 2.0        # seconds a stopping server waits for answers on their way


class ControlServer:
    """Serves control requests on a Unix socket until stopped."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self._path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._answering = 0          # requests read but not yet answered
        self._answered = asyncio.Event()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # the lock is ours, so a socket left here is stale
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self._path,
                                                           limit=_LIMIT)
        finally:
            os.umask(old)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # A request that ended the supervisor ('down') still gets its answer out.
        if self._answering:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ANSWER_GRACE):
                    while self._answering:
                        self._answered.clear()
                        await self._answered.wait()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                self._answering += 1
                try:
                    await self._answer(line, writer)
                finally:
                    self._answering -= 1
                    self._answered.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            if self._server is not None:
                raise
            # Cancelled by stop(): end quietly, since asyncio reports a connection task
            # that ends cancelled as an error ("Exception in callback ...").
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            answer = await self._handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except CommandError as exc:
            answer = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(answer, default=str).encode() + b"\n")
        await writer.drain()


async def request(path: Path, payload: dict[str, Any], timeout: float = 10.0
                  ) -> dict[str, Any]:
    """Send one request and return the answer.

    Raises:
        CommandError: nobody answers on the socket, or the supervisor refused.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=_LIMIT), timeout)
    except (OSError, TimeoutError) as exc:
        raise CommandError(f"the supervisor does not answer on {path}: {exc}") from None
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError) as exc:
        raise CommandError(f"the supervisor did not answer: {exc}") from None
    finally:
        writer.close()
    if not line:
        raise CommandError("the supervisor closed the connection without answering")
    answer: dict[str, Any] = json.loads(line)
    if not answer.get("ok", False):
        raise CommandError(str(answer.get("error", "the supervisor refused")))
    return answer
