"""The files a project keeps next to its topology: private to the user, never reached through
a link that someone else planted, and worker output that survives a deleted logs directory.

The rules are in :mod:`pipecat_workers_cli.supervisor.private`: ``.workers``, the project's
directory and ``logs`` are each a directory of this user (made 0700, tightened to 0700) or a link
made by this user to one; files are 0600 and never opened through a link. A test that needs a file
of *another* user makes it with ``lchown``, so it runs as root only (it is skipped otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cliproj import Cli, wait_for, write_project
from pipecat_workers_cli.errors import StateDirError
from pipecat_workers_cli.logs import LogWriter, read_records
from pipecat_workers_cli.supervisor.statedir import StateDir, find_state_dirs

OTHER = 65534  # nobody
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="making a file of another user needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def owned_by_other(path: Path) -> Path:
    os.lchown(path, OTHER, OTHER)
    return path


def refused(action: Callable[[], object], message: str) -> None:
    with pytest.raises(StateDirError) as info:
        action()
    assert str(info.value) == message
    assert "\n" not in str(info.value)


# -- private: 0700 directories, 0600 files ----------------------------------------------------


def test_a_new_state_directory_is_private(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path, "p")
    os.close(state.lock())
    state.write_state({"x": 1})
    state.open_supervisor_log().close()
    with LogWriter(state.logs_dir / "w.log") as writer:
        writer.write("out", "hello")
    for directory in (tmp_path / ".workers", state.path, state.logs_dir):
        assert mode(directory) == 0o700, directory
    for file in (state.path / "lock", state.state_file, state.supervisor_log,
                 state.logs_dir / "w.log"):
        assert mode(file) == 0o600, file


def test_the_state_directory_ignores_itself_for_git_and_keeps_a_users_gitignore(
        tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    state = StateDir.of(tmp_path, "p")
    state.make()
    state.write_state({"x": 1})
    ignore = tmp_path / ".workers" / ".gitignore"
    assert mode(ignore) == 0o600
    assert [s.project for s in find_state_dirs(tmp_path)] == ["p"]
    untracked = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain",
                                "--untracked-files=all"], capture_output=True, text=True,
                               check=True).stdout
    assert untracked == ""
    ignore.write_text("logs/\n")
    StateDir.of(tmp_path, "q").make()
    assert ignore.read_text() == "logs/\n"


def test_an_existing_state_directory_is_tightened(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path, "p")
    state.logs_dir.mkdir(parents=True)
    files = [state.path / "lock", state.state_file, state.supervisor_log,
             state.logs_dir / "w.log", state.logs_dir / "w.log.1"]
    for file in files:
        file.write_text("{}")
        file.chmod(0o644)  # as an older version left them
    for directory, old in ((tmp_path / ".workers", 0o755), (state.path, 0o775),
                           (state.logs_dir, 0o777)):
        directory.chmod(old)
    os.close(state.lock())
    for directory in (tmp_path / ".workers", state.path, state.logs_dir):
        assert mode(directory) == 0o700, directory
    for file in files:
        assert mode(file) == 0o600, file


def test_readers_tighten_too(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path, "p")
    state.path.mkdir(parents=True, mode=0o755)
    state.state_file.write_text('{"running": false}')
    state.state_file.chmod(0o644)
    assert state.read_state() == {"running": False}
    assert (mode(tmp_path / ".workers"), mode(state.path), mode(state.state_file)) == (
        0o700, 0o700, 0o600)


def test_a_log_file_left_open_to_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_text("")
    path.chmod(0o644)
    with LogWriter(path) as writer:
        writer.write("out", "x")
    assert mode(path) == 0o600


# -- links ------------------------------------------------------------------------------------


def test_a_link_of_our_own_to_a_directory_of_our_own_is_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / ".workers").symlink_to(elsewhere)
    state = StateDir.of(tmp_path / "proj", "p")
    os.close(state.lock())
    assert (elsewhere / "p" / "lock").is_file()
    assert mode(elsewhere) == 0o700
    assert [s.project for s in find_state_dirs(tmp_path / "proj")] == ["p"]


def test_a_link_to_nothing_is_no_state_and_cannot_be_used(tmp_path: Path) -> None:
    (tmp_path / ".workers").symlink_to(tmp_path / "gone")
    state = StateDir.of(tmp_path, "p")
    assert state.supervisor_alive() is False
    assert state.read_state() is None
    refused(state.lock, f"cannot use {state.path} for the project's state: "
                        f"{tmp_path / '.workers'} links to {tmp_path / 'gone'}, which is "
                        "not a directory")
    assert not (tmp_path / "gone").exists()


def test_a_lock_or_state_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path, "p")
    state.path.mkdir(parents=True)
    target = tmp_path / "target"
    target.write_text("keep")
    (state.path / "lock").symlink_to(target)
    refused(state.lock, f"cannot use {state.path / 'lock'} for the project's state: it is a "
                        "symbolic link; remove it")
    refused(state.supervisor_alive, f"cannot use {state.path / 'lock'} for the project's "
                                    "state: it is a symbolic link; remove it")
    state.state_file.symlink_to(target)
    refused(state.read_state, f"cannot use {state.state_file} for the project's state: it "
                              "is a symbolic link; remove it")
    assert (target.read_text(), mode(target)) == ("keep", 0o644)  # untouched


@needs_root
def test_a_link_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    """What the issue reproduced: another user's ``.workers`` link next to the topology
    would take the project's state (and hide it from ``down``)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    owned_by_other(theirs)
    (tmp_path / "proj").mkdir()
    link = tmp_path / "proj" / ".workers"
    link.symlink_to(theirs)
    owned_by_other(link)
    state = StateDir.of(tmp_path / "proj", "p")
    message = (f"cannot use {state.path} for the project's state: {link} is a symbolic link "
               "made by another user (nobody); remove it")
    for action in (state.lock, state.make, state.supervisor_alive, state.read_state,
                   state.open_supervisor_log, lambda: state.write_state({})):
        refused(action, message)
    refused(lambda: find_state_dirs(tmp_path / "proj"),
            f"cannot use {link} for the project's state: {link} is a symbolic link made by "
            "another user (nobody); remove it")
    assert list(theirs.iterdir()) == []  # nothing was made in their directory


