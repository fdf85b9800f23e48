"""Which frames may cross the bus, and how they travel.

Lifecycle frames never cross: a pipeline's start, end, cancel and stop, and the requests to end
or cancel a worker, belong to the pipeline that has them (D15). A fatal error does not cross
either: it cancels the worker it happened in, not its peers. Everything else may cross, and
system frames (interruptions, speech events, input audio) travel with system priority.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    StartFrame,
    StopFrame,
    SystemFrame,
    WorkerFrame,
    WorkerSystemFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from pipecat_workers.bus.messages import BusFrameMessage, BusSystemFrameMessage
from pipecat_workers.catalogue import adapter_for, adapter_named, lookup, type_name

LIFECYCLE_FRAMES: tuple[type[Frame], ...] = (
    StartFrame, EndFrame, CancelFrame, StopFrame, WorkerFrame, WorkerSystemFrame,
)

Publish = Callable[[Frame, FrameDirection], Awaitable[bool]]


def stays_local(frame: Frame) -> bool:
    """Whether a frame never crosses the bus, whatever the pipeline says."""
    if isinstance(frame, LIFECYCLE_FRAMES):
        return True
    return isinstance(frame, ErrorFrame) and bool(frame.fatal)


def type_names(types: tuple[type[Frame], ...]) -> list[str]:
    """The wire names of frame types (to tell a peer which ones to keep local)."""
    names = []
    for cls in types:
        adapter = adapter_for(cls)
        name = adapter.name if adapter is not None else type_name(cls)
        if name is not None:
            names.append(name)
    return names


def named_types(names: list[str]) -> tuple[type[Frame], ...]:
    """The frame types registered under wire names (unknown names are skipped)."""
    types: list[type[Frame]] = []
    for name in names:
        adapter = adapter_named(name)
        cls = adapter.cls if adapter is not None else lookup(name)
        if isinstance(cls, type) and issubclass(cls, Frame):
            types.append(cls)
    return tuple(types)


def frame_message(
    *, source: str, target: str | None, frame: Frame, direction: FrameDirection,
    bridge: str | None,
) -> BusFrameMessage:
    """The bus message for a frame: system frames keep their priority on the bus (D29)."""
    cls = BusSystemFrameMessage if isinstance(frame, SystemFrame) else BusFrameMessage
    return cls(source=source, target=target, frame=frame, direction=direction, bridge=bridge)


def direction_of(message: Any) -> FrameDirection:
    """The pipecat direction of a frame message, or of a returned frame (whichever enum the
    sender used)."""
    value = getattr(message.direction, "value", message.direction)
    return FrameDirection.UPSTREAM if value == FrameDirection.UPSTREAM.value \
        else FrameDirection.DOWNSTREAM
