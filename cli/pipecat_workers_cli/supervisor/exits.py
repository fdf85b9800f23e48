"""What a worker's exit status means, in words a user can act on.

A negative code is the signal that ended the process (as :mod:`asyncio` reports it); 128 + N is
what a shell reports for a child it saw die of signal N; 78 (``EX_CONFIG``) is the host saying
the worker cannot run as configured, so the supervisor does not restart it.
"""

from __future__ import annotations

import signal

from pipecat_workers_cli.host import EXIT_CONFIG

_MEANINGS = {
    1: "an error",
    2: "a usage error",
    EXIT_CONFIG: "configuration error",
    126: "a command that cannot run",
    127: "a command not found",
}


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9, ``signal 77`` for a number no signal has."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def explain_exit(code: int) -> str:
    """``exit code 78 (configuration error)``, ``killed by SIGKILL``,
    ``exit code 137 (SIGKILL)``, ``exit code 3``."""
    if code < 0:
        return f"killed by {signal_name(-code)}"
    if code in _MEANINGS:
        return f"exit code {code} ({_MEANINGS[code]})"
    if 128 < code < 128 + 65:
        return f"exit code {code} ({signal_name(code - 128)})"
    return f"exit code {code}"
