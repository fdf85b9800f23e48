"""The NETWORK rows of spec §4: two (or more) processes on a real Redis or PostgreSQL+PGMQ.

The benchmark process runs a runner with a plain :class:`Client` worker on a
:class:`RedisBus`/:class:`PgmqBus`; the other side is a peer process (``benchmarks/peers.py``)
that is started, waited for (``READY``) and stopped by each benchmark. Every benchmark uses a
channel of its own (``pw-bench-<random>``), and every process it starts is stopped when it
ends (SIGTERM, then SIGKILL; peers also exit when their stdin closes, so none outlives a
benchmark process that died).

Servers come from ``PIPECAT_TEST_REDIS_URL`` and ``PIPECAT_TEST_POSTGRES_DSN`` (the defaults
are those of ``tests/conftest.py``; ``scripts/services.sh start`` runs both servers). A row
whose server is unreachable is skipped with a note saying so, not failed.

Both sides use the library's default :class:`Settings` (1 s heartbeats, lost after 3 missed)
and the buses' default options: what users get.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from benchmarks.core import Measurement, Scale, Skip, Target, benchmark, percentile
from benchmarks.harness import Client, Session, jobs_in_flight, round_trips
from pipecat_workers import JobError, JobEventType, WorkerRunner
from pipecat_workers.bus import WorkerBus
from pipecat_workers.settings import DEFAULT_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"  # as in tests/conftest.py
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5439/postgres"
READY_TIMEOUT = 20.0

# The floor's message is as big as a serialized job request/response (about 230-250 bytes).
FLOOR_MESSAGE_SIZE = 240


def _us(ns: float) -> float:
    return ns / 1_000


def _fresh(coro: Any) -> Any:
    gc.collect()
    return asyncio.run(coro)


# -- servers ------------------------------------------------------------------------------

_problems: dict[str, str | None] = {}  # service -> why it cannot be used (checked once)


def _shown(url: str) -> str:
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)  # no passwords in reports


def _check(service: str, url: str, check: Callable[[str], None]) -> str:
    if service not in _problems:
        try:
            check(url)
            _problems[service] = None
        except Exception as exc:  # missing driver, refused, timeout, no pgmq schema...
            first = str(exc).strip().split("\n")[0]
            _problems[service] = f"{type(exc).__name__}: {first[:60]}"
    problem = _problems[service]
    if problem is not None:
        raise Skip(f"{service} unreachable at {_shown(url)} ({problem}); "
                   "start it with scripts/services.sh start")
    return url


def _ping_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _check_postgres(dsn: str) -> None:
    async def check() -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq'"):
                raise LookupError("the server has no pgmq schema")
        finally:
            await conn.close()

    asyncio.run(check())


def redis_url() -> str:
    """A reachable Redis, or :class:`Skip`."""
    return _check("Redis", os.environ.get("PIPECAT_TEST_REDIS_URL", DEFAULT_REDIS_URL),
                  _ping_redis)


def postgres_dsn() -> str:
    """A reachable PostgreSQL with PGMQ, or :class:`Skip`."""
    return _check("PostgreSQL", os.environ.get("PIPECAT_TEST_POSTGRES_DSN",
                                               DEFAULT_POSTGRES_DSN), _check_postgres)


def make_bus(backend: str, url: str, channel: str) -> WorkerBus:
    if backend == "hub":  # url: the hub's socket (benchmarks/hub.py)
        from pipecat_workers.bus import HubBus

        return HubBus(url, channel=channel)
    if backend == "redis":
        from pipecat_workers.bus import RedisBus

        return RedisBus(url, channel=channel)  # type: ignore[no-any-return]
    from pipecat_workers.bus import PgmqBus

    return PgmqBus(url, channel=channel)  # type: ignore[no-any-return]


# -- peer processes -----------------------------------------------------------------------

_live: set[int] = set()  # pids of peers not yet reaped, killed at exit whatever happens


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_live):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), for the details."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Peer:
    """One ``python -m benchmarks.peers ...`` process; its stderr goes to ``log``."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.lines: list[list[str]] = []  # lines read while looking for another one

    @classmethod
    async def start(cls, log: Path, *args: str) -> Peer:
        path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.peers", *args, cwd=ROOT, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                start_new_session=True)
        _live.add(proc.pid)
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float | None:
        return _cpu_seconds(self.pid)

    async def expect(self, word: str, timeout: float = READY_TIMEOUT) -> list[str]:
        """Read lines until one starts with ``word``; its words. Fails with the peer's log."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise RuntimeError("the peer exited")
                    words = line.decode().split()
                    if words and words[0] == word:
                        return words
                    self.lines.append(words)
        except (TimeoutError, RuntimeError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            tail = self.log.read_text(errors="replace")[-2_000:]
            raise RuntimeError(f"peer {self.pid}: no {word} line ({why}); its log:\n{tail}"
                               ) from None

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to say goodbye."""
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin and SIGTERM it; SIGKILL if it is still there after ``timeout``."""
        try:
            if self.proc.returncode is None:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                with contextlib.suppress(ProcessLookupError):
                    self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), timeout)
                except TimeoutError:
                    self.kill()
            await self.proc.wait()
        finally:
            _live.discard(self.proc.pid)


class Cluster:
    """One benchmark's channel, its peer processes and its own runner; all stopped on exit."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self.channel = f"pw-bench-{uuid.uuid4().hex[:10]}"
        self.peers: list[Peer] = []
        self.sessions: list[Session] = []
        self._logs = tempfile.TemporaryDirectory(prefix="pw-bench-")
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            await self._stack.aclose()
            for session in self.sessions:
                with contextlib.suppress(Exception):
                    await session.stop(timeout=15)
            await asyncio.gather(*(p.stop() for p in self.peers), return_exceptions=True)
        finally:
            self._logs.cleanup()

    def on_exit(self, callback: Callable[[], Awaitable[Any]]) -> None:
        self._stack.push_async_callback(callback)

    async def peer(self, *args: str, ready: bool = True) -> Peer:
        log = Path(self._logs.name) / f"peer-{len(self.peers)}.log"
        peer = await Peer.start(log, *args)
        self.peers.append(peer)
        if ready:
            await peer.expect("READY")
        return peer

    async def runner_peer(self, name: str, *workers: str) -> Peer:
        """A peer process running a runner called ``name`` that hosts ``workers``."""
        return await self.peer("runner", "--backend", self.backend, "--url", self.url,
                               "--channel", self.channel, "--name", name, *workers)

    async def session(self, *workers: Client) -> WorkerRunner:
        """This process's runner (default settings) on the cluster's channel, started."""
        session = Session(*workers, bus=make_bus(self.backend, self.url, self.channel),
                          name=f"bench-{uuid.uuid4().hex[:6]}")
        self.sessions.append(session)
        await session.add(*workers)
        await session.start()
        return session.runner


