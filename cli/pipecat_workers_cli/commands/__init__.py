"""The ``workers`` commands, one module per family, imported only when used.

``workers ps`` should answer as fast as the interpreter starts, so the group imports a
command's module (and through it the supervisor, the bus or rich) only when that command runs.
"""

from __future__ import annotations

# command name -> "module:attribute", in the order ``workers --help`` lists them
COMMANDS: dict[str, str] = {
    "up": "pipecat_workers_cli.commands.up:up",
    "ps": "pipecat_workers_cli.commands.inspect:ps",
    "logs": "pipecat_workers_cli.commands.inspect:logs",
    "trace": "pipecat_workers_cli.commands.trace:trace",
    "top": "pipecat_workers_cli.commands.top:top",
    "ls": "pipecat_workers_cli.commands.ls:ls",
    "down": "pipecat_workers_cli.commands.lifecycle:down",
    "stop": "pipecat_workers_cli.commands.lifecycle:stop",
    "start": "pipecat_workers_cli.commands.lifecycle:start",
    "restart": "pipecat_workers_cli.commands.lifecycle:restart",
    "scale": "pipecat_workers_cli.commands.scale:scale",
    "check": "pipecat_workers_cli.commands.bus:check",
    "config": "pipecat_workers_cli.commands.config:config",
    "call": "pipecat_workers_cli.commands.bus:call",
    "tail": "pipecat_workers_cli.commands.bus:tail",
    "dashboard": "pipecat_workers_cli.commands.dashboard:dashboard",
    "export": "pipecat_workers_cli.commands.export:export_command",
}
