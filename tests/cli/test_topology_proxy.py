"""``proxy:`` workers in a topology file: what they turn into, and the one-line error for each
mistake (all of them at once)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pipecat_workers_cli.host import constructor_args
from pipecat_workers_cli.topology import Topology, TopologyError, load_topology, resolve_class
from pipecat_workers_cli.topology.errors import TopologyErrors
from pipecat_workers_cli.topology.model import PROXY_TOKEN_ENV, ProxySpec
from pipecat_workers_cli.topology.preflight import preflight, proxy_problems
from pipecat_workers_cli.topology.record import topology_from_record, topology_record
from pipecat_workers_cli.topology.schema import topology_schema

from pipecat_workers.bus import BusCancelMessage, BusEndMessage
from pipecat_workers.proxy import TOKEN_ENV, WebSocketProxyClient, WebSocketProxyServer

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "workers:\n  link:\n    proxy:\n      url: ws://127.0.0.1:8765/\n"
SERVER = "workers:\n  door:\n    proxy:\n      listen: 127.0.0.1:8765\n      expose: [support]\n"


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Topology:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return load_topology(path, env={} if env is None else env)


def errors(tmp_path: Path, text: str) -> list[str]:
    """Every error of the file, one line each, without the file's name."""
    with pytest.raises(TopologyError) as info:
        load(tmp_path, text)
    found = info.value.errors if isinstance(info.value, TopologyErrors) else [info.value]
    prefix = f"{tmp_path / 't.yaml'}:"
    lines = [str(e) for e in found]
    assert all("\n" not in line and line.startswith(prefix) for line in lines), lines
    return [line.removeprefix(prefix) for line in lines]


# -- what a valid entry turns into ------------------------------------------------------------

def test_a_client_runs_the_library_client_with_its_settings(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
workers:
  back-office:
    proxy:
      url: ws://${HOST:-127.0.0.1}:8765/
      remote: [support, billing]
      expose: greeter
      token: ${TOKEN}
      forward: [end, cancel]
  greeter:
    class: m:G
""", env={"TOKEN": "s3cret"})
    spec = topology.workers["back-office"]
    assert spec.class_path == "pipecat_workers.proxy:WebSocketProxyClient"
    assert spec.args == {"url": "ws://127.0.0.1:8765/", "local_worker_name": ["greeter"],
                         "remote_worker_name": ["support", "billing"],
                         "forward_messages": ["end", "cancel"]}
    assert spec.env == {PROXY_TOKEN_ENV: "s3cret"}  # a secret travels as one
    assert PROXY_TOKEN_ENV == TOKEN_ENV
    assert spec.proxy == ProxySpec("client", url="ws://127.0.0.1:8765/",
                                   remote=("support", "billing"), expose=("greeter",),
                                   forward=("end", "cancel"), token="s3cret")
    assert "s3cret" not in repr(spec.proxy)
    assert topology.proxy_for("billing") is spec and topology.proxy_for("nobody") is None


def test_a_server_listens_where_it_says(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
workers:
  door:
    proxy: {listen: "[::1]:9000", expose: [support, billing], remote: caller}
""")
    spec = topology.workers["door"]
    assert spec.class_path == "pipecat_workers.proxy:WebSocketProxyServer"
    assert spec.args == {"worker_name": ["support", "billing"], "host": "::1", "port": 9000,
                         "remote_worker_name": ["caller"]}
    assert spec.env == {}
    assert topology.proxy_for("caller") is None  # a server's peers are not called from here


def test_the_host_builds_proxies_with_the_broadcasts_they_forward(tmp_path: Path) -> None:
    topology = load(tmp_path, CLIENT + "      forward: [end, cancel]\n" + SERVER[8:])
    client, server = topology.workers["link"], topology.workers["door"]
    cls = resolve_class(client.class_path)
    args = constructor_args(cls, client.args)
    assert args["forward_messages"] == [BusEndMessage, BusCancelMessage]
    assert isinstance(cls("link", **args), WebSocketProxyClient)
    built = resolve_class(server.class_path)("door", **constructor_args(
        resolve_class(server.class_path), server.args))
    assert isinstance(built, WebSocketProxyServer)
    # Anything but a proxy keeps its arguments as they are.
    plain = {"forward_messages": ["end"]}
    assert constructor_args(resolve_class("pipecat_workers:BaseWorker"), plain) is plain


