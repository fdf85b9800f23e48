"""The process template, through the real ``workers`` program: a worker forked from it is what
a spawned one is; killing it or the supervisor leaves nothing behind; an edit of what it
preloaded starts a new one; what cannot be preloaded or forked is spawned, and says why."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliproj import Cli, brief, pid_gone, wait_for, wait_gone, workers_by_name

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the process template needs Linux")

PROBE_PY = '''\
"""Reports what its process looks like when it is built (written by test_forkserver.py)."""

import json
import os
import random
import re
import signal
import stat
import sys
from pathlib import Path

from pipecat_workers import BaseWorker, job

import shared

HOST = "PIPECAT_WORKERS_HOST"


def _signals():
    found = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            found[signal.Signals(sig).name] = re.sub(r"0x[0-9a-f]+", "0x",
                                                     repr(signal.getsignal(sig)))
        except (ValueError, OSError):
            pass
    return found


def _fd_kinds():
    kinds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the one that listed the directory
        kinds.append(target.split(":")[0] if ":" in target else "file")
    return sorted(kinds)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Probe(BaseWorker):
    """Writes ``report`` (JSON), says hello on stdout and stderr, exits if asked."""

    def __init__(self, name, *, report, exit_code=None):
        super().__init__(name)
        host = json.loads(os.environ[HOST])
        data = {
            "env": {k: v for k, v in os.environ.items() if k != HOST},
            "host": {k: v for k, v in host.items() if k not in ("status_fd", "supervisor_pid")},
            "cwd": os.getcwd(),
            "argv": sys.argv,
            "path": sys.path[:2],
            "main": getattr(sys.modules["__main__"].__spec__, "name", None),
            "signals": _signals(),
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "session_leader": os.getsid(0) == os.getpid(),
            "group_leader": os.getpgid(0) == os.getpid(),
            "parent_is_supervisor": os.getppid() == host["supervisor_pid"],
            "stdio": [stat.S_IFMT(os.fstat(fd).st_mode) for fd in (0, 1, 2)],
            "streams": [sys.stdout.write_through, sys.stdout.line_buffering,
                        sys.stdout.encoding, sys.stderr.errors],
            "fds": _fd_kinds(),
            "umask": _umask(),
            "random": random.random(),
            "shared": shared.VERSION,
        }
        Path(report).write_text(json.dumps(data))
        print(f"{name} says hello on stdout", flush=True)
        print(f"{name} says hello on stderr", file=sys.stderr, flush=True)
        if exit_code is not None:
            sys.exit(exit_code)

    @job("version")
    async def version(self, message):
        return {"version": shared.VERSION, "pid": os.getpid()}


class Raiser(BaseWorker):
    def __init__(self, name):
        super().__init__(name)
        raise RuntimeError("no API key configured")
'''

SHARED_PY = "VERSION = {version}\n"


def _project(root: Path, *, preload: list[str] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
    """``probe.py``, ``shared.py`` and a topology: two probes, one that exits with 7, one
    that cannot be built."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "probe.py").write_text(PROBE_PY)
    (root / "shared.py").write_text(SHARED_PY.format(version=1))
    (root / "reports").mkdir(exist_ok=True)

    def probe(name: str, **args: Any) -> dict[str, Any]:
        return {"class": "probe:Probe", "args": {"report": f"reports/{name}.json", **args},
                "env": {"LOG_LEVEL": "WARNING", "PROBE_VAR": f"for {name}"}}

    workers = {"w1": probe("w1"), "w2": probe("w2"),
               "seven": {**probe("seven", exit_code=7), "restart": "no"},
               "raiser": {"class": "probe:Raiser", "restart": "no"}}
    document: dict[str, Any] = {"name": root.name, "root": ".",
                                "channels": {"main": {"backend": "local"}},
                                "workers": {**workers, **(extra or {})}}
    if preload is not None:
        document["preload"] = preload
    path = root / "workers.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _settled(status: dict[str, Any]) -> bool:
    by = workers_by_name(status)
    return (all(by[n]["state"] == "ready" for n in ("w1", "w2"))
            and by["seven"]["state"] == "crashed" and by["raiser"]["state"] == "failed")


def _probes_ready(status: dict[str, Any]) -> bool:
    by = workers_by_name(status)
    return all(by[n]["state"] == "ready" for n in ("w1", "w2"))


