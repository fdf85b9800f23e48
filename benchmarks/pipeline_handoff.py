"""The hand-off rows: a tool hands the conversation to another LLM worker.

The seeds' shape (see ``pipeline_agents``): a transport ``acme`` whose pipeline is ``[user
aggregator, bridge, turns, assistant aggregator]`` over a shared ``LLMContext``, and two bridged
``LLMWorker`` s on the scripted model, ``greeter`` and ``support``, each with a
``transfer_to_agent`` tool that calls ``result_callback`` and then
``activate_worker(target, args=..., deactivate_self=True)``. The transport activates
``greeter`` and waits for its greeting; then each hand-off is a user turn "please transfer me
to <other>": the active agent's model calls the tool, the tool hands over, and the new agent
greets the user. The agents alternate, so one session measures several hand-offs.

Timed from the tool's ``result_callback`` being called (``TOOL``, stamped in the agents'
process) to the transport's bridge taking in the first frame from the new agent (its
``LLMSetToolsFrame``: the first thing an activated ``LLMWorker`` sends), with
``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for the processes of a machine). In
between, ours drains the old agent's pipeline (its reply to the tool result reaches the
transport first), leaves the bridge and activates the target, which joins the bridge. The
notes split off "target active" (its ``on_activated`` runs) and give the time to the new
agent's whole greeting below the bridge.

Layouts: Redis and hub, the transport in the benchmark process and both agents in a peer
process (``pipeline_peers.py agents``); local, all in one process. The reference runs the same
programs on its own buses (its ``RedisBus``, its ``AsyncQueueBus``; it has no hub), once, with
a 15 s timeout (3 s with ``--quick``): its hand-off waits for a drain that a serializing bus
cannot complete (D1).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from benchmarks.core import Measurement, Scale, Target, benchmark, percentile
from benchmarks.harness import Session
from benchmarks.hub import _on_hub
from benchmarks.network import Cluster, _fresh, redis_url
from benchmarks.pipeline import kit, quiet_shutdown

REF_TIMEOUT = (15.0, 3.0)  # full, quick: a quick run only sees that it stalls


async def _handoffs(impl: str, transport: Any, bridge: Any, turns: Any, agents: Any,
                    count: int, timeout: float) -> dict[str, Any]:
    """Activate greeter, then ``count`` hand-offs back and forth; the timings of each (a
    hand-off that does not finish within ``timeout`` ends the series)."""
    from benchmarks.pipeline_agents import activation_args

    k = kit()
    await transport.activate_worker("greeter", args=activation_args(impl, "Welcome the user."))
    await agents.expect("ACTIVE", timeout=10)
    await asyncio.wait_for(turns.turns.get(), 10)  # its greeting
    current, trials = "greeter", []
    for _ in range(count):
        target = "support" if current == "greeter" else "greeter"
        trial: dict[str, Any] = {"from": current, "to": target}
        trials.append(trial)
        await transport.queue_frame(_user_turn(f"please transfer me to {target}"))
        try:
            async with asyncio.timeout(timeout):
                t_tool = int((await agents.expect("TOOL", timeout=timeout))[3])
                t_active = int((await agents.expect("ACTIVE", timeout=timeout))[2])
                trial["active_ms"] = (t_active - t_tool) / 1e6

                arrived = functools.partial(_first, bridge, target, t_tool)
                await k.wait_until(arrived, timeout, "the first frame")
                t_first = arrived()
                trial["first_frame_ms"] = (t_first - t_tool) / 1e6  # type: ignore[operator]
                while True:  # skip the old agent's reply to the tool result
                    text, t_turn = await turns.turns.get()
                    if text.startswith("Hello,"):
                        break
                trial["greeting_ms"] = (t_turn - t_tool) / 1e6
        except TimeoutError:
            trial["timed_out_s"] = timeout
            break
        current = target
    return {"impl": impl, "trials": trials, "timeout_s": timeout}


def _first(bridge: Any, source: str, after: int) -> int | None:
    """When the bridge first took in a frame from ``source`` after ``after``."""
    return next((t for s, t in bridge.arrivals if s == source and t > after), None)


def _user_turn(text: str) -> Any:
    from pipecat.frames.frames import LLMMessagesAppendFrame

    return LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=True)


async def _local(impl: str, count: int, timeout: float) -> dict[str, Any]:
    k = kit()
    from benchmarks.pipeline_agents import Lines, agent_class, conversation

    lines = Lines()
    agent = agent_class(impl, lines)
    if impl == "ours":
        transport, bridge, turns = conversation("ours")
        session: Any = Session(transport, agent("greeter"), agent("support"))
        await session.add(*session._workers)
        close: Any = None
    else:
        bus, close = k.ref_bus("local")
        transport, bridge, turns = conversation("ref", bus)
        session = k.RefSession(transport, agent("greeter"), agent("support"), bus=bus)
    await session.start()
    try:
        return await _handoffs(impl, transport, bridge, turns, lines, count, timeout)
    finally:
        with quiet_shutdown():
            await session.stop()
            if close is not None:
                await close()


async def _remote(impl: str, backend: str, url: str, count: int,
                  timeout: float) -> dict[str, Any]:
    k = kit()
    from benchmarks.pipeline_agents import conversation

    async with Cluster(backend, url) as cluster:
        agents = await k.peer(cluster, "agents", "--impl", impl, "--backend", backend,
                              "--url", url, "--channel", cluster.channel)
        if impl == "ours":
            transport, bridge, turns = conversation("ours")
            runner = await cluster.session(transport)
            for name in ("greeter", "support"):
                await runner.registry.wait_for(name, 10)
        else:
            bus, close = k.ref_bus(backend, url, cluster.channel)
            transport, bridge, turns = conversation("ref", bus)
            session = k.RefSession(transport, bus=bus, name="bench-ref")
            cluster.on_exit(close)
            cluster.on_exit(session.stop)
            await session.start()
            await k.wait_until(lambda: all(n in session.runner.registry
                                           for n in ("greeter", "support")), 10,
                               "the reference runner to know the agents")
        with quiet_shutdown():
            return await _handoffs(impl, transport, bridge, turns, agents, count, timeout)


def _row(r: dict[str, Any], ref: dict[str, Any] | None = None) -> Measurement:
    done = [t for t in r["trials"] if "first_frame_ms" in t]
    failed = len(r["trials"]) - len(done)
    if not done:
        return Measurement(float("inf"), display=f"> {r['timeout_s']:g} s (timed out)",
                           notes=f"no hand-off completed within {r['timeout_s']:g} s",
                           details=r, valid=False)
    first = sorted(t["first_frame_ms"] for t in done)
    active = sorted(t["active_ms"] for t in done)
    greet = sorted(t["greeting_ms"] for t in done)
    notes = (f"n={len(done)}, max {first[-1]:.1f} ms; target active after "
             f"{percentile(active, 50):.1f} ms; greeting below the bridge after "
             f"{percentile(greet, 50):.1f} ms")
    if failed:
        notes += f"; {failed} timed out after {r['timeout_s']:g} s"
    if ref is not None:
        notes += f"; reference {_ref_figure(ref)}"
    return Measurement(percentile(first, 50), notes=notes, details={**r, "reference": ref},
                       valid=not failed)


def _ref_figure(ref: dict[str, Any]) -> str:
    done = [t["first_frame_ms"] for t in ref["trials"] if "first_frame_ms" in t]
    return f"{done[0]:,.0f} ms" if done else f"> {ref['timeout_s']:g} s"


_refs: dict[tuple[str, bool], dict[str, Any]] = {}


def _ref(kind: str, scale: Scale, measure: Any) -> dict[str, Any]:
    """The reference's hand-off, once per kind and scale (its row and ours both show it)."""
    if (kind, scale.quick) not in _refs:
        _refs[(kind, scale.quick)] = measure()
    return _refs[(kind, scale.quick)]


