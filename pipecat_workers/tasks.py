"""Cancelling our own tasks the one right way: cancel, then await, with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], timeout: float) -> None:
    """Cancel ``tasks`` (never the caller's own) and wait up to ``timeout`` for them to end.

    Waiting matters: a cancelled task is still running its ``finally`` blocks, and one left
    unawaited outlives its owner.
    """
    current = asyncio.current_task()
    pending = [t for t in tasks if t is not None and t is not current and not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)
