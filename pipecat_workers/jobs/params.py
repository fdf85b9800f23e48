"""Job options as one object: ``JobParams`` and ``JobGroupParams``.

Pipecat 1.14 passes job options as ``params=JobParams(...)``; we keep the keywords
(``name=``, ``payload=``...) as the primary spelling and accept ``params=`` beside them, so
code written either way runs unchanged. Every entry point folds both into one
:class:`JobGroupParams` with :func:`resolve_params`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipecat_workers.errors import ConfigurationError
from pipecat_workers.validate import MAX_NAME_LENGTH


@dataclass(frozen=True, slots=True)
class JobParams:
    """How to run a job sent to one worker.

    Args:
        name: The job name, routing the request to the worker's matching ``@job`` handler
            (``None``: its ``on_job_request``).
        payload: The data describing the work.
        timeout: Seconds for the whole job, waiting for the worker included; ``None`` waits
            for ever.
        label: A human-readable title for the work (``"Research: wind power"``), kept on the
            requester's :class:`JobGroup` for dashboards and UIs.
        cancellable: Whether :meth:`~BaseWorker.request_cancel_job_group` (an operator or a
            UI asking from outside) may cancel it. Cancels the requester makes itself
            (timeout, ``cancel_on_error``, shutdown, ``cancel_job_group``) ignore it.

    Raises:
        ConfigurationError: if a field has the wrong type or ``timeout`` is not positive.

    Example::

        async with self.job("researcher", params=JobParams(name="search", timeout=30)) as j:
            ...
    """

    name: str | None = None
    payload: dict[str, Any] | None = None
    timeout: float | None = None
    label: str | None = None
    cancellable: bool = True

    def __post_init__(self) -> None:
        # Messages name the option, not the class: keyword callers never wrote a JobParams.
        _check("name", self.name, str, "a string")
        if self.name is not None and len(self.name) > MAX_NAME_LENGTH:
            raise ConfigurationError(f"job option 'name' must be at most {MAX_NAME_LENGTH:,} "
                                     f"characters, got {len(self.name):,}")
        _check("payload", self.payload, dict, "a dict")
        _check("label", self.label, str, "a string")
        timeout = self.timeout
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float) or not timeout > 0):
            # ``not timeout > 0`` also refuses NaN, which no deadline can be computed from.
            raise ConfigurationError(
                f"job option 'timeout' must be a positive number of seconds or None, "
                f"got {timeout!r}")
        if not isinstance(self.cancellable, bool):
            raise ConfigurationError(
                f"job option 'cancellable' must be a bool, got {self.cancellable!r}")


@dataclass(frozen=True, slots=True)
class JobGroupParams(JobParams):
    """How to run a job sent to several workers: :class:`JobParams` and ``cancel_on_error``.

    Args:
        cancel_on_error: Whether a member answering ``error`` or ``failed`` cancels the rest
            of the group (its waiters then get :class:`JobGroupError`). Also honoured when
            passed to a single-job method: a single job is a group of one.

    Raises:
        ConfigurationError: as :class:`JobParams`, or if ``cancel_on_error`` is not a bool.
    """

    cancel_on_error: bool = True

    def __post_init__(self) -> None:
        super(JobGroupParams, self).__post_init__()  # explicit: slots=True makes a new class
        if not isinstance(self.cancel_on_error, bool):
            raise ConfigurationError(
                f"job option 'cancel_on_error' must be a bool, got {self.cancel_on_error!r}")


def _check(field: str, value: Any, kind: type, what: str) -> None:
    if value is not None and not isinstance(value, kind):
        raise ConfigurationError(
            f"job option '{field}' must be {what} or None, got {type(value).__name__}")


def resolve_params(
    params: JobParams | None, *, name: str | None = None,
    payload: dict[str, Any] | None = None, timeout: float | None = None,
    label: str | None = None, cancellable: bool | None = None,
    cancel_on_error: bool | None = None,
) -> JobGroupParams:
    """Fold ``params`` or the keywords (never both) into the group params to dispatch with.

    A keyword counts as given when it is not ``None``: that is how ``params`` plus keywords
    is told apart from ``params`` alone. A plain :class:`JobParams` cancels on error, as a
    single job always has.

    Raises:
        TypeError: if ``params`` is not a :class:`JobParams`, or comes with keywords.
        ConfigurationError: if a value is invalid (see :class:`JobParams`).
    """
    given: dict[str, Any] = {key: value for key, value in (
        ("name", name), ("payload", payload), ("timeout", timeout), ("label", label),
        ("cancellable", cancellable), ("cancel_on_error", cancel_on_error),
    ) if value is not None}
    if params is None:
        return JobGroupParams(**given)
    if not isinstance(params, JobParams):
        raise TypeError(f"params must be JobParams or JobGroupParams, "
                        f"got {type(params).__name__}")
    if given:
        raise TypeError(f"pass either params= or {'=, '.join(given)}=, not both")
    if isinstance(params, JobGroupParams):
        return params
    return JobGroupParams(name=params.name, payload=params.payload, timeout=params.timeout,
                          label=params.label, cancellable=params.cancellable)
