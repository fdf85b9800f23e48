"""Pipecat pipelines as workers: ``pip install 'pipecat-workers[pipecat]'``.

The core library never imports this package (nor pipecat); importing it needs ``pipecat-ai``.
"""
