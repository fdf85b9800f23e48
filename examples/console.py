"""One way for every example to print its story."""

from __future__ import annotations

import os
import sys


def show(line: str) -> None:
    """Print a line and flush at once.

    Under ``workers up`` stdout is a pipe, which Python buffers: without the flush a worker's
    lines would show up late and out of order with the lines of the other workers. A reader
    that went away (``| head``) must not break the worker, so from then on output is dropped.
    """
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # What the Python docs advise: point stdout at devnull, so the interpreter's own
        # flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def say(speaker: str, text: str) -> None:
    """Print ``[speaker] text``: who said it stays readable in a one-process run too."""
    show(f"[{speaker}] {text}")
