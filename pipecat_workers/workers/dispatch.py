"""Which built-in handler of a worker a bus message goes to.

A table by message class, filled in for subclasses the first time one arrives (a message
class inherits its base's handler). Lifecycle handlers that worker classes extend (a pipeline
worker adds to activation and cancellation) are looked up on the worker; the job handlers
are the mixins' own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pipecat_workers.bus.messages import (
    BusActivateWorkerMessage,
    BusCancelWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusJobCancelMessage,
    BusJobCheckMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusJobUpdateUrgentMessage,
    BusWorkerErrorMessage,
    BusWorkerLocalErrorMessage,
)
from pipecat_workers.jobs.executor import JobExecutorMixin
from pipecat_workers.jobs.requester import JobRequesterMixin

Dispatch = Callable[[Any, Any], Awaitable[None]]


async def ignored(worker: Any, message: Any) -> None:
    """Messages a worker never handles itself (frames: its pipeline's bridge does)."""


async def _no_builtin(worker: Any, message: Any) -> None:
    return None


def _overridable(method: str) -> Dispatch:
    """Dispatch to a method that subclasses extend: looked up on the worker."""

    async def dispatch(worker: Any, message: Any) -> None:
        await getattr(worker, method)(message)

    return dispatch


HANDLERS: dict[type, Dispatch] = {
    BusFrameMessage: ignored,
    BusActivateWorkerMessage: _overridable("_handle_activate"),
    BusDeactivateWorkerMessage: _overridable("_handle_deactivate"),
    BusEndWorkerMessage: _overridable("_handle_end_worker"),
    BusCancelWorkerMessage: _overridable("_handle_cancel_worker"),
    BusWorkerErrorMessage: _overridable("_handle_worker_error"),
    BusWorkerLocalErrorMessage: _overridable("_handle_worker_error"),
    BusJobRequestMessage: JobExecutorMixin._handle_job_request,
    BusJobResponseMessage: JobRequesterMixin._handle_job_response,
    BusJobResponseUrgentMessage: JobRequesterMixin._handle_job_response,
    BusJobUpdateMessage: JobRequesterMixin._handle_job_update,
    BusJobUpdateUrgentMessage: JobRequesterMixin._handle_job_update,
    BusJobUpdateRequestMessage: JobExecutorMixin._handle_job_update_request,
    BusJobCancelMessage: JobExecutorMixin._handle_job_cancel,
    BusJobCheckMessage: JobExecutorMixin._handle_job_check,
    BusJobStreamStartMessage: JobRequesterMixin._handle_stream_start,
    BusJobStreamDataMessage: JobRequesterMixin._handle_stream_data,
    BusJobStreamEndMessage: JobRequesterMixin._handle_stream_end,
}


"""The built-in handler of each message class met so far (:func:`ignored` for frames); look a
class up here first (the hot path), then with :func:`builtin_handler`."""


def builtin_handler(cls: type) -> Dispatch:
    """The built-in handler of a message class: its base's, for a class not met before."""
    handler = HANDLERS.get(cls)
    if handler is None:
        for base in cls.__mro__[1:]:
            handler = HANDLERS.get(base)
            if handler is not None:
                break
        else:
            handler = _no_builtin
        HANDLERS[cls] = handler
    return handler
