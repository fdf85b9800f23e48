"""The bus core: subscriptions, routing, priorities and bounded queues.

Backends only move messages between processes; everything else lives here. A targeted
message goes straight to its target's mailbox (a dict lookup, whatever the number of
subscribers); a broadcast goes to every subscriber, except framework control messages, which
only runners and observers need. Observers see every message.

Each subscriber has a mailbox with a system lane and a data lane. A lane's drain task exists
only while the lane has messages, so an idle subscriber costs no task at all. System messages
are handled ahead of data and never wait behind a slow data handler.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol, Self

from pipecat_workers.bus.loops import LoopHealth
from pipecat_workers.bus.messages import SYSTEM_PRIORITY, BusLocalMessage, BusMessage
from pipecat_workers.bus.presence import Presence
from pipecat_workers.errors import BusClosedError, ConfigurationError
from pipecat_workers.settings import DEFAULT_SETTINGS
from pipecat_workers.tasks import cancel_and_wait
from pipecat_workers.tracing.context import current_trace

logger = logging.getLogger("pipecat_workers.bus")

Role = Literal["worker", "runner", "observer"]

# How many times a local sender yields to a full mailbox before the message is dropped.
_BACKPRESSURE_YIELDS = 8


class BusSubscriber(Protocol):
    """Anything that can receive bus messages: workers, runners, tools."""

    @property
    def name(self) -> str: ...

    async def on_bus_message(self, message: BusMessage) -> None: ...


class Mailbox:
    """One subscriber's queues and the tasks that drain them."""

    __slots__ = ("subscriber", "role", "dropped", "arrived", "taken", "_bus", "_system",
                 "_data", "_sys_task", "_data_task")

    def __init__(self, bus: WorkerBus, subscriber: BusSubscriber, role: Role) -> None:
        self.subscriber = subscriber
        self.role = role
        self.dropped = 0
        self.arrived = 0  # messages queued, ever
        self.taken = 0    # of those, taken off a lane to be handled
        self._bus = bus
        self._system: deque[BusMessage] | None = None
        self._data: deque[BusMessage] | None = None
        self._sys_task: asyncio.Task[None] | None = None
        self._data_task: asyncio.Task[None] | None = None

    def put(self, message: BusMessage) -> bool:
        """Queue a message; False if the data lane is full (system messages always fit)."""
        bus = self._bus
        if message.PRIORITY == SYSTEM_PRIORITY:
            if self._system is None:
                self._system = deque()
            self._system.append(message)
            self.arrived += 1
            if self._sys_task is None and bus._loop is not None:
                self._sys_task = bus._loop.create_task(self._drain_system())
            return True
        data = self._data
        if data is None:
            data = self._data = deque()
        elif len(data) >= bus._data_queue_size and not message.ESSENTIAL:
            return False
        data.append(message)
        self.arrived += 1
        if self._data_task is None and bus._loop is not None:
            self._data_task = bus._loop.create_task(self._drain_data())
        return True

    @property
    def pending(self) -> int:
        """Messages waiting in both lanes."""
        return len(self._system or ()) + len(self._data or ())

    def wake(self) -> None:
        """Start draining whatever was queued while the bus was stopped."""
        loop = self._bus._loop
        assert loop is not None
        if self._system and self._sys_task is None:
            self._sys_task = loop.create_task(self._drain_system())
        if self._data and self._data_task is None:
            self._data_task = loop.create_task(self._drain_data())

    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in (self._sys_task, self._data_task) if t is not None]

    def forget_finished_tasks(self) -> None:
        """Drop finished drain tasks: one cancelled before it ever ran never cleared itself,
        and would keep the lane from draining after the next start."""
        if self._sys_task is not None and self._sys_task.done():
            self._sys_task = None
        if self._data_task is not None and self._data_task.done():
            self._data_task = None

    def discard(self) -> None:
        """Drop everything queued and cancel the drain tasks (except the caller's own)."""
        for lane in (self._system, self._data):
            if lane is not None:
                self.taken += len(lane)
                lane.clear()  # also ends a drain loop that is handling a message right now
        current = asyncio.current_task()
        for task in self.tasks():
            if task is not current:
                task.cancel()

    async def _drain_system(self) -> None:
        try:
            await self._drain(self._system)
        finally:
            self._sys_task = None

    async def _drain_data(self) -> None:
        try:
            await self._drain(self._data)
        finally:
            self._data_task = None

    async def _drain(self, queue: deque[BusMessage] | None) -> None:
        assert queue is not None
        handle = self.subscriber.on_bus_message
        set_trace = current_trace.set
        last = current_trace.get()
        while queue:
            message = queue.popleft()
            self.taken += 1
            trace = message.trace
            if trace is not last:  # what the handler sends belongs to the same trace
                set_trace(trace)
                last = trace
            try:
                await handle(message)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this drain task is being cancelled
                # A handler that awaited something cancelled: one message lost, not the lane.
                logger.error("%s: handling %s was cancelled", self.subscriber.name, message)
            except Exception:
                logger.exception("%s failed to handle %s", self.subscriber.name, message)


