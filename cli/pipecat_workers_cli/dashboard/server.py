"""Serving the dashboard: the page, its event stream and the trace view, behind the token.

An ASGI app (starlette) served by uvicorn inside the caller's event loop: the supervisor's,
under ``workers up --dashboard``, so the page starts and stops with the project. The
supervisor owns the signals; uvicorn is told to leave them alone.

The page gets a snapshot over server-sent events whenever it changed, at most every
:data:`EVERY` seconds, whatever the traffic: the work per message is a counter update, the
work per snapshot is bounded by the number of workers and edges, not by the rate of jobs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pipecat_workers_cli.commands.channel import Where
from pipecat_workers_cli.dashboard import traces
from pipecat_workers_cli.dashboard.listener import Listener
from pipecat_workers_cli.dashboard.observer import watch
from pipecat_workers_cli.dashboard.snapshot import compose
from pipecat_workers_cli.dashboard.traffic import Traffic
from pipecat_workers_cli.supervisor.status import ProjectStatus
from pipecat_workers_cli.traces.records import TRACE_ID

EVERY = 0.25  # seconds between snapshots, at most
TRACES_EVERY = 2.0  # seconds between looks at the span files
PING = 15.0  # seconds of silence after which the stream sends a comment (finds dead clients)
STOP_WITHIN = 3  # seconds the server has to close its connections when the project stops

StatusSource = Callable[[], Awaitable[ProjectStatus | None]]
"""The project's status now; None once its supervisor is gone (the dashboard then ends)."""


class Publisher:
    """The latest snapshot, and a wake-up for every stream waiting for the next one. A slow
    page skips snapshots rather than queue them."""

    def __init__(self) -> None:
        self.text = ""
        self.version = 0
        self.closed = False
        self._changed = asyncio.Event()

    def publish(self, text: str) -> None:
        if text == self.text:
            return
        self.text, self.version = text, self.version + 1
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changes(self) -> AsyncIterator[str]:
        """Each newer snapshot as an event, a comment after :data:`PING` quiet seconds."""
        seen = 0
        while not self.closed:
            if self.version != seen and self.text:
                seen = self.version
                yield f"data: {self.text}\n\n"
                continue
            changed = self._changed
            try:
                async with asyncio.timeout(PING):
                    await changed.wait()
            except TimeoutError:
                yield ": ping\n\n"


