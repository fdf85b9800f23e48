"""Pipeline workers in real OS processes: an LLM worker's process is killed mid-session."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from pipecat_workers import WorkerLostData, WorkerState
from pipecat_workers.pipeline import LLMWorkerActivationArgs
from tests.helpers import wait_until
from tests.pipeline.kit import Agent, Conversation
from tests.procs.cluster import Cluster


class Transport(Conversation):
    """Goes on with support when the active agent is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[WorkerLostData] = []

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        self.lost.append(data)
        await self.activate_worker("support", args=LLMWorkerActivationArgs(
            messages=[{"role": "developer", "content": "The greeter is gone."}]))


async def test_a_killed_llm_worker_is_reported_and_the_session_goes_on(cluster: Cluster) -> None:
    acme = Transport()
    support = Agent("support", "You are Support.")
    await cluster.local(acme, support)
    greeter_process = await cluster.peer("agent:greeter")
    await acme.watch_workers("greeter")
    await wait_until(lambda: "greeter" in acme.registry, timeout=10)
    await acme.activate_worker("greeter", args=_welcome())
    assert await acme.reply() == "Hello, Greeter here. Welcome the user."
    await acme.say("hello")
    assert await acme.reply() == "Greeter here. You said: hello"

    greeter_process.kill()
    await wait_until(lambda: bool(acme.lost), timeout=5)
    assert [(d.worker_name, d.reason) for d in acme.lost] == [("greeter", "lost")]
    assert await acme.reply() == "Hello, Support here. The greeter is gone."
    await acme.say("are you there?")
    assert await acme.reply() == "Support here. You said: are you there?"
    assert acme.state is WorkerState.READY


def _welcome() -> Any:
    return LLMWorkerActivationArgs(messages=[{"role": "developer",
                                              "content": "Welcome the user."}])


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("process tests use Linux signals")
else:
    pytestmark = pytest.mark.timeout(60)
