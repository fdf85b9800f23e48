"""The bus messages of the bridge protocol between a bridge and the workers that serve it.

A :class:`~pipecat_workers.pipeline.bridge.BusBridgeProcessor` cuts a pipeline in two; the
bridged worker that is *active* for it is spliced into the cut. The bridge sends its frames to
that one worker only, and accepts frames only from it, so they never reach anyone else:

* an activated bridged worker sends :class:`BusBridgeJoinMessage` to the bridge's worker
  before it publishes anything; the bridge takes it as its peer (telling the previous peer, if
  still active, to deactivate) and sends it what it kept while it had none;
* a bridged worker that deactivates sends :class:`BusBridgeLeaveMessage`; until the next peer
  joins, the bridge keeps data frames for it and lets system frames pass;
* a worker that stops being the bridge's peer (it left, or another took over) is sent
  :class:`BusBridgeFlushMessage` after the last frame the bridge sent it; frames that reached
  it after it left come back in :class:`BusBridgeReturnMessage`, then
  :class:`BusBridgeReturnedMessage` says that was all, and the bridge sends them on to its
  next peer ahead of anything newer (D9: frames in flight during a hand-off are not lost);
* a drain (``flush_pipeline``) ends with :class:`BusDrainDoneMessage` from the worker whose
  sink the probe reached last, so it completes on every bus, not only in one process.

A join travels with system priority, so it reaches the bridge before any frame its sender
sends after it, system frames included; a leave and a drain's end are data messages, so they
arrive after the data frames their sender sent before them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pipecat_workers.bus.messages import BusDataMessage, BusSystemMessage
from pipecat_workers.catalogue import register_message
from pipecat_workers.validate import MaxLen, Name


@register_message(name="bridge.join")
@dataclass(kw_only=True, slots=True)
class BusBridgeJoinMessage(BusSystemMessage):
    """A bridged worker (source) became active for a bridge of the target worker.

    Attributes:
        bridge: The bridge's tag (``None`` for an untagged bridge).
        exclude_frames: Wire names of the frame types the worker keeps to itself: the bridge
            lets those pass locally instead of sending them to it.
    """

    bridge: Name | None = None
    exclude_frames: Annotated[list[Name], MaxLen(256)] = field(default_factory=list)


@register_message(name="bridge.leave")
@dataclass(kw_only=True, slots=True)
class BusBridgeLeaveMessage(BusDataMessage):
    """A bridged worker (source) is no longer active for a bridge of the target worker."""

    ESSENTIAL: ClassVar[bool] = True

    bridge: Name | None = None


@register_message(name="pipeline.drained")
@dataclass(kw_only=True, slots=True)
class BusDrainDoneMessage(BusDataMessage):
    """The drain probe ``drain_id`` of the target worker has made its whole trip."""

    ESSENTIAL: ClassVar[bool] = True

    drain_id: Name


@register_message(name="bridge.flush")
@dataclass(kw_only=True, slots=True)
class BusBridgeFlushMessage(BusDataMessage):
    """The bridge of the source worker has sent the target (no longer its peer) its last
    frame: frames the target got after leaving should come back now."""

    ESSENTIAL: ClassVar[bool] = True

    bridge: Name | None = None


@register_message(name="bridge.return")
@dataclass(kw_only=True, slots=True)
class BusBridgeReturnMessage(BusDataMessage):
    """A frame that reached the source after it had left the target's bridge, sent back for
    the bridge's next peer."""

    bridge: Name | None = None
    frame: Any = None
    direction: Any = None


@register_message(name="bridge.returned")
@dataclass(kw_only=True, slots=True)
class BusBridgeReturnedMessage(BusDataMessage):
    """Every frame the bridge's flush covered has come back (the answer to a flush)."""

    ESSENTIAL: ClassVar[bool] = True

    bridge: Name | None = None
