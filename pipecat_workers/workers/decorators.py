"""``@job`` and ``@worker_ready``: mark worker methods; the class collects them once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from pipecat_workers.errors import ConfigurationError
from pipecat_workers.validate import check_name

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

AnswerMode = Literal["on_return", "later"]
"""When a ``@job`` handler's job is answered if the handler does not answer it itself."""

_JOB_MARK = "__pipecat_job__"
_READY_MARK = "__pipecat_worker_ready__"


@dataclass(frozen=True, slots=True)
class JobHandlerSpec:
    """A method that handles requests for one job name."""

    attribute: str
    name: str
    sequential: bool
    answer: AnswerMode = "on_return"


def job(name: str, *, sequential: bool = False,
        answer: AnswerMode = "on_return") -> Callable[[F], F]:
    """Mark a worker method as the handler for requests named ``name``.

    Each request runs in its own task, so the worker keeps handling messages meanwhile. The
    handler answers with ``send_job_response`` or ``send_job_stream_end``; if it raises, the
    requester gets status ``error`` with the exception's message.

    ``answer`` says what happens when the handler returns without having answered:

    - ``"on_return"`` (the default): the job completes at once with what the handler
      returned (a dict, or ``{}``), so a job can never be forgotten.
    - ``"later"``: only a returned dict answers. Otherwise the job stays in
      ``active_jobs`` until something answers it (a tool, a callback, another task) with
      ``send_job_response`` or ``send_job_stream_end``. It still ends ``cancelled`` if the
      requester cancels it or times out, or the worker stops; a graceful end waits for it
      up to ``Settings.end_grace``. This is the Pipecat behaviour of handlers that hand the
      job on and return.

    Args:
        name: The job name to match.
        sequential: Run requests of this name one at a time, in arrival order. With
            ``answer="later"`` the next one starts when the handler returns, not when the
            job is answered.
        answer: ``"on_return"`` or ``"later"``, as above.

    Raises:
        ConfigurationError: if ``name`` is empty or too long, or ``answer`` is not one of the modes.

    Example::

        @job("book", answer="later")
        async def book(self, message):
            self.pending[message.job_id] = message.payload  # answered when the user confirms
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"@job needs a non-empty name, got {name!r}")
    check_name("job", name)  # a name no peer would take is refused here, not on the wire
    if answer not in get_args(AnswerMode):
        raise ConfigurationError(
            f"@job('{name}'): answer must be one of {', '.join(get_args(AnswerMode))}, "
            f"got {answer!r}")

    def decorate(method: F) -> F:
        setattr(method, _JOB_MARK, (name, sequential, answer))
        return method

    return decorate


def worker_ready(name: str) -> Callable[[F], F]:
    """Mark a worker method to be called with ``WorkerReadyData`` whenever ``name`` is ready."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"@worker_ready needs a non-empty name, got {name!r}")

    def decorate(method: F) -> F:
        setattr(method, _READY_MARK, name)
        return method

    return decorate


def collect_handlers(cls: type) -> tuple[dict[str, JobHandlerSpec], dict[str, str]]:
    """Find the ``@job`` and ``@worker_ready`` methods of a class and its bases.

    Returns:
        Job handlers by job name, and ready-handler attribute names by watched worker name.

    Raises:
        ConfigurationError: if two different methods claim the same job or worker name.
    """
    jobs: dict[str, JobHandlerSpec] = {}
    ready: dict[str, str] = {}
    for attribute in _attribute_names(cls):
        # The mark of the most derived definition that has one: overriding a handler without
        # repeating the decorator keeps it a handler (the override runs).
        job_mark = _first_mark(cls, attribute, _JOB_MARK)
        if job_mark is not None:
            job_name, sequential, answer = job_mark
            if job_name in jobs:
                raise ConfigurationError(
                    f"{cls.__qualname__}: job '{job_name}' is handled by both "
                    f"'{jobs[job_name].attribute}' and '{attribute}'"
                )
            jobs[job_name] = JobHandlerSpec(attribute, job_name, sequential, answer)
        ready_mark = _first_mark(cls, attribute, _READY_MARK)
        if ready_mark is not None:
            if ready_mark in ready:
                raise ConfigurationError(
                    f"{cls.__qualname__}: @worker_ready('{ready_mark}') is on both "
                    f"'{ready[ready_mark]}' and '{attribute}'"
                )
            ready[ready_mark] = attribute
    return jobs, ready


def _attribute_names(cls: type) -> list[str]:
    names: dict[str, None] = {}
    for klass in cls.__mro__:
        names.update(dict.fromkeys(vars(klass)))
    return list(names)


def _first_mark(cls: type, attribute: str, mark: str) -> Any:
    for klass in cls.__mro__:
        value = vars(klass).get(attribute)
        if value is not None:
            found = getattr(value, mark, None)
            if found is not None:
                return found
    return None
