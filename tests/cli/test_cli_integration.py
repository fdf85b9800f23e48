"""The real ``workers`` program on tiny projects in a temporary directory.

Each test writes a topology and a worker module (see ``cliproj.py``) into ``tmp_path`` and runs
``python -m pipecat_workers_cli ...`` there as a subprocess, the way a user would: ``up -d``,
``ps``, ``call``, ``logs``, ``restart``, ``down``, a foreground ``up`` and its signals, crash loops
and configuration errors. Every test leaves nothing running: the ``clis`` fixture brings every
project down and kills any process of ours still there, even when the test failed.

Starting the CLI costs about half a second, so the steps are grouped into a few scenarios,
and independent commands run side by side.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cliproj import (
    Cli,
    brief,
    pid_gone,
    wait_for,
    wait_gone,
    workers_by_name,
    write_project,
)

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor's process handling is tested on Linux", allow_module_level=True)

BACKENDS = [
    "local",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("pgmq", marks=pytest.mark.postgres),
]
TWO_ECHOES = {"echo": {"class": "Echo"}, "peer": {"class": "Echo"}}


def channel_for(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A fresh channel on ``backend``; the servers' fixtures are asked for only when used."""
    if backend == "local":
        return {"backend": "local"}
    url = request.getfixturevalue("redis_url" if backend == "redis" else "postgres_dsn")
    return {"backend": backend, "url": url, "channel": f"cli-it-{uuid.uuid4().hex[:12]}"}


def answer_of(stdout: str) -> dict[str, Any]:
    """The answer in ``call``'s plain output: the ``completed: {...}`` line."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("completed: ")), None)
    assert line is not None, f"no 'completed:' line in:\n{stdout}"
    answer: dict[str, Any] = json.loads(line.removeprefix("completed: "))
    return answer


def one_line_error(result: Any, *needles: str) -> None:
    """Exit status 1 and one line on stderr naming every needle, and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def all_ready(status: dict[str, Any]) -> bool:
    return all(w["state"] == "ready" and w["pid"] and w["registered"]
               for w in status["workers"])


