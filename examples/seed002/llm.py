# llm.py
import argparse
import asyncio
import os

from redis.asyncio import Redis

from pipecat_workers.bus import RedisBus
from pipecat_workers import WorkerRunner
from pipecat.services.llm_service import FunctionCallParams
from pipecat_workers.pipeline import ScriptedLLMService as OpenAILLMService
from pipecat_workers.pipeline import LLMWorker, LLMWorkerActivationArgs, tool


class AcmeLLMAgent(LLMWorker):
    def __init__(self, name: str, *, system_instruction: str, watch: list[str]):
        llm = OpenAILLMService(
            api_key=os.environ["OPENAI_API_KEY"],
            settings=OpenAILLMService.Settings(system_instruction=system_instruction),
        )
        super().__init__(name, llm=llm, bridged=())
        self._watch = watch

    async def start(self) -> None:
        """Watch sibling agents so handoff knows when they are available."""
        await super().start()
        await self.watch_workers(*self._watch)

    @tool(cancel_on_interruption=False)
    async def transfer_to_agent(self, params: FunctionCallParams, agent: str, reason: str):
        """Transfer the user to another agent.

        Args:
            agent (str): The target agent.
            reason (str): Transfer reason.
        """
        await self.activate_worker(
            agent,
            args=LLMWorkerActivationArgs(
                messages=[{"role": "developer", "content": reason}]
            ),
            deactivate_self=True,
            result_callback=params.result_callback,
        )


async def main_async():
    parser = argparse.ArgumentParser()
    parser.add_argument("worker", choices=["greeter", "support"])
    parser.add_argument("--redis-url", default="redis://localhost:6379")
    parser.add_argument("--channel", default="pipecat:my-app")
    args = parser.parse_args()

    redis = Redis.from_url(args.redis_url)
    bus = RedisBus(redis=redis, channel=args.channel)

    agent = AcmeLLMAgent(
        args.worker,
        system_instruction="You are a greeter..." if args.worker == "greeter" else "You are support...",
        watch=["support"] if args.worker == "greeter" else ["greeter"],
    )

    runner = WorkerRunner(bus=bus, handle_sigint=True)
    await runner.add_workers(agent)
    await runner.run()


asyncio.run(main_async())
