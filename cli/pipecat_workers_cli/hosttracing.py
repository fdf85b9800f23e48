"""What a worker process records of its traces: span files, tagged log lines, OpenTelemetry.

Under ``workers up`` each worker writes its spans to ``traces/<worker>.jsonl`` in the project's
state directory (read by ``workers trace`` and the dashboard), and its log lines name the
trace (and job) they belong to (found by ``workers logs --trace`` / ``--job``), loguru's
(pipecat's) as well as the standard library's. When the
worker's environment names an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``), its spans go
there too, as service ``OTEL_SERVICE_NAME`` or else ``<project>/<worker>``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pipecat_workers.errors import ConfigurationError
from pipecat_workers.tracing import JsonLinesSpanExporter, TraceLogFilter, trace_tag, tracer

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s%(trace_tag)s"
_OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def configure_logging(level: str) -> None:
    """Log to stderr, each line tagged with its trace when it has one."""
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceLogFilter())


def start_tracing(worker: str, runner: str, traces_dir: str, project: str,
                  environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Record this worker's spans; returns what to call at the end of the process."""
    env = os.environ if environ is None else environ
    stops: list[Callable[[], None]] = []
    if traces_dir:
        exporter = JsonLinesSpanExporter(Path(traces_dir) / f"{worker}.jsonl", runner=runner)
        tracer.add_exporter(exporter)
        stops.append(lambda: tracer.remove_exporter(exporter))
    if any(env.get(name) for name in _OTLP_VARIABLES):
        from pipecat_workers.tracing.otel import configure_opentelemetry, shutdown_opentelemetry

        try:
            configure_opentelemetry(f"{project}/{worker}" if project else worker, environ=env)
            stops.append(shutdown_opentelemetry)
        except ConfigurationError as exc:  # the worker runs; its spans stay local
            print(f"warning: {worker}: {exc}", file=sys.stderr)

    def stop() -> None:
        for step in reversed(stops):
            step()

    return stop


def tag_loguru_lines() -> None:
    """Tag loguru's lines too (pipecat logs with loguru), if the worker's code imported it:
    a line logged in a trace ends with its tag, as the standard library's do."""
    loguru = sys.modules.get("loguru")
    if loguru is None:
        return

    def patch(record: dict[str, object]) -> None:
        tag = trace_tag()
        if tag:
            record["message"] = f"{record['message']}{tag}"

    loguru.logger.configure(patcher=patch)
