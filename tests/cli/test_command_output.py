"""What commands print, without running them: worker lines, the ``up -d`` verdict, plain
prefixes and times, log records, state directory errors and the worker ``call`` resolves."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pipecat_workers_cli.commands.bus import _Printer, _registered
from pipecat_workers_cli.commands.channel import Where, _channel_of
from pipecat_workers_cli.commands.up import _exited_early, _verdict
from pipecat_workers_cli.errors import CommandError, StateDirError
from pipecat_workers_cli.logs.reader import LogRecord
from pipecat_workers_cli.main import OneLineFormatter, configure_logging
from pipecat_workers_cli.render.plain import PlainRenderer
from pipecat_workers_cli.states import select, worker_line
from pipecat_workers_cli.supervisor.statedir import StateDir
from pipecat_workers_cli.supervisor.status import ProjectStatus, WorkerStatus
from pipecat_workers_cli.topology import load_topology
from rich.console import Console

from pipecat_workers.bus import BusEndMessage, BusHeartbeatMessage
from pipecat_workers.errors import BusConnectionError


def worker(name: str, state: str, **fields: object) -> WorkerStatus:
    return WorkerStatus(name=name, worker=name.split(".")[0], channel="main", state=state,
                        **fields)  # type: ignore[arg-type]


def project(*workers: WorkerStatus) -> ProjectStatus:
    return ProjectStatus(project="p", file="p.yaml", running=True, supervisor_pid=1,
                         workers=list(workers), channels=[])


# -- worker lines and the verdict of up -d -----------------------------------------------


@pytest.mark.parametrize(("status", "line"), [
    (worker("echo", "ready", pid=1234), "echo: ready (pid 1234)"),
    (worker("echo", "stopped", exit_code=0), "echo: stopped"),
    (worker("c", "backing off", exit_code=3, reason="exited with code 3: no database"),
     "c: backing off (exited with code 3: no database)"),
    (worker("c", "crashed", exit_code=3), "c: crashed (exit code 3)"),
    (worker("s", "starting", pid=7, reason="slow"), "s: starting (pid 7; slow)"),
])
def test_worker_line(status: WorkerStatus, line: str) -> None:
    assert worker_line(status) == line


def test_select_by_name_or_by_key_for_every_replica() -> None:
    workers = [worker("r.1", "ready"), worker("r.2", "ready"), worker("echo", "ready")]
    assert [w.name for w in select(workers, ["r"])] == ["r.1", "r.2"]
    assert [w.name for w in select(workers, ["r.2", "echo"])] == ["r.2", "echo"]
    assert select(workers, []) == workers


def test_verdict_waits_then_tells_success_or_failure() -> None:
    assert _verdict(project(worker("a", "ready"), worker("b", "starting")), False) is None
    assert _verdict(project(worker("a", "ready"), worker("b", "exited")), False) is True
    assert _verdict(project(worker("a", "ready"), worker("b", "stopped")), True) is True
    assert _verdict(project(worker("a", "starting"), worker("b", "backing off")),
                    False) is False
    assert _verdict(project(worker("a", "ready"), worker("b", "failed")), False) is False


def test_a_supervisor_that_exited_early_is_explained(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = StateDir.of(tmp_path, "p")
    state.path.mkdir(parents=True)
    state.supervisor_log.write_text("error: an older run's\n")
    start = state.supervisor_log.stat().st_size
    with state.supervisor_log.open("a") as log:
        log.write("error: no worker named 'x' in p.yaml\n\n")
    error = _exited_early(state, 1, start)  # it wrote no state: its last words
    assert str(error) == (f"the supervisor exited with code 1: no worker named 'x' in "
                          f"p.yaml; its log: {state.supervisor_log}")
    status = project(worker("b", "failed", exit_code=78, reason="RuntimeError: no key"))
    status.running = False
    state.write_state(status.to_json())
    error = _exited_early(state, 78, start)  # it did: each worker's line, then why
    assert capsys.readouterr().out == "b: failed (RuntimeError: no key)\n"
    assert str(error) == ("the supervisor exited with code 78 as no worker was left "
                          f"running; its log: {state.supervisor_log}")


# -- plain output ------------------------------------------------------------------------


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def plain(names: list[str], records: list[LogRecord], **options: bool) -> list[str]:
    out = io.StringIO()
    renderer = PlainRenderer(names, console=Console(file=out, highlight=False,
                                                    soft_wrap=True), **options)
    renderer.start()
    for record in records:
        renderer.record(record)
    renderer.stop()
    return out.getvalue().splitlines()


def test_plain_prefixes_have_one_width_from_the_first_line() -> None:
    at = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
    records = [LogRecord(at, "a", "sup", "started"), LogRecord(at, "a", "out", "hi"),
               LogRecord(at, "researcher.1", "out", "hello")]
    assert plain(["a", "researcher.1"], records) == [
        "a            | [started]", "a            | hi", "researcher.1 | hello"]


def test_plain_timestamps_are_local_time(tokyo: None) -> None:
    at = datetime(2026, 11, 22, 5, 0, 1, 250000, tzinfo=UTC)
    assert plain(["a"], [LogRecord(at, "a", "out", "hi")], timestamps=True) == [
        "14:00:01.250 a | hi"]  # UTC+9


# -- log records -------------------------------------------------------------------------


def test_log_records_are_one_line_with_the_exception_but_no_traceback() -> None:
    formatter = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ConnectionError("refused\nmore detail")
    except ConnectionError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.WARNING, __file__, 1, "could not %s", ("leave",),
            sys.exc_info())
    assert formatter.format(record) == "WARNING x: could not leave (ConnectionError: refused)"


def test_logging_is_one_line_at_warning_unless_debugging(
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored afterwards
    monkeypatch.setattr(root, "level", root.level)
    configure_logging()
    assert root.level == logging.WARNING
    assert [type(h.formatter) for h in root.handlers] == [OneLineFormatter]
    monkeypatch.setenv("WORKERS_DEBUG", "1")
    configure_logging()
    assert [type(h.formatter) for h in root.handlers] == [logging.Formatter]


# -- the state directory -----------------------------------------------------------------


def test_a_file_in_the_way_of_the_state_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".workers").write_text("")
    state = StateDir.of(tmp_path, "p")
    assert state.supervisor_alive() is False
    assert state.read_state() is None
    with pytest.raises(StateDirError) as info:
        state.lock()
    assert str(info.value) == (f"cannot use {state.path} for the project's state: "
                               f"{tmp_path / '.workers'} is a file, not a directory")
    with pytest.raises(OSError, match="is a file"):  # the supervisor tolerates OSError
        state.write_state({})


def test_an_unwritable_state_directory_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateDir.of(tmp_path, "p")
    state.path.mkdir(parents=True)
    (state.path / "lock").write_text("")

    def denied(path: object, *args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", denied)
    for action in (state.lock, state.supervisor_alive):
        with pytest.raises(StateDirError) as info:
            action()
        assert isinstance(info.value, CommandError)
        assert str(info.value) == (f"cannot use {state.path / 'lock'} for the project's "
                                   "state: Permission denied")


def test_the_socket_recorded_in_the_state_file_wins(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path, "p")
    assert state.socket_from_state("control") == state.socket_path("control")
    state.write_state({"sockets": {"control": "/run/x/control.sock", "hub": None}})
    assert state.socket_from_state("control") == Path("/run/x/control.sock")
    assert state.socket_from_state("hub") == state.socket_path("hub")


# -- which worker `call` means -----------------------------------------------------------


def test_call_refuses_a_key_with_replicas_and_names_them(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nworkers:\n  r: {class: 'm:R', replicas: 3}\n"
                    "  echo: {class: 'm:E'}\n")
    topology = load_topology(path)
    assert _channel_of(topology, "echo") == "main"
    assert _channel_of(topology, "r.3") == "main"
    with pytest.raises(CommandError, match=r"^'r' has 3 replicas: r\.1, r\.2, r\.3; "
                                           "call one of them$"):
        _channel_of(topology, "r")
    for unknown in ("r.4", "echo.1", "nobody"):
        with pytest.raises(CommandError, match=f"^no worker named '{unknown}' in t.yaml$"):
            _channel_of(topology, unknown)


def test_call_stops_waiting_for_its_registration_when_its_runner_fails() -> None:
    class NeverRegistered:
        async def wait_registered(self) -> None:
            await asyncio.Event().wait()

    async def scenario() -> None:
        run: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, run.set_exception,
                                              BusConnectionError("Redis went away"))
        caller: Any = NeverRegistered()
        await _registered(Where("redis", "redis://x", "c"), caller, run)

    with pytest.raises(CommandError, match=r"^cannot join channel 'c': Redis went away$"):
        asyncio.run(asyncio.wait_for(scenario(), 5))


# -- what `tail` prints ------------------------------------------------------------------


def heartbeat(source: str) -> BusHeartbeatMessage:
    return BusHeartbeatMessage(source=source, runner=source, incarnation=1.0, digest="d")


def test_tail_prints_json_lines_without_its_own_messages() -> None:
    out = io.StringIO()
    printer = _Printer("me", heartbeats=True, as_json=True, out=out)
    for message in (heartbeat("me"), heartbeat("w"), BusEndMessage(source="w", reason="bye")):
        printer(message)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"type": "Heartbeat", "source": "w", "target": None, "runner": "w",
         "incarnation": 1.0, "digest": "d", "interval": 1.0},
        {"type": "End", "source": "w", "target": None, "reason": "bye"},
    ]
    quiet = io.StringIO()
    _Printer("me", heartbeats=False, as_json=False, out=quiet)(heartbeat("w"))
    assert quiet.getvalue() == ""


def test_tail_shows_an_application_type_by_its_registered_name() -> None:
    where = Where(backend="local", url="/nowhere/hub.sock", channel="c")
    bus = where.bus(everything=True)
    data = (b'{"v":1,"id":"x-1","from":"r","inc":1.0,"ts":1.0,"type":"app.reading",'
            b'"body":{"source":"sensor","target":null,"celsius":19.5}}')
    message = bus._serializer.deserialize(data)  # type: ignore[attr-defined]
    assert message is not None
    out = io.StringIO()
    _Printer("me", heartbeats=False, as_json=True, out=out)(message)
    assert json.loads(out.getvalue()) == {"type": "app.reading", "source": "sensor",
                                          "target": None, "celsius": 19.5}


def test_tail_stops_quietly_when_its_reader_goes_away() -> None:
    """`workers tail | head`: once the pipe's reader is gone, nothing more is written."""
    read, write = os.pipe()
    out = open(write, "w")  # noqa: SIM115 -- closed below, after its failed flush
    try:
        printer = _Printer("me", heartbeats=False, as_json=False, out=out)
        printer(BusEndMessage(source="w", reason="first"))
        assert b"End" in os.read(read, 4096)
        assert not printer.closed.is_set()
        os.close(read)
        printer(BusEndMessage(source="w", reason="second"))  # raises no BrokenPipeError
        assert printer.closed.is_set()
        printer(BusEndMessage(source="w", reason="third"))
    finally:
        with contextlib.suppress(BrokenPipeError):
            out.close()


