"""Collecting the orphans that come to the supervisor as a child subreaper.

A worker forked from the process template is the supervisor's child because the supervisor
is a child subreaper (``PR_SET_CHILD_SUBREAPER``); so, once a worker has exited, are the
processes it started that outlived it, and a middle process a killed template left behind.
They are collected by process group: each worker leads its own, the template leads the
middle processes'.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection


class Reaper:
    """The process groups whose leader has exited, until nothing of them is left."""

    def __init__(self) -> None:
        self._groups: set[int] = set()

    def exited(self, pgid: int) -> None:
        """The leader of process group ``pgid`` has exited and was collected."""
        self._groups.add(pgid)

    def reap(self, tracked: Collection[int]) -> None:
        """Collect the exited orphans of those groups (never a process in ``tracked``:
        those are collected by whoever started them)."""
        for pgid in list(self._groups):
            while True:
                try:
                    info = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    self._groups.discard(pgid)  # nothing of ours left in it
                    break
                if info is None:
                    break  # some still run: next time
                if info.si_pid in tracked:
                    self._groups.discard(pgid)  # its number was taken again: not ours
                    break
                with contextlib.suppress(ChildProcessError):
                    os.waitid(os.P_PID, info.si_pid, os.WEXITED | os.WNOHANG)
