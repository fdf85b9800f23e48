"""Fixtures shared by the tests of the workers command."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cliproj import Cli, set_subreaper


@pytest.fixture
def clis() -> Iterator[Callable[[Path], Cli]]:
    """Makes a :class:`Cli` for a project directory; cleans every one up at the end."""
    made: list[Cli] = []
    subreaper = set_subreaper(True)

    def make(cwd: Path) -> Cli:
        cli = Cli(cwd, subreaper=subreaper)
        made.append(cli)
        return cli

    try:
        yield make
    finally:
        for cli in made:
            cli.cleanup()
        if subreaper:
            set_subreaper(False)
