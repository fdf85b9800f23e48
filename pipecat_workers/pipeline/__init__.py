"""Pipecat pipelines as workers: ``pip install 'pipecat-workers[pipecat]'``.

A transport worker's pipeline holds a :class:`BusBridgeProcessor`; the active bridged worker
(an :class:`LLMWorker`, say) is spliced into it across the bus, in this process or another,
and hands the conversation to the next one with ``activate_worker(..., deactivate_self=True)``.

Importing this package registers every frame type of ``pipecat.frames.frames`` for the wire;
register your own with :func:`register_frame`. The core library never imports this package
(nor pipecat).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pipecat_workers.pipeline.wire  # noqa: F401  (registers pipecat's frames for the wire)

if TYPE_CHECKING:
    from pipecat_workers.bus.messages import BusFrameMessage as BusFrameMessage
    from pipecat_workers.bus.messages import BusSystemFrameMessage as BusSystemFrameMessage
    from pipecat_workers.pipeline.bridge import BusBridgeProcessor as BusBridgeProcessor
    from pipecat_workers.pipeline.llm import LLMWorker as LLMWorker
    from pipecat_workers.pipeline.llm import LLMWorkerActivationArgs as LLMWorkerActivationArgs
    from pipecat_workers.pipeline.runtime import PipelineParams as PipelineParams
    from pipecat_workers.pipeline.runtime import PipelineStartError as PipelineStartError
    from pipecat_workers.pipeline.scripted import Rule as Rule
    from pipecat_workers.pipeline.scripted import ScriptedLLMService as ScriptedLLMService
    from pipecat_workers.pipeline.tools import tool as tool
    from pipecat_workers.pipeline.wire import copy_frame as copy_frame
    from pipecat_workers.pipeline.wire import register_frame as register_frame
    from pipecat_workers.pipeline.wire_values import RemoteError as RemoteError
    from pipecat_workers.pipeline.worker import PipelineWorker as PipelineWorker
    from pipecat_workers.types import WorkerReadyData as WorkerReadyData

_EXPORTS: dict[str, str] = {
    "BusBridgeProcessor": "pipecat_workers.pipeline.bridge",
    "BusFrameMessage": "pipecat_workers.bus.messages",
    "BusSystemFrameMessage": "pipecat_workers.bus.messages",
    "LLMWorker": "pipecat_workers.pipeline.llm",
    "LLMWorkerActivationArgs": "pipecat_workers.pipeline.llm",
    "PipelineParams": "pipecat_workers.pipeline.runtime",
    "PipelineStartError": "pipecat_workers.pipeline.runtime",
    "PipelineWorker": "pipecat_workers.pipeline.worker",
    "RemoteError": "pipecat_workers.pipeline.wire_values",
    "Rule": "pipecat_workers.pipeline.scripted",
    "ScriptedLLMService": "pipecat_workers.pipeline.scripted",
    "WorkerReadyData": "pipecat_workers.types",
    "copy_frame": "pipecat_workers.pipeline.wire",
    "register_frame": "pipecat_workers.pipeline.wire",
    "tool": "pipecat_workers.pipeline.tools",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
