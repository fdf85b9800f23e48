"""Example worker systems.

Each runs in one process with ``python -m examples.<name>``. The voice, hand-off, research and
sensors systems also run one process per worker from ``configs/<name>.yaml`` (``workers up``),
on the embedded bus or, with the ``.redis``/``.pgmq`` variants, on Redis or PGMQ. ``voice``
(pipecat pipelines) and ``seed002`` (the seed's programs, imports changed) need the
``pipecat`` extra.
"""
