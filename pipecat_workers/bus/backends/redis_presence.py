"""RedisPresence: who is on a Redis channel, from one sorted set, without heartbeats.

Each runner keeps a member in the sorted set ``<channel>:presence``: its name, scored with
the server time (ms) at which it becomes *overdue*, three sweep periods ahead. Every half
heartbeat interval a runner runs one script that refreshes its own score and returns, in the
same round trip, the server time, the number of members, the overdue ones (normally none) and
the scores of the runners it was asked to watch. So an idle channel costs each runner two
small round trips a second, whatever the number of runners, and the reply grows only with the
number of runners that are in trouble.

- An overdue runner whose own channel has no subscriber any more (``PUBSUB NUMSUB``: a killed
  process's connection is closed by its kernel) is reported gone for certain; otherwise (a
  stalled process, say) as absent since its last refresh, and membership waits.
- When the number of members is not what the runner accounts for (a join or a leave it did
  not hear of, a purge, a server that restarted empty), it reads the whole set once and
  reports who came and who went; a runner missing from it is reported as absent, not
  certainly gone (it may be reconnecting).
- A runner that stops removes its member; members overdue for ``purge`` are removed by
  whoever sweeps next; the key expires if nobody sweeps at all.

Scores use the server's clock (``TIME`` in the script), so the machines' clocks may differ.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipecat_workers.bus.loops import LoopHealth, next_tick, start_supervised
from pipecat_workers.bus.presence import Presence, PresenceListener
from pipecat_workers.tasks import cancel_and_wait

logger = logging.getLogger("pipecat_workers.bus.redis")

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_MAX_WATCH = 256  # runners checked per sweep
_MAX_READ = 4096  # members read by a full read
_WATCH_DELAY = 0.05  # seconds from a watch to the sweep that answers it

# KEYS[1]: the set. ARGV: runner, overdue ms, purge ms, key lifetime ms, "beat" or "leave",
# then the runners to watch. Returns {now ms, members, {overdue name, score, ...}, {scores}}.
_SWEEP = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] == 'leave' then
  redis.call('ZREM', key, ARGV[1])
else
  redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(ARGV[3]))
if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ARGV[4]) end
local overdue = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 256)
local watched = {}
for i = 6, #ARGV do watched[#watched + 1] = redis.call('ZSCORE', key, ARGV[i]) or '' end
return {tostring(now), redis.call('ZCARD', key), overdue, watched}
"""
# KEYS[1]: the set; ARGV[1]: how many. Returns {now ms, {present name, ...}}.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {tostring(now), redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0,
                                  tonumber(ARGV[1]))}
