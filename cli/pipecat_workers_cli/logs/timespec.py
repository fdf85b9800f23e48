"""The ``--since`` value of ``workers logs``: a duration back from now, or a point in time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(
    r"(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?",
    re.IGNORECASE,
)
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_since(text: str, now: datetime) -> datetime:
    """The aware UTC time that ``text`` names, relative to the aware ``now``.

    Accepts a duration back from ``now`` (``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``, or a
    bare number of seconds) or a time (``2026-11-22T05:00:00Z``, ``2026-11-22 05:00``,
    ``2026-11-22``); a time without an offset is local time, as a user at a terminal means.

    Raises:
        ValueError: ``text`` is neither, with a one-line message for the user.
    """
    try:
        return _parse(text.strip(), now).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            "--since: expected a duration like 10m or a time like 2026-11-22T05:00,"
            f" got {text!r}"
        ) from None


def _parse(value: str, now: datetime) -> datetime:
    if _SECONDS.fullmatch(value):
        return now - timedelta(seconds=float(value))
    match = _DURATION.fullmatch(value)
    if value and match is not None:
        parts = {unit: float(amount or 0) for unit, amount in match.groupdict().items()}
        return now - timedelta(
            days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"]
        )
    # A naive time is read as local time by astimezone(), as a user at a terminal means.
    return datetime.fromisoformat(value)
