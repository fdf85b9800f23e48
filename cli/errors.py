"""The command line's own errors: one red line for the user, never a traceback."""

from __future__ import annotations

from pipecat_workers.errors import WorkersError


class CommandError(WorkersError):
    """Raised when a command cannot do what was asked (no project, a busy lock, ...)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