# -- user text is never rich markup ----------------------------------------------------------


def test_an_error_with_brackets_is_printed_as_it_is(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from pipecat_workers_cli.main import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check", "bad/[x].yaml"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: bad/[x].yaml: file not found"
    closing = CliRunner().invoke(main, ["check", "a[/].yaml"])  # rich would raise on "[/]"
    assert closing.exit_code == 1
    assert closing.stderr.strip() == "error: a[/].yaml: file not found"
    emoji = CliRunner().invoke(main, ["check", "build:100:x.yaml"])  # not "build💯x.yaml"
    assert emoji.stderr.strip() == "error: build:100:x.yaml: file not found"


def test_tables_show_names_and_reasons_as_they_are() -> None:
    from pipecat_workers_cli.render.tables import project_table, runners_table

    status = project(worker("w", "crashed", reason="bad [red]x[/] and [/]"))
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    console.print(project_table(status))
    console.print(runners_table({"channel": "c[/]", "backend": "redis", "runners": [
        {"name": "r[b]", "stats": {}, "seen_ago": 1.0}]}))
    text = out.getvalue()
    assert "bad [red]x[/] and [/]" in text and "c[/]" in text and "r[b]" in text


def test_the_live_views_last_frame_does_not_say_it_still_runs() -> None:
    from pipecat_workers_cli.render.live import LiveRenderer

    out = io.StringIO()
    view = LiveRenderer(load_topology(Path(__file__).parents[2] / "configs/sensors.yaml"),
                        console=Console(file=out, width=120, color_system=None))
    view.start()
    view.status(project(worker("sensor", "exited", exit_code=0)))
    view.stop()
    last = out.getvalue().rsplit("p (not running)", 1)
    assert len(last) == 2, out.getvalue()
    assert "Ctrl-C" not in last[1]


def test_hints_name_the_project_so_that_they_work_from_here(tmp_path: Path) -> None:
    from pipecat_workers_cli.project import command_for

    (tmp_path / "sub").mkdir()
    a = tmp_path / "sub" / "a.yaml"
    a.write_text("name: a\nroot: .\nworkers:\n  w: {class: 'm:W'}\n")
    topology_a = load_topology(a)
    # Not found from tmp_path (its state lives under sub/): name the file.
    assert command_for(topology_a, tmp_path) == "workers -f sub/a.yaml"
    StateDir.of(topology_a.root, "a").path.mkdir(parents=True)
    # Found from sub/ (no state file yet: the supervisor is starting): nothing to add.
    assert command_for(topology_a, tmp_path / "sub") == "workers"
    StateDir.of(topology_a.root, "b").path.mkdir(parents=True)
    assert command_for(topology_a, tmp_path / "sub") == "workers -p a"


def test_with_several_stopped_projects_ps_and_down_answer_for_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from pipecat_workers_cli.main import main

    for name in ("handoff", "research"):
        (tmp_path / ".workers" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    ps, down, as_json, logs = (CliRunner().invoke(main, args) for args in (
        ["ps"], ["down"], ["ps", "--json"], ["logs"]))
    assert (ps.exit_code, ps.stdout) == (0, "no project is running here (handoff, research); "
                                            "`workers -p NAME ps` shows one's last state\n")
    assert (down.exit_code, down.stdout) == (0, "no project is running here (handoff, "
                                                "research)\n")
    for result in (as_json, logs):  # these need one project
        assert result.exit_code == 1
        assert result.stderr == ("error: several projects here (handoff, research): choose "
                                 "one with -p NAME\n")


def test_check_reports_a_bus_whose_driver_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from pipecat_workers_cli.main import main

    import pipecat_workers.bus

    monkeypatch.setitem(pipecat_workers.bus._LAZY, "RedisBus",
                        ("pipecat_workers.bus.backends.redis", "no_such_driver_here", "redis"))
    (tmp_path / "t.yaml").write_text(
        "name: t\nroot: .\nchannels:\n  main:\n    backend: redis\n    url: redis://h\n"
        "workers:\n  w: {class: 'pipecat_workers:BaseWorker'}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check", "t.yaml"])
    assert result.exit_code == 1
    first, last = result.stderr.splitlines()[0], result.stderr.splitlines()[-1]
    assert first.startswith("error: t.yaml:4: channels.main.backend: RedisBus needs"), first
    assert "pip install 'pipecat-workers[redis]'" in first
    assert last == "error: 1 error in t.yaml"


def test_a_piped_table_is_not_wrapped_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipecat_workers_cli.render import PIPED_WIDTH, table_console
    from pipecat_workers_cli.render.tables import project_table

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    console = table_console()
    assert console.width == PIPED_WIDTH
    reason = ("exited with code 3: a long reason " * 3).strip()
    status = project(worker("researcher.1", "crashed", pid=123456, reason=reason))
    with console.capture() as captured:
        console.print(project_table(status))
    row = [line for line in captured.get().splitlines() if "researcher.1" in line]
    assert len(row) == 1 and "123456" in row[0] and reason in row[0], captured.get()


def test_up_refuses_unknown_workers_and_a_second_topology_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from pipecat_workers_cli.main import main

    (tmp_path / "t.yaml").write_text("name: t\nroot: .\nworkers:\n  w: {class: 'm:W'}\n"
                                     "  r: {class: 'm:W', replicas: 2}\n")
    monkeypatch.chdir(tmp_path)
    unknown = CliRunner().invoke(main, ["up", "-d", "t.yaml", "w", "nobody"])
    assert unknown.exit_code == 1
    assert unknown.stderr == ("error: no worker named 'nobody' in t.yaml (it has w, r, r.1, "
                              "r.2)\n")
    two = CliRunner().invoke(main, ["-f", "t.yaml", "up", "other.yaml"])
    assert two.exit_code == 1
    assert two.stderr == ("error: two topologies: t.yaml (-f or WORKERS_FILE) and other.yaml; "
                          "give one\n")
    assert not (tmp_path / ".workers").exists()  # nothing was started