class WorkerBus(ABC):
    """The shared message bus that workers and runners subscribe to.

    Subclasses move messages to other processes by implementing :meth:`_publish`; the core
    delivers to local subscribers itself, so a process never needs a network round trip to
    reach its own workers.
    """

    def __init__(self, *, data_queue_size: int = DEFAULT_SETTINGS.data_queue_size) -> None:
        if data_queue_size < 1:
            raise ConfigurationError(f"data_queue_size must be at least 1, got {data_queue_size}")
        self._data_queue_size = data_queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._mailboxes: dict[str, Mailbox] = {}  # workers and runners, by name
        self._observers: dict[str, Mailbox] = {}
        self._everyone: list[Mailbox] = []  # recipients of application broadcasts
        self._control: list[Mailbox] = []  # recipients of control broadcasts
        self._sent: dict[type, int] = {}
        self._received: dict[type, int] = {}
        self._dropped: dict[type, int] = {}
        self._unknown_targets: set[str] = set()
        self.loops = LoopHealth()  # crashes of the backend's background loops (its reader)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the bus is delivering messages."""
        return self._loop is not None

    async def start(self) -> None:
        """Start delivering; messages sent while stopped are delivered now. Idempotent."""
        if self._closed:
            raise BusClosedError("this bus was closed and cannot be started again")
        if self._loop is not None:
            return
        await self._open()
        self._loop = asyncio.get_running_loop()
        for mailbox in (*self._mailboxes.values(), *self._observers.values()):
            mailbox.wake()

    async def stop(self) -> None:
        """Stop delivering; queued messages are kept for the next start. Idempotent."""
        if self._loop is None:
            return
        self._loop = None
        await cancel_and_wait(
            (t for mb in (*self._mailboxes.values(), *self._observers.values())
             for t in mb.tasks()), DEFAULT_SETTINGS.cancel_timeout)
        for mailbox in (*self._mailboxes.values(), *self._observers.values()):
            mailbox.forget_finished_tasks()
        await self._close()

    async def close(self) -> None:
        """Stop for good. Safe to call twice."""
        await self.stop()
        self._closed = True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- subscriptions ------------------------------------------------------------------

    def subscribe(self, subscriber: BusSubscriber, *, role: Role = "worker") -> None:
        """Deliver messages to ``subscriber``.

        Args:
            subscriber: Receives messages targeted at its name, and broadcasts.
            role: ``"worker"`` gets application broadcasts; ``"runner"`` also gets control
                broadcasts (registry, liveness, session end); ``"observer"`` gets everything,
                including messages targeted at others.

        Raises:
            ConfigurationError: if another subscriber already uses that name.
        """
        book = self._observers if role == "observer" else self._mailboxes
        existing = book.get(subscriber.name)
        if existing is not None:
            if existing.subscriber is subscriber:
                return
            raise ConfigurationError(
                f"a subscriber named '{subscriber.name}' is already on the bus")
        mailbox = Mailbox(self, subscriber, role)
        book[subscriber.name] = mailbox
        self._everyone.append(mailbox)
        if role != "worker":
            self._control.append(mailbox)

    def unsubscribe(self, subscriber: BusSubscriber) -> None:
        """Stop delivering to ``subscriber``; anything still queued for it is discarded."""
        for book in (self._mailboxes, self._observers):
            mailbox = book.get(subscriber.name)
            if mailbox is not None and mailbox.subscriber is subscriber:
                del book[subscriber.name]
                self._everyone.remove(mailbox)
                if mailbox in self._control:
                    self._control.remove(mailbox)
                mailbox.discard()

    def bind(self, runner: str, incarnation: float, locate: Callable[[str], str | None]) -> None:
        """Tell the bus which runner it carries messages for (network buses need it).

        Args:
            runner: The runner's name.
            incarnation: The runner's start time.
            locate: Returns the runner hosting a worker or runner name, or ``None``.
        """

    async def probe(self, runner: str) -> bool | None:
        """Whether the runner is still connected to the bus, if the backend can tell.

        Returns:
            True or False when the backend knows, ``None`` when it cannot tell.
        """
        return None

    @property
    def presence(self) -> Presence | None:
        """The backend's own account of who is on the channel, if it keeps one (then
        membership needs no heartbeats); ``None`` by default."""
        return None

    async def forget_runner(self, runner: str) -> None:
        """Free what the backend keeps for a runner that is gone (its queue, say)."""

    def is_local(self, name: str) -> bool:
        """Whether a worker or runner of that name is subscribed in this process."""
        return name in self._mailboxes

    def queued(self, name: str) -> int:
        """Messages waiting in the mailbox of the subscriber ``name`` (0 if there is none)."""
        mailbox = self._mailboxes.get(name)
        return 0 if mailbox is None else mailbox.pending

    def mailbox_mark(self, name: str) -> int:
        """A mark of what has arrived so far for the subscriber ``name``: see
        :meth:`taken_up_to`."""
        mailbox = self._mailboxes.get(name)
        return 0 if mailbox is None else mailbox.arrived

    def taken_up_to(self, name: str, mark: int) -> bool:
        """Whether every message that had arrived for ``name`` by ``mark`` (from
        :meth:`mailbox_mark`) has been taken to be handled: news from outside the mailbox
        (the presence's, say) can then be applied after what was sent before it."""
        mailbox = self._mailboxes.get(name)
        return mailbox is None or mailbox.taken >= mark

    # -- sending ------------------------------------------------------------------------

    async def send(self, message: BusMessage) -> None:
        """Send a message to its target, or to everyone if it has none.

        Raises:
            BusClosedError: if the bus was closed.
        """
        if self._closed:
            raise BusClosedError(f"cannot send {type(message).__name__}: the bus is closed")
        cls = type(message)
        self._sent[cls] = self._sent.get(cls, 0) + 1
        if message.trace is None and (trace := current_trace.get()) is not None:
            message.trace = trace
        target = message.target
        if target is not None:
            mailbox = self._mailboxes.get(target)
            if mailbox is not None:
                if not mailbox.put(message):
                    await self._push_back(mailbox, message)
            elif not isinstance(message, BusLocalMessage):
                await self._publish(message)
            for observer in self._observers.values():
                if not observer.put(message):
                    self._drop(observer, message)
            return
        recipients = self._control if cls.CONTROL else self._everyone
        for i, mailbox in enumerate(recipients):
            if not mailbox.put(message):
                # Yielding lets subscribers come and go: finish on a copy of the rest.
                for late in (mailbox, *recipients[i + 1:]):
                    if not late.put(message):
                        await self._push_back(late, message)
                break
        if not isinstance(message, BusLocalMessage):
            await self._publish(message)

    def deliver(self, message: BusMessage) -> None:
        """Hand a message that arrived from another process to the local subscribers."""
        cls = type(message)
        self._received[cls] = self._received.get(cls, 0) + 1
        target = message.target
        if target is not None:
            mailbox = self._mailboxes.get(target)
            if mailbox is not None and not mailbox.put(message):
                self._drop(mailbox, message)
            for observer in self._observers.values():
                if not observer.put(message):
                    self._drop(observer, message)
            return
        for mailbox in self._control if cls.CONTROL else self._everyone:
            if not mailbox.put(message):
                self._drop(mailbox, message)

    async def _push_back(self, mailbox: Mailbox, message: BusMessage) -> None:
        # A local sender that outpaces its receiver yields to it a few times before dropping.
        for _ in range(_BACKPRESSURE_YIELDS):
            await asyncio.sleep(0)
            if mailbox.put(message):
                return
        self._drop(mailbox, message)

    def count_undeliverable(self, message: BusMessage) -> None:
        """Count a message whose target is nowhere; the first one per target is logged."""
        cls = type(message)
        self._dropped[cls] = self._dropped.get(cls, 0) + 1
        target = message.target or ""
        if target not in self._unknown_targets and len(self._unknown_targets) < 1024:
            self._unknown_targets.add(target)
            logger.warning("no worker named '%s' on this bus: dropped %s", target, cls.__name__)

    def _drop(self, mailbox: Mailbox, message: BusMessage) -> None:
        cls = type(message)
        self._dropped[cls] = self._dropped.get(cls, 0) + 1
        mailbox.dropped += 1
        if mailbox.dropped in (1, 10, 100, 1000) or mailbox.dropped % 10_000 == 0:
            logger.warning(
                "queue of '%s' is full (%d data messages): dropped %s (%d dropped so far)",
                mailbox.subscriber.name, self._data_queue_size, cls.__name__, mailbox.dropped,
            )

    # -- observability -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Message counters by type: sent, received from other processes, dropped."""
        def names(counts: dict[type, int]) -> dict[str, int]:
            return dict(sorted((cls.__name__, n) for cls, n in counts.items()))

        return {
            "sent": names(self._sent),
            "received": names(self._received),
            "dropped": names(self._dropped),
            "subscribers": len(self._mailboxes),
            "observers": len(self._observers),
            "queued": sum(mb.pending for mb in self._everyone),
        }

    # -- backend primitives ---------------------------------------------------------------

    async def _open(self) -> None:
        """Connect to the backend; called by :meth:`start`."""

    async def _close(self) -> None:
        """Disconnect from the backend; called by :meth:`stop`."""

    @abstractmethod
    async def _publish(self, message: BusMessage) -> None:
        """Move a message to other processes: broadcasts, and targets not in this process."""
