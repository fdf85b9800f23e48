"""The dashboard's sums of bus traffic: the window, the caps, and messages that do not fit."""

from __future__ import annotations

from pipecat_workers_cli.dashboard import traffic as traffic_module
from pipecat_workers_cli.dashboard.observer import observe
from pipecat_workers_cli.dashboard.traffic import MAX_NAME, OTHER, Traffic

from pipecat_workers.bus import (
    BusActivateWorkerMessage,
    BusDeactivateWorkerMessage,
    BusHeartbeatMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusWorkerReadyMessage,
)
from pipecat_workers.bus.messages import (
    BusJobResponseAgainMessage,
    BusUnregisteredMessage,
)
from pipecat_workers.jobs.types import JobStatus


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def edges(snapshot: dict) -> dict[tuple[str, str], int]:
    return {(e["source"], e["target"]): e["count"] for e in snapshot["edges"]}


def test_edges_count_messages_within_the_window_only() -> None:
    clock = Clock()
    traffic = Traffic(clock, window=10)
    for _ in range(3):
        traffic.message("greeter", "support")
    clock.now += 5
    traffic.message("support", "greeter")
    traffic.message("greeter", None)
    assert edges(traffic.snapshot()) == {("greeter", "support"): 3, ("support", "greeter"): 1,
                                         ("greeter", "*"): 1}
    clock.now += 5.5  # the first second has left the window; the second has not
    snap = traffic.snapshot()
    assert edges(snap) == {("support", "greeter"): 1, ("greeter", "*"): 1}
    assert snap["edges"][0]["rate"] == 0.1
    clock.now += 60
    assert traffic.snapshot()["edges"] == []
    assert traffic.messages == 5


def test_job_rates_in_flight_and_answers() -> None:
    clock = Clock()
    traffic = Traffic(clock, window=10)
    for i in range(20):
        traffic.job_sent(f"job-{i}", "support", "main")
    for i in range(15):
        traffic.job_answered(f"job-{i}", "support", ok=i % 5 != 0)
    snap = traffic.snapshot()
    assert snap["in_flight"] == 5
    assert snap["jobs"]["support"] == {"in_flight": 5, "rate": 2.0, "done_rate": 1.5,
                                       "failed": 3}
    clock.now += 11
    snap = traffic.snapshot()
    assert snap["jobs"]["support"]["rate"] == 0.0
    assert snap["jobs"]["support"]["in_flight"] == 5  # still unanswered


def test_unanswered_jobs_are_forgotten_in_the_end() -> None:
    clock = Clock()
    traffic = Traffic(clock)
    traffic.job_sent("lost", "support", "main")
    clock.now += traffic_module.IN_FLIGHT_FOR + 1
    traffic.job_sent("new", "support", "main")
    assert traffic.snapshot()["in_flight"] == 1


def test_activations_make_hand_offs_and_the_active_worker() -> None:
    clock = Clock()
    traffic = Traffic(clock)
    traffic.activated("main", "client", "greeter")
    clock.now += 1
    traffic.activated("main", "greeter", "support")
    traffic.activated("other", "x", "billing")
    snap = traffic.snapshot()
    assert snap["active"] == {"main": "support", "other": "billing"}
    newest = snap["handoffs"][1]
    assert (newest["source"], newest["target"], newest["previous"]) == (
        "greeter", "support", "greeter")
    traffic.deactivated("main", "greeter")  # not the active one: nothing changes
    assert traffic.snapshot()["active"]["main"] == "support"
    traffic.deactivated("main", "support")
    assert "main" not in traffic.snapshot()["active"]


def test_hostile_names_are_cut_and_distinct_names_capped(monkeypatch) -> None:
    monkeypatch.setattr(traffic_module, "MAX_EDGES", 10)
    monkeypatch.setattr(traffic_module, "MAX_IN_FLIGHT", 10)
    traffic = Traffic(Clock())
    traffic.message("<script>alert(1)</script>" * 100, "x")
    for i in range(1000):
        traffic.message(f"peer-{i}", "victim")
        traffic.job_sent(f"job-{i}", f"peer-{i}", "main")
    snap = traffic.snapshot()
    assert len(snap["edges"]) == 11  # ten pairs, and the rest together
    assert edges(snap)[(OTHER, OTHER)] == 991
    assert all(len(e["source"]) <= MAX_NAME for e in snap["edges"])
    assert snap["in_flight"] == 10
    assert len(snap["jobs"]) <= traffic_module.MAX_WORKERS + 1


def test_observe_counts_worker_messages_and_skips_membership() -> None:
    traffic = Traffic(Clock())
    messages = [
        BusJobRequestMessage(source="caller", target="support", job_id="j1", job_name="echo"),
        BusJobResponseMessage(source="support", target="caller", job_id="j1",
                              status=JobStatus.ERROR),
        BusJobResponseAgainMessage(source="support", target="caller", job_id="j1"),
        BusActivateWorkerMessage(source="greeter", target="support"),
        BusDeactivateWorkerMessage(source="support", target="greeter"),
        BusHeartbeatMessage(source="runner-1", runner="runner-1", incarnation=1.0),
        BusWorkerReadyMessage(source="support", runner="runner-1"),
        BusJobRequestMessage(source="workers-call-1234", target="support", job_id="j2"),
        # An application's message type this process does not know, with any body at all.
        BusUnregisteredMessage(source="<img src=x onerror=alert(1)>", target=None,
                               type_name="evil", body={"a": ["\u0000" * 10]}),
    ]
    for message in messages:
        observe(traffic, "main", message)
    snap = traffic.snapshot()
    assert edges(snap) == {("caller", "support"): 1, ("support", "caller"): 2,
                           ("workers call", "support"): 1,
                           ("greeter", "support"): 1, ("support", "greeter"): 1,
                           ("<img src=x onerror=alert(1)>", "*"): 1}
    assert snap["jobs"]["support"]["failed"] == 1
    assert snap["jobs"]["support"]["done_rate"] == 0.1  # the answer sent again is not a job
    assert snap["in_flight"] == 1  # j2
    assert snap["active"] == {"main": "support"}
