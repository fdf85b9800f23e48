"""systemd units: one per worker key (a template, ``%i`` the replica, when it has several),
and a target that starts them all.

Secrets, the bus URL among them, come from one environment file per channel
(``<env-dir>/<project>-<channel>.env``, which the units require); ``.env.example`` files list
what each must set. Restart= follows the worker's restart policy, and an exit with status 78
(a configuration error) is not restarted, as under ``workers up``.
"""

from __future__ import annotations

import shlex

from pipecat_workers_cli.export.plan import Plan, Service, host_env
from pipecat_workers_cli.host import BUS_URL_ENV, EXIT_CONFIG, REPLICA_ENV
from pipecat_workers_cli.topology.model import RestartPolicy

_RESTART = {RestartPolicy.NO: "no", RestartPolicy.ON_FAILURE: "on-failure",
            RestartPolicy.ALWAYS: "always"}


def units(plan: Plan, *, python: str, workdir: str, env_dir: str) -> list[tuple[str, str]]:
    """``(file name, text)`` of every unit, the target last, then each environment file's
    example."""
    files = [(unit_name(plan, s), _unit(plan, s, python, workdir, env_dir))
             for s in plan.services]
    files.append((f"{plan.project}.target", _target(plan)))
    for channel in dict.fromkeys(s.channel for s in plan.services):
        names = [BUS_URL_ENV, *sorted({n for s in plan.services if s.channel == channel
                                       for n in s.secrets})]
        files.append((f"{plan.project}-{channel}.env.example",
                      f"# {env_file(plan, channel, env_dir)}: what the units of channel "
                      f"'{channel}' read\n" + "".join(f"{n}=\n" for n in names)))
    return files


def unit_name(plan: Plan, service: Service) -> str:
    """``<project>-<key>.service``, or the template ``<project>-<key>@.service``."""
    return f"{plan.project}-{service.key}{'@' if service.replicas > 1 else ''}.service"


def instances(plan: Plan, service: Service) -> list[str]:
    """The units that run ``service``'s processes."""
    if service.replicas == 1:
        return [unit_name(plan, service)]
    return [f"{plan.project}-{service.key}@{i}.service" for i in range(1, service.replicas + 1)]


def env_file(plan: Plan, channel: str, env_dir: str) -> str:
    return f"{env_dir.rstrip('/')}/{plan.project}-{channel}.env"


def _unit(plan: Plan, service: Service, python: str, workdir: str, env_dir: str) -> str:
    replica = " (replica %i)" if service.replicas > 1 else ""
    deps = [u for key in service.depends_on for other in plan.services if other.key == key
            for u in instances(plan, other)]
    env = host_env(service)
    lines = ["[Unit]", f"Description=pipecat-workers {plan.project}: worker {service.key}"
             f"{replica}", f"PartOf={plan.project}.target",
             "After=network-online.target" + "".join(f" {d}" for d in deps),
             "Wants=network-online.target" + "".join(f" {d}" for d in deps),
             "", "[Service]", "Type=simple", f"WorkingDirectory={_escape(workdir)}"]
    lines += [f'Environment="{_quote(f"{k}={v}")}"' for k, v in env.items()]
    if service.replicas > 1:
        lines.append(f"Environment={REPLICA_ENV}=%i")
    lines += [f"EnvironmentFile={_escape(env_file(plan, service.channel, env_dir))}",
              f"ExecStart={_escape(shlex.join([python, '-P', '-m', 'pipecat_workers_cli.host']))}",
              f"Restart={_RESTART[service.restart]}",
              f"RestartPreventExitStatus={EXIT_CONFIG}",
              f"TimeoutStopSec={service.stop_timeout + 5:g}",
              "", "[Install]", f"WantedBy={plan.project}.target", ""]
    return "\n".join(lines)


def _target(plan: Plan) -> str:
    wanted = " ".join(u for s in plan.services for u in instances(plan, s))
    return "\n".join(["[Unit]", f"Description=pipecat-workers {plan.project}: every worker",
                      f"Wants={wanted}", "", "[Install]", "WantedBy=multi-user.target", ""])


def _escape(text: str) -> str:
    """``text`` where systemd expands ``%`` specifiers: each ``%`` stays one."""
    return text.replace("%", "%%")


def _quote(text: str) -> str:
    """``text`` for inside double quotes of an Environment= line."""
    return _escape(text).replace("\\", "\\\\").replace('"', '\\"')
