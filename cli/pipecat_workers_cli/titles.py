"""Process titles: what ``ps -ef`` and ``top`` show for the supervisor, the process template
and each worker (``workers: handoff/greeter``), rather than one Python command line for all."""

from __future__ import annotations

import contextlib


def set_title(title: str, *, name: str | None = None) -> None:
    """Show ``title`` as this process's command line, and ``name`` (at most 15 bytes kept)
    as its short name (``top``'s default column, ``ps -o comm``); best effort."""
    with contextlib.suppress(ImportError):
        from setproctitle import setproctitle

        setproctitle(title)
    if name is not None:
        from pipecat_workers_cli.forkserver import PR_SET_NAME, prctl

        with contextlib.suppress(OSError, AttributeError):
            prctl(PR_SET_NAME, name.encode()[:15])
