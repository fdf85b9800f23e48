"""Performance benchmarks for pipecat-workers (spec §4); run them with ``python -m benchmarks``.

Not part of the test suite: a report of measured values against the spec's targets.
"""