# -- 1 to 5 (and 11): the core scenario, on every backend --------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_up_call_logs_restart_down(backend: str, request: pytest.FixtureRequest,
                                   tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "core", TWO_ECHOES, channel=channel_for(backend, request))
    cli = clis(tmp_path)

    # 1. up -d returns once every worker is ready; ps --json shows them ready, registered.
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    assert re.search(r"^echo: ready \(pid \d+\)$", up.stdout, re.M), up.stdout
    assert re.search(r"^peer: ready \(pid \d+\)$", up.stdout, re.M), up.stdout
    status = cli.ps()
    assert status["running"] is True and status["project"] == "core"
    assert isinstance(status["supervisor_pid"], int)
    workers = workers_by_name(status)
    assert set(workers) == {"echo", "peer"}
    assert all(w["state"] == "ready" and isinstance(w["pid"], int) for w in workers.values())
    if not all_ready(status):  # the supervisor's bus monitor may see them a moment later
        status = cli.wait_ps(all_ready, timeout=10, what="both workers registered")
    pids = {name: w["pid"] for name, w in workers_by_name(status).items()}

    # 2. call: an answer, JSON lines, an unknown job, an unknown worker.
    marker = uuid.uuid4().hex[:8]
    plain, as_json, bad_job, bad_worker, up_again, no_logs = cli.run_many(
        ("call", "echo", "--job", "echo", "--payload", json.dumps({"marker": marker})),
        ("call", "peer", "--job", "echo", "--payload", '{"n": 2}', "--json"),
        ("call", "echo", "--job", "no-such-job", "--timeout", "10"),
        ("call", "nobody", "--job", "echo"),
        ("up", "workers.yaml"),
        ("logs", "nobody"),
    )
    assert plain.returncode == 0, (plain.stdout, plain.stderr)
    assert answer_of(plain.stdout) == {"echo": {"marker": marker}, "by": "echo",
                                       "pid": pids["echo"]}
    assert as_json.returncode == 0, (as_json.stdout, as_json.stderr)
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert events and events[-1]["event"] == "response", events
    assert events[-1]["status"] == "completed"
    assert events[-1]["data"] == {"echo": {"n": 2}, "by": "peer", "pid": pids["peer"]}
    assert bad_job.returncode == 1, (bad_job.stdout, bad_job.stderr)
    assert "no-such-job" in bad_job.stdout + bad_job.stderr
    assert "Traceback" not in bad_job.stdout + bad_job.stderr
    one_line_error(bad_worker, "nobody")
    one_line_error(up_again, "already running")  # in the foreground; -d applies the file
    one_line_error(no_logs, "nobody")

    # 3. logs: merged and prefixed; --tail 1 of one worker; -f follows new lines.
    echo_line = re.compile(rf"^echo\s*\| echo-handled {{\"marker\": \"{marker}\"}}$", re.M)
    peer_line = re.compile(r'^peer\s*\| echo-handled {"n": 2}$', re.M)

    def both_logged() -> str | None:
        logs = cli.run("logs")
        assert logs.returncode == 0, logs.stderr
        return logs.stdout if echo_line.search(logs.stdout) and peer_line.search(
            logs.stdout) else None

    merged = wait_for(both_logged, timeout=10, what="both jobs in `workers logs`")
    assert re.search(r"^echo\s*\| \[ready\]$", merged, re.M), merged
    tail, whole = cli.run_many(("logs", "--tail", "1", "echo"), ("logs", "echo"))
    assert tail.returncode == 0 and whole.returncode == 0, (tail.stderr, whole.stderr)
    assert tail.stdout.splitlines() == [whole.stdout.splitlines()[-1]], (tail.stdout,
                                                                          whole.stdout)
    assert echo_line.search(tail.stdout), tail.stdout
    assert "peer" not in whole.stdout

    follower = cli.popen("logs", "-f", "echo")
    follower.out.wait_for(echo_line.pattern, timeout=10)  # the backlog first
    second = uuid.uuid4().hex[:8]
    again = cli.run("call", "echo", "--job", "echo", "--payload",
                    json.dumps({"marker": second}))
    assert again.returncode == 0, again.stderr
    follower.out.wait_for(rf'^echo\s*\| echo-handled {{"marker": "{second}"}}$',
                          timeout=10)
    follower.proc.send_signal(signal.SIGINT)
    assert follower.wait(timeout=10) == 130, follower.err.rest()

    # 4. restart one worker: a new pid, restarts == 1, ready again; its peer untouched.
    restart = cli.run("restart", "echo", timeout=60)
    assert restart.returncode == 0, (restart.stdout, restart.stderr)
    assert re.fullmatch(r"echo: ready \(pid \d+\)\n", restart.stdout), restart.stdout
    after = workers_by_name(cli.ps())
    assert after["echo"]["state"] == "ready", brief(cli.ps())
    assert after["echo"]["pid"] not in (None, pids["echo"])
    assert after["echo"]["restarts"] == 1
    assert (after["peer"]["pid"], after["peer"]["restarts"], after["peer"]["state"]) == (
        pids["peer"], 0, "ready")
    wait_gone([pids["echo"]], timeout=3)
    cli.wait_ps(all_ready, timeout=10, what="the restarted worker registered again")
    answered = cli.run("call", "echo", "--job", "echo", "--payload", "{}")
    assert answered.returncode == 0, answered.stderr
    assert answer_of(answered.stdout)["pid"] == after["echo"]["pid"]

    # 5. down: exit 0, and not one of the processes we saw is left; followers end too.
    seen = set(cli.pids)
    template = cli.ps()["template"]["pid"]  # the workers were forked from it (Linux)
    assert len(seen - {template}) == 4  # the supervisor, echo twice, peer
    follower = cli.popen("logs", "-f")
    follower.out.wait_for(echo_line.pattern, timeout=10)
    tailer = cli.popen("tail", "--heartbeats")
    tailer.out.wait_for(r" Heartbeat ", timeout=10)
    down = cli.run("down", timeout=60)
    assert down.returncode == 0, (down.stdout, down.stderr)
    assert "project 'core' is down" in down.stdout
    wait_gone(seen, timeout=3)
    assert follower.wait(timeout=5) == 0, follower.err.rest()
    follower.out.wait_for(r"^peer\s*\| \[exited with code 0\]$", timeout=1)
    if backend == "local":  # the supervisor hosted the bus: tail has nothing more to show
        assert tailer.wait(timeout=5) == 0, tailer.err.rest()
        assert tailer.err.rest() == ["the project stopped (its supervisor hosted the bus)"]
    else:  # the server stays, and so may other runners on the channel
        tailer.proc.send_signal(signal.SIGINT)
        assert tailer.wait(timeout=10) == 130, tailer.err.rest()
    # Once down: down again is fine, ps shows the last state, logs still read.
    again_down, last, logs = cli.run_many(("down",), ("ps", "--json"), ("logs", "echo"))
    assert again_down.returncode == 0, again_down.stderr
    assert "project 'core' is not running" in again_down.stdout
    assert last.returncode == 0, last.stderr
    final = json.loads(last.stdout)
    assert final["running"] is False
    assert {w["name"]: (w["state"], w["pid"]) for w in final["workers"]} == {
        "echo": ("stopped", None), "peer": ("stopped", None)}
    assert logs.returncode == 0 and echo_line.search(logs.stdout), logs.stdout


