"""The ``workers`` commands, one module per family, imported only when used.

``workers ps`` should answer as fast as the interpreter starts, so the group imports a
command's module (and through it the supervisor, the bus or rich) only when that command runs.
"""

from __future__ import annotations

# command name -> "module:attribute", in the order ``workers --help`` lists them
COMMANDS: dict[str, str] = {
    "up": "cli.commands.up:up",
    "ps": "cli.commands.inspect:ps",
    "logs": "cli.commands.inspect:logs",
    "down": "cli.commands.lifecycle:down",
    "stop": "cli.commands.lifecycle:stop",
    "start": "cli.commands.lifecycle:start",
    "restart": "cli.commands.lifecycle:restart",
    "check": "cli.commands.bus:check",
    "call": "cli.commands.bus:call",
    "tail": "cli.commands.bus:tail",
}
