"""How a running project is shown: plain prefixed lines, or the live view."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

# Piped output is read by programs and wide windows: a table gets this many columns rather
# than the 80 that rich assumes when it cannot ask a terminal.
PIPED_WIDTH = 250


def table_console() -> Console:
    """A console for tables on stdout: the terminal's width, or a wide line when piped."""
    from rich.console import Console

    return Console(highlight=False, emoji=False,
                   width=None if sys.stdout.isatty() else PIPED_WIDTH)


def plural(n: int, noun: str) -> str:
    """``plural(1, "runner")`` is "1 runner", ``plural(2, "runner")`` "2 runners"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
