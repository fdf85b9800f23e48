"""The dashboard's eyes on the bus: an observer per channel, as ``workers tail`` has.

On the embedded bus the observer sees every message; on Redis and PGMQ only what reaches
every runner (a message for one worker travels to its process only), so there the page's
edges and rates are partial, and its job counters come from the runners' heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable

from pipecat_workers.bus import (
    BusActivateWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusMessage,
    BusWorkerReadyMessage,
)
from pipecat_workers.bus.messages import BusJobResponseAgainMessage, BusJobResponseUrgentMessage
from pipecat_workers.errors import WorkersError
from pipecat_workers.jobs.types import JobStatus
from pipecat_workers.monitor import BusMonitor
from pipecat_workers_cli.commands.channel import Where
from pipecat_workers_cli.dashboard.traffic import Traffic

logger = logging.getLogger("pipecat_workers_cli.dashboard")

RETRY = 2.0  # seconds between attempts to join a channel that cannot be reached
# `workers call` joins as workers-call-<pid>: every call one name, shown as one.
_CALLER = re.compile(r"workers-call-\d+")
CALLER = "workers call"


def who(name: str | None) -> str | None:
    """The name a message's end is shown under."""
    return CALLER if name is not None and _CALLER.fullmatch(name) else name


def observe(traffic: Traffic, channel: str, message: BusMessage) -> None:
    """Count one message seen on ``channel``. Membership chatter (registry, heartbeats) is
    not traffic between workers and is left out."""
    source, target = who(message.source) or "", who(message.target)
    if isinstance(message, BusJobResponseUrgentMessage):
        traffic.message(source, target)
        traffic.job_answered(str(message.job_id), source, message.status == JobStatus.COMPLETED)
        return
    if not isinstance(message, BusDataMessage) or isinstance(message, BusWorkerReadyMessage):
        return
    traffic.message(source, target)
    if isinstance(message, BusJobRequestMessage):
        traffic.job_sent(str(message.job_id), target, channel)
    elif isinstance(message, BusJobResponseAgainMessage):
        pass  # the same answer sent again: counted the first time
    elif isinstance(message, BusJobResponseMessage):
        traffic.job_answered(str(message.job_id), source, message.status == JobStatus.COMPLETED)
    elif isinstance(message, BusActivateWorkerMessage):
        traffic.activated(channel, source, target)
    elif isinstance(message, BusDeactivateWorkerMessage):
        traffic.deactivated(channel, target)


async def watch(key: str, where: Callable[[], Where | None], traffic: Traffic) -> None:
    """Observe one channel until cancelled, joining again whenever it is lost.

    ``where`` says how to reach it now (the embedded bus's socket can change with the
    supervisor), or None while it cannot be reached at all.
    """
    ours = f"workers-dashboard-{os.getpid()}-"
    # Unique per watch: the one it replaces (after an edit) may still be saying goodbye.
    name = f"{ours}{key}-{os.urandom(3).hex()}"
    told = False
    while True:
        found = where()
        if found is None:
            await asyncio.sleep(RETRY)
            continue
        bus = found.bus(everything=True)

        def seen(message: BusMessage) -> None:
            if not message.source.startswith(ours):
                try:
                    observe(traffic, key, message)
                except Exception:  # a message of a shape we did not expect: skip it
                    logger.debug("dashboard: message not counted", exc_info=True)

        monitor = BusMonitor(bus, name=name, on_message=seen)
        try:
            await monitor.start()
        except (WorkersError, OSError) as exc:
            if not told:
                logger.warning("dashboard: cannot observe channel '%s' yet: %s", key, exc)
                told = True
            await asyncio.sleep(RETRY)
            continue
        told = False
        try:
            await _until_lost(bus)
        finally:
            with contextlib.suppress(Exception):
                await monitor.stop()


async def _until_lost(bus: object) -> None:
    """Return when the bus says it is disconnected (checked twice a second)."""
    while bool(getattr(bus, "connected", True)):
        await asyncio.sleep(0.5)