"""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class RedisPresence(Presence):
    """Presence on one Redis channel for one runner (see the module's doc)."""

    def __init__(self, client: Redis, *, channel: str, runner: str,
                 runner_channel: Callable[[str], str], health: LoopHealth) -> None:
        self._client = client
        self._key = f"{channel}:presence"
        self._runner = runner
        self._runner_channel = runner_channel  # a runner's own pub/sub channel
        self._health = health
        self._sweep = client.register_script(_SWEEP)
        self._read = client.register_script(_READ)
        self._listener: PresenceListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._period = 0.5
        self._present: set[str] = set()
        self._absent: dict[str, bool] = {}  # reported absent -> whether for certain
        self._watch: dict[str, None] = {}
        self._members = -1  # the set's size when it was last read whole
        self._last_ok: float | None = None  # server time (ms) of the last sweep that worked
        self._soon = asyncio.Event()  # a watch wants an answer before the next sweep

    # -- Presence ---------------------------------------------------------------------------

    async def join(self, listener: PresenceListener, interval: float) -> None:
        self._listener = listener
        self._period = interval / 2
        try:  # our member exists before our snapshot goes out; the rest can wait
            async with asyncio.timeout(max(self._period, 1.0)):
                await self._sweep_once(read=False)
        except (TimeoutError, *_DOWN) as exc:
            logger.debug("first presence sweep on '%s' failed: %s", self._key, exc)
        self._soon.set()  # the next sweep, at once, reads who else is there
        self._task = start_supervised("presence", self._run, self._health)

    async def leave(self) -> None:
        await self.close()
        try:
            async with asyncio.timeout(1.0):
                await self._sweep(keys=[self._key], args=self._args("leave", []))
        except Exception as exc:  # our member expires by itself
            logger.debug("could not withdraw '%s' from '%s': %s", self._runner, self._key, exc)

    def watch(self, runner: str) -> None:
        if runner != self._runner:
            self._watch[runner] = None
            self._soon.set()

    def forget(self, runner: str) -> None:
        self._present.discard(runner)
        self._absent.pop(runner, None)
        self._watch.pop(runner, None)

    def is_present(self, runner: str) -> bool | None:
        if runner in self._present:
            return True
        return False if runner in self._absent else None

    async def close(self) -> None:
        """Stop sweeping (the bus is closing)."""
        await cancel_and_wait((self._task,), 1.0)
        self._task, self._listener = None, None

    # -- sweeping ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(next_tick(loop.time(), self._period)):
                    await self._soon.wait()
                # A burst of newcomers is answered in one sweep, after the burst.
                await asyncio.sleep(_WATCH_DELAY)
            except TimeoutError:
                pass
            self._soon.clear()
            try:
                async with asyncio.timeout(max(self._period * 2, 1.0)):
                    await self._sweep_once()
            except (TimeoutError, *_DOWN) as exc:  # the server is down: the reader says so
                logger.debug("presence sweep on '%s' failed: %s", self._key, exc)

    def _args(self, mode: str, watched: list[str]) -> list[Any]:
        overdue = int(self._period * 3000)
        purge = max(30_000, 20 * overdue)
        return [self._runner, overdue, purge, 2 * purge, mode, *watched]

    async def _sweep_once(self, *, read: bool = True) -> None:
        watched = list(self._watch)[:_MAX_WATCH]
        for name in watched:
            del self._watch[name]
        reply = await self._sweep(keys=[self._key], args=self._args("beat", watched))
        now, members = float(_text(reply[0])), int(reply[1])
        overdue = {_text(n): float(_text(s)) for n, s in zip(reply[2][::2], reply[2][1::2],
                                                                strict=True)}
        overdue.pop(self._runner, None)
        for name, score in zip(watched, reply[3], strict=True):
            text = _text(score)
            if text and float(text) > now:
                self._report_present(name)
            elif not text and self._absent.pop(name, None) is None:
                # Not in the set at all: said once, then no longer tracked.
                self._report_absent(name, certain=False, silent_for=0.0)
                self._absent.pop(name, None)
        await self._check_overdue(overdue, now)
        self._last_ok = now
        for name in self._absent:  # gone quiet earlier: have they come back?
            if name not in overdue:
                self._watch[name] = None
        # Every member accounted for (us, the present, the overdue): nothing to read. Else
        # someone came or went unseen: read the set, once per change of its size.
        expected = 1 + len(self._present | overdue.keys())
        if read and members != expected and members != self._members:
            self._members = members
            await self._read_all()

    async def _check_overdue(self, overdue: dict[str, float], now: float) -> None:
        # Not yet reported, or reported only as quiet: a quiet one whose subscription is
        # gone since is reported gone for certain.
        fresh = [name for name in overdue if not self._absent.get(name)]
        if not fresh:
            return
        counts = await self._client.pubsub_numsub(
            *(self._runner_channel(name) for name in fresh))
        subscribed = {_text(channel): int(n) for channel, n in counts}
        overdue_ms = self._period * 3000
        # Time our own sweeps could not get through (a stalled server, a network black hole
        # that closes no connection): peers could not refresh either, and their silence
        # then proves nothing. It is not counted against them.
        blind = 0.0 if self._last_ok is None else max(
            0.0, now - self._last_ok - 2 * self._period * 1000)
        for name in fresh:
            gone = subscribed.get(self._runner_channel(name), 0) == 0
            silent = max(0.0, (now - (overdue[name] - overdue_ms) - blind) / 1000)
            self._report_absent(name, certain=gone, silent_for=silent)

    async def _read_all(self) -> None:
        reply = await self._read(keys=[self._key], args=[_MAX_READ])
        alive = {_text(name) for name in reply[1]}
        alive.discard(self._runner)
        for name in alive - self._present:
            self._report_present(name)
        for name in self._present - alive:
            self._report_absent(name, certain=False, silent_for=0.0)

    def _report_present(self, name: str) -> None:
        self._absent.pop(name, None)
        if name not in self._present:
            self._present.add(name)
            if self._listener is not None:
                self._listener.present(name)

    def _report_absent(self, name: str, *, certain: bool, silent_for: float) -> None:
        self._present.discard(name)
        if self._absent.get(name) is None or (certain and not self._absent[name]):
            self._absent[name] = certain
            if self._listener is not None:
                self._listener.absent(name, certain=certain, silent_for=silent_for)
