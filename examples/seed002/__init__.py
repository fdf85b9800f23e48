"""Seed 002's two programs (main.py, the transport; llm.py, an LLM agent) run on our library.

They are the seed's code with only their import lines changed: ``pipecat.bus``,
``pipecat.workers`` and ``pipecat.registry`` become ``pipecat_workers``, and the cloud
services become the offline stand-ins of :mod:`examples.voice.services` (Deepgram, Cartesia)
and the scripted model (OpenAI), under the seed's names. Run an agent with
``python -m examples.seed002.llm greeter --redis-url redis://... --channel ...``;
``main.run_bot(transport, runner_args)`` takes a transport (a :class:`~examples.voice.
transport.TextTransport`, say) as pipecat's runner would pass it.
"""