# -- 6: a supervisor killed by SIGKILL takes its workers along ------------------------


@pytest.mark.timeout(60)
def test_supervisor_killed_leaves_no_worker(tmp_path: Path,
                                            clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "killed", TWO_ECHOES)
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    status = cli.ps()
    supervisor = status["supervisor_pid"]
    workers = [w["pid"] for w in status["workers"]]
    assert all(workers) and len(workers) == 2
    os.kill(supervisor, signal.SIGKILL)
    wait_gone([supervisor, *workers], timeout=2.5)
    # What is left is a state file: ps says so, and the project starts again.
    after = cli.ps()
    assert after["running"] is False
    assert {w["state"] for w in after["workers"]} == {"gone"}, brief(after)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    status = cli.ps()
    assert status["running"] is True and status["supervisor_pid"] != supervisor


# -- 7: a crash loop, and a class that does not exist ------------------------------------


@pytest.mark.timeout(90)
def test_crash_loop_backs_off_and_a_missing_class_fails(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    """Crash loop: 5 failures with back-offs of 0.5, 1, 2 and 4 s (times 0.5..1 of jitter)
    in between, so 5 to 10 s; the missing class is checked meanwhile, in another project."""
    crashy = clis(tmp_path / "crashy")
    write_project(crashy.cwd, "crashy",
                  {"echo": {"class": "Echo"},
                   "crasher": {"class": "Crasher", "restart": "on-failure"}})
    up = crashy.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 1, (up.stdout, up.stderr)
    assert re.search(r"^crasher: backing off\b", up.stdout, re.M), up.stdout

    # Meanwhile: a class that does not exist is refused before anything starts, and one
    # that is no worker class (up's pre-flight cannot tell) fails at once and stays failed.
    bad = clis(tmp_path / "bad")
    write_project(bad.cwd, "bad", {"echo": {"class": "Echo"}, "broken": {"class": "Missing"}})
    up = bad.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 1 and "nothing started" in up.stderr, (up.stdout, up.stderr)
    assert not bad.state_files()
    write_project(bad.cwd, "bad", {"echo": {"class": "Echo"}, "broken": {"class": "time"}})
    up = bad.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 1, (up.stdout, up.stderr)
    assert re.search(r"^broken: failed \(.*not a class.*\)$", up.stdout, re.M), up.stdout
    assert "Traceback" not in up.stdout + up.stderr

    # The crash loop: restarts grow, it backs off, and ps says crash_loop.
    history: list[tuple[str, int, bool]] = []

    def crash_loop() -> dict[str, Any] | None:
        worker = workers_by_name(crashy.ps())["crasher"]
        history.append((worker["state"], worker["restarts"], worker["crash_loop"]))
        if worker["state"] == "backing off":
            assert worker["retry_in"] is not None, worker
            assert worker["exit_code"] == 3, worker
        return worker if worker["crash_loop"] else None

    looping = wait_for(crash_loop, timeout=25, what="the crash loop", interval=0.3)
    assert looping["state"] in ("backing off", "waiting", "starting"), looping
    assert looping["restarts"] >= 4, history
    restarts = [r for _, r, _ in history]
    assert restarts == sorted(restarts) and restarts[-1] > restarts[0], history
    assert "backing off" in {s for s, _, _ in history}, history
    status = crashy.ps()
    assert workers_by_name(status)["echo"]["state"] == "ready"  # its peer is unaffected
    assert workers_by_name(status)["echo"]["restarts"] == 0
    logs = crashy.run("logs", "crasher")
    assert logs.stdout.count("crasher crashing with 3") >= 5, logs.stdout
    assert "[exited with code 3]" in logs.stdout and "crash loop" in logs.stdout

    # Seconds later, the missing class is still failed, never restarted.
    broken = workers_by_name(bad.ps())["broken"]
    assert (broken["state"], broken["restarts"], broken["pid"]) == ("failed", 0, None), broken
    assert "'app_workers:time' is not a class" in broken["reason"]
    assert workers_by_name(bad.ps())["echo"]["state"] == "ready"


# -- 8: up in the foreground ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_foreground_up_prints_prefixed_lines_and_exits_0_when_the_session_ends(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "ends", {
        "echo": {"class": "Echo"},
        "ender": {"class": "Ender", "depends_on": ["echo"], "restart": "no"},
    })
    cli = clis(tmp_path)
    up = cli.popen("up", "workers.yaml")
    code = up.wait(timeout=40)
    lines = up.out.rest()
    assert code == 0, "\n".join(lines + up.err.rest())
    started = cli.note_pids(lines)
    assert len(started) == 2, lines
    assert all(re.match(r"^(echo|ender)\s*\| ", line) for line in lines), lines
    assert re.search(r'^echo\s*\| echo-handled {"from": "ender"}$', "\n".join(lines), re.M)
    assert re.search(r'^ender\s*\| ender-got {"from": "ender"}$', "\n".join(lines), re.M)
    assert not any("\x1b[" in line for line in lines), "colour codes in a pipe"
    wait_gone(started, timeout=2)


