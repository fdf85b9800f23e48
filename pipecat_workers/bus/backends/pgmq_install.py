"""Installing PGMQ into a database that has none, once, whoever gets there first.

:class:`~pipecat_workers.bus.backends.pgmq.PgmqBus` calls :func:`ensure_pgmq` when it starts:
``CREATE EXTENSION`` if the server offers it, else the SQL that the ``pgmq`` package ships,
under an advisory lock so that processes starting together do not race.
"""

from __future__ import annotations

import contextlib
import logging
from importlib.resources import files
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from pipecat_workers.errors import BusConnectionError

logger = logging.getLogger("pipecat_workers.bus.pgmq")

_INSTALL_LOCK = 0x7069706563617400  # advisory lock key that serialises PGMQ installs

HAS_PGMQ = ("SELECT to_regprocedure('pgmq.send_topic(text,jsonb)') IS NOT NULL AND "
            "to_regprocedure('pgmq.enable_notify_insert(text,integer)') IS NOT NULL")


async def ensure_pgmq(conn: Any, down: tuple[type[BaseException], ...],
                      failed: tuple[type[BaseException], ...], timeout: float) -> None:
    """Install PGMQ if the database has none: ``CREATE EXTENSION`` if the server offers it,
    else the SQL the ``pgmq`` package ships. An advisory lock keeps processes from racing."""
    if await conn.fetchval(HAS_PGMQ, timeout=timeout):
        return
    sql_file = files("pgmq").joinpath("sql", "pgmq.sql")
    # A session lock, so that the check below runs in a transaction of its own and sees what
    # another process installed while we waited.
    await conn.execute("SELECT pg_advisory_lock($1)", _INSTALL_LOCK, timeout=timeout)
    try:
        if await conn.fetchval(HAS_PGMQ):
            return
        if await conn.fetchval("SELECT to_regnamespace('pgmq') IS NOT NULL"):
            raise BusConnectionError(
                "the PGMQ in this database has no topics or insert notifications: upgrade it "
                "(PgmqBus needs PGMQ 1.13, as shipped with the pgmq package >= 1.1.4)")
        if await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name='pgmq'"):
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pgmq")
        else:
            async with conn.transaction():
                await conn.execute(sql_file.read_text(encoding="utf-8"))
    except asyncpg.PostgresError as exc:
        if isinstance(exc, down):
            raise
        raise BusConnectionError(
            f"PGMQ is not installed in this database and this role cannot install it ({exc}); "
            f"install it once as an owner: CREATE EXTENSION pgmq, or psql -f {sql_file}"
        ) from exc
    finally:
        with contextlib.suppress(*failed):
            await conn.execute("SELECT pg_advisory_unlock($1)", _INSTALL_LOCK)
    logger.info("installed PGMQ in the database")