def _ref_redis(scale: Scale) -> dict[str, Any]:
    url = redis_url()
    timeout = scale.budget(*REF_TIMEOUT)
    return _ref("redis", scale, lambda: _fresh(_remote("ref", "redis", url, 1, timeout)))


def _ref_local(scale: Scale) -> dict[str, Any]:
    timeout = scale.budget(*REF_TIMEOUT)
    return _ref("local", scale, lambda: _fresh(_local("ref", scale.pick(4, 2), timeout)))


@benchmark("pipeline.handoff_local", group="pipeline",
           workload="hand-off: tool result → new agent's first frame, 1 process, p50",
           unit="ms", target=Target("<=", 20))
def handoff_local(scale: Scale) -> Measurement:
    r = _fresh(_local("ours", scale.pick(10, 2), 10.0))
    return _row(r, _ref_local(scale))


@benchmark("pipeline.handoff_local_ref", group="pipeline",
           workload="  reference: the same hand-off on its AsyncQueueBus, p50", unit="ms",
           target=None)
def handoff_local_ref(scale: Scale) -> Measurement:
    return _row(_ref_local(scale))


@benchmark("pipeline.handoff_hub", group="pipeline",
           workload="hand-off, hub: transport + agents in 2 processes, p50", unit="ms",
           target=Target("<=", 20))
def handoff_hub(scale: Scale) -> Measurement:
    return _row(_fresh(_on_hub(lambda path: _remote("ours", "hub", path, scale.pick(10, 2),
                                                    10.0))))


@benchmark("pipeline.handoff_redis", group="pipeline",
           workload="hand-off, Redis: transport + agents in 2 processes, p50", unit="ms",
           target=Target("<=", 20))
def handoff_redis(scale: Scale) -> Measurement:
    url = redis_url()
    r = _fresh(_remote("ours", "redis", url, scale.pick(10, 2), 10.0))
    return _row(r, _ref_redis(scale))


@benchmark("pipeline.handoff_redis_ref", group="pipeline",
           workload="  reference: the same hand-off on its RedisBus (once, 15 s timeout)",
           unit="ms", target=None)
def handoff_redis_ref(scale: Scale) -> Measurement:
    return _row(_ref_redis(scale))
