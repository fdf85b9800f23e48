"""The command line's own errors: one red line for the user, never a traceback.

Both are part of the library's tree, so the CLI's one ``except WorkersError`` prints them::

    WorkersError
    └── CommandError         a command cannot do what was asked
        ├── StateDirError    a project's state directory cannot be used (also an OSError)
        └── SeveralProjects  several projects here and none is named (or the one running)
"""

from __future__ import annotations

from pipecat_workers.errors import WorkersError


class CommandError(WorkersError):
    """Raised when a command cannot do what was asked (no project, a busy lock, ...)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StateDirError(CommandError, OSError):
    """Raised when a project's state directory cannot be read or written (a read-only
    project directory, a file named ``.workers``); an OSError too, so code that tolerates a
    failed write of the state file keeps doing so."""


class SeveralProjects(CommandError):
    """Raised when several projects keep their state here, none runs, and none was named;
    ``names`` lists them, for a command that can answer about all of them."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"several projects here ({', '.join(names)}): choose one with "
                         "-p NAME")
        self.names = names
