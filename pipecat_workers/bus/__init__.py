"""The worker bus: messages, routing, serialization and backends.

``RedisBus`` and ``PgmqBus`` are imported on first use, so their drivers stay optional;
``HubBus`` and its ``BusHub`` (the embedded ``local`` bus) need no driver.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipecat_workers.bus.backends.hub import HubBus
from pipecat_workers.bus.core import BusSubscriber, WorkerBus
from pipecat_workers.bus.hub import BusHub
from pipecat_workers.bus.local import AsyncQueueBus
from pipecat_workers.bus.messages import (
    BusActivateWorkerMessage,
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusDuplicateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusHeartbeatMessage,
    BusJobCancelMessage,
    BusJobCheckMessage,
    BusJobRequestMessage,
    BusJobResponseAgainMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndAgainMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusJobUpdateUrgentMessage,
    BusLocalMessage,
    BusMessage,
    BusRegistryRequestMessage,
    BusRunnerLeaveMessage,
    BusSystemFrameMessage,
    BusSystemMessage,
    BusTTSSpeakMessage,
    BusUnregisteredMessage,
    BusWorkerErrorMessage,
    BusWorkerLocalErrorMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    BusWorkerStoppedMessage,
    FrameDirection,
)
from pipecat_workers.bus.serializer import Envelope, JSONMessageSerializer, MessageSerializer
from pipecat_workers.catalogue import register_adapter, register_message
from pipecat_workers.errors import MissingDependencyError

# name -> (backend module, driver module it needs, extra that installs the driver)
_LAZY: dict[str, tuple[str, str, str]] = {
    "RedisBus": ("pipecat_workers.bus.backends.redis", "redis", "redis"),
    "PgmqBus": ("pipecat_workers.bus.backends.pgmq", "pgmq.async_queue", "pgmq"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, driver, extra = _LAZY[name]
    try:
        importlib.import_module(driver)
    except ImportError:
        raise MissingDependencyError(name, extra, driver) from None
    return getattr(importlib.import_module(module_name), name)


__all__ = [
    "AsyncQueueBus",
    "BusActivateWorkerMessage",
    "BusAddWorkerMessage",
    "BusCancelMessage",
    "BusCancelWorkerMessage",
    "BusDataMessage",
    "BusDeactivateWorkerMessage",
    "BusDuplicateWorkerMessage",
    "BusEndMessage",
    "BusEndWorkerMessage",
    "BusFrameMessage",
    "BusHeartbeatMessage",
    "BusHub",
    "BusJobCancelMessage",
    "BusJobCheckMessage",
    "BusJobRequestMessage",
    "BusJobResponseAgainMessage",
    "BusJobResponseMessage",
    "BusJobResponseUrgentMessage",
    "BusJobStreamDataMessage",
    "BusJobStreamEndAgainMessage",
    "BusJobStreamEndMessage",
    "BusJobStreamStartMessage",
    "BusJobUpdateMessage",
    "BusJobUpdateRequestMessage",
    "BusJobUpdateUrgentMessage",
    "BusLocalMessage",
    "BusMessage",
    "BusRegistryRequestMessage",
    "BusRunnerLeaveMessage",
    "BusSubscriber",
    "BusSystemFrameMessage",
    "BusSystemMessage",
    "BusTTSSpeakMessage",
    "BusUnregisteredMessage",
    "BusWorkerErrorMessage",
    "BusWorkerLocalErrorMessage",
    "BusWorkerReadyMessage",
    "BusWorkerRegistryMessage",
    "BusWorkerStoppedMessage",
    "Envelope",
    "FrameDirection",
    "HubBus",
    "JSONMessageSerializer",
    "MessageSerializer",
    "PgmqBus",
    "RedisBus",
    "WorkerBus",
    "register_adapter",
    "register_message",
]
