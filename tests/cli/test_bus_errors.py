"""Errors where users look, on the bus side, through the real ``workers`` program.

A ``tail`` or ``call`` ended by SIGTERM leaves the bus as it does on Ctrl-C; a bus that cannot
be reached is one line with a hint, in every command and in every worker's log, repeated at
most a few times a minute; a worker waits for its bus instead of crash-looping; ``up`` runs
``check``'s pre-flight before it starts anything; ``check --connect`` tries every server.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cliproj import Cli, brief, wait_for, write_project

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

SLOW_PY = '''

import asyncio


class Slow(BaseWorker):
    """Answers ``slow`` jobs after a long while; says when one starts."""

    @job("slow")
    async def slow(self, message):
        print("slow-started", flush=True)
        await asyncio.sleep(60)
        return {}
'''


def free_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def log_lines(cli: Cli, project: str, worker: str) -> list[str]:
    path = cli.cwd / ".workers" / project / "logs" / f"{worker}.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.timeout(90)
def test_tail_and_call_ended_by_sigterm_leave_the_bus(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "leaving", {"echo": {"class": "Echo"}, "slow": {"class": "Slow"}})
    with (tmp_path / "app_workers.py").open("a") as module:
        module.write(SLOW_PY)
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)

    tail = cli.popen("tail")
    tail.out.wait_for("WorkerRegistry", timeout=20)  # it has joined
    call = cli.popen("call", "slow", "--job", "slow")
    wait_for(lambda: any("slow-started" in line for line in log_lines(cli, "leaving", "slow")),
             timeout=20, what="the slow job to start")
    for running in (tail, call):
        running.proc.send_signal(signal.SIGTERM)
    assert tail.wait(timeout=15) == 143, tail.err.rest()
    assert call.wait(timeout=15) == 143, call.err.rest()
    assert not [line for line in tail.err.rest() + call.err.rest() if "Traceback" in line]

    # Its peers heard goodbyes: nobody reports the terminal's runners lost.
    time.sleep(2)  # a lost runner on the embedded bus is reported within milliseconds
    for worker in ("echo", "slow"):
        lost = [line for line in log_lines(cli, "leaving", worker) if "is lost" in line]
        assert not lost, lost


class _Forwarder:
    """A TCP port that forwards to a real server, opened when the test says: the server
    "comes up" on a port where nothing listened."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self._port, self._target = port, target
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self._port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection(self._target)
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_workers_wait_for_an_unreachable_redis_in_a_few_lines_then_start(
        tmp_path: Path, clis: Callable[[Path], Cli], redis_url: str) -> None:
    port = free_port()
    path = write_project(tmp_path, "patient", {"echo": {"class": "Echo"},
                                               "peer": {"class": "Echo"}},
                         channel={"backend": "redis",
                                  "url": f"${{BUS_URL:-redis://127.0.0.1:{port}/0}}",
                                  "channel": f"patient-{uuid.uuid4().hex[:12]}"})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if text.strip() == "main:")
    cli = clis(tmp_path)
    cli.env.pop("BUS_URL", None)
    why = (f"cannot reach Redis at redis://127.0.0.1:{port}/0: connection refused: is it "
           f"running? set BUS_URL (channels.main.url, workers.yaml:{line})")

    # up -d says at once that each worker waits for its bus, and why.
    started = time.monotonic()
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert time.monotonic() - started < 20  # not up's 60 s wait for readiness
    assert up.returncode == 1, (up.stdout, up.stderr)
    for worker in ("echo", "peer"):
        assert re.search(rf"^{worker}: starting \(pid \d+; waiting for the bus: "
                         rf"{re.escape(why)}\)$", up.stdout, re.M), up.stdout

    # They stay starting, not crash-looping, and their logs grow by a few lines a minute.
    time.sleep(5)
    early = {w: len(log_lines(cli, "patient", w)) for w in ("echo", "peer")}
    time.sleep(15)
    status = cli.ps()
    for worker in status["workers"]:
        assert (worker["state"], worker["restarts"]) == ("starting", 0), brief(status)
        assert worker["reason"] == f"waiting for the bus: {why}", worker
    for worker, before in early.items():
        lines = log_lines(cli, "patient", worker)
        assert len(lines) <= 3, lines  # started, and the first report (maybe with its hint)
        assert len(lines) - before <= 1, lines  # 3 lines a minute at most, so 1 in 15 s
        assert not [text for text in lines if "Traceback" in text], lines
        assert any(why.split(" set ")[0] in text for text in lines), lines
    supervisor = (tmp_path / ".workers" / "patient" / "supervisor.log").read_text()
    assert len(supervisor.splitlines()) <= 6, supervisor  # one warning, not one per retry

    # The server comes up: each worker connects and gets ready, without a restart.
    redis = urlsplit(redis_url)
    forwarder = _Forwarder(port, (redis.hostname or "127.0.0.1", redis.port or 6379))
    forwarder.start()
    try:
        ready = cli.wait_ps(lambda s: all(w["state"] == "ready" for w in s["workers"]),
                            timeout=30, what="both workers ready")
        assert all(w["restarts"] == 0 and not w["reason"] for w in ready["workers"]), \
            brief(ready)
        down = cli.run("down")
        assert down.returncode == 0, down.stderr
    finally:
        forwarder.close()