@needs_root
def test_a_project_directory_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path, "p")
    (tmp_path / ".workers").mkdir()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    state.path.symlink_to(owned_by_other(theirs))
    refused(state.lock, f"cannot use {state.path} for the project's state: {state.path} links "
                        f"to {theirs}, a directory of another user (nobody)")
    state.path.unlink()
    state.path.mkdir()
    state.path.chmod(0o777)
    owned_by_other(state.path)
    refused(state.supervisor_alive, f"cannot use {state.path} for the project's state: "
                                    f"{state.path} belongs to another user (nobody); "
                                    "remove it")
    assert mode(state.path) == 0o777  # not theirs to change


@needs_root
def test_a_state_file_of_another_user_is_refused(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path, "p")
    state.write_state({"sockets": {"control": "/tmp/theirs.sock"}})
    owned_by_other(state.state_file)
    refused(state.read_state, f"cannot use {state.state_file} for the project's state: it "
                              "belongs to another user (nobody); remove it")


# -- the logs directory -----------------------------------------------------------------------


def test_a_deleted_logs_directory_is_made_again_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logs = tmp_path / ".workers" / "p" / "logs"
    logs.mkdir(parents=True)
    writers = [LogWriter(logs / f"w{i}.log") for i in range(3)]
    for writer in writers:
        writer.write("out", "before")
    shutil.rmtree(tmp_path / ".workers")
    with caplog.at_level(logging.WARNING, logger="pipecat_workers_cli.logs"):
        for writer in writers:
            writer.write("out", "after")
        fresh = LogWriter(logs / "w3.log")
        fresh.write("out", "new")
    for writer in [*writers, fresh]:
        writer.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"the logs directory {logs} was missing (deleted?): made it again; output written "
        "since it went is lost"]
    for i in range(3):
        assert [r.text for r in read_records(logs, f"w{i}")] == ["after"]
    assert [mode(p) for p in (tmp_path / ".workers", logs.parent, logs)] == [0o700] * 3


