"""AsyncQueueBus: the in-process bus.

Delivery guarantee: exactly once and in order per (sender, target) pair for every subscriber
in the process, with no serialization (subscribers receive the very object that was sent).
Data messages are dropped, counted and logged only when a subscriber's queue is full; system
messages are never dropped.
"""

from __future__ import annotations

import logging

from pipecat_workers.bus.core import WorkerBus
from pipecat_workers.bus.messages import BusMessage

logger = logging.getLogger("pipecat_workers.bus")


class AsyncQueueBus(WorkerBus):
    """The default bus: every worker lives in this process."""

    async def _publish(self, message: BusMessage) -> None:
        if message.target is not None:
            # Nobody of that name is here (a typo, or a worker that stopped): count and say so.
            self.count_undeliverable(message)