def _static(name: str) -> str:
    return (resources.files("pipecat_workers_cli.dashboard") / "static" / name).read_text(
        encoding="utf-8")


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class Page:
    """index.html with its style and script inlined (so that the token guards all of it),
    and a content security policy that allows exactly those and nothing else."""

    def __init__(self) -> None:
        style, script = _static("dashboard.css"), _static("dashboard.js")
        self.html = (_static("index.html").replace("/*STYLE*/", style)
                     .replace("/*SCRIPT*/", script))
        self.policy = (f"default-src 'none'; script-src {_digest(script)}; "
                       f"style-src {_digest(style)}; connect-src 'self'; img-src 'self' data:; "
                       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


class TokenGate:
    """Answers 403 to any request without the listener's token in its query string."""

    def __init__(self, app: ASGIApp, listener: Listener) -> None:
        self._app = app
        self._listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if self._listener.allows(next(iter(query.get("token", [])), None)):
                await self._app(scope, receive, send)
                return
            refused = PlainTextResponse("forbidden: open the URL the dashboard printed, with "
                                        "its token\n", status_code=403, headers=_HEADERS)
            await refused(scope, receive, send)
        # No websockets, and the lifespan is off: nothing else is answered.


def build_app(listener: Listener, publisher: Publisher, trace_dir: Path) -> ASGIApp:
    """The dashboard's ASGI app, token check included."""
    page = Page()

    async def index(request: Request) -> Response:
        return Response(page.html, media_type="text/html; charset=utf-8",
                        headers={**_HEADERS, "Content-Security-Policy": page.policy})

    async def events(request: Request) -> Response:
        return StreamingResponse(publisher.changes(), media_type="text/event-stream",
                                 headers={**_HEADERS, "X-Accel-Buffering": "no"})

    async def snapshot(request: Request) -> Response:
        return Response(publisher.text or "{}", media_type="application/json",
                        headers=_HEADERS)

    async def trace(request: Request) -> Response:
        trace_id = request.path_params["trace"]
        if not TRACE_ID.fullmatch(trace_id):
            return JSONResponse({"error": "not a trace id"}, 404, headers=_HEADERS)
        found = await asyncio.to_thread(traces.tree, trace_dir, trace_id)
        if not found["roots"]:
            return JSONResponse({"error": "no such trace"}, 404, headers=_HEADERS)
        return JSONResponse(found, headers=_HEADERS)

    app = Starlette(routes=[
        Route("/", index), Route("/events", events), Route("/api/snapshot", snapshot),
        Route("/api/trace/{trace}", trace)])
    return TokenGate(app, listener)


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handlers: whoever runs the loop owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Dashboard:
    """Serves the page and keeps its data current, until cancelled or the project is gone.

    Args:
        listener: The bound socket and the token.
        status: The project's status now (the supervisor's own, or asked of it).
        channels: For each channel key, how to reach its bus now (None: not yet).
        trace_dir: Where the workers' span files are.
        clock: Wall-clock seconds (the traffic window and hand-off times).
    """

    def __init__(self, listener: Listener, *, status: StatusSource,
                 channels: Mapping[str, Callable[[], Where | None]], trace_dir: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.listener = listener
        self.traffic = Traffic(clock)
        self.publisher = Publisher()
        self._status = status
        self._channels = dict(channels)
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._retired: set[asyncio.Task[None]] = set()  # cancelled, awaited at the end
        self._running = False
        self._trace_dir = trace_dir
        self._clock = clock
        self._traces: list[dict[str, Any]] = []
        self._traces_stamp: tuple[tuple[str, int, int], ...] = ()
        self._traces_at = 0.0

    async def run(self) -> None:
        """Serve until cancelled, or until the status source says the project is gone."""
        config = uvicorn.Config(build_app(self.listener, self.publisher, self._trace_dir),
                                lifespan="off", log_config=None, access_log=False, ws="none",
                                timeout_graceful_shutdown=STOP_WITHIN)
        server = _Server(config)
        loop = asyncio.get_running_loop()
        self._running = True
        self._watch(self._channels)
        serving = loop.create_task(server.serve(sockets=[self.listener.sock]))
        try:
            await self._refresh(serving)
        finally:
            self.publisher.close()  # the event streams end, so the server can stop
            server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(STOP_WITHIN + 1):
                    await asyncio.shield(serving)
            self._running = False
            watchers = [*self._watchers.values(), *self._retired]
            self._watchers, self._retired = {}, set()
            for task in (*watchers, serving):
                task.cancel()
            await asyncio.gather(*watchers, serving, return_exceptions=True)
            self.listener.close()

    def channels_changed(self, channels: Mapping[str, Callable[[], Where | None]]) -> None:
        """The project's channels changed (an edit of its topology): watch these now."""
        self._channels = dict(channels)
        if self._running:  # else run() starts them
            self._watch(self._channels)

    def _watch(self, channels: Mapping[str, Callable[[], Where | None]]) -> None:
        """Observe exactly ``channels``, each anew (a kept one's address may have changed)."""
        for key in list(self._watchers):
            self._retire(self._watchers.pop(key))
        for key, where in channels.items():
            self._watchers[key] = asyncio.get_running_loop().create_task(
                watch(key, where, self.traffic))

    def _retire(self, task: asyncio.Task[None]) -> None:
        task.cancel()  # its finally closes its bus
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _refresh(self, serving: asyncio.Task[None]) -> None:
        while not serving.done():
            status = await self._status()
            if status is None:
                return
            await self._refresh_traces()
            text = json.dumps(compose(status, self.traffic.snapshot(), self._traces,
                                      now=self._clock()), separators=(",", ":"))
            self.publisher.publish(text)
            await asyncio.wait({serving}, timeout=EVERY)
        serving.result()  # the server's own failure, if any

    async def _refresh_traces(self) -> None:
        now = time.monotonic()
        if now - self._traces_at < TRACES_EVERY:
            return
        self._traces_at = now
        stamp = await asyncio.to_thread(traces.files_stamp, self._trace_dir)
        if stamp != self._traces_stamp:
            self._traces_stamp = stamp
            self._traces = await asyncio.to_thread(traces.latest, self._trace_dir)
