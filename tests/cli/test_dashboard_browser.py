"""The dashboard in a real headless Chromium, on a real running project: it loads and shows
every worker, follows a restart, a job and a hand-off, and opens a trace as a tree."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from browser import Screens, browser  # noqa: F401  (a fixture)
from cliproj import WORKERS_PY, Cli, wait_for
from pipecat_workers_cli.commands.channel import Where
from spanfiles import HOSTILE, TRACE, write_trace

from pipecat_workers.bus import BusActivateWorkerMessage

ROUTER = '''

class Router(Echo):
    """Echo, plus a ``handoff`` job: hands the conversation to ``payload["to"]``."""

    @job("handoff")
    async def handoff(self, message):
        await self.activate_worker(message.payload["to"], deactivate_self=True)
        return {"to": message.payload["to"]}
'''

WAIT = 30_000  # ms: a loaded 2-core machine starts workers slowly
INTRUDER = "<script>window.pwned=2</script>"


async def intrude(hub: str, channel: str) -> None:
    """A peer on the embedded bus that hands a session from one hostile name to another."""
    bus = Where("local", hub, channel).bus()
    bus.bind("intruder", time.time(), lambda name: None)
    await bus.start()
    try:
        await bus.send(BusActivateWorkerMessage(source=HOSTILE, target=INTRUDER))
    finally:
        await bus.close()


def write_topology(root: Path) -> Path:
    """greeter and support on the front channel, billing on the back one."""
    (root / "app_workers.py").write_text(WORKERS_PY + ROUTER)
    env = {"LOG_LEVEL": "WARNING"}
    document = {"name": "shop", "root": ".",
                "channels": {"front": {"backend": "local"}, "back": {"backend": "local"}},
                "workers": {
                    "greeter": {"class": "app_workers:Router", "channel": "front", "env": env},
                    "support": {"class": "app_workers:Router", "channel": "front", "env": env},
                    "billing": {"class": "app_workers:Echo", "channel": "back", "env": env}}}
    path = root / "workers.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def dashboard_url(cli: Cli, *args: str) -> tuple[Any, str]:
    running = cli.popen(*args)
    line = running.out.wait_for(r"^dashboard: http://", timeout=60)
    return running, line.removeprefix("dashboard: ")


def cell(page: Any, worker: str, column: str) -> str:
    text: str = page.text_content(f'tr[data-worker="{worker}"] td.{column}')
    return text


def test_the_page_follows_a_running_project(tmp_path: Path, clis: Callable[[Path], Cli],
                                            browser: Any) -> None:  # noqa: F811
    cli = clis(tmp_path)
    write_topology(tmp_path)
    started = cli.run("up", "-d", "workers.yaml", timeout=90)
    assert started.returncode == 0, started.stdout + started.stderr
    cli.ps()
    # Beside the workers' own span files: a trace with hostile text in it.
    write_trace(tmp_path / ".workers" / "shop" / "traces", time.time(),
                files=("forged-a", "forged-b"))
    served, url = dashboard_url(cli, "dashboard")
    screens = Screens("dashboard")

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(url.split("?")[0]) or
            r.url.startswith("data:") else outside.append(r.url))
    page.goto(url)

    # Every worker, in a table row and as a node of its channel's group.
    page.wait_for_function("() => document.querySelectorAll('tr[data-worker]').length === 3",
                           timeout=WAIT)
    names = page.eval_on_selector_all("tr[data-worker]", "rows => rows.map(r => r.dataset.worker)")
    assert sorted(names) == ["billing", "greeter", "support"]
    for name in names:
        page.wait_for_selector(f'tr[data-worker="{name}"].state-ready', timeout=WAIT)
        assert page.query_selector(f'#topology g[data-node="{name}"]') is not None
    groups = page.eval_on_selector_all("#topology .group text", "ts => ts.map(t => t.textContent)")
    assert groups == ["channel front", "channel back"]
    assert cell(page, "billing", "restarts") == "0"
    screens.take(page, "loaded")

    # A restart shows in the restart count.
    restarted = cli.run("restart", "billing", timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    page.wait_for_function("() => document.querySelector("
                           "'tr[data-worker=\"billing\"] td.restarts').textContent === '1'",
                           timeout=WAIT)
    page.wait_for_selector('tr[data-worker="billing"].state-ready', timeout=WAIT)
    screens.take(page, "restarted")

    # Jobs show as a rate and an edge from the caller.
    for _ in range(3):
        called = cli.run("call", "billing", "--job", "echo", "--payload", '{"n": 1}')
        assert called.returncode == 0, called.stdout + called.stderr
    page.wait_for_function("() => parseFloat(document.querySelector("
                           "'tr[data-worker=\"billing\"] td.rate').textContent) > 0",
                           timeout=WAIT)
    page.wait_for_selector('#topology g[data-edge$="->billing"]', timeout=WAIT)
    page.wait_for_function(
        "() => document.querySelector('tr[data-worker=\"billing\"] td.jobs').textContent"
        ".split('/')[1] === '3'", timeout=WAIT)  # completed, from the runner's heartbeats
    screens.take(page, "jobs")

    # A hand-off: listed, and the worker that got the conversation is highlighted.
    before_handoff = page.eval_on_selector_all("#traces-body tr",
                                               "rows => rows.map(r => r.dataset.trace)")
    handed = cli.run("call", "greeter", "--job", "handoff", "--payload", '{"to": "support"}')
    assert handed.returncode == 0, handed.stdout + handed.stderr
    page.wait_for_selector('#topology g[data-node="support"].active', timeout=WAIT)
    assert "support" in page.text_content("#sessions")
    handoffs = page.text_content("#handoffs")
    assert re.search(r"front: greeter \u2192 support", handoffs), handoffs
    assert page.query_selector('tr[data-worker="support"].active') is not None
    assert page.query_selector('tr[data-worker="greeter"].active') is None
    screens.take(page, "handoff")

    # Whoever can publish on the bus can name themselves anything: shown as text, run never.
    hub = json.loads((tmp_path / ".workers" / "shop" / "state.json").read_text())["sockets"]
    with ThreadPoolExecutor(1) as thread:  # Playwright's loop runs in this one
        thread.submit(asyncio.run, intrude(hub["hub"], "shop.back")).result(timeout=30)
    page.wait_for_function("(name) => [...document.querySelectorAll('#handoffs li')]"
                           ".some(li => li.textContent.includes(name))", arg=INTRUDER,
                           timeout=WAIT)
    assert page.text_content("#sessions").count(INTRUDER) == 1
    nodes = page.eval_on_selector_all("#topology g[data-node]", "gs => gs.map(g => g.dataset.node)")
    assert HOSTILE in nodes and INTRUDER in nodes
    assert page.evaluate("window.pwned") is None
    assert page.query_selector("img") is None
    assert page.eval_on_selector_all("script", "s => s.length") == 1  # the page's own
    screens.take(page, "hostile")

    # A trace from the span files opens as a tree; what the files say is shown as text.
    page.click(f'tr[data-trace="{TRACE}"]', timeout=WAIT)
    page.wait_for_function("() => document.querySelectorAll('#trace-view .span-row').length === 3",
                           timeout=WAIT)
    rows = page.eval_on_selector_all("#trace-view .span-row", """rows => rows.map(r => [
        r.querySelector('.span-label').textContent,
        parseFloat(r.querySelector('.span-label').style.paddingLeft),
        r.querySelector('.span-worker').textContent])""")
    assert [r[0].lstrip("\u2514 ") for r in rows] == ["job echo", "run echo", HOSTILE]
    assert rows[0][1] < rows[1][1] < rows[2][1]  # each nested under the one before
    assert rows[2][2] == HOSTILE
    assert HOSTILE in page.text_content("#trace-view .span-error")
    assert page.evaluate("window.pwned") is None
    assert page.query_selector("img") is None
    screens.take(page, "trace")

    # A real job's trace, from the span file billing's process wrote.
    page.click("#trace-close")
    known = page.eval_on_selector_all("#traces-body tr", "rows => rows.map(r => r.dataset.trace)")
    traced = cli.run("call", "billing", "--job", "echo", "--payload", '{"traced": true}')
    assert traced.returncode == 0, traced.stdout + traced.stderr
    new_billing_trace = """(known) => [...document.querySelectorAll('#traces-body tr')]
        .filter(tr => !known.includes(tr.dataset.trace) &&
                      tr.children[2].textContent.split(', ').includes('billing') &&
                      tr.children[1].textContent.includes('echo'))
        .map(tr => tr.dataset.trace)[0]"""
    real = page.wait_for_function(new_billing_trace, arg=known, timeout=WAIT).json_value()
    page.click(f'tr[data-trace="{real}"]')
    page.wait_for_selector(f'#trace-panel:not([hidden]) #trace-id:text("{real}")', timeout=WAIT)
    page.wait_for_selector("#trace-view .span-row", timeout=WAIT)
    spans = page.eval_on_selector_all("#trace-view .span-row", """rows => rows.map(r => [
        r.querySelector('.span-label').textContent,
        r.querySelector('.span-worker').textContent])""")
    # The call's request (its span is the project's too), and billing's run under it.
    assert spans[0][1].startswith("workers-call-") and "echo -> billing" in spans[0][0], spans
    assert any(worker == "billing" and "run echo" in label for label, worker in spans), spans
    screens.take(page, "real-trace")

    # The hand-off's trace: the call, greeter's job under it and, under that, its hand-off,
    # and support's session under the hand-off, running (written as it starts).
    page.click("#trace-close")
    handoff_trace = """(known) => [...document.querySelectorAll('#traces-body tr')]
        .filter(tr => !known.includes(tr.dataset.trace) &&
                      tr.children[1].textContent.includes('handoff') &&
                      Number(tr.children[3].textContent) >= 4)  // every process has written
        .map(tr => tr.dataset.trace)[0]"""
    chain = page.wait_for_function(handoff_trace, arg=before_handoff,
                                   timeout=WAIT).json_value()
    page.click(f'tr[data-trace="{chain}"]')
    page.wait_for_selector(f'#trace-panel:not([hidden]) #trace-id:text("{chain}")', timeout=WAIT)
    page.wait_for_function("() => document.querySelectorAll('#trace-view .span-row').length > 1",
                           timeout=WAIT)
    rows = page.eval_on_selector_all("#trace-view .span-row", """rows => rows.map(r => [
        r.querySelector('.span-worker').textContent,
        parseFloat(r.querySelector('.span-label').style.paddingLeft)])""")
    assert rows[0][0].startswith("workers-call-") and rows[0][1] == 0, rows
    greeters = [depth for worker, depth in rows if worker == "greeter"]
    assert len(greeters) == 2 and 0 < greeters[0] < greeters[1], rows  # run, then hand-off
    # Support holds the conversation now: its session, under the hand-off, is running.
    page.wait_for_selector("#trace-view .span-row.status-running", timeout=WAIT)
    running = page.eval_on_selector_all("#trace-view .span-row.status-running", """rows =>
        rows.map(r => [r.querySelector('.span-worker').textContent,
                       r.querySelector('.span-time').textContent])""")
    assert running == [["support", "running"]], running
    screens.take(page, "handoff-trace")

    stats = page.evaluate("window.dashboardStats")
    assert stats["renders"] > 0
    assert errors == []
    assert outside == []

    # Without the token: refused.
    refused = browser.new_page()
    response = refused.goto(url.split("?")[0])
    assert response is not None and response.status == 403
    refused.close()

    # The project stops: so does the dashboard, and the page says so.
    down = cli.run("down", timeout=60)
    assert down.returncode == 0, down.stderr
    assert served.wait(30) == 0
    page.wait_for_selector("#link.lost", timeout=WAIT)
    page.wait_for_selector("body.stale", timeout=WAIT)
    assert page.text_content("#running") == "disconnected"
    screens.take(page, "stopped")
    page.close()
    assert "the project stopped" in "\n".join(served.err.rest())


def test_up_serves_the_page_while_the_project_runs(tmp_path: Path,
                                                   clis: Callable[[Path], Cli],
                                                   browser: Any) -> None:  # noqa: F811
    cli = clis(tmp_path)
    write_topology(tmp_path)
    running, url = dashboard_url(cli, "up", "--no-ui", "--dashboard", "workers.yaml")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelectorAll('tr[data-worker].state-ready').length === 3", timeout=WAIT)
    assert page.text_content("#running") == "running"
    Screens("up-dashboard").take(page, "loaded")
    status = json.loads(page.evaluate(
        "fetch('api/snapshot' + location.search).then(r => r.text())"))
    assert {w["name"] for w in status["workers"]} == {"billing", "greeter", "support"}
    cli.pids.update(w["pid"] for w in status["workers"] if w["pid"])
    wait_for(lambda: running.out.lines.count(f"dashboard: {url}") == 1, timeout=5,
             what="the URL printed once")
    page.close()