def test_a_deleted_log_file_is_started_again_quietly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with LogWriter(tmp_path / "w.log") as writer, caplog.at_level(logging.WARNING):
        writer.write("out", "one")
        (tmp_path / "w.log").unlink()
        writer.write("out", "two")
    assert [r.text for r in read_records(tmp_path, "w")] == ["two"]
    assert caplog.records == []


def test_a_log_that_cannot_be_written_is_said_once_and_the_writer_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep\n")
    (tmp_path / "w.log").symlink_to(elsewhere)  # never followed
    with LogWriter(tmp_path / "w.log") as writer, caplog.at_level(logging.WARNING):
        writer.write("out", "one")
        writer.write("out", "two")
        (tmp_path / "w.log").unlink()
        writer.write("out", "three")
    assert elsewhere.read_text() == "keep\n"
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith(f"cannot write {tmp_path / 'w.log'}: ")
    assert [r.text for r in read_records(tmp_path, "w")] == ["three"]


# -- the real `workers` program ---------------------------------------------------------------

linux_only = pytest.mark.skipif(sys.platform != "linux",
                                reason="the supervisor's process handling is tested on Linux")


def one_line_error(result: object, text: str) -> None:
    returncode, stdout, stderr = (getattr(result, k) for k in ("returncode", "stdout", "stderr"))
    assert returncode == 1, (returncode, stdout, stderr)
    assert stderr.strip() == f"error: {text}", stderr
    assert "Traceback" not in stdout + stderr


@linux_only
@needs_root
@pytest.mark.timeout(60)
def test_up_ps_and_down_refuse_a_link_planted_by_another_user(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    proj = tmp_path / "proj"
    write_project(proj, "planted", {"echo": {"class": "Echo"}})
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    owned_by_other(theirs)
    link = proj / ".workers"
    link.symlink_to(theirs)
    owned_by_other(link)
    cli = clis(proj)
    up, ps, down = cli.run_many(("up", "-d", "workers.yaml"), ("ps",),
                                ("-f", "workers.yaml", "down"))
    refusal = f"{link} is a symbolic link made by another user (nobody); remove it"
    one_line_error(up, f"cannot use {link / 'planted'} for the project's state: {refusal}")
    one_line_error(ps, f"cannot use {link} for the project's state: {refusal}")
    one_line_error(down, f"cannot use {link / 'planted'} for the project's state: {refusal}")
    assert list(theirs.iterdir()) == []


@linux_only
@pytest.mark.timeout(90)
def test_a_running_project_keeps_private_files_and_survives_a_deleted_logs_directory(
        tmp_path: Path, clis: Callable[[Path], Cli]) -> None:
    write_project(tmp_path, "private", {"echo": {"class": "Echo"}})
    cli = clis(tmp_path)
    up = cli.run("up", "-d", "workers.yaml", timeout=60)
    assert up.returncode == 0, (up.stdout, up.stderr)
    cli.ps()
    state = StateDir.of(tmp_path, "private")
    for directory in (tmp_path / ".workers", state.path, state.logs_dir):
        assert mode(directory) == 0o700, directory
    for file in (state.path / "lock", state.state_file, state.supervisor_log,
                 state.logs_dir / "echo.log"):
        assert mode(file) == 0o600, file
    control = Path(json.loads(state.state_file.read_text())["sockets"]["control"])
    assert stat.S_ISSOCK(control.lstat().st_mode) and mode(control) == 0o600

    shutil.rmtree(state.logs_dir)
    marker = uuid.uuid4().hex[:8]
    call = cli.run("call", "echo", "--job", "echo", "--payload", json.dumps({"m": marker}))
    assert call.returncode == 0, (call.stdout, call.stderr)

    def logged() -> str | None:
        logs = cli.run("logs", "echo")
        return logs.stdout if marker in logs.stdout else None

    wait_for(logged, timeout=10, what="the job's line in the new echo.log")
    assert mode(state.logs_dir) == 0o700 and mode(state.logs_dir / "echo.log") == 0o600
    warnings = [line for line in state.supervisor_log.read_text().splitlines()
                if "logs directory" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith(f"workers: warning: the logs directory {state.logs_dir} was "
                                "missing (deleted?): made it again; output written since it "
                                "went is lost")
    down = cli.run("down")
    assert down.returncode == 0, (down.stdout, down.stderr)