def test_an_empty_token_means_none(tmp_path: Path) -> None:
    topology = load(tmp_path, CLIENT + "      token: ${PROXY_TOKEN:-}\n")
    assert topology.workers["link"].env == {PROXY_TOKEN_ENV: ""}


def test_a_proxy_is_recorded_and_read_back(tmp_path: Path) -> None:
    topology = load(tmp_path, CLIENT + "      remote: [a, b]\n      forward: [end]\n"
                    "      token: t\n" + SERVER[8:])
    assert topology_from_record(json.loads(json.dumps(topology_record(topology)))) == topology


# -- every mistake, one line each --------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("workers:\n  p:\n    proxy: ws://h/\n",
     "3: workers.p.proxy: expected a mapping with url (a client) or listen (a server), got "
     "'ws://h/'"),
    ("workers:\n  p:\n    proxy: {}\n",
     "3: workers.p.proxy: expected url (a client, ws://host:port/) or listen (a server, "
     "host:port)"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      listen: h:1\n",
     "5: workers.p.proxy.listen: give url (a client) or listen (a server), not both"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      colour: red\n",
     "5: workers.p.proxy.colour: unknown key 'colour'"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      remot: [a]\n",
     "5: workers.p.proxy.remot: unknown key 'remot' (did you mean 'remote'?)"),
    ("workers:\n  p:\n    proxy:\n      url: http://h:8765/\n",
     "4: workers.p.proxy.url: expected a ws:// or wss:// URL (such as ws://127.0.0.1:8765/), "
     "got 'http://h:8765/'"),
    ("workers:\n  p:\n    proxy:\n      url: ws://\n",
     "4: workers.p.proxy.url: expected a ws:// or wss:// URL (such as ws://127.0.0.1:8765/), "
     "got 'ws://'"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h:70000/\n",
     "4: workers.p.proxy.url: port 70000 is out of range (1-65535)"),
    ("workers:\n  p:\n    proxy:\n      listen: 8765\n      expose: a\n",
     "4: workers.p.proxy.listen: expected host:port, got 8765"),
    ("workers:\n  p:\n    proxy:\n      listen: localhost\n      expose: a\n",
     "4: workers.p.proxy.listen: expected host:port (such as 127.0.0.1:8765), got "
     "'localhost'"),
    ("workers:\n  p:\n    proxy:\n      listen: h:0\n      expose: a\n",
     "4: workers.p.proxy.listen: port 0 is out of range (1-65535)"),
    ("workers:\n  p:\n    proxy:\n      listen: 127.0.0.1:8765\n",
     "3: workers.p.proxy.expose: required for a server: the workers of this bus that its "
     "clients may reach"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      remote: []\n",
     "5: workers.p.proxy.remote: expected a worker name or a list of them, got an empty list"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      remote: [a, 'b c']\n",
     "5: workers.p.proxy.remote: expected a worker name or a list of them, got 'b c'"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      expose:\n        - a\n        - a\n",
     "7: workers.p.proxy.expose: 'a' is listed twice"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      forward: [end, stop]\n",
     "5: workers.p.proxy.forward: expected one of end, cancel, got 'stop'"),
    ("workers:\n  p:\n    proxy:\n      url: ws://h/\n      token: [a]\n",
     "5: workers.p.proxy.token: expected a token, got a list"),
    ("workers:\n  support:\n    proxy:\n      url: ws://h/\n      remote: [support, billing]\n",
     "5: workers.support.proxy.remote: 'support' is this proxy's own name (its key in "
     "workers); give the proxy another key, such as 'support-proxy'"),
    ("workers:\n  door:\n    proxy:\n      listen: h:1\n      expose:\n        - a\n"
     "        - door\n",
     "7: workers.door.proxy.expose: 'door' is this proxy's own name (its key in workers); "
     "give the proxy another key, such as 'door-proxy'"),
    ("workers:\n  greeter:\n    class: m:G\n  p:\n    proxy:\n      url: ws://h/\n"
     "      remote: [greeter]\n",
     "7: workers.p.proxy.remote: 'greeter' is a worker of this project: its stand-in would "
     "take its name"),
    ("workers:\n  p:\n    proxy: {url: 'ws://h/', remote: x}\n"
     "  q:\n    proxy: {url: 'ws://k/', remote: x}\n",
     "5: workers.q.proxy.remote: 'p' stands in for 'x' on this channel already"),
    ("workers:\n  p:\n    class: m:P\n    proxy: {url: 'ws://h/'}\n",
     "3: workers.p.class: a proxy worker takes no class (its settings are under proxy)"),
    ("workers:\n  p:\n    proxy: {url: 'ws://h/'}\n    args: {x: 1}\n",
     "4: workers.p.args: a proxy worker takes no args (its settings are under proxy)"),
    ("workers:\n  p:\n    proxy: {url: 'ws://h/'}\n    replicas: 2\n",
     "4: workers.p.replicas: a proxy worker runs as one process"),
    ("workers:\n  p:\n    proxi: {url: 'ws://h/'}\n",
     "3: workers.p.proxi: unknown key 'proxi' (did you mean 'proxy'?)"),
])
def test_each_mistake_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    assert errors(tmp_path, text) == [expected]


