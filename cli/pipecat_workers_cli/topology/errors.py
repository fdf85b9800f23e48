"""The one error a topology file (or a worker class it names) can raise.

Part of the library's tree (``WorkersError > ConfigurationError > TopologyError``), so the
CLI's single ``except WorkersError`` prints it as one red line::

    configs/x.yaml:12: workers.greeter.restart: expected one of no, on-failure, always, got 'x'

Kept free of yaml, click and rich: the worker host process imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipecat_workers.errors import ConfigurationError


class TopologyError(ConfigurationError):
    """Raised when a topology file, or a worker class or argument it names, is invalid.

    Args:
        message: What is wrong, e.g. ``expected an integer >= 1, got 0``.
        file: The topology file as the user named it (not made absolute); None when the
            problem is not tied to a file (a class path checked on its own).
        line: 1-based line of the offending key or value, when known.
        field: Dotted YAML path of the field, e.g. ``workers.greeter.restart``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file or ""
        if self.file is not None and self.line is not None:
            where = f"{self.file}:{self.line}"
        parts = [p for p in (where, self.field) if p]
        return ": ".join([*parts, self.message])

    def located(
        self, *, file: str | None = None, line: int | None = None, field: str | None = None
    ) -> TopologyError:
        """A copy placed in the file (``workers check`` places class errors on their entry).

        Only the location parts given replace the existing ones; the class is kept.
        """
        return type(self)(
            self.message,
            file=self.file if file is None else file,
            line=self.line if line is None else line,
            field=self.field if field is None else field,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default exception pickling, and the
        # worker host may send this error to its supervisor.
        return (_rebuild, (type(self), self.message, self.file, self.line, self.field))


class TopologyErrors(TopologyError):
    """Raised when a topology file has several problems: all of them, one line each.

    Its ``message``, ``file``, ``line`` and ``field`` are the first problem's; ``errors``
    holds every one. At most :data:`MAX_SHOWN` lines are shown, then how many more there are.
    """

    MAX_SHOWN = 20

    def __init__(self, errors: Sequence[TopologyError]) -> None:
        if not errors:
            raise ValueError("TopologyErrors needs at least one error")
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)

    def _format(self) -> str:
        shown = [str(e) for e in self.errors[: self.MAX_SHOWN]]
        if len(self.errors) > self.MAX_SHOWN:
            shown.append(f"... and {len(self.errors) - self.MAX_SHOWN} more")
        return "\n".join(shown)

    def located(
        self, *, file: str | None = None, line: int | None = None, field: str | None = None
    ) -> TopologyError:
        return TopologyErrors([e.located(file=file, line=line, field=field)
                               for e in self.errors])

    def __reduce__(self) -> tuple[Any, ...]:
        return (TopologyErrors, (self.errors,))


class WorkerClassError(TopologyError):
    """Raised when a ``module:attr`` worker class cannot be imported or is not a worker."""


def _rebuild(
    cls: type[TopologyError], message: str, file: str | None, line: int | None, field: str | None
) -> TopologyError:
    return cls(message, file=file, line=line, field=field)
