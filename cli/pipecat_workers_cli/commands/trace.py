"""``workers trace``: one trace drawn as a tree, or the list of recent traces."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.project import Project, find_project
from pipecat_workers_cli.supervisor.private import private_dir, state_errors
from pipecat_workers_cli.traces.lookup import NotFound, Target, resolve
from pipecat_workers_cli.traces.store import (
    ReadStats,
    build_tree,
    read_spans,
    recent_traces,
    traces_dir,
)


@click.command()
@click.argument("ident", metavar="[ID]", required=False)
@click.option("-n", "--last", "last", type=click.IntRange(min=1), default=20, metavar="N",
              help="Without ID: how many traces to list (default 20).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Without ID: also list the traces "
              "of workers starting and stopping.")
@click.option("--json", "as_json", is_flag=True, help="Print spans (or, without ID, the "
              "traces) as JSON lines.")
@click.pass_context
def trace(ctx: click.Context, ident: str | None, last: int, show_all: bool,
          as_json: bool) -> None:
    """Draw the tree of trace ID: every span, with its worker, start, duration and status.

    ID is a trace id (or its first 8 or more hex digits) or a job id. Without ID, list the
    traces that started last, newest first (those of workers starting or stopping with -a).
    """
    project = find_project(ctx.obj.get("file"), ctx.obj.get("project"))
    where = project_traces(project)
    stats = ReadStats()
    with output_closed_quietly():
        if ident is None:
            _list(project, where, last, show_all, as_json, stats)
        else:
            _show(project, where, ident, as_json, stats)
    if stats.skipped and not as_json:
        click.secho(f"({stats.skipped} lines of the span files are not spans; skipped)",
                    err=True, dim=True)


def project_traces(project: Project) -> Path:
    """The project's span directory, checked to be this user's own (as its logs are)."""
    where = traces_dir(project.state)
    with state_errors():
        project.state.check()
        private_dir(where, create=False)
    return where


@contextlib.contextmanager
def output_closed_quietly() -> Iterator[None]:
    """End without a word when the reader of the output went away (``| head``)."""
    try:
        yield
    except BrokenPipeError:
        # Nothing more can be written; the interpreter's last flush must not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def find_target(project: Project, where: Path, ident: str) -> Target:
    """What ``ident`` names in the project's span files.

    Raises:
        CommandError: it names nothing, or several traces.
    """
    try:
        target = resolve(where, ident.strip())
    except NotFound as exc:
        raise CommandError(str(exc)) from None
    if target is None:
        raise CommandError(f"no trace or job {ident!r} in the spans of project "
                           f"'{project.name}' (`workers trace` lists recent traces)")
    return target


def _show(project: Project, where: Path, ident: str, as_json: bool, stats: ReadStats) -> None:
    with state_errors():
        target = find_target(project, where, ident)
        spans = read_spans(where, trace=target.trace, stats=stats)
    if not spans:  # its files rotated away since it was found
        raise CommandError(f"trace {target.trace} is no longer in the spans of project "
                           f"'{project.name}'")
    if as_json:
        for span in spans:
            click.echo(json.dumps(span.to_json()))
        return
    from pipecat_workers_cli.render import plural, table_console
    from pipecat_workers_cli.render.traces import seconds, tree_rows, tree_table, when

    console = table_console()
    start = min(s.start for s in spans)
    workers = sorted({s.worker for s in spans})
    job = f"job {target.job} in " if target.job else ""
    console.print(f"{job}trace {target.trace}: {plural(len(spans), 'span')}, "
                  f"{plural(len(workers), 'worker')}, "
                  f"{seconds(max(s.end for s in spans) - start)}, started {when(start)}",
                  style="bold", markup=False)
    console.print(tree_table(tree_rows(build_tree(spans)), start))


def _list(project: Project, where: Path, last: int, show_all: bool, as_json: bool,
          stats: ReadStats) -> None:
    with state_errors():
        summaries = recent_traces(where, last, lifecycle=show_all, stats=stats)
    if as_json:
        for t in summaries:
            click.echo(json.dumps({
                "trace": t.trace, "name": t.name, "worker": t.worker, "start": t.start,
                "duration": t.duration, "spans": t.spans, "workers": list(t.workers),
                "status": t.status, "errors": t.errors, "kinds": list(t.kinds)}))
        return
    if not summaries:
        click.echo(f"no traces recorded in project '{project.name}' yet")
        return
    from pipecat_workers_cli.render import table_console
    from pipecat_workers_cli.render.traces import traces_table

    table_console().print(traces_table(summaries))
