"""Replay-safe signing: a signed message is good for one channel, one incarnation of the runner
it is for, and once, however busy the channel.

The serializer-level tests check each rule (and the 200,000-message case) in memory; the
bus-level ones capture real signed job requests on the embedded hub, Redis and PGMQ and send
them again where they must not run: on another channel that shares the secret, to the worker's
restarted runner, and to the same runner after thousands of other messages.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from pipecat_workers import BaseWorker, WorkerRunner, job
from pipecat_workers.bus import (
    BusDataMessage,
    BusEndMessage,
    BusJobRequestMessage,
    BusMessage,
    BusRegistryRequestMessage,
    JSONMessageSerializer,
    register_message,
)
from pipecat_workers.bus import replay as replay_module
from pipecat_workers.bus.network import NetworkBus
from tests.helpers import Recorder, running, wait_until
from tests.procs.cluster import SETTINGS, Cluster

SECRET = "replay-safe"
N = 19  # requests captured and sent again, as in the reproduction
JOB_REQUEST = b'"type":"job.request"'


@register_message(name="test.signing.ping")
@dataclass(kw_only=True, slots=True)
class Ping(BusDataMessage):
    n: int = 0


class Counter(BaseWorker):
    """Counts the ``count`` jobs it runs and the pings it gets."""

    def __init__(self, name: str = "w") -> None:
        super().__init__(name)
        self.ran = 0
        self.pings = 0

    @job("count")
    async def count(self, message: BusJobRequestMessage) -> dict[str, int]:
        self.ran += 1
        return {"ran": self.ran}

    async def on_bus_message(self, message: BusMessage) -> None:
        await super().on_bus_message(message)
        if isinstance(message, Ping):
            self.pings += 1


def ser(secret: str = SECRET, **kwargs: Any) -> JSONMessageSerializer:
    return JSONMessageSerializer(secret=secret, **kwargs)


def end(n: int = 0) -> BusMessage:
    return BusEndMessage(source="a", reason=str(n))


def sign(envelope: dict[str, Any], secret: str = SECRET) -> bytes:
    """Sign an envelope the way the serializer does (for envelopes it would never write)."""
    raw = json.dumps(envelope, separators=(",", ":")).encode()
    sig = hmac.digest(secret.encode(), raw, "sha256").hex().encode()
    return raw[:-1] + b',"sig":"' + sig + b'"}'


def envelope(**overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"v": 1, "id": "abc-1", "from": "r", "inc": 1.0, "ts": time.time(),
                           "type": "session.end",
                           "body": {"source": "a", "target": None, "reason": "x"}}
    env.update(overrides)
    return env


# -- the channel ---------------------------------------------------------------------------------


def test_the_channel_and_target_incarnation_are_in_the_signed_envelope() -> None:
    data = ser().serialize(end(), sender="r1", incarnation=1.5, channel="acme",
                           target_incarnation=7.25)
    obj = json.loads(data)
    assert list(obj) == ["v", "id", "from", "inc", "ts", "ch", "tinc", "type", "body", "sig"]
    assert (obj["ch"], obj["tinc"]) == ("acme", 7.25)
    env = ser().decode(data, channel="acme")
    assert env is not None and (env.channel, env.target_incarnation) == ("acme", 7.25)
    unbound = json.loads(ser().serialize(end(), channel="acme"))
    assert "tinc" not in unbound  # broadcasts, and targets of unknown incarnation


def test_a_message_signed_for_one_channel_is_refused_on_another() -> None:
    sender, receiver = ser(), ser()
    data = sender.serialize(end(), channel="a")
    assert receiver.decode(data, channel="b") is None
    assert receiver.stats()["wrong_channel"] == 1
    assert receiver.decode(data, channel="a") is not None
    assert ser().decode(data) is not None  # a serializer used on its own does not check
    # Changing the channel breaks the signature; leaving it out means "no channel".
    moved = data.replace(b'"ch":"a"', b'"ch":"b"')
    assert receiver.decode(moved, channel="b") is None and receiver.stats()["forged"] == 1
    assert receiver.decode(ser().serialize(end()), channel="b") is None
    assert receiver.stats()["wrong_channel"] == 2


def test_unsigned_envelopes_that_name_no_channel_pass_and_others_are_checked() -> None:
    receiver = JSONMessageSerializer(secret="")
    assert receiver.decode(json.dumps(envelope()).encode(), channel="c") is not None
    assert receiver.decode(json.dumps(envelope(ch="c")).encode(), channel="c") is not None
    assert receiver.decode(json.dumps(envelope(ch="d")).encode(), channel="c") is None
    assert receiver.stats()["wrong_channel"] == 1


@pytest.mark.parametrize("field", [
    {"ch": 1}, {"ch": ["c"]}, {"tinc": -1.0}, {"tinc": "1"}, {"tinc": True}, {"inc": True},
])
def test_envelope_fields_of_the_wrong_type_are_malformed(field: dict[str, Any]) -> None:
    receiver = JSONMessageSerializer(secret="")
    data = json.dumps(envelope(**field)).encode()
    assert receiver.decode(data, channel="c") is None
    assert receiver.stats()["malformed"] == 1


@pytest.mark.parametrize("key", ["inc", "ts", "tinc"])
def test_an_infinite_number_in_the_envelope_is_malformed(key: str) -> None:
    receiver = JSONMessageSerializer(secret="")
    data = json.dumps(envelope(**{key: 12345.5})).encode().replace(b"12345.5", b"1e400")
    assert receiver.decode(data) is None
    assert receiver.stats()["malformed"] == 1


# -- replay memory -------------------------------------------------------------------------------


def test_the_first_message_is_refused_after_200_000_others() -> None:
    sender, receiver = ser(), ser()
    first = sender.serialize(end(), channel="c")
    assert receiver.decode(first, channel="c") is not None
    for _ in range(200_000):
        assert receiver.decode(sender.serialize(end(), channel="c"), channel="c") is not None
    assert receiver.decode(first, channel="c") is None
    assert receiver.stats()["replayed"] == 1
    assert len(receiver._replay._senders) == 1  # one sender, one fixed-size record


def test_a_flood_of_new_senders_evicts_no_replay_protection() -> None:
    """More senders than are remembered: the honest one is forgotten, yet its old message is
    still refused (the floor rose with it) and its new ones are still accepted."""
    honest, receiver = ser(), ser()
    first = honest.serialize(end(), channel="c")
    assert receiver.decode(first, channel="c") is not None
    flood = [ser().serialize(end(), channel="c") for _ in range(2 * replay_module.MAX_SENDERS)]
    for data in flood:
        assert receiver.decode(data, channel="c") is not None
    assert len(receiver._replay._senders) == replay_module.MAX_SENDERS
    assert receiver.decode(first, channel="c") is None
    assert receiver.decode(flood[0], channel="c") is None
    assert receiver.stats()["replayed"] == 2
    time.sleep(0.002)  # a new message is stamped after the floor
    assert receiver.decode(honest.serialize(end(), channel="c"), channel="c") is not None


def test_forgetting_a_stale_sender_does_not_raise_the_floor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "MAX_SENDERS", 1)
    receiver = ser(max_age=60.0)
    old = ser().serialize(end())
    assert receiver.decode(old) is not None
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 61.0)
    lagging = ser().serialize(end())  # its clock lags ours by 50 s: still fresh
    monkeypatch.setattr(time, "time", lambda: real_time() + 111.0)
    assert receiver.decode(ser().serialize(end())) is not None  # forgets the stale sender
    assert receiver.decode(lagging) is not None
    assert receiver.decode(old) is None and receiver.stats()["stale"] == 1


def test_out_of_order_ids_within_the_window_are_accepted_once() -> None:
    sender, receiver = ser(), ser()
    data = [sender.serialize(end(i)) for i in range(3000)]
    window = replay_module.WINDOW
    assert receiver.decode(data[5]) is not None
    assert receiver.decode(data[3]) is None  # sent before the first one heard: unknowable
    assert receiver.decode(data[10]) is not None
    assert receiver.decode(data[8]) is not None  # late, within the window
    assert receiver.decode(data[8]) is None
    assert receiver.decode(data[10 + window]) is not None
    assert receiver.decode(data[11]) is not None  # the oldest the window still covers
    assert receiver.decode(data[9]) is None  # below it now: too old to tell
    assert receiver.decode(data[2999]) is not None
    assert receiver.decode(data[2999 - window + 1]) is not None
    assert receiver.stats()["replayed"] == 3


def test_a_signed_message_id_must_be_prefix_and_hex_counter() -> None:
    receiver = ser()
    for mid in ("abc", "abc-", "-1", "abc-xyz", "abc-0x1", "ABC-1", "a-" + "1" * 17):
        assert receiver.decode(sign(envelope(id=mid))) is None
    assert receiver.stats()["malformed"] == 7
    assert receiver.decode(sign(envelope(id="abc-1f"))) is not None


# -- without the secret --------------------------------------------------------------------------


def test_a_receiver_without_the_secret_counts_signed_messages_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    keyless = JSONMessageSerializer(secret="")
    with caplog.at_level(logging.WARNING, logger="pipecat_workers.bus"):
        assert keyless.decode(JSONMessageSerializer(secret="").serialize(end())) is not None
        assert keyless.unverified == 0
        for _ in range(3):
            assert keyless.decode(ser().serialize(end())) is not None
    assert keyless.unverified == 3
    said = [r.getMessage() for r in caplog.records if "signed" in r.getMessage()]
    assert said == ["messages on this channel are signed, and this process has no secret: "
                    "what it sends is dropped there (set PIPECAT_WORKERS_SECRET)"]


# -- the network bus: binding to an incarnation ---------------------------------------------------


class FakeBus(NetworkBus):
    """A network bus whose wire is a list: what it sends, and what a test feeds it."""

    def __init__(self, channel: str = "c") -> None:
        super().__init__(channel=channel, serializer=ser())
        self.sent: list[tuple[str | None, bytes]] = []

    async def _send_broadcast(self, data: bytes) -> None:
        self.sent.append((None, data))

    async def _send_to_runner(self, runner: str, data: bytes) -> None:
        self.sent.append((runner, data))


async def test_a_bus_binds_a_targeted_message_to_the_incarnation_it_heard() -> None:
    where = {"w": "r2", "v": "r3"}
    bus = FakeBus()
    bus.bind("r1", 10.0, where.get)
    peer = ser()
    bus._on_payload(peer.serialize(end(), sender="r2", incarnation=20.0, channel="c"))
    bus._on_payload(peer.serialize(end(), sender="r2", incarnation=19.0, channel="c"))  # older
    await bus.send(Ping(source="x", target="w"))
    await bus.send(Ping(source="x", target="v"))  # r3: heard of, never heard from
    await bus.send(Ping(source="x", target="nobody"))
    await bus.send(Ping(source="x"))
    tincs = [(runner, json.loads(data).get("tinc")) for runner, data in bus.sent]
    assert tincs == [("r2", 20.0), ("r3", None), (None, None), (None, None)]
    assert all(json.loads(data)["ch"] == "c" for _, data in bus.sent)


async def test_a_bus_refuses_a_message_bound_to_another_incarnation_of_its_runner() -> None:
    bus = FakeBus()
    bus.bind("r1", 10.0, lambda name: None)
    worker, observer = Recorder("w"), Recorder("tap")
    bus.subscribe(worker)
    bus.subscribe(observer, role="observer")
    peer = ser()
    async with bus:
        for tinc in (10.0, 0.0, 9.0, 11.0):
            bus._on_payload(peer.serialize(Ping(source="x", target="w", n=int(tinc)),
                                           sender="r2", incarnation=5.0, channel="c",
                                           target_incarnation=tinc))
        # Bound to another runner's incarnation, for a target not here: observers see it.
        bus._on_payload(peer.serialize(Ping(source="x", target="elsewhere", n=99),
                                       sender="r2", incarnation=5.0, channel="c",
                                       target_incarnation=30.0))
        await wait_until(lambda: len(observer.messages) == 3)
        await asyncio.sleep(0.01)
    assert [m.n for m in worker.of_type(Ping)] == [10, 0]
    assert [m.n for m in observer.of_type(Ping)] == [10, 0, 99]
    assert bus.stats()["wire_dropped"] == {"wrong_incarnation": 2}


async def test_a_signing_bus_tells_an_unsigned_sender_once_that_the_channel_is_signed() -> None:
    bus = FakeBus()
    bus.bind("r1", 10.0, lambda name: None)
    keyless = JSONMessageSerializer(secret="")
    async with bus:
        for _ in range(3):
            bus._on_payload(keyless.serialize(end(), sender="tool", channel="c"))
            await asyncio.sleep(0.15)  # more than the pause between two unsigned senders read
        bus._on_payload(keyless.serialize(end(), sender="r1", channel="c"))  # not a peer's name
        await asyncio.sleep(0.01)
    assert [runner for runner, _ in bus.sent] == ["tool"]
    told = keyless.decode(bus.sent[0][1], channel="c")
    assert told is not None and keyless.unverified == 1
    assert told.message == BusRegistryRequestMessage(source="r1", target="tool", runner="r1")
    assert bus.stats()["wire_dropped"] == {"unsigned": 4}


# -- on real buses --------------------------------------------------------------------------------


def capture(bus: Any) -> list[tuple[str, bytes]]:
    """Record every targeted payload ``bus`` sends, as someone on the wire could."""
    sent: list[tuple[str, bytes]] = []
    original = bus._send_to_runner

    async def send(runner: str, data: bytes) -> None:
        sent.append((runner, data))
        await original(runner, data)

    bus._send_to_runner = send
    return sent


def new_runner(cluster: Cluster, name: str | None = None) -> WorkerRunner:
    return WorkerRunner(name=name or f"r-{uuid.uuid4().hex[:6]}", bus=cluster.bus(SECRET),
                        handle_sigint=False, settings=SETTINGS)


async def count(client: BaseWorker, n: int) -> None:
    for _ in range(n):
        async with client.job("w", name="count", timeout=5):
            pass


async def pinged(w: Counter, n: int) -> None:
    await wait_until(lambda: w.pings == n, timeout=10)


def dropped(runner: WorkerRunner) -> dict[str, int]:
    return runner.bus.stats()["wire_dropped"]  # type: ignore[no-any-return]


async def test_requests_captured_on_one_channel_do_not_run_on_another(cluster: Cluster) -> None:
    w, client = Counter(), BaseWorker("client")
    host = await cluster.local(w, secret=SECRET)
    caller = await cluster.local(client, secret=SECRET)
    sent = capture(caller.bus)
    await wait_until(lambda: "w" in caller.registry, timeout=5)
    await count(client, N)
    requests = [data for runner, data in sent if JOB_REQUEST in data]
    assert (len(requests), w.ran) == (N, N)

    other = Cluster(cluster.backend, cluster.url, cluster.log_dir, cluster.stack)
    w2, client2 = Counter(), BaseWorker("client")
    host2 = new_runner(other, host.name)  # the same runner name, so the same route
    await host2.add_workers(w2)
    injector = await other.local(client2, secret=SECRET)
    async with running(host2):
        await wait_until(lambda: "w" in injector.registry, timeout=5)
        for data in requests:
            await injector.bus._send_to_runner(host2.name, data)  # type: ignore[attr-defined]
            await injector.bus._send_broadcast(data)  # type: ignore[attr-defined]
        await wait_until(lambda: dropped(host2).get("wrong_channel") == 2 * N, timeout=5)
        await count(client2, 1)  # the channel itself works
        assert w2.ran == 1


@pytest.mark.parametrize("same_name", [True, False], ids=["same-name", "new-name"])
async def test_requests_to_a_runner_do_not_run_on_its_restarted_successor(
        cluster: Cluster, same_name: bool) -> None:
    w, client = Counter(), BaseWorker("client")
    host, caller = new_runner(cluster), new_runner(cluster)
    await host.add_workers(w)
    await caller.add_workers(client)
    sent = capture(caller.bus)
    async with running(caller), running(host):
        await wait_until(lambda: "w" in caller.registry, timeout=5)
        await count(client, N)
    requests = [data for runner, data in sent if JOB_REQUEST in data]
    assert (len(requests), w.ran) == (N, N)
    assert {json.loads(data)["tinc"] for data in requests} == {host.incarnation}

    # The sender is gone too, so the new runner has never heard it: only the binding to the
    # old incarnation tells that these requests were not for it.
    w2, client2 = Counter(), BaseWorker("client2")
    successor = new_runner(cluster, host.name if same_name else None)
    await successor.add_workers(w2)
    injector = await cluster.local(client2, secret=SECRET)
    async with running(successor):
        await wait_until(lambda: "w" in injector.registry, timeout=5)
        for data in requests:
            await injector.bus._send_to_runner(successor.name, data)  # type: ignore[attr-defined]
        await wait_until(lambda: dropped(successor).get("wrong_incarnation") == N, timeout=5)
        async with client2.job("w", name="count", timeout=5) as j:
            pass
        assert (j.response, w2.ran) == ({"ran": 1}, 1)


async def test_a_request_sent_again_after_thousands_of_messages_does_not_run(
        cluster: Cluster) -> None:
    w, client = Counter(), BaseWorker("client")
    host = await cluster.local(w, secret=SECRET)
    caller = await cluster.local(client, secret=SECRET)
    sent = capture(caller.bus)
    await wait_until(lambda: "w" in caller.registry, timeout=5)
    await count(client, 1)
    first = next(data for _, data in sent if JOB_REQUEST in data)
    pings = 3 * replay_module.WINDOW
    for start in range(0, pings, 256):  # in rounds, so that no mailbox overflows
        for n in range(start, start + 256):
            await client.send_bus_message(Ping(source="client", target="w", n=n))
        await pinged(w, start + 256)
    await caller.bus._send_to_runner(host.name, first)  # type: ignore[attr-defined]
    await wait_until(lambda: dropped(host).get("replayed") == 1, timeout=5)
    await count(client, 1)
    assert w.ran == 2