def _stats(samples: list[int]) -> dict[str, float]:
    """p50/p90/p99/max in µs of sorted nanosecond samples."""
    return {"p50_us": _us(percentile(samples, 50)), "p90_us": _us(percentile(samples, 90)),
            "p99_us": _us(percentile(samples, 99)), "max_us": _us(samples[-1]),
            "n": len(samples)}


# -- 1 + 2. Redis floor and round trip, measured together ---------------------------------


async def _pingpong(publish: Callable[..., Awaitable[Any]], listen: Any, channel: str,
                    n: int, budget: float) -> list[int]:
    """Raw redis-py ping-pong: publish to the peer's channel, read its echo; ns samples."""
    clock = time.perf_counter_ns
    deadline = clock() + int(budget * 1e9)
    samples: list[int] = []
    for i in range(n):
        data = (b"%d:" % i).ljust(FLOOR_MESSAGE_SIZE, b".")
        start = clock()
        await publish(channel, data)
        item = await anext(listen)
        samples.append(clock() - start)
        if item["data"] != data:
            raise RuntimeError(f"ping-pong answered {item['data']!r:.40} to {data!r:.40}")
        if start > deadline:
            break
    return samples


async def _floor_and_round_trip(url: str, rounds: int, n: int, warmup: int,
                                budget: float) -> dict[str, Any]:
    from redis.asyncio import Redis

    async with Cluster("redis", url) as cluster:
        ping, pong = f"{cluster.channel}:ping", f"{cluster.channel}:pong"
        await asyncio.gather(
            cluster.peer("pingpong", "--url", url, "--ping", ping, "--pong", pong),
            cluster.runner_peer("peer-echo", "echo"))
        redis = Redis.from_url(url)
        cluster.on_exit(redis.aclose)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        cluster.on_exit(pubsub.aclose)
        await pubsub.subscribe(pong)
        listen = pubsub.listen()
        client = Client("client")
        runner = await cluster.session(client)
        await runner.registry.wait_for("echo", 10)

        return await interleaved(
            lambda count, seconds: _pingpong(redis.publish, listen, ping, count, seconds),
            client, rounds=rounds, n=n, warmup=warmup, budget=budget)


