"""Entry point of the ``workers`` command."""

from __future__ import annotations

import click

import pipecat_workers


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(pipecat_workers.__version__, prog_name="workers")
def main() -> None:
    """Run and inspect multi-worker systems built with pipecat-workers."""
