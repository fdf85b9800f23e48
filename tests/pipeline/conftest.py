"""Runners for the pipeline tests, on every bus kind (see ``new_bus`` in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest

from pipecat_workers import BaseWorker, WorkerRunner
from tests.helpers import running, wait_until
from tests.pipeline.kit import FAST

MakeRunner = Callable[[str], WorkerRunner]


@pytest.fixture
def make_runner(new_bus: Callable[[], object]) -> MakeRunner:
    return lambda name: WorkerRunner(name=name, bus=new_bus(),  # type: ignore[arg-type]
                                     handle_sigint=False, settings=FAST)


class Split:
    """Workers spread over runners that share a channel, running for the test's duration."""

    def __init__(self, stack: AsyncExitStack, make_runner: MakeRunner) -> None:
        self._stack = stack
        self._make = make_runner
        self.runners: list[WorkerRunner] = []

    async def host(self, *workers: BaseWorker) -> WorkerRunner:
        """Run ``workers`` on a runner of their own (a process of their own on a network
        bus) and wait until every runner knows every worker."""
        runner = self._make(f"r{len(self.runners)}-{uuid.uuid4().hex[:6]}")
        await runner.add_workers(*workers)
        await self._stack.enter_async_context(running(runner))
        self.runners.append(runner)
        names = [w for r in self.runners for w in r.registry.local_workers]
        await wait_until(lambda: all(n in r.registry for r in self.runners for n in names),
                         timeout=10)
        return runner


@pytest.fixture
async def split(make_runner: MakeRunner) -> AsyncIterator[Split]:
    async with AsyncExitStack() as stack:
        yield Split(stack, make_runner)
