"""Run the voice app in one process, on the in-memory bus: ``python -m examples.voice``.

The same workers as ``configs/voice.yaml``: the transport worker plays :data:`SCRIPT` as the
user, the greeter and support agents answer, and the session ends with the script.
"""

from __future__ import annotations

import asyncio
import os
import sys

from loguru import logger

GREETER = ("You are the greeter of Acme. Welcome the user, answer small talk, and transfer "
           "them to support for any problem with a product.")
SUPPORT = ("You are Support at Acme. Help the user with their product, and transfer them back "
           "to the greeter when they are done.")
SCRIPT = (
    "Hi! My printer is acting up.",
    "Can you transfer me to support?",
    "It prints blank pages.",
    "Thanks, please transfer me back to the greeter.",
    "Goodbye!",
)


async def main() -> None:
    # Imported here, after the logging set-up below: pipecat logs as it is imported.
    from examples.voice.agents import AcmeAgent
    from examples.voice.main import TransportWorker
    from pipecat_workers import WorkerRunner

    runner = WorkerRunner()
    await runner.add_workers(
        AcmeAgent("greeter", persona=GREETER, siblings=["support"]),
        AcmeAgent("support", persona=SUPPORT, siblings=["greeter"]),
        TransportWorker("acme", script=SCRIPT),
    )
    await runner.run()


if __name__ == "__main__":
    logger.remove()  # pipecat logs at DEBUG by default
    logger.add(sys.stderr, level=os.environ.get("LOGURU_LEVEL", "WARNING"))
    asyncio.run(main())
