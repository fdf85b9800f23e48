"""The first template of a supervisor: forked from it, before its event loop starts.

By then the supervisor has imported the library (its hub and monitors are the library's), so a
forked template has nothing of it left to import, where a new interpreter
(:func:`~pipecat_workers_cli.forkserver.launch.launch`) would start Python and import it all again.
The fork is turned into what ``python -P -m pipecat_workers_cli.host`` would be: a session of its
own, stdin and stdout on ``/dev/null``, stderr on the supervisor's pipe, no other descriptor, the
environment of a new template, fresh standard streams, no logging handlers, and
``pipecat_workers_cli.host`` run as ``__main__`` with its arguments. It never returns into the
supervisor's code: the template, and each worker it forks, ends the process as an interpreter would
(non-daemon threads joined, ``atexit`` run, streams flushed) and leaves with ``os._exit``.

A later template (the first one changed or died) is started as a new interpreter: by then
the supervisor runs an event loop and threads, which a fork must not copy.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import runpy
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import NoReturn

from pipecat_workers_cli.forkserver import TEMPLATE_ENV, Config, close_other_fds, drop_command_dir


def forkable() -> str | None:
    """Why this process cannot fork a template now, if it cannot."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = threading.active_count()
    if threads > 1:
        return f"the supervisor runs {threads} threads"
    return None


def fork_template(config: Config, env: Mapping[str, str]
                  ) -> tuple[Config, int, socket.socket, int]:
    """Fork a template: its config (with the descriptor of its socket), its pid, our end
    of its socket and the read end of its stderr; raises OSError."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    config = replace(config, fd=theirs.fileno())
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # or the template would write it again
    try:
        pid = os.fork()
    except OSError:
        for fd in (err_r, err_w):
            os.close(fd)
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        try:
            ours.detach()
            os.close(err_r)
            _become_template(config, env, err_w, theirs.detach())
        except BaseException:  # nothing of the supervisor may run on here
            os._exit(70)
    theirs.close()
    os.close(err_w)
    return config, pid, ours, err_r


def _become_template(config: Config, env: Mapping[str, str], stderr: int,
                     sock_fd: int) -> NoReturn:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(stderr, 2)
    close_other_fds(sock_fd)
    os.environ.clear()
    os.environ.update(env)
    os.environ[TEMPLATE_ENV] = config.to_json()
    _fresh_streams()
    _fresh_logging()
    drop_command_dir()  # a host is started with -P
    sys.argv = [""]  # the module's path, once it runs
    os._exit(_run_host())


def _fresh_streams() -> None:
    """Standard streams as an interpreter makes them for pipes with PYTHONUNBUFFERED set
    (the supervisor's may be a terminal's, line-buffered)."""
    old = (sys.stdin, sys.stdout, sys.stderr)
    encoding = [getattr(s, "encoding", None) or "utf-8" for s in old]
    errors = [getattr(s, "errors", None) or "strict" for s in old]
    fresh = {
        "stdin": io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                  encoding[0], errors[0]),
        "stdout": io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding[1], errors[1],
                                   write_through=True),
        "stderr": io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding[2],
                                   "backslashreplace", write_through=True),
    }
    for name, stream in fresh.items():
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _fresh_logging() -> None:
    """No handler and the default level on the root logger, as before any configuration
    (the supervisor's goes to its own stderr)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def _run_host() -> int:
    """Run the host as ``python -m pipecat_workers_cli.host`` would, and end as the
    interpreter would; the exit status."""
    code = 0
    try:
        runpy.run_module("pipecat_workers_cli.host", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:  # printed as the interpreter would
        sys.excepthook(*sys.exc_info())
        code = 1
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code < 0:  # ended by a signal, as an interpreter interrupted by Ctrl-C is
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    return code


def _exit_status(value: object) -> int:
    """What the interpreter exits with for ``sys.exit(value)``."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(Exception):
        print(value, file=sys.stderr, flush=True)
    return 1