def _log(root: Path, worker: str) -> list[tuple[str, str]]:
    """(stream, text) of a worker's log lines, the supervisor's notes left out."""
    lines = []
    for path in root.glob(f".workers/*/logs/{worker}.log"):
        for line in path.read_text().splitlines():
            _, _, rest = line.partition(" ")
            stream, _, text = rest.partition(" ")
            if stream != "sup":
                lines.append((stream, text))
    return lines


def _title(pid: int | None) -> str | None:
    """A process's command line as ``ps`` shows it (its title, once it set one)."""
    if pid is None:
        return None
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.split(b"\0")[0].decode() if raw.startswith(b"workers: ") else raw.decode()


def _all_logs(root: Path) -> str:
    """Every log of the project: the workers' and the supervisor's (its notes)."""
    return "\n".join(p.read_text() for p in sorted(root.glob(".workers/*/**/*.log")))


def _run_once(cli: Cli, root: Path, *flags: str) -> dict[str, Any]:
    """Start the project, wait until it settles, and gather what its workers said."""
    for report in (root / "reports").glob("*.json"):
        report.unlink()
    up = cli.run("up", "-d", *flags, "workers.yaml", timeout=60)
    status = cli.wait_ps(_settled, timeout=30, what="probes ready, seven crashed, raiser failed")
    by = workers_by_name(status)
    result = {
        "up": up.returncode,
        "reports": {n: json.loads((root / "reports" / f"{n}.json").read_text())
                    for n in ("w1", "w2", "seven")},
        "exit": {n: (by[n]["state"], by[n]["exit_code"]) for n in ("seven", "raiser")},
        "raiser_reason": by["raiser"]["reason"],
        "template": status["template"],
        "supervisor": status["supervisor_pid"],
        "pids": {n: by[n]["pid"] for n in ("w1", "w2")},
        "titles": {n: _title(pid) for n, pid in (("w1", by["w1"]["pid"]),
                                                 ("supervisor", status["supervisor_pid"]),
                                                 ("template", status["template"]["pid"]))},
    }
    down = cli.run("down", timeout=60)
    assert down.returncode == 0, down.stderr
    result["logs"] = {n: _log(root, n) for n in ("w1", "w2", "seven", "raiser")}
    for path in root.glob(".workers/*/logs/*.log"):
        path.unlink()
    return result


@pytest.mark.timeout(120)
def test_a_forked_worker_is_what_a_spawned_one_is(tmp_path: Path,
                                                 clis: Callable[[Path], Cli]) -> None:
    root = tmp_path / "parity"
    _project(root)
    cli = clis(root)
    forked = _run_once(cli, root)
    spawned = _run_once(cli, root, "--no-fork")

    assert forked["template"]["state"] == "ready" and forked["template"]["pid"]
    assert spawned["template"] == {"state": "off", "pid": None, "reason": "--no-fork"}
    assert forked["up"] == spawned["up"] == 1  # raiser failed: up -d says so
    for name in ("w1", "w2", "seven"):
        mine, theirs = forked["reports"][name], spawned["reports"][name]
        for key in ("env", "host", "cwd", "argv", "path", "main", "signals", "blocked",
                    "stdio", "streams", "fds", "umask", "shared"):
            assert mine[key] == theirs[key], (name, key, mine[key], theirs[key])
        assert mine["env"]["PROBE_VAR"] == f"for {name}"
        for key in ("session_leader", "group_leader", "parent_is_supervisor"):
            assert mine[key] is True and theirs[key] is True, (name, key)
    # Each forked worker has random state of its own.
    assert forked["reports"]["w1"]["random"] != forked["reports"]["w2"]["random"]
    assert forked["exit"] == spawned["exit"] == {"seven": ("crashed", 7),
                                                 "raiser": ("failed", 78)}
    assert forked["raiser_reason"] == spawned["raiser_reason"]
    assert "no API key configured" in forked["raiser_reason"]
    assert forked["logs"] == spawned["logs"]
    # ps -ef names the project and the worker, whichever way it started.
    assert forked["titles"] == {"w1": "workers: parity/w1", "supervisor": "workers: parity "
                                "supervisor", "template": "workers: parity process template"}
    assert spawned["titles"] == {**forked["titles"], "template": None}
    assert ("out", "w1 says hello on stdout") in forked["logs"]["w1"]
    assert ("err", "w1 says hello on stderr") in forked["logs"]["w1"]