@pytest.mark.timeout(60)
def test_foreground_up_exits_with_the_code_of_the_worker_that_failed(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "fails", {"crasher": {"class": "Crasher", "restart": "no"}})
    cli = clis(tmp_path)
    up = cli.popen("up", "workers.yaml")
    code = up.wait(timeout=30)
    lines = up.out.rest()
    assert code == 3, "\n".join(lines + up.err.rest())
    assert re.search(r"^crasher \| \[exited with code 3\]$", "\n".join(lines), re.M), lines
    wait_gone(cli.note_pids(lines), timeout=2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_foreground_up_stops_everything_on_a_signal(
        sig: int, code: int, tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "signalled", TWO_ECHOES)
    cli = clis(tmp_path)
    up = cli.popen("up", "workers.yaml")
    up.out.wait_for(r"^echo\s*\| \[ready\]$", timeout=30)
    up.out.wait_for(r"^peer\s*\| \[ready\]$", timeout=30)
    started = cli.note_pids(up.out.lines)
    assert len(started) == 2, up.out.lines
    up.proc.send_signal(sig)
    assert up.wait(timeout=20) == code, "\n".join(up.out.rest() + up.err.rest())
    wait_gone([up.proc.pid, *started], timeout=2)


# -- 9 and 10: no project here; check ---------------------------------------------------


def test_commands_without_a_project_say_so_in_one_line(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    polluted = [d for d in (empty, *empty.parents) if (d / ".workers").is_dir()]
    if polluted:
        pytest.skip(f"a project state directory above the test's: {polluted[0]}/.workers")
    cli = clis(empty)
    for result in cli.run_many(("ps",), ("ps", "--json"), ("logs",), ("down",),
                               ("restart", "echo")):
        one_line_error(result, "no project found here")


def test_check_accepts_a_good_project_and_names_a_bad_class(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "good", TWO_ECHOES, file="good.yaml")
    bad_file = write_project(tmp_path, "bad", {"echo": {"class": "Echo"},
                                               "broken": {"class": "Missing"}},
                             file="bad.yaml")
    cli = clis(tmp_path)
    good, bad = cli.run_many(("check", "good.yaml"), ("check", "bad.yaml"))
    assert good.returncode == 0, (good.stdout, good.stderr)
    assert "good: 2 workers, 1 channel: ok" in good.stdout
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    line = bad_file.read_text().splitlines().index("  broken:") + 1
    errors = bad.stderr.strip().splitlines()
    assert errors[0] == (f"error: bad.yaml:{line}: workers.broken.class: module 'app_workers' "
                         "has no attribute 'Missing'"), bad.stderr
    assert errors[-1] == "error: 1 error in bad.yaml", bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / ".workers").exists()  # check starts nothing
    assert all(pid_gone(p) for p in cli.pids)


# -- stop and start --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stop_all_keeps_the_project_so_start_brings_it_back(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "paused", TWO_ECHOES)
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    before = {w["name"]: w["pid"] for w in cli.ps()["workers"]}
    stop = cli.run("stop", timeout=60)
    assert stop.returncode == 0, (stop.stdout, stop.stderr)  # "the project keeps running"
    assert stop.stdout.splitlines() == ["echo: stopped", "peer: stopped"], stop.stdout
    status = cli.ps()
    assert status["running"] is True, brief(status)
    assert {w["state"] for w in status["workers"]} == {"stopped"}, brief(status)
    start = cli.run("start", timeout=60)
    assert start.returncode == 0, (start.stdout, start.stderr)
    after = cli.ps()
    assert start.stdout.splitlines() == [f"{w['name']}: ready (pid {w['pid']})"
                                         for w in after["workers"]], start.stdout
    assert all(w["state"] == "ready" and w["pid"] != before[w["name"]]
               for w in after["workers"]), brief(after)


# -- what a new user runs into: one line that says why, at once ---------------------------


@pytest.mark.timeout(90)
def test_a_worker_that_cannot_start_and_calls_that_cannot_succeed_say_why_at_once(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "told", {"echo": {"class": "Echo"},
                                     "researcher": {"class": "Echo", "replicas": 2},
                                     "broken": {"class": "Raiser"}})
    cli = clis(tmp_path)
    line = next(i for i, text in enumerate(
        (tmp_path / "app_workers.py").read_text().splitlines(), 1)
        if 'raise RuntimeError("no API key configured")' in text)
    why = f"RuntimeError: no API key configured (app_workers.py:{line})"

    # up -d: each worker's state, the reason of the one that failed, and what still runs.
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 1, (up.stdout, up.stderr)
    lines = up.stdout.splitlines()
    assert f"broken: failed ({why})" in lines, up.stdout
    assert re.search(r"^echo: ready \(pid \d+\)$", up.stdout, re.M), up.stdout
    assert lines[-1] == "the project is still running: `workers down` stops it", up.stdout
    logs = cli.run("logs", "broken")
    assert f"broken | error: broken: {why}" in logs.stdout.splitlines(), logs.stdout
    assert "Traceback" not in up.stdout + up.stderr + logs.stdout

    # Calls that cannot succeed, and a bad --tail, fail at once in one line.
    started = time.monotonic()
    replicas, failed, unreachable, survey, tail, negative = cli.run_many(
        ("call", "researcher", "--job", "echo"),
        ("call", "broken", "--job", "echo"),
        ("call", "echo", "--url", "redis://127.0.0.1:1/0", "--channel", "x", "--job", "echo"),
        ("ps", "--url", "redis://127.0.0.1:1/0", "--channel", "x"),
        ("tail", "--url", "redis://127.0.0.1:1/0", "--channel", "x"),
        ("logs", "--tail", "-1"),
    )
    assert time.monotonic() - started < 15  # not call's 30 s timeout
    one_line_error(replicas, "'researcher' has 2 replicas: researcher.1, researcher.2; "
                             "call one of them")
    one_line_error(failed, f"cannot call 'broken': it is failed ({why})")
    for result in (unreachable, survey, tail):
        one_line_error(result, "cannot join channel 'x': ", "127.0.0.1:1")
    assert negative.returncode == 2 and "-1 is not in the range x>=0" in negative.stderr

    # stop and start say where each worker is; a stopped worker is not called.
    stop = cli.run("stop", "echo")
    assert (stop.returncode, stop.stdout) == (0, "echo: stopped\n"), stop.stderr
    call = cli.run("call", "echo", "--job", "echo")
    one_line_error(call, "cannot call 'echo': it is stopped; `workers start echo` starts it")
    start = cli.run("start", "echo", timeout=60)
    assert start.returncode == 0, start.stderr
    assert re.fullmatch(r"echo: ready \(pid \d+\)\n", start.stdout), start.stdout

    # A supervisor that holds its lock but does not answer: ps says its data is stale.
    supervisor = cli.ps()["supervisor_pid"]
    os.kill(supervisor, signal.SIGSTOP)
    try:
        as_json, table = cli.run_many(("ps", "--json"), ("ps",))
    finally:
        os.kill(supervisor, signal.SIGCONT)
    assert as_json.returncode == 0, as_json.stderr
    stale = json.loads(as_json.stdout)
    assert (stale["running"], stale["stale"]) == (True, True)
    assert "supervisor not answering; showing its last recorded state" in table.stdout
    assert cli.ps()["stale"] is False


@pytest.mark.timeout(60)
def test_up_detached_reports_an_early_exit_and_a_ctrl_c(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    # Nothing could start: the supervisor ends, and up -d shows why instead of a log path.
    alone = clis(tmp_path / "alone")
    write_project(alone.cwd, "alone", {"broken": {"class": "Raiser"}})
    up = alone.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 1, (up.stdout, up.stderr)
    assert re.search(r"^broken: failed \(RuntimeError: no API key configured "
                     r"\(app_workers\.py:\d+\)\)$", up.stdout, re.M), up.stdout
    assert "still running" not in up.stdout
    assert "Traceback" not in up.stdout + up.stderr

    # Ctrl-C while up -d waits: 130, and the project keeps starting in the background.
    slow = clis(tmp_path / "slow")
    write_project(slow.cwd, "slow", {"sleeper": {"class": "Sleeper", "stop_timeout": 1}})
    waiting = slow.popen("up", "-d", "workers.yaml")
    wait_for(lambda: slow.state_files(), timeout=20, what="the detached supervisor's state")
    waiting.proc.send_signal(signal.SIGINT)
    assert waiting.wait(timeout=10) == 130, waiting.err.rest()
    assert any("keeps starting in the background" in line and "`workers down` stops it"
               in line for line in waiting.err.rest()), waiting.err.lines
    assert "Aborted" not in "\n".join(waiting.err.lines)
    assert slow.ps()["running"] is True
