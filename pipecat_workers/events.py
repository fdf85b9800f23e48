"""Named events: ``@obj.event_handler("on_x")`` handlers that run beside the hooks.

Hooks are methods a subclass overrides and the framework awaits inline. Events are for code
that holds an object without subclassing it: each handler runs in its own task, so a slow or
failing handler never blocks the bus, and its exceptions are logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from pipecat_workers.errors import ConfigurationError
from pipecat_workers.tasks import cancel_and_wait

logger = logging.getLogger("pipecat_workers")

Handler = Callable[..., Awaitable[None]]
H = TypeVar("H", bound=Handler)


class EventEmitter:
    """Mixin that gives an object named events."""

    EVENTS: ClassVar[frozenset[str]] = frozenset()

    _event_handlers: dict[str, list[Handler]] | None = None
    _event_tasks: dict[asyncio.Task[None], None] | None = None

    def event_handler(self, event_name: str) -> Callable[[H], H]:
        """Decorator that registers a handler for ``event_name``.

        The handler is called with this object first, then the event's arguments.

        Raises:
            ConfigurationError: if the object has no such event.
        """

        def decorate(handler: H) -> H:
            self.add_event_handler(event_name, handler)
            return handler

        return decorate

    def add_event_handler(self, event_name: str, handler: Handler) -> None:
        """Register ``handler`` for ``event_name`` (see :meth:`event_handler`)."""
        if event_name not in self.EVENTS:
            known = ", ".join(sorted(self.EVENTS))
            raise ConfigurationError(
                f"{type(self).__name__} has no event '{event_name}' (known: {known})"
            )
        if self._event_handlers is None:
            self._event_handlers = {}
        self._event_handlers.setdefault(event_name, []).append(handler)

    def _emit(self, event_name: str, *args: Any) -> None:
        handlers = self._event_handlers and self._event_handlers.get(event_name)
        if not handlers:
            return
        if self._event_tasks is None:
            self._event_tasks = {}
        loop = asyncio.get_running_loop()
        for handler in handlers:
            task = loop.create_task(self._run_event(event_name, handler, args))
            self._event_tasks[task] = None
            task.add_done_callback(self._event_tasks.pop)

    async def _run_event(self, event_name: str, handler: Handler, args: tuple[Any, ...]) -> None:
        try:
            await handler(self, *args)
        except Exception:
            logger.exception("%s handler for '%s' failed", type(self).__name__, event_name)

    async def _wait_event_handlers(self, timeout: float) -> None:
        """Let running event handlers finish, then cancel what is left after ``timeout``."""
        if not self._event_tasks:
            return
        current = asyncio.current_task()
        tasks = [t for t in self._event_tasks if t is not current]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        await cancel_and_wait(pending, timeout)