async def interleaved(floor: Callable[[int, float], Awaitable[list[int]]], client: Client, *,
                      rounds: int, n: int, warmup: int, budget: float) -> dict[str, Any]:
    """Time a floor (``floor(count, seconds)`` returns ns samples) and job round trips to
    the peer's ``echo``, A B A B after a warm-up of each, so machine drift hits both alike."""
    await floor(warmup, budget)
    await round_trips(client, "echo", iterations=0, warmup=warmup, budget=budget)
    floors: list[int] = []
    trips: list[int] = []
    per_round = []
    for _ in range(rounds):
        f = await floor(n, budget / rounds / 2)
        t = await round_trips(client, "echo", iterations=n, warmup=0,
                              budget=budget / rounds / 2)
        per_round.append((_us(sorted(f)[len(f) // 2]), _us(sorted(t)[len(t) // 2])))
        floors += f
        trips += t
    floors.sort()
    trips.sort()
    return {"floor": _stats(floors), "round_trip": _stats(trips), "rounds": rounds,
            "per_round_p50_us": [{"floor": a, "round_trip": b} for a, b in per_round]}


_pair: dict[bool, dict[str, Any]] = {}  # scale.quick -> the one interleaved measurement


def _redis_pair(scale: Scale) -> dict[str, Any]:
    url = redis_url()
    if scale.quick not in _pair:
        _pair[scale.quick] = _fresh(_floor_and_round_trip(
            url, rounds=scale.pick(4, 2), n=scale.pick(1_000, 150), warmup=scale.pick(300, 50),
            budget=scale.budget(8, 2)))
    return _pair[scale.quick]


@benchmark("redis.pingpong_floor", group="redis",
           workload="raw redis-py pub/sub ping-pong p50, 2 processes (floor)", unit="µs",
           target=None)
def redis_floor(scale: Scale) -> Measurement:
    return floor_row(_redis_pair(scale), "redis.round_trip")


def floor_row(r: dict[str, Any], paired: str) -> Measurement:
    """The floor's row of an :func:`interleaved` measurement."""
    f = r["floor"]
    return Measurement(f["p50_us"], notes=f"p99 {f['p99_us']:.0f} µs, n={f['n']:,}, "
                       f"interleaved with {paired}", details=r)


def round_trip_row(r: dict[str, Any], *, as_ratio: bool) -> Measurement:
    """The round trip's row of an :func:`interleaved` measurement: its value is the p50, or
    its ratio to the floor's p50 (``as_ratio``); the cell shows both."""
    floor, trip = r["floor"]["p50_us"], r["round_trip"]["p50_us"]
    ratio = trip / floor
    return Measurement(
        ratio if as_ratio else trip, display=f"{trip:.0f} µs ({ratio:.2f}× floor)",
        notes=f"floor {floor:.0f} µs; p99 {r['round_trip']['p99_us']:.0f} µs, "
              f"n={r['round_trip']['n']:,}; {r['rounds']} rounds A B A B",
        details=r)


@benchmark("redis.round_trip", group="redis",
           workload="Redis job round trip p50, 2 processes", unit="×", target=Target("<=", 1.5))
def redis_round_trip(scale: Scale) -> Measurement:
    return round_trip_row(_redis_pair(scale), as_ratio=True)


# -- 3. throughput (the helper serves the PGMQ row too) ----------------------------------


async def _throughput(backend: str, url: str, total: int, in_flight: int, warmup: int,
                      budget: float) -> dict[str, Any]:
    async with Cluster(backend, url) as cluster:
        peer = await cluster.runner_peer("peer-echo", "echo")
        client = Client("client")
        runner = await cluster.session(client)
        await runner.registry.wait_for("echo", 10)
        await round_trips(client, "echo", iterations=0, warmup=warmup, budget=budget)
        cpu_peer, cpu_self = peer.cpu(), time.process_time()
        jobs, elapsed = await jobs_in_flight(client, "echo", total=total, in_flight=in_flight,
                                             budget=budget)
        cpu_self = time.process_time() - cpu_self
        after = peer.cpu()
        cpu_peer = None if after is None or cpu_peer is None else after - cpu_peer
    return {"jobs": jobs, "seconds": elapsed, "rate": jobs / elapsed, "in_flight": in_flight,
            "cpu_client_s": cpu_self, "cpu_peer_s": cpu_peer}


def _throughput_row(r: dict[str, Any]) -> Measurement:
    cpu = f"; CPU client {r['cpu_client_s'] / r['seconds']:.0%}"
    if r["cpu_peer_s"] is not None:
        cpu += f", peer {r['cpu_peer_s'] / r['seconds']:.0%}"
    return Measurement(r["rate"], notes=f"{r['jobs']:,} jobs in {r['seconds']:.2f} s{cpu}",
                       details=r)


@benchmark("redis.throughput", group="redis", workload="Redis jobs/s, 100 in flight",
           unit="jobs/s", target=Target(">=", 8_000))
def redis_throughput(scale: Scale) -> Measurement:
    url = redis_url()
    return _throughput_row(_fresh(_throughput("redis", url, scale.pick(40_000, 3_000), 100,
                                              scale.pick(500, 100), scale.budget(6, 1.5))))


# -- 6. remote discovery ------------------------------------------------------------------


async def _newcomer(registry: Any, peer: Peer, name: str, lost_after: float) -> dict[str, Any]:
    """Start one newcomer runner in ``peer`` (already imported, waiting for ``go``) and time
    until this process's registry holds its worker; then stop it."""
    found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def seen(_data: Any) -> None:
        if not found.done():
            found.set_result(time.monotonic_ns())

    await registry.watch(name, seen)
    try:
        await peer.send(f"go {name}")
        _, _, t_go, t_run = await peer.expect("STARTED")
        try:
            t_found: int | None = await asyncio.wait_for(asyncio.shield(found), lost_after)
        except TimeoutError:
            t_found = None
    finally:
        registry.unwatch(name, seen)
    return {"name": name, "pid": peer.pid, "t_go": int(t_go), "t_run": int(t_run),
            "t_found": t_found}


def _timings(r: dict[str, Any], peer: Peer) -> dict[str, Any]:
    up = next((int(w[2]) for w in peer.lines if w[:2] == ["UP", r["name"]]), None)
    found = r.pop("t_found")
    t_go, t_run = r.pop("t_go"), r.pop("t_run")
    r["from_go_ms"] = None if found is None else (found - t_go) / 1e6
    r["from_run_ms"] = None if found is None else (found - t_run) / 1e6
    r["newcomer_ready_ms"] = None if up is None else (up - t_run) / 1e6
    return r


async def _discovery(url: str, count: int, processes: int, together: int,
                     lost_after: float) -> dict[str, Any]:
    async with Cluster("redis", url) as cluster:
        runner = await cluster.session(Client("watcher"))
        registry = runner.registry
        peers = await asyncio.gather(*(cluster.peer(
            "newcomers", "--backend", "redis", "--url", url, "--channel", cluster.channel)
            for _ in range(processes)))
        one_by_one = []
        for i in range(count):  # one newcomer at a time, round robin over the processes
            peer = peers[i % processes]
            r = await _newcomer(registry, peer, f"new-{i}", lost_after)
            await peer.send(f"stop {r['name']}")
            await peer.expect("STOPPED")
            one_by_one.append(_timings(r, peer))
        bursts = []
        for b in range(together):  # then every process starts one at the same moment
            rs = await asyncio.gather(*(_newcomer(registry, peer, f"burst-{b}-{j}", lost_after)
                                        for j, peer in enumerate(peers)))
            for r, peer in zip(rs, peers, strict=True):
                await peer.send(f"stop {r['name']}")
                await peer.expect("STOPPED")
                bursts.append(_timings(r, peer))
    return {"one_by_one": one_by_one, "together": bursts, "processes": processes,
            "lost_after_s": lost_after}


@benchmark("redis.discovery", group="redis",
           workload="remote discovery, newcomer started with peers (max)", unit="ms",
           target=Target("<=", 50))
def redis_discovery(scale: Scale) -> Measurement:
    url = redis_url()
    count, processes, together = scale.pick(20, 6), scale.pick(4, 2), scale.pick(3, 1)
    r = _fresh(_discovery(url, count, processes, together, lost_after=3.0))
    found = sorted(x["from_go_ms"] for x in r["one_by_one"] if x["from_go_ms"] is not None)
    burst = sorted(x["from_go_ms"] for x in r["together"] if x["from_go_ms"] is not None)
    lost = count - len(found)
    lost_burst = len(r["together"]) - len(burst)
    r.update(lost=lost, lost_together=lost_burst)
    if not found:
        return Measurement(float("inf"), notes=f"LOST all {count}", details=r, valid=False)
    r.update(p50_ms=percentile(found, 50), max_ms=found[-1])
    notes = f"p50 {r['p50_ms']:.1f} ms; found {len(found)}/{count}"
    if lost:
        notes += f", LOST {lost}"
    if r["together"]:
        r["together_max_ms"] = burst[-1] if burst else None
        notes += (f"; {together}× {processes} started together: found "
                  f"{len(burst)}/{len(r['together'])}")
        notes += f", max {burst[-1]:.1f} ms" if burst else ""
    return Measurement(found[-1], notes=notes, details=r, valid=not lost and not lost_burst)


# -- 7. a job to a killed worker ends ------------------------------------------------------


async def _heartbeat_phase(runner: WorkerRunner, peer_runner: str, phase: float
                           ) -> float | None:
    """Wait for the next heartbeat from ``peer_runner``, then ``phase`` seconds more; the
    seconds since that heartbeat arrived (None if unknown).

    Loss detection counts silence from the last heartbeat received, so the time a kill takes
    to end a job depends on when in the heartbeat interval it happens: right after a
    heartbeat is the worst case. Reads the runner's membership table (private, read only);
    without it the kill happens at once, at whatever phase that is.
    """
    loop = asyncio.get_running_loop()
    if getattr(runner.bus, "presence", None) is not None:
        # No periodic heartbeats on a bus with presence: its refreshes run on their own
        # clock, so the phases just spread the kills over an interval.
        await asyncio.sleep(phase)
        return None
    peers = getattr(getattr(runner, "_membership", None), "peers", None)
    known = peers.get(peer_runner) if isinstance(peers, dict) else None
    if known is None or not hasattr(known, "last_seen"):
        return None
    seen = known.last_seen
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3 * DEFAULT_SETTINGS.heartbeat_interval):
            while known.last_seen == seen:
                await asyncio.sleep(0.001)
    await asyncio.sleep(max(0.0, phase - (loop.time() - known.last_seen)))
    return float(loop.time() - known.last_seen)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a library logger's expected warnings (a killed runner "is lost") for a while."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


async def _kill(backend: str, url: str, repeats: int, end_timeout: float) -> dict[str, Any]:
    async with Cluster(backend, url) as cluster:
        client = Client("client")
        runner = await cluster.session(client)
        names = [(f"peer-doomed-{i}", f"doomed-{i}") for i in range(repeats)]
        peers = await asyncio.gather(*(cluster.runner_peer(r, w) for r, w in names))
        trials = []
        interval = DEFAULT_SETTINGS.heartbeat_interval
        phases = [interval * k / repeats for k in range(repeats)]  # 0 (the worst) first
        for peer, (runner_name, worker), phase in zip(peers, names, phases, strict=True):
            await runner.registry.wait_for(worker, 10)
            ctx = client.job(worker, name="hang")
            await asyncio.wait_for(ctx.__aenter__(), 10)
            first = await asyncio.wait_for(anext(ctx), 10)  # the handler is running
            if first.type is not JobEventType.STREAM_START:
                raise RuntimeError(f"expected a stream start, got {first.type}")
            since_beat = await _heartbeat_phase(runner, runner_name, phase)
            killed = time.perf_counter()
            peer.kill()
            took: float | None = None
            error = ""
            try:
                await asyncio.wait_for(ctx.__aexit__(None, None, None), end_timeout)
                error = "the job completed?"
            except JobError as exc:
                took = time.perf_counter() - killed
                error = str(exc)
            except TimeoutError:
                error = f"did not end within {end_timeout} s"
            await peer.stop()
            # Let this runner finish dropping the dead runner's queue (PGMQ) before anything
            # else is sent: a broadcast racing with that drop fails (see the README).
            await asyncio.sleep(0.2)
            trials.append({"seconds": took, "error": error, "pid": peer.pid,
                           "since_last_heartbeat_s": since_beat, "phase_wanted_s": phase})
    return {"trials": trials}


def _kill_row(r: dict[str, Any], end_timeout: float) -> Measurement:
    took = [t["seconds"] for t in r["trials"]]
    ended = sorted(t for t in took if t is not None)
    worst = ended[-1] if len(ended) == len(took) else end_timeout
    notes = f"each: {', '.join('never' if t is None else f'{t:.2f}' for t in took)} s"
    phases = [t["since_last_heartbeat_s"] for t in r["trials"]]
    if all(p is not None for p in phases):
        notes += f" (killed {', '.join(f'{p:.2f}' for p in phases)} s after a heartbeat)"
    return Measurement(worst, notes=notes, details=r, valid=len(ended) == len(took))


@benchmark("redis.kill", group="redis", workload="Redis: job to a killed worker ends (max)",
           unit="s", target=Target("<=", 3))
def redis_kill(scale: Scale) -> Measurement:
    url = redis_url()
    with _quiet("pipecat_workers.membership"):
        return _kill_row(_fresh(_kill("redis", url, scale.pick(3, 1), 10.0)), 10.0)


# -- PGMQ rows (4. round trip, 5. throughput, 7. killed worker) --------------------------


async def _round_trip(backend: str, url: str, n: int, warmup: int,
                      budget: float) -> dict[str, Any]:
    async with Cluster(backend, url) as cluster:
        await cluster.runner_peer("peer-echo", "echo")
        client = Client("client")
        runner = await cluster.session(client)
        await runner.registry.wait_for("echo", 10)
        samples = await round_trips(client, "echo", iterations=n, warmup=warmup, budget=budget)
    samples.sort()
    return _stats(samples)


@benchmark("pgmq.round_trip", group="pgmq", workload="PGMQ job round trip p50, 2 processes",
           unit="ms", target=Target("<=", 5))
def pgmq_round_trip(scale: Scale) -> Measurement:
    url = postgres_dsn()
    r = _fresh(_round_trip("pgmq", url, scale.pick(1_000, 100), scale.pick(100, 20),
                           scale.budget(5, 1)))
    return Measurement(r["p50_us"] / 1e3, notes=f"p99 {r['p99_us'] / 1e3:.2f} ms, "
                       f"n={r['n']:,}", details=r)


@benchmark("pgmq.throughput", group="pgmq", workload="PGMQ jobs/s, 100 in flight",
           unit="jobs/s", target=Target(">=", 1_000))
def pgmq_throughput(scale: Scale) -> Measurement:
    url = postgres_dsn()
    return _throughput_row(_fresh(_throughput("pgmq", url, scale.pick(10_000, 1_000), 100,
                                              scale.pick(200, 50), scale.budget(6, 1.5))))


@benchmark("pgmq.kill", group="pgmq", workload="PGMQ: job to a killed worker ends (max)",
           unit="s", target=Target("<=", 3))
def pgmq_kill(scale: Scale) -> Measurement:
    url = postgres_dsn()
    with _quiet("pipecat_workers.membership"):
        return _kill_row(_fresh(_kill("pgmq", url, scale.pick(3, 1), 10.0)), 10.0)