@pytest.mark.timeout(90)
def test_killing_the_template_or_the_supervisor_leaves_nothing_behind(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    root = tmp_path / "kills"
    _project(root)
    cli = clis(root)
    assert cli.run("up", "-d", "workers.yaml", timeout=60).returncode == 1  # raiser
    status = cli.wait_ps(_settled, timeout=30, what="settled")
    template = status["template"]["pid"]
    assert template and not pid_gone(template)
    cli.pids.add(template)
    workers = {n: w["pid"] for n, w in workers_by_name(status).items() if w["pid"]}

    # The template dies: the workers go on, and those started later are spawned.
    os.kill(template, signal.SIGKILL)
    wait_gone([template])
    status = cli.wait_ps(lambda s: s["template"]["state"] == "off", timeout=10,
                        what="the template reported gone")
    assert "the process template died (SIGKILL)" in status["template"]["reason"]
    assert {n: w["pid"] for n, w in workers_by_name(status).items() if w["pid"]} == workers
    restart = cli.run("restart", "w1", timeout=60)
    assert restart.returncode == 0, restart.stderr
    status = cli.ps()
    assert workers_by_name(status)["w1"]["pid"] not in (None, workers["w1"])
    assert workers_by_name(status)["w1"]["state"] == "ready", brief(status)
    assert cli.run("down", timeout=60).returncode == 0

    # The supervisor dies: its template and its workers, forked or not, go with it.
    assert cli.run("up", "-d", "workers.yaml", timeout=60).returncode == 1
    status = cli.wait_ps(_settled, timeout=30, what="settled again")
    everything = [status["supervisor_pid"], status["template"]["pid"],
                  *(w["pid"] for w in status["workers"] if w["pid"])]
    cli.pids.update(everything)
    os.kill(status["supervisor_pid"], signal.SIGKILL)
    wait_gone(everything, timeout=5)


def _version(cli: Cli, worker: str) -> dict[str, Any]:
    result = cli.run("call", worker, "--job", "version", "--json", timeout=30)
    assert result.returncode == 0, (result.stdout, result.stderr)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    answer: dict[str, Any] = next(e["data"] for e in events if e.get("event") == "response")
    return answer


@pytest.mark.timeout(90)
def test_an_edit_of_a_preloaded_module_starts_a_new_template(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    root = tmp_path / "edits"
    _project(root, preload=["shared"])
    cli = clis(root)
    cli.run("up", "-d", "--reload", "workers.yaml", timeout=60)
    status = cli.wait_ps(_probes_ready, timeout=30, what="probes ready")
    first = status["template"]["pid"]
    cli.pids.add(first)
    assert _version(cli, "w1")["version"] == 1

    (root / "shared.py").write_text(SHARED_PY.format(version=2))

    def moved_on() -> dict[str, Any] | None:
        status = cli.ps()
        by = workers_by_name(status)
        fresh = (status["template"]["state"] == "ready"
                 and status["template"]["pid"] not in (None, first)
                 and by["w1"]["state"] == "ready")
        return status if fresh else None

    status = wait_for(moved_on, timeout=20, what="a new template and w1 again", interval=0.1)
    cli.pids.add(status["template"]["pid"])
    assert _version(cli, "w1")["version"] == 2
    assert _version(cli, "w2")["version"] == 2
    wait_gone([first])
    notes = _all_logs(root)
    assert "restarting the process template: shared.py changed" in notes, notes


@pytest.mark.timeout(90)
def test_what_cannot_be_preloaded_is_spawned_and_says_why(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    # A module named under preload: that does not exist: no template, one line why.
    root = tmp_path / "missing"
    _project(root, preload=["no_such_module"])
    cli = clis(root)
    cli.run("up", "-d", "workers.yaml", timeout=60)
    status = cli.wait_ps(_settled, timeout=30, what="settled, spawned")
    assert status["template"]["state"] == "off"
    assert status["template"]["reason"] == (
        "preloading 'no_such_module' failed: ModuleNotFoundError: No module named "
        "'no_such_module'")
    shown = cli.run("ps")
    assert "workers are spawned, not forked: preloading 'no_such_module' failed" in (
        shown.stdout), shown.stdout
    cli.run("down", timeout=60)

    # A third-party module that starts a thread when imported is left out of the template:
    # the workers that import it are still forked, and import it themselves.
    site = tmp_path / "site"
    site.mkdir()
    (site / "threaded.py").write_text(textwrap.dedent('''\
        import threading
        import time

        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        STARTED = True
        '''))
    root = tmp_path / "threads"
    _project(root)
    (root / "probe.py").write_text(PROBE_PY.replace("import shared\n",
                                                    "import shared\nimport threaded\n"))
    cli = clis(root)
    cli.env["PYTHONPATH"] = str(site)
    cli.run("up", "-d", "workers.yaml", timeout=60)
    status = cli.wait_ps(_settled, timeout=30, what="settled with threaded left out")
    assert status["template"]["state"] == "ready", status["template"]
    cli.pids.add(status["template"]["pid"])
    notes = _all_logs(root)
    assert "not preloading 'threaded': importing it started a thread" in notes, notes
    assert "spawned, not forked" not in notes


@pytest.mark.timeout(60)
def test_a_worker_whose_env_python_reads_at_start_is_spawned(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    root = tmp_path / "hashseed"
    seeded = {"class": "probe:Probe", "args": {"report": "reports/seeded.json"},
              "env": {"PYTHONHASHSEED": "7"}}
    _project(root, extra={"seeded": seeded})
    cli = clis(root)
    cli.run("up", "-d", "workers.yaml", timeout=60)
    cli.wait_ps(_settled, timeout=30, what="settled")
    report = json.loads((root / "reports" / "seeded.json").read_text())
    assert report["env"]["PYTHONHASHSEED"] == "7"
    log = "\n".join(p.read_text() for p in root.glob(".workers/*/logs/seeded.log"))
    assert ("spawned, not forked: its env sets PYTHONHASHSEED, which Python reads when it "
            "starts") in log, log
    others = "\n".join(p.read_text() for p in root.glob(".workers/*/logs/w1.log"))
    assert "spawned, not forked" not in others


@pytest.mark.timeout(60)
def test_no_fork_from_the_environment(tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    root = tmp_path / "env-off"
    _project(root)
    cli = clis(root)
    cli.env["WORKERS_NO_FORK"] = "1"
    cli.run("up", "-d", "workers.yaml", timeout=60)
    status = cli.wait_ps(_settled, timeout=30, what="settled")
    assert status["template"] == {"state": "off", "pid": None,
                                  "reason": "WORKERS_NO_FORK is set"}


@pytest.mark.timeout(60)
def test_what_every_worker_sets_alike_is_the_templates_and_a_difference_is_spawned(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "reads_env.py").write_text(
        "import os\n\nAT_IMPORT = os.environ.get('LEVEL_AT_IMPORT', 'unset')\n")
    root = tmp_path / "shared-env"
    _project(root)
    (root / "probe.py").write_text(PROBE_PY.replace(
        '"shared": shared.VERSION,', '"shared": shared.VERSION, "read": reads_env.AT_IMPORT,'
    ).replace("import shared\n", "import reads_env\nimport shared\n"))
    document = yaml.safe_load((root / "workers.yaml").read_text())
    for entry in document["workers"].values():
        entry.setdefault("env", {})["LEVEL_AT_IMPORT"] = "quiet"
    document["workers"]["loud"] = {"class": "probe:Probe", "args": {"report": "reports/loud.json"},
                                   "env": {"LEVEL_AT_IMPORT": "loud"}}
    (root / "workers.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    cli = clis(root)
    cli.env["PYTHONPATH"] = str(site)
    cli.run("up", "-d", "workers.yaml", timeout=60)
    cli.wait_ps(lambda s: _settled(s) and workers_by_name(s)["loud"]["state"] == "ready",
                timeout=30, what="settled, loud ready")
    reports = {n: json.loads((root / "reports" / f"{n}.json").read_text())
               for n in ("w1", "loud")}
    assert reports["w1"]["read"] == "quiet" and reports["loud"]["read"] == "loud"
    logs = {n: "\n".join(p.read_text() for p in root.glob(f".workers/*/logs/{n}.log"))
            for n in ("w1", "loud")}
    assert "spawned, not forked" not in logs["w1"], logs["w1"]
    assert ("spawned, not forked: its env sets LEVEL_AT_IMPORT, which a preloaded module read "
            "when imported") in logs["loud"], logs["loud"]
