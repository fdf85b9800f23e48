"""What a backend says when its server cannot be reached: one line a person can act on.

Drivers word a failed connection in their own way (``Error 111 connecting to
127.0.0.1:6379. Connect call failed ('127.0.0.1', 6379).``). Every backend turns it into the
same shape instead: which server, where (the URL without its password), why in a few words
and, when that is likely to help, what to check::

    cannot reach Redis at redis://localhost:6379: connection refused: is it running?

:func:`start_when_reachable` starts a bus that must wait for its server, and says so in a few
lines a minute however long that takes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.loops import RateLimitedLog
from pipecat_workers.errors import BusConnectionError

logger = logging.getLogger("pipecat_workers.bus")

REPORT_EVERY = 30.0  # seconds between two log lines about a server that stays unreachable
RETRY_MAX = 5.0  # seconds between two attempts to reach it, at most
_RETRY_FIRST = 0.1

_PASSWORD = re.compile(r"(//[^:/@]*):[^@/]*@")  # for a URL urlsplit cannot take
_SECRET_PARAMETERS = frozenset({"password", "passwd", "sslpassword", "pass"})
# The driver's own name of an error, for failures that are not OS errors (asyncpg, redis).
_BY_NAME = {
    "AuthenticationError": "authentication failed: check the user and password in the URL",
    "AuthenticationWrongNumberOfArgsError": "authentication failed: check the password in "
                                            "the URL",
    "InvalidPasswordError": "authentication failed: check the user and password in the URL",
    "InvalidAuthorizationSpecificationError": "",  # its own message names the role
    "InvalidCatalogNameError": "",  # 'database "x" does not exist'
}


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit to print or log: the one in its
    address (up to the last ``@``, as the drivers read it) and any in its query
    (``?password=...``, which redis-py and PostgreSQL accept too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _PASSWORD.sub(r"\1:***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{host}"
    query = "&".join(
        f"{name}=***" if equals and name.lower() in _SECRET_PARAMETERS else
        f"{name}{equals}{value}"
        for name, equals, value in (item.partition("=") for item in parts.query.split("&")))
    # Replaced in place (urlunsplit would drop an empty '//' host, as in unix:///path).
    shown = url.replace(parts.netloc, netloc, 1) if netloc != parts.netloc else url
    return shown.replace(f"?{parts.query}", f"?{query}", 1) if query != parts.query else shown


def reason(error: BaseException) -> str:
    """A few words on why a connection failed, from the error or what it wraps."""
    for exc in _chain(error):
        if isinstance(exc, socket.gaierror):
            return "unknown host (the name does not resolve)"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused: is it running?"
        if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
            return "no answer in time: is the host and port right, and is it reachable?"
        if isinstance(exc, FileNotFoundError):
            return "no such socket: is it running?"
        hint = _BY_NAME.get(type(exc).__name__)
        if hint is not None:
            return hint or str(exc)
    return str(error) or type(error).__name__


def unreachable(server: str, url: str, error: BaseException) -> BusConnectionError:
    """The error a backend raises when it cannot connect to ``server`` at ``url``.

    Args:
        server: The server's kind, as people call it (``"Redis"``, ``"PostgreSQL"``).
        url: Where it was looked for; printed without its password.
        error: What the driver raised.
    """
    return BusConnectionError(f"cannot reach {server} at {safe_url(url)}: {reason(error)}")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it, and so on (each once)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


async def start_when_reachable(
    bus: WorkerBus, *, hint: str = "",
    on_waiting: Callable[[BusConnectionError], None] | None = None,
    report_every: float = REPORT_EVERY, retry_max: float = RETRY_MAX,
) -> None:
    """Start ``bus``, trying again while its server cannot be reached, until it starts.

    A process that needs its bus (a worker under a supervisor, say) waits here instead of
    failing and being restarted in a loop. What stops it is logged once at WARNING, then at
    most once per ``report_every`` seconds with the count of failed attempts meanwhile, so a
    server that stays down costs a few lines a minute, not a traceback per attempt.

    Args:
        bus: A bus not started yet (bind it to its runner first: construct the runner).
        hint: Appended to the logged line: what to check (``set REDIS_URL (channels.main.url,
            workers.yaml:5)``, say).
        on_waiting: Called with the error after each failed attempt.
        report_every: Seconds between two log lines about the same failure.
        retry_max: The longest pause between attempts (they start at a tenth of a second).

    Raises:
        BusError: any error other than an unreachable server (a bad configuration, say).
    """
    log = RateLimitedLog(logger, every=report_every)
    delay = _RETRY_FIRST
    while True:
        try:
            await bus.start()
            return
        except BusConnectionError as exc:
            if on_waiting is not None:
                on_waiting(exc)
            log.warning("%s%s; trying again", exc, f" {hint}" if hint else "")
        await asyncio.sleep(delay)
        delay = min(delay * 2, retry_max)