@pytest.mark.timeout(60)
def test_up_refuses_a_missing_driver_or_class_before_starting_anything(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    path = write_project(tmp_path, "preflight",
                         {"echo": {"class": "Echo"}, "typo": {"class": "Ecko"}},
                         channel={"backend": "redis", "url": "redis://127.0.0.1:1/0"})
    lines = path.read_text().splitlines()
    channel_line = lines.index("  main:") + 1
    typo_line = lines.index("  typo:") + 1
    # This interpreter has no redis driver: the module is known to be missing.
    blocker = tmp_path / "no-redis"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['redis'] = None\n")
    cli = clis(tmp_path)
    cli.env["PYTHONPATH"] = str(blocker)

    up = cli.run("up", "-d", "workers.yaml")
    assert up.returncode == 1, (up.stdout, up.stderr)
    assert up.stderr.splitlines() == [
        f"error: workers.yaml:{channel_line}: channels.main.backend: RedisBus needs the "
        "'redis' package: pip install 'pipecat-workers[redis]'",
        f"error: workers.yaml:{typo_line}: workers.typo.class: module 'app_workers' has no "
        "attribute 'Ecko' (did you mean 'Echo'?)",
        "error: 2 errors in workers.yaml; nothing started",
    ], up.stderr
    assert not cli.state_files() and up.stdout == ""

    # One mistake is one line, in the foreground too.
    path.write_text(path.read_text().replace("backend: redis", "backend: local")
                    .replace("url: redis://127.0.0.1:1/0", ""))
    foreground = cli.run("up", "workers.yaml")
    assert foreground.returncode == 1, (foreground.stdout, foreground.stderr)
    assert foreground.stderr.splitlines() == [
        f"error: workers.yaml:{typo_line}: workers.typo.class: module 'app_workers' has no "
        "attribute 'Ecko' (did you mean 'Echo'?); nothing started"], foreground.stderr
    assert not cli.state_files()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_check_connect_tries_every_channels_server(
        tmp_path: Path, clis: Callable[[Path], Cli], redis_url: str,
        postgres_dsn: str) -> None:
    port = free_port()
    path = write_project(tmp_path, "reach", {"echo": {"class": "Echo"}})
    document = yaml.safe_load(path.read_text())
    document["channels"] = {
        "main": {"backend": "local"},
        "cache": {"backend": "redis", "url": redis_url},
        "queue": {"backend": "pgmq", "url": postgres_dsn},
        "gone": {"backend": "redis", "url": f"${{GONE_URL:-redis://127.0.0.1:{port}/0}}"},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    gone_line = path.read_text().splitlines().index("  gone:") + 1
    cli = clis(tmp_path)
    cli.env.pop("GONE_URL", None)

    check = cli.run("check", "workers.yaml", "--connect")
    assert check.returncode == 1, (check.stdout, check.stderr)
    out = check.stdout.splitlines()
    assert "ok  channel main     local: not running (the embedded bus exists while " \
           "`workers up` runs)" in out, out
    assert any(line.startswith("ok  channel cache    redis redis://") and
               line.endswith(": reachable") for line in out), out
    assert any(line.startswith("ok  channel queue    pgmq postgresql://") for line in out), out
    assert check.stderr.splitlines() == [
        f"error: workers.yaml:{gone_line}: channels.gone.url: cannot reach Redis at "
        f"redis://127.0.0.1:{port}/0: connection refused: is it running? set GONE_URL",
        "error: 1 error in workers.yaml",
    ], check.stderr

    # A local channel answers while the project runs; without --connect nothing is tried.
    del document["channels"]["gone"]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    connected, plain = cli.run_many(("check", "workers.yaml", "--connect"),
                                    ("check", "workers.yaml"))
    assert connected.returncode == 0, connected.stderr
    assert "ok  channel main     local: the project's bus answers" in \
        connected.stdout.splitlines(), connected.stdout
    assert plain.returncode == 0, plain.stderr
    assert not [line for line in plain.stdout.splitlines() if line.startswith("ok  channel")]


# -- the supervisor's side, without processes ----------------------------------------------


def test_a_worker_waiting_for_its_bus_stays_starting_past_its_ready_timeout() -> None:
    from fakes import FakeClock
    from pipecat_workers_cli.supervisor.machine import Kill, Machine, State
    from pipecat_workers_cli.topology.model import ChannelSpec, Topology, WorkerSpec, expand

    root = Path("/project")
    topology = Topology(name="proj", path=root / "workers.yaml", root=root,
                        channels={"main": ChannelSpec(key="main", backend="redis",
                                                      url="redis://x", channel="proj.main")},
                        workers={"w": WorkerSpec(key="w", class_path="app:W",
                                                 ready_timeout=30.0)})
    clock = FakeClock()
    m = Machine(expand(topology), clock, lambda: 0.5)
    m.start()
    m.spawned("w", 1000)
    why = "cannot reach Redis at redis://x: connection refused: is it running?"
    for _ in range(10):  # a minute and a half of waiting, said every few seconds
        clock.advance(9)
        assert m.tick() == []
        assert m.waiting_for_bus("w", why) == []  # the host's own line says it
    proc = m.procs["w"]
    assert (proc.state, proc.reason, proc.restarts) == (
        State.STARTING, f"waiting for the bus: {why}", 0)
    m.ready("w")
    assert (proc.state, proc.reason) == (State.READY, "")
    assert m.waiting_for_bus("w", why) == [] and proc.reason == ""  # too late: ignored

    # A host that stops saying so is not ready_timeout late forever.
    m2 = Machine(expand(topology), clock, lambda: 0.5)
    m2.start()
    m2.spawned("w", 1001)
    m2.waiting_for_bus("w", why)
    clock.advance(31)
    assert any(isinstance(action, Kill) for action in m2.tick())


def test_preflight_finds_missing_modules_and_names_without_importing(tmp_path: Path) -> None:
    from pipecat_workers_cli.topology.model import Topology, WorkerSpec
    from pipecat_workers_cli.topology.preflight import preflight

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("raise SystemExit('never imported')\n")
    (tmp_path / "pkg" / "agents.py").write_text(
        "import sys\nif sys.platform:\n    class Agent:\n        pass\n"
        "try:\n    from fast import Thing\nexcept ImportError:\n    Thing = None\n")
    (tmp_path / "starry.py").write_text("from pkg.agents import *\n")
    (tmp_path / "broken.py").write_text("class Oops(:\n")
    classes = {"agent": "pkg.agents:Agent", "thing": "pkg.agents:Thing",
               "star": "starry:Anything", "stdlib": "json:JSONDecoder",
               "typo": "pkg.agents:Agnet", "nomodule": "pkg.nothere:Agent",
               "nopackage": "nowhere.agents:Agent", "syntax": "broken:Oops",
               "stdlib_typo": "json:nope"}
    topology = Topology(name="p", path=tmp_path / "workers.yaml", root=tmp_path, channels={},
                        workers={k: WorkerSpec(key=k, class_path=v, line=i)
                                 for i, (k, v) in enumerate(classes.items(), 1)})
    found = {p.field.split(".")[1]: p.message for p in preflight(topology)}
    assert found.pop("syntax").startswith(
        "importing 'broken' failed: syntax error in broken.py:1: "), found
    assert found == {
        "typo": "module 'pkg.agents' has no attribute 'Agnet' (did you mean 'Agent'?)",
        "nomodule": "module 'pkg.nothere' not found",
        "nopackage": "module 'nowhere.agents' not found (no module named 'nowhere')",
        "stdlib_typo": "module 'json' has no attribute 'nope'",
    }, found
    assert "pkg" not in sys.modules


def test_preflight_finds_modules_as_python_does(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty folder at the root is only a namespace portion: a real package further on
    # the path wins, as it does for the host. A worker's own PYTHONPATH counts too.
    from pipecat_workers_cli.topology.model import Topology, WorkerSpec
    from pipecat_workers_cli.topology.preflight import preflight

    (tmp_path / "myapp").mkdir()  # no __init__.py
    src = tmp_path / "src" / "myapp"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "w.py").write_text("class W:\n    pass\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "own.py").write_text("class Own:\n    pass\n"
                                "for Looped in [Own]:\n    pass\n"
                                "with open(__file__) as Opened:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    workers = {
        "shadowed": WorkerSpec(key="shadowed", class_path="myapp.w:W", line=1),
        "own_path": WorkerSpec(key="own_path", class_path="own:Own", line=2,
                               env={"PYTHONPATH": "lib"}),
        "no_path": WorkerSpec(key="no_path", class_path="own:Own", line=3),
        "typo": WorkerSpec(key="typo", class_path="myapp.w:V", line=4),
        "looped": WorkerSpec(key="looped", class_path="own:Looped", line=5,
                             env={"PYTHONPATH": "lib"}),
        "opened": WorkerSpec(key="opened", class_path="own:Opened", line=6,
                             env={"PYTHONPATH": "lib"}),
    }
    topology = Topology(name="p", path=tmp_path / "workers.yaml", root=tmp_path, channels={},
                        workers=workers)
    found = {p.field.split(".")[1]: p.message for p in preflight(topology)}
    assert found == {"no_path": "module 'own' not found",
                     "typo": "module 'myapp.w' has no attribute 'V'"}, found
