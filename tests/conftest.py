"""Real Redis and PostgreSQL (+ PGMQ) servers for the tests, found through the environment.

``scripts/services.sh start`` runs both servers and writes their addresses to
``.services/env``; ``scripts/test.sh`` does all of that. A test gets a server by requesting the
``redis_url`` or ``postgres_dsn`` fixture, or by carrying the ``redis`` or ``postgres`` marker.
Each server is pinged once per session. When it is unreachable, its tests skip locally and fail
in CI (``CI=true``), so CI can never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5439/postgres"

# Marker -> the fixture that provides (and checks) its server.
_SERVICE_FIXTURES = {"redis": "redis_url", "postgres": "postgres_dsn"}


def _unreachable(service: str, url: str, error: Exception) -> NoReturn:
    """Skip the test, or fail it in CI, because ``service`` at ``url`` cannot be used."""
    shown = re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)  # no passwords in CI logs
    message = (
        f"{service} not reachable at {shown}: run scripts/services.sh start"
        f" ({type(error).__name__}: {error})"
    )
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message}; CI must not skip it", pytrace=False)
    pytest.skip(message)


def _problem(check: Callable[[str], object], url: str) -> Exception | None:
    """What makes ``check(url)`` fail, if anything (returned, so skips carry no traceback)."""
    try:
        check(url)
    except Exception as error:
        return error
    return None


def _ping_redis(url: str) -> None:
    import redis  # the driver is an extra: a missing one reads like a missing server

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _check_postgres(dsn: str) -> None:
    # A loop of its own: a session fixture must not borrow (or close) a test's loop.
    asyncio.run(_check_postgres_async(dsn))


async def _check_postgres_async(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq'"):
            raise LookupError("the server has no pgmq schema")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis server (``PIPECAT_TEST_REDIS_URL``)."""
    url = os.environ.get("PIPECAT_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if (error := _problem(_ping_redis, url)) is not None:
        _unreachable("Redis", url, error)
    return url


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of a reachable PostgreSQL server with PGMQ (``PIPECAT_TEST_POSTGRES_DSN``)."""
    dsn = os.environ.get("PIPECAT_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    if (error := _problem(_check_postgres, dsn)) is not None:
        _unreachable("PostgreSQL", dsn, error)
    return dsn


@pytest.fixture(autouse=True)
def _require_marked_services(request: pytest.FixtureRequest) -> None:
    """Give tests marked ``redis``/``postgres`` the same check as the fixtures' users."""
    for marker, fixture in _SERVICE_FIXTURES.items():
        if request.node.get_closest_marker(marker) is not None:
            request.getfixturevalue(fixture)


@contextmanager
def _short_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="pw-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short temporary directory for Unix sockets: pytest's tmp_path can be longer than the
    107 bytes a socket path may have."""
    with _short_dir() as directory:
        yield directory


# Every bus kind, for tests that run on each (the network ones only where their server is).
BUS_KINDS = [
    "local",
    "hub",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("pgmq", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BUS_KINDS)
async def new_bus(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], object]]:
    """Makes buses on one fresh channel of one kind: each runner gets its own, as separate
    processes would (the local kind shares one ``AsyncQueueBus``, which the test owns).
    Backends are built lazily, so a run on the local bus never touches a server."""
    from pipecat_workers.bus import AsyncQueueBus, BusHub, HubBus

    channel = f"test-{uuid.uuid4().hex[:10]}"
    hub: BusHub | None = None
    shared: AsyncQueueBus | None = None
    make: Callable[[], object]
    if request.param == "local":
        shared = AsyncQueueBus()
        await shared.start()  # the test owns it, so no runner stops it under the other
        make = lambda: shared  # noqa: E731
    elif request.param == "hub":
        hub = BusHub(f"{request.getfixturevalue('socket_dir')}/hub.sock")
        await hub.start()
        path = hub.path
        make = lambda: HubBus(path, channel=channel)  # noqa: E731
    elif request.param == "redis":
        from pipecat_workers.bus import RedisBus

        url = request.getfixturevalue("redis_url")
        make = lambda: RedisBus(url, channel=channel)  # noqa: E731
    else:
        from pipecat_workers.bus import PgmqBus

        dsn = request.getfixturevalue("postgres_dsn")
        make = lambda: PgmqBus(dsn, channel=channel)  # noqa: E731
    yield make
    if shared is not None:
        await shared.close()
    if hub is not None:
        await hub.stop()


@pytest.fixture(params=BUS_KINDS[1:])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """Runner processes on one fresh channel of a network bus (the hub hosted here, as the
    supervisor hosts it; Redis; PGMQ): see ``tests/procs/cluster.py``."""
    from pipecat_workers.bus import BusHub
    from tests.procs.cluster import Cluster

    async with AsyncExitStack() as stack:
        if request.param == "hub":
            directory = stack.enter_context(_short_dir())
            hub = await stack.enter_async_context(BusHub(f"{directory}/hub.sock"))
            url = hub.path
        else:
            url = request.getfixturevalue(
                "redis_url" if request.param == "redis" else "postgres_dsn")
        yield Cluster(request.param, url, tmp_path, stack)


@pytest.fixture
def spans() -> Iterator[object]:
    """Spans recorded in this process while the test runs (an ``InMemorySpanExporter``)."""
    from pipecat_workers.tracing import InMemorySpanExporter, tracer

    exporter = InMemorySpanExporter()
    tracer.add_exporter(exporter)
    try:
        yield exporter
    finally:
        tracer.remove_exporter(exporter)
