"""An unreachable server in one line, said a few times a minute however long it lasts.

The buses' connection errors (where, why, what to check), :func:`start_when_reachable` (retries
without a line per attempt), :func:`probe` (reaches a server without changing it) and
:class:`RateLimitedLog` (the first line, then one per period with a count), against real
servers and ports where nothing listens.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import pytest

from pipecat_workers import BusConnectionError, ConfigurationError
from pipecat_workers.bus.backends.unreachable import reason, safe_url, start_when_reachable
from pipecat_workers.bus.loops import RateLimitedLog


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def redis_bus(url: str):  # type: ignore[no-untyped-def]
    from pipecat_workers.bus import RedisBus

    return RedisBus(url, channel=f"unreachable-{uuid.uuid4().hex[:8]}")


# -- the one line --------------------------------------------------------------------------


def test_a_url_is_shown_without_its_password() -> None:
    assert safe_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert safe_url("postgresql://me:pw@db/app") == "postgresql://me:***@db/app"
    assert safe_url("redis://host:6379") == "redis://host:6379"
    # In the query too, and a password with an '@' of its own (the drivers split at the last).
    assert safe_url("redis://:s3cret@h:6379/0?password=q&db=1") == (
        "redis://:***@h:6379/0?password=***&db=1")
    assert safe_url("postgresql://u@h/db?sslmode=require&PassWord=x") == (
        "postgresql://u@h/db?sslmode=require&PassWord=***")
    assert safe_url("redis://:p@ss@host:1/0") == "redis://:***@host:1/0"
    assert safe_url("unix:///run/redis.sock?password=x&db=2") == (
        "unix:///run/redis.sock?password=***&db=2")


def test_the_reason_is_found_in_what_the_driver_wraps() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as exc:
            raise RuntimeError("Error 111 connecting to host") from exc
    except RuntimeError as wrapped:
        assert reason(wrapped) == "connection refused: is it running?"
    assert reason(socket.gaierror(-2, "Name or service not known")).startswith("unknown host")
    assert reason(ValueError("something else")) == "something else"


async def test_redis_unreachable_is_one_line_that_says_where_and_why() -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{free_port()}/0"
    bus = redis_bus(url)
    with pytest.raises(BusConnectionError) as raised:
        await bus.start()
    await bus.close()
    assert str(raised.value) == f"cannot reach Redis at {url}: connection refused: is it running?"


async def test_pgmq_unreachable_hides_the_password() -> None:
    pytest.importorskip("asyncpg")
    from pipecat_workers.bus import PgmqBus

    port = free_port()
    bus = PgmqBus(f"postgresql://me:s3cret@127.0.0.1:{port}/app", channel="nowhere")
    with pytest.raises(BusConnectionError) as raised:
        await bus.start()
    await bus.close()
    assert str(raised.value) == (f"cannot reach PostgreSQL at postgresql://me:***@127.0.0.1:"
                                 f"{port}/app: connection refused: is it running?")


# -- waiting for the server ----------------------------------------------------------------


async def test_waiting_for_an_unreachable_server_logs_once_per_period(
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{free_port()}/0"
    bus = redis_bus(url)
    failures: list[BusConnectionError] = []
    enough = asyncio.Event()

    def waiting(error: BusConnectionError) -> None:
        failures.append(error)
        if len(failures) == 5:
            enough.set()

    caplog.set_level(logging.DEBUG)
    waiter = asyncio.ensure_future(start_when_reachable(
        bus, hint="set REDIS_URL", on_waiting=waiting, report_every=3600, retry_max=0.01))
    await asyncio.wait_for(enough.wait(), 30)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await bus.close()

    assert not bus.running
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in said] == [
        f"cannot reach Redis at {url}: connection refused: is it running? set REDIS_URL; "
        "trying again"]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.redis
async def test_a_reachable_server_starts_at_once_and_quietly(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    bus = redis_bus(redis_url)
    calls: list[BusConnectionError] = []
    await start_when_reachable(bus, on_waiting=calls.append)
    try:
        assert bus.running and bus.connected and calls == []
    finally:
        await bus.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- probing -------------------------------------------------------------------------------


@pytest.mark.redis
async def test_probe_reaches_redis_or_says_why(redis_url: str) -> None:
    from pipecat_workers.bus.backends.probe import probe

    assert await probe(redis_url) == ""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BusConnectionError, match=r"^cannot reach Redis at .*: connection "
                                                 r"refused: is it running\?$"):
        await probe(url)
    with pytest.raises(ConfigurationError):
        await probe("http://example.com")


@pytest.mark.postgres
async def test_probe_logs_in_to_postgresql_or_says_why(postgres_dsn: str) -> None:
    from pipecat_workers.bus.backends.probe import probe

    assert await probe(postgres_dsn) == ""  # the test server has PGMQ
    base, _, _ = postgres_dsn.rpartition("/")
    with pytest.raises(BusConnectionError, match='database "no_such_db_here" does not exist'):
        await probe(f"{base}/no_such_db_here")


# -- the rate limit itself -------------------------------------------------------------------


def test_rate_limited_log_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), every=30, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "test.ratelimit")
    for _ in range(5):
        log.warning("down: %s", "refused")
    now[0] += 29
    log.warning("down: %s", "refused")
    now[0] += 1
    log.error("down: %s", "refused")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "down: refused"),
        ("ERROR", "down: refused (5 more since the last report)"),
    ]


def test_a_different_problem_is_logged_at_once_and_a_reset_ends_the_silence(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), every=30, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "test.ratelimit")
    log.warning("down: %s", OSError("connection refused"))
    log.warning("down: %s", OSError("connection refused"))
    log.warning("down: %s", OSError("authentication failed"))  # another one: said at once
    log.warning("loop failed (failure %d)", 3)  # a count in the line: the same problem
    log.warning("loop failed (failure %d)", 4)
    log.warning("failed", exc_info=ValueError("x"))
    log.warning("failed", exc_info=ValueError("y"))  # the same type: the same problem
    log.warning("failed", exc_info=KeyError("z"))
    log.reset()
    log.warning("failed", exc_info=KeyError("z"))  # after a success: news again
    assert [r.getMessage() for r in caplog.records] == [
        "down: connection refused", "down: authentication failed", "loop failed (failure 3)",
        "failed", "failed", "failed"]


async def test_a_loop_that_keeps_failing_logs_its_traceback_once_per_period(
        caplog: pytest.LogCaptureFixture) -> None:
    from pipecat_workers.bus.loops import LoopHealth, supervise

    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs < 4:
            raise RuntimeError("a bug")

    health = LoopHealth()
    caplog.set_level(logging.WARNING, "pipecat_workers.loops")
    await asyncio.wait_for(supervise("flaky", body, health), 10)
    assert health.failures("flaky") == 3
    errors = [r for r in caplog.records if r.name == "pipecat_workers.loops"]
    assert len(errors) == 1 and errors[0].exc_info is not None, errors
