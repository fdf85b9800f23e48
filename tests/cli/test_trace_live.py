"""A conversation is seen while it goes on: a session is written when it starts, so
``workers trace`` shows the worker that holds the conversation now as running."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliproj import Cli, wait_for

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

AGENTS = '''\
from pipecat_workers import BaseWorker


class Host(BaseWorker):
    """Starts a conversation: activates the greeter once it is there."""

    async def on_activated(self, args):
        await self.watch_workers("greeter")

    async def on_worker_ready(self, data):
        if data.worker_name == "greeter":
            await self.activate_worker("greeter")


class Greeter(BaseWorker):
    """Hands the conversation to support as soon as it gets it."""

    async def on_activated(self, args):
        self.create_task(self.activate_worker("support", deactivate_self=True))


class Support(BaseWorker):
    pass
'''


@pytest.mark.timeout(60)
def test_the_worker_holding_the_conversation_shows_running(tmp_path: Path, clis: Any) -> None:
    (tmp_path / "agents.py").write_text(AGENTS)
    (tmp_path / "workers.yaml").write_text(yaml.safe_dump({
        "name": "live", "channels": {"main": {"backend": "local"}},
        "workers": {"host": {"class": "agents:Host"},
                    "greeter": {"class": "agents:Greeter", "args": {"active": False}},
                    "support": {"class": "agents:Support", "args": {"active": False}}}}))
    cli: Cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)

    def listed() -> str | None:
        rows = [line for line in cli.run("trace").stdout.splitlines()
                if "session greeter" in line]
        return rows[0].split()[0] if rows else None

    trace_id = wait_for(listed, timeout=15, what="the conversation's trace")

    def tree() -> str | None:
        out = cli.run("trace", trace_id).stdout
        return out if "session support" in out else None

    lines = wait_for(tree, timeout=15, what="support's session in the tree").splitlines()
    greeter = next(line for line in lines if "session greeter" in line)
    support = next(line for line in lines if "session support" in line)
    assert greeter.rstrip().endswith("ok")  # handed off: ended
    assert support.rstrip().endswith("running")  # holds the conversation now
    assert any("hand off to support" in line for line in lines)
