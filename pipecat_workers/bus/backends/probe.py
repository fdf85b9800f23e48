"""Is a bus's server there? One round trip, changing nothing on it.

:func:`probe` answers for a ``redis://`` URL (a ``PING``) or a ``postgresql://`` DSN (a login,
and whether PGMQ is installed), with the same one-line errors the buses raise. Starting a bus
would answer too, but a PGMQ bus installs PGMQ and creates a queue: a check should not.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib

from pipecat_workers.bus.backends.unreachable import safe_url, unreachable
from pipecat_workers.errors import BusConnectionError, ConfigurationError, MissingDependencyError

_REDIS = ("redis://", "rediss://", "unix://")
_POSTGRES = ("postgresql://", "postgres://")


async def probe(url: str, *, timeout: float = 5.0) -> str:
    """Reach the server at ``url``; returns a note worth showing ("" when none).

    Args:
        url: A Redis URL or a PostgreSQL DSN.
        timeout: Seconds for the whole probe.

    Raises:
        BusConnectionError: the server cannot be reached, or refuses the login.
        MissingDependencyError: its driver is not installed.
        ConfigurationError: ``url`` is neither.
    """
    if url.startswith(_REDIS):
        probing = _redis(url)
    elif url.startswith(_POSTGRES):
        probing = _postgres(url)
    else:
        raise ConfigurationError(f"cannot probe {safe_url(url)}: expected a redis:// URL or a "
                                 "postgresql:// DSN")
    try:
        async with asyncio.timeout(timeout):
            return await probing
    except TimeoutError as exc:
        raise unreachable("Redis" if url.startswith(_REDIS) else "PostgreSQL", url,
                          exc) from None


def _driver(module: str, feature: str, extra: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(feature, extra, module) from None


async def _redis(url: str) -> str:
    _driver("redis", "RedisBus", "redis")
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        raise unreachable("Redis", url, exc) from None
    except RedisError as exc:  # NOAUTH, a wrong password, ...
        raise BusConnectionError(f"Redis at {safe_url(url)} refused: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return ""


async def _postgres(dsn: str) -> str:
    _driver("pgmq.async_queue", "PgmqBus", "pgmq")
    import asyncpg  # type: ignore[import-untyped]

    from pipecat_workers.bus.backends.pgmq_install import HAS_PGMQ

    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise unreachable("PostgreSQL", dsn, exc) from None
    try:
        installed = await conn.fetchval(HAS_PGMQ)
    except asyncpg.PostgresError as exc:
        raise BusConnectionError(f"PostgreSQL at {safe_url(dsn)}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)
    return "" if installed else "PGMQ is not installed yet: the first worker installs it " \
        "(if its role may create extensions)"
