"""A project's own modules are the project's: none of ours may shadow them.

The command used to be installed as a top-level package called ``cli``, so a project with its
own ``cli.py`` imported ours instead (``cannot import name 'banner' from 'cli'``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cliproj import Cli, write_project

GREETER = '''\
from cli import banner
from pipecat_workers import BaseWorker, job


class Greeter(BaseWorker):
    @job("greet")
    async def greet(self, message):
        return {"banner": banner()}
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fork", [True, False], ids=["forked", "spawned"])
def test_a_project_with_its_own_cli_module_runs(fork: bool, tmp_path: Path,
                                                clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "own-cli", {"greeter": {"class": "greeter:Greeter"}})
    (tmp_path / "cli.py").write_text("def banner():\n    return 'hello from the project cli'\n")
    (tmp_path / "greeter.py").write_text(GREETER)
    cli = clis(tmp_path)
    check = cli.run("check", "workers.yaml")
    assert check.returncode == 0, check.stderr
    up = cli.run("up", "-d", *([] if fork else ["--no-fork"]), "workers.yaml")
    assert up.returncode == 0, up.stderr
    call = cli.run("call", "greeter", "--job", "greet", "--json")
    assert call.returncode == 0, call.stdout + call.stderr
    assert '"banner": "hello from the project cli"' in call.stdout
    assert cli.run("down").returncode == 0
