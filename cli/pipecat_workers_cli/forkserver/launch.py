"""Starting the process template.

``workers up`` calls :func:`launch_early` once the supervisor has imported its modules and before
its event loop starts: the first template is forked from the supervisor then
(:mod:`pipecat_workers_cli.forkserver.fork`), so that it has the library already. A later one, and
the first when forking is not possible, is a new interpreter (:func:`launch`).
:class:`~pipecat_workers_cli.supervisor.template.Template` takes over what was started.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from pipecat_workers_cli.forkserver import PR_SET_CHILD_SUBREAPER, TEMPLATE_ENV, Config, prctl
from pipecat_workers_cli.forkserver.environment import common_env, template_env
from pipecat_workers_cli.forkserver.fork import fork_template, forkable
from pipecat_workers_cli.topology.model import Topology


@dataclass(frozen=True, slots=True)
class Launched:
    """A template process just started: its socket, pidfd and stderr's read end are ours."""

    config: Config
    pid: int
    pidfd: int
    sock: socket.socket
    stderr_fd: int


def prepare() -> str | None:
    """Make this process a child subreaper, or say why workers cannot be forked here."""
    if not sys.platform.startswith("linux"):
        return f"forking workers needs Linux (this is {sys.platform})"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        return f"no pidfd_open here (Linux 5.3 or later): {exc}"
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (AttributeError, OSError) as exc:
        return f"cannot become a child subreaper: {exc}"
    return None


def template_config(topology: Topology, excluded: Iterable[str] = ()) -> Config:
    """What a template for ``topology`` is told (its socket's descriptor is set at launch)."""
    modules = dict.fromkeys(w.class_path.partition(":")[0]  # checked when loaded
                            for w in topology.workers.values())
    backends = dict.fromkeys(c.backend for c in topology.channels.values())
    return Config(fd=-1, supervisor_pid=os.getpid(), project=topology.name,
                  root=str(topology.root),
                  env=tuple(sorted(common_env(topology, os.environ).items())),
                  modules=tuple(modules), backends=tuple(backends),
                  explicit=topology.preload, excluded=tuple(excluded))


def launch(config: Config, env: Mapping[str, str]) -> Launched:
    """Start a template process (its own session, stdin and stdout on /dev/null, stderr on a pipe);
    raises OSError. It runs as ``python -P -m pipecat_workers_cli.host``, the host's own command
    line, which a forked worker keeps as its title."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    try:
        os.set_inheritable(theirs.fileno(), True)
        config = replace(config, fd=theirs.fileno())
        pid = os.posix_spawn(
            sys.executable, [sys.executable, "-P", "-m", "pipecat_workers_cli.host"],
            {**template_env(env, dict(config.env)), TEMPLATE_ENV: config.to_json()}, setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, err_w, 2)])
        pidfd = os.pidfd_open(pid)
    except BaseException:
        ours.close()
        os.close(err_r)
        raise
    finally:
        theirs.close()
        os.close(err_w)
    ours.setblocking(False)
    return Launched(config, pid, pidfd, ours, err_r)


def launch_early(topology: Topology, env: Mapping[str, str]) -> Launched | str:
    """Prepare and start a template for ``topology``, forked from this process if it has no
    thread; or why there is none."""
    if (why := prepare()) is not None:
        return why
    config = template_config(topology)
    try:
        if forkable() is not None:
            return launch(config, env)
        config, pid, sock, stderr_fd = fork_template(config, template_env(env, dict(config.env)))
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            sock.close()
            os.close(stderr_fd)
            raise
    except OSError as exc:
        return f"cannot start the process template: {exc}"
    sock.setblocking(False)
    return Launched(config, pid, pidfd, sock, stderr_fd)
