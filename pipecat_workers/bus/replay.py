"""Refusing stale and replayed messages on a signed channel.

A signing receiver checks each message's id (``<prefix>-<counter>``, a random hex prefix per
sending serializer and a hex counter from 0) and timestamp:

- A message whose ``ts`` is more than ``max_age`` seconds away from the receiver's clock is
  stale.
- Per sender prefix it keeps the highest counter accepted and which of the ``WINDOW``
  (1,024) counters below it were seen. A higher counter is new; one in the window is new
  unless seen; one below the window is refused (too old to tell: every carrier keeps each
  sender's order, so it is a replay). When a prefix is first heard, every lower counter counts
  as seen. So a replay is refused however many messages passed since, and a sender costs
  ``WINDOW`` bits.
- At most ``MAX_SENDERS`` (4,096) prefixes are kept. A new one beyond that evicts the one
  heard least recently; if that one's last message is not yet older than ``max_age``, the
  receiver's floor rises to its timestamp, and a message from a prefix it does not know,
  stamped at or before the floor, is refused (it may come from a forgotten sender). A flood of
  new prefixes (which takes the secret) can delay a new sender whose clock lags, but never
  reopens a replay.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict

WINDOW = 1024  # counters below a sender's highest that are remembered one by one
MAX_SENDERS = 4096  # sender prefixes remembered
_ALL_SEEN = (1 << WINDOW) - 1
_ID = re.compile(r"([0-9a-f]{1,32})-([0-9a-f]{1,16})")


class ReplayGuard:
    """The ids and times a receiver has accepted, as the module docstring says."""

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._senders: OrderedDict[str, _Sender] = OrderedDict()  # least recently heard first
        self._floor = 0.0  # an unknown sender's message stamped at or before this is refused

    def check(self, mid: str, ts: float) -> str | None:
        """Why the message with id ``mid`` sent at ``ts`` is refused (``"stale"``,
        ``"malformed"``, ``"replayed"``), or None, and then it is remembered."""
        now = time.time()
        if not abs(now - ts) <= self._max_age:
            return "stale"
        match = _ID.fullmatch(mid)
        if match is None:
            return "malformed"
        prefix, counter = match[1], int(match[2], 16)
        senders = self._senders
        sender = senders.get(prefix)
        if sender is None:
            if ts <= self._floor:
                return "replayed"
            if len(senders) >= MAX_SENDERS:
                self._forget_a_sender(now)
            senders[prefix] = _Sender(counter, ts)
            return None
        if not sender.accept(counter):
            return "replayed"
        if ts > sender.last_ts:
            sender.last_ts = ts
        senders.move_to_end(prefix)
        return None

    def _forget_a_sender(self, now: float) -> None:
        """Make room: forget the sender heard least recently, raising the floor to its last
        timestamp unless even that has gone stale (then any replay of it is refused as such)."""
        _, forgotten = self._senders.popitem(last=False)
        if forgotten.last_ts + self._max_age >= now and forgotten.last_ts > self._floor:
            self._floor = forgotten.last_ts


class _Sender:
    """What a receiver remembers of one sender's message ids: the highest counter accepted,
    and a bitmap of the ``WINDOW`` counters up to it (bit ``i``: ``top - i`` was seen)."""

    __slots__ = ("top", "seen", "last_ts")

    def __init__(self, counter: int, ts: float) -> None:
        self.top = counter
        self.seen = _ALL_SEEN  # heard first now: every earlier counter counts as seen
        self.last_ts = ts

    def accept(self, counter: int) -> bool:
        """Record ``counter``; False if it was seen, or is too far below the top to tell."""
        ahead = counter - self.top
        if ahead > 0:
            self.seen = (self.seen << ahead | 1) & _ALL_SEEN if ahead < WINDOW else 1
            self.top = counter
            return True
        bit = 1 << -ahead if -ahead < WINDOW else 0
        if not bit or self.seen & bit:
            return False
        self.seen |= bit
        return True
