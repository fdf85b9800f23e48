from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipecat_workers.tracing import InMemorySpanExporter, tracer


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans recorded in this process while the test runs."""
    exporter = InMemorySpanExporter()
    tracer.add_exporter(exporter)
    try:
        yield exporter
    finally:
        tracer.remove_exporter(exporter)
