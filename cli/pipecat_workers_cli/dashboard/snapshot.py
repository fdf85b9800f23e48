"""One picture of the project for the page: the supervisor's status, the bus's traffic and
the latest traces, as JSON-ready data.

The worker rows are the supervisor's own :class:`~pipecat_workers_cli.supervisor.status.
WorkerStatus` (what ``ps`` and the live view show, worded by the same functions); the bus
observer only adds what it alone sees: traffic, jobs in flight and rates, hand-offs.
"""

from __future__ import annotations

from typing import Any

from pipecat_workers_cli.render.tables import reason_text
from pipecat_workers_cli.supervisor.status import ProjectStatus


def compose(status: ProjectStatus, traffic: dict[str, Any], traces: list[dict[str, Any]],
            *, now: float) -> dict[str, Any]:
    """The snapshot the page draws."""
    jobs = traffic["jobs"]
    workers = []
    for w in status.workers:
        seen = jobs.get(w.name, {})
        workers.append({
            "name": w.name, "key": w.worker, "channel": w.channel, "state": w.state,
            "pid": w.pid, "uptime": w.uptime, "restarts": w.restarts,
            "exit_code": w.exit_code, "reason": reason_text(w), "registered": w.registered,
            "active": bool(w.active), "cpu": w.cpu_percent, "rss": w.rss_bytes,
            "jobs": dict(w.jobs), "in_flight": seen.get("in_flight", 0),
            "rate": seen.get("rate", 0.0), "done_rate": seen.get("done_rate", 0.0),
        })
    return {
        "project": status.project, "running": status.running, "time": now,
        "workers": workers,
        "channels": [{"key": c.key, "backend": c.backend, "channel": c.channel,
                      "connected": c.connected, "runners": c.runners,
                      "sees_all": c.backend == "local"} for c in status.channels],
        "traffic": {k: traffic[k] for k in ("window", "messages", "edges", "in_flight",
                                            "active", "handoffs")},
        "traces": traces,
    }
