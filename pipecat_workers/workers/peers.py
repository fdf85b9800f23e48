"""The peers a runner knows, kept bounded, and the checks that keep hostile values out of them.

Membership reads names, incarnations, intervals, digests and worker lists from other
processes. Messages are validated before they are delivered, but membership does not rely on
it: every value it keeps goes through the checks below first, so no message can make a
comparison or an arithmetic in its loop raise. A message that fails them is dropped and
counted. The tables are bounded: at most ``MAX_PEERS`` peers (a newcomer beyond that evicts
the oldest peer nobody has vouched for, or is refused), a few remembered leaves, and a few
runners heard of only through presence.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from pipecat_workers.types import MAX_JOB_NAMES, WorkerRegistryEntry

MAX_PEERS = 4096  # runners a runner keeps track of on one channel
MAX_NAME = 1024  # characters of a runner or worker name
MAX_DIGEST = 128
MAX_ENTRIES = 10_000  # workers in one snapshot
MAX_INTERVAL = 60.0  # a peer's heartbeat interval, at most (seconds)
MIN_INTERVAL = 0.001
_MAX_LEFT = 1024  # leaves remembered
_MAX_HEARD = 1024  # runners heard of through presence only, waiting for their snapshot


@dataclass(slots=True)
class Peer:
    """What a runner knows of another runner on the channel.

    Attributes:
        incarnation: The peer's start time (its newest heard).
        last_seen: Loop time of its last sign of life (a heartbeat, or the presence).
        interval: Its heartbeat interval.
        digest: The digest of its last snapshot applied here.
        stats: Its counters, from its last heartbeat that carried them.
        confirmed: The backend's presence vouches for it (always, without a presence).
        absent_since: Loop time since which the presence has not seen it, if it has not.
    """

    incarnation: float
    last_seen: float
    interval: float
    digest: str = ""
    stats: dict[str, Any] | None = None
    probed: bool = False
    confirmed: bool = True
    absent_since: float | None = None
    greeted: bool = False  # it was sent our snapshot since it became known
    wanted: bool = False  # its snapshot should be asked for (once it is confirmed)
    asked_at: float = -math.inf  # loop time its snapshot was last asked for
    challenged_at: float = -math.inf  # loop time it was last probed over a claimed name


# -- checks ---------------------------------------------------------------------------------


def name_of(value: object) -> str | None:
    """A usable runner or worker name, or ``None``."""
    if isinstance(value, str) and 0 < len(value) <= MAX_NAME:
        return value
    return None


def number_of(value: object) -> float | None:
    """A finite number (not a bool), as a float, or ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def digest_of(value: object) -> str:
    """A digest, or "" when it is not one."""
    return value if isinstance(value, str) and len(value) <= MAX_DIGEST else ""


def interval_of(value: object, default: float) -> float:
    """A heartbeat interval within [MIN_INTERVAL, MAX_INTERVAL]; ``default`` if not a number."""
    number = number_of(value)
    if number is None:
        return default
    return min(max(number, MIN_INTERVAL), MAX_INTERVAL)


def entries_of(value: object) -> list[WorkerRegistryEntry] | None:
    """The worker entries of a snapshot, each rebuilt from checked fields; ``None`` if the
    list is not one, is too long, or holds anything but entries with a usable name (and job
    names, if they list any)."""
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        return None
    entries = []
    for item in value:
        if not isinstance(item, WorkerRegistryEntry):
            return None
        name = name_of(item.name)
        if name is None:
            return None
        parent = name_of(item.parent)
        jobs = job_names_of(item.jobs)
        if jobs is False:
            return None
        entries.append(WorkerRegistryEntry(
            name=name, parent=parent, active=item.active is True, bridged=item.bridged is True,
            started_at=number_of(item.started_at), jobs=jobs, any_job=item.any_job is True,
            relay=item.relay is True))
    return entries


def job_names_of(value: object) -> list[str] | Literal[False] | None:
    """An entry's job names: sorted and distinct; ``None`` if it has none (a peer that does
    not announce them); ``False`` if they are not a list of at most ``MAX_JOB_NAMES`` usable
    names."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_JOB_NAMES:
        return False
    names = [name_of(item) for item in value]
    if None in names:
        return False
    return sorted({name for name in names if name is not None})


_STATS_KEYS = ("jobs", "workers", "loops")  # what `workers ps` reads of a peer's counters
_MAX_STATS = 16 * 1024  # bytes of a peer's counters kept, once encoded


def shared_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """What a runner sends of its counters: what its peers and tools keep."""
    return {k: stats[k] for k in _STATS_KEYS if k in stats}


def stats_of(value: object) -> dict[str, Any] | None:
    """The part of a peer's counters worth keeping: the keys tools read, and only if small
    (a peer's counters are kept for every peer, and anyone may send some)."""
    if not isinstance(value, dict):
        return None
    kept = {k: value[k] for k in _STATS_KEYS if isinstance(value.get(k), dict)}
    try:
        small = len(json.dumps(kept, default=str)) <= _MAX_STATS
    except (TypeError, ValueError, RecursionError):
        small = False
    return kept if small else None


# -- bounded tables -------------------------------------------------------------------------


@dataclass(slots=True)
class Book:
    """Peers, and the runners membership remembers without counting them as peers."""

    peers: dict[str, Peer] = field(default_factory=dict)
    # Peers the presence has not vouched for, or has lost sight of, oldest first.
    doubtful: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # runner -> (the incarnation that said it leaves, loop time it did)
    left: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)
    # Runners the presence shows that sent us nothing yet -> (loop time heard, asks so far)
    heard: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)
    refused: int = 0  # peers refused because the book was full

    def make_room(self) -> str | None:
        """Room for one more peer: evicts the oldest doubtful one if the book is full.
        Returns the evicted name, "" if there was room, ``None`` if there is none."""
        if len(self.peers) < MAX_PEERS:
            return ""
        for name in self.doubtful:
            peer = self.peers.get(name)
            if peer is not None and not peer.confirmed:
                del self.peers[name]
                del self.doubtful[name]
                return name
        self.refused += 1
        return None

    def doubt(self, name: str) -> None:
        self.doubtful[name] = None

    def trust(self, name: str) -> None:
        self.doubtful.pop(name, None)

    def remove(self, name: str) -> Peer | None:
        self.doubtful.pop(name, None)
        return self.peers.pop(name, None)

    def remember_leave(self, name: str, incarnation: float, now: float) -> None:
        self.left[name] = (incarnation, now)
        self.left.move_to_end(name)
        while len(self.left) > _MAX_LEFT:
            self.left.popitem(last=False)

    def hear(self, name: str, now: float) -> None:
        if name in self.heard or name in self.peers:
            return
        self.heard[name] = (now, 0)
        while len(self.heard) > _MAX_HEARD:
            self.heard.popitem(last=False)