def test_every_mistake_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
workers:
  support:
    proxy:
      url: http://127.0.0.1:8765/
      remote: [support]
      colour: red
  door:
    proxy:
      listen: 127.0.0.1:99999
  worker:
    class: m:W
""") == [
        "4: workers.support.proxy.url: expected a ws:// or wss:// URL (such as "
        "ws://127.0.0.1:8765/), got 'http://127.0.0.1:8765/'",
        "5: workers.support.proxy.remote: 'support' is this proxy's own name (its key in "
        "workers); give the proxy another key, such as 'support-proxy'",
        "6: workers.support.proxy.colour: unknown key 'colour'",
        "8: workers.door.proxy.expose: required for a server: the workers of this bus that "
        "its clients may reach",
        "9: workers.door.proxy.listen: port 99999 is out of range (1-65535)",
    ]


def test_a_worker_needs_a_class_or_a_proxy(tmp_path: Path) -> None:
    assert errors(tmp_path, "workers:\n  a:\n    replicas: 2\n") == [
        "2: workers.a.class: required key missing"]


# -- pre-flight: the proxy extra -----------------------------------------------------------------

def test_preflight_names_the_proxy_extra_when_websockets_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topology = load(tmp_path, CLIENT + SERVER[8:])
    assert preflight(topology) == []
    monkeypatch.setitem(sys.modules, "websockets", None)  # as if it were not installed
    assert [(p.line, p.field, p.message) for p in preflight(topology)] == [
        (2, "workers.link.proxy", "WebSocketProxyClient needs the 'websockets' package: "
                                  "pip install 'pipecat-workers[proxy]'"),
        (6, "workers.door.proxy", "WebSocketProxyServer needs the 'websockets' package: "
                                  "pip install 'pipecat-workers[proxy]'"),
    ]


def test_preflight_refuses_a_server_open_to_anyone(tmp_path: Path) -> None:
    topology = load(tmp_path, "workers:\n  door:\n    proxy:\n      listen: 0.0.0.0:8765\n"
                              "      expose: a\n      token: ${T:-}\n")
    door = topology.workers["door"]
    assert [(p.line, p.field, p.message) for p in proxy_problems(door, {})] == [
        (2, "workers.door.proxy.listen", "it would accept anyone on 0.0.0.0:8765: give it a "
                                         "token (or set PIPECAT_WORKERS_SECRET), or listen on "
                                         "127.0.0.1")]
    assert proxy_problems(door, {"PIPECAT_WORKERS_SECRET": "s"}) == []
    with_token = load(tmp_path, "workers:\n  door:\n    proxy:\n      listen: 0.0.0.0:8765\n"
                                "      expose: a\n      token: t\n")
    assert proxy_problems(with_token.workers["door"], {}) == []
    loopback = load(tmp_path, SERVER)
    assert proxy_problems(loopback.workers["door"], {}) == []


def test_check_names_the_proxy_extra_when_websockets_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from pipecat_workers_cli.main import main

    (tmp_path / "t.yaml").write_text("name: t\nroot: .\n" + CLIENT)
    monkeypatch.chdir(tmp_path)
    ok = CliRunner().invoke(main, ["check", "t.yaml"])
    assert ok.exit_code == 0, ok.output
    assert "ok  link             pipecat_workers.proxy:WebSocketProxyClient" in ok.stdout
    monkeypatch.setitem(sys.modules, "websockets", None)
    result = CliRunner().invoke(main, ["check", "t.yaml"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: t.yaml:4: workers.link.proxy: WebSocketProxyClient needs the 'websockets' "
        "package: pip install 'pipecat-workers[proxy]'",
        "error: 1 error in t.yaml"]


# -- the JSON Schema says the same -------------------------------------------------------------

@pytest.mark.parametrize("name", ["proxy.front.yaml", "proxy.back.yaml"])
def test_the_example_pair_fits_the_schema(name: str) -> None:
    document = yaml.safe_load((ROOT / "configs" / name).read_text())
    jsonschema.validate(document, topology_schema())


@pytest.mark.parametrize("entry", [
    {"proxy": {"url": "ws://h/", "listen": "h:1"}},
    {"proxy": {"listen": "h:1"}},
    {"proxy": {"url": "http://h/"}},
    {"proxy": {"url": "ws://h/", "colour": "red"}},
    {"proxy": {"url": "ws://h/", "forward": ["stop"]}},
    {"proxy": {"url": "ws://h/"}, "class": "m:C"},
    {"proxy": {"url": "ws://h/"}, "args": {"x": 1}},
    {"proxy": {"url": "ws://h/"}, "replicas": 2},
    {"replicas": 2},
])
def test_the_schema_refuses_what_the_loader_refuses(entry: dict[str, Any]) -> None:
    document = {"workers": {"p": entry}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, topology_schema())


@pytest.mark.parametrize("entry", [
    {"proxy": {"url": "ws://h/"}},
    {"proxy": {"url": "wss://h:443/path", "remote": "a", "expose": ["b"], "forward": ["end"],
               "token": "${T}"}},
    {"proxy": {"listen": "[::1]:8765", "expose": "a"}, "replicas": 1},
    {"proxy": {"listen": "${ADDR}", "expose": ["a", "b"]}},
])
def test_the_schema_accepts_what_the_loader_accepts(entry: dict[str, Any]) -> None:
    jsonschema.validate({"workers": {"p": entry}}, topology_schema())


def test_the_readme_example_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Joining two projects: `proxy:` workers"):]
    block = section[section.index("```yaml\n") + 8:section.index("```\n", 10)]
    topology = load(tmp_path, block, env={"PROXY_TOKEN": "t"})
    assert [s.proxy.role for s in topology.workers.values() if s.proxy] == ["client", "server"]


def test_workers_config_writes_a_proxy_as_the_file_does(tmp_path: Path) -> None:
    from pipecat_workers_cli.commands.config import topology_document

    topology = load(tmp_path, CLIENT + "      remote: [a, b]\n      forward: [end]\n"
                    "      token: ${T}\n    env: {X: '1'}\n"
                    "  door:\n    proxy: {listen: '[::1]:8765', expose: a}\n",
                    env={"T": "p${x}"})
    document = topology_document(topology)
    assert document["workers"]["link"]["proxy"] == {
        "url": "ws://127.0.0.1:8765/", "remote": ["a", "b"], "forward": ["end"],
        "token": "p$${x}"}
    assert document["workers"]["link"]["env"] == {"X": "1"}
    assert document["workers"]["door"]["proxy"] == {"listen": "[::1]:8765", "expose": ["a"]}
    assert not {"class", "args"} & set(document["workers"]["door"])
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(document))
    again = load_topology(tmp_path / "again.yaml", env={})
    assert {k: dataclasses.replace(s, line=0) for k, s in again.workers.items()} == {
        k: dataclasses.replace(s, line=0) for k, s in topology.workers.items()}


def test_a_remote_name_leads_to_the_client_that_stands_in_for_it(tmp_path: Path) -> None:
    """What `workers call NAME` joins for a name that is no worker of the project."""
    one = load(tmp_path, CLIENT)  # stands in for whatever the server exposes
    assert one.proxy_for("anything") is one.workers["link"]
    two = load(tmp_path, CLIENT + "  other:\n    proxy: {url: 'ws://h/'}\n")
    assert two.proxy_for("anything") is None  # which one? `call --channel` says
    listed = load(tmp_path, CLIENT + "  other:\n    proxy: {url: 'ws://h/', remote: [b]}\n")
    assert listed.proxy_for("b") is listed.workers["other"]
    assert listed.proxy_for("c") is listed.workers["link"]
