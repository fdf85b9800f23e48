"""Tunable defaults, kept in one place so no signature repeats them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    """Timeouts and limits shared by the runner, its workers and its bus.

    Attributes:
        end_grace: Seconds ``runner.end()`` lets workers finish before cancelling them.
        cancel_timeout: Seconds to wait for cancelled tasks (job handlers, workers) to unwind.
        heartbeat_interval: The pace of liveness on a network bus: presence refreshes and
            sweeps (heartbeats every interval on a bus without presence).
        lost_after: Missed heartbeat intervals after which a runner counts as lost.
        data_queue_size: Data messages a subscriber may have waiting before new ones are dropped.
        event_queue_size: Job events a ``job()``/``job_group()`` block may have unread.
        event_wait: Seconds a full event queue waits for its reader before dropping.
    """

    end_grace: float = 10.0
    cancel_timeout: float = 2.0
    heartbeat_interval: float = 1.0
    lost_after: int = 3
    data_queue_size: int = 10_000
    event_queue_size: int = 10_000
    event_wait: float = 5.0


DEFAULT_SETTINGS = Settings()
