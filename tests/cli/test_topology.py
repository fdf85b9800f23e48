"""The topology loader: what a file turns into, and the one-line error for each mistake."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pipecat_workers_cli.topology
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pipecat_workers_cli.topology import (
    BACKENDS,
    RestartPolicy,
    Topology,
    TopologyError,
    expand,
    load_topology,
    topology_schema,
)
from pipecat_workers_cli.topology.errors import TopologyErrors
from pipecat_workers_cli.topology.fields import WORKER_FIELDS
from pipecat_workers_cli.topology.model import Condition
from pipecat_workers_cli.topology.schema import CHANNEL_KEYS, TOP_KEYS, WORKER_KEYS, render_schema

from pipecat_workers.errors import ConfigurationError, WorkersError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
WORKER = "workers:\n  a:\n    class: m:A\n"  # the smallest valid file


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None,
         name: str = "t.yaml") -> Topology:
    path = tmp_path / name
    path.write_text(text)
    return load_topology(path, env={} if env is None else env)


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load(tmp_path, text, env)
    return info.value


def check(tmp_path: Path, text: str, line: int | None, field: str | None, message: str,
          env: dict[str, str] | None = None) -> None:
    """The first error is exactly ``file:line: field: message``, on one line (others,
    if any, follow on lines of their own)."""
    err = error(tmp_path, text, env)
    where = f"{tmp_path / 't.yaml'}:{line}" if line is not None else str(tmp_path / "t.yaml")
    expected = ": ".join(p for p in (where, field, message) if p)
    assert (err.line, err.field, err.message) == (line, field, message)
    assert str(err).splitlines()[0] == expected
    errors = err.errors if isinstance(err, TopologyErrors) else [err]
    assert all("\n" not in str(e) for e in errors)


# -- what a valid file turns into ---------------------------------------------------------

def test_full_file(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
name: acme-support
channels:
  main:
    backend: redis
    url: redis://localhost:6379
    channel: pipecat:acme
workers:
  acme:
    class: examples.handoff.main:Conversation
    args: {greeting: Hello, nested: {a: [1, 2.5, null, true]}}
    env: {LOG_LEVEL: DEBUG, N: 3, F: 1.5, ON: true, OFF: false}
    replicas: 2
    depends_on: greeter
    restart: always
    stop_timeout: 500ms
    ready_timeout: 2m
  greeter:
    class: pkg.mod:Outer.Inner
""")
    assert topology.name == "acme-support"
    assert topology.path == tmp_path / "t.yaml" and topology.path.is_absolute()
    assert topology.root == tmp_path
    main = topology.channels["main"]
    assert (main.backend, main.url, main.channel, main.line) == (
        "redis", "redis://localhost:6379", "pipecat:acme", 3)
    acme = topology.workers["acme"]
    assert acme.class_path == "examples.handoff.main:Conversation"
    assert acme.args == {"greeting": "Hello", "nested": {"a": [1, 2.5, None, True]}}
    assert acme.env == {"LOG_LEVEL": "DEBUG", "N": "3", "F": "1.5", "ON": "true",
                        "OFF": "false"}
    assert (acme.replicas, acme.depends_on) == (2, ("greeter",))
    assert acme.restart is RestartPolicy.ALWAYS
    assert (acme.stop_timeout, acme.ready_timeout) == (0.5, 120.0)
    assert (acme.channel, acme.line) == ("main", 8)
    greeter = topology.workers["greeter"]
    assert (greeter.class_path, greeter.line) == ("pkg.mod:Outer.Inner", 17)
    assert (greeter.restart, greeter.stop_timeout, greeter.ready_timeout) == (
        RestartPolicy.ON_FAILURE, 10.0, 30.0)
    assert list(topology.workers) == ["acme", "greeter"]  # file order


def test_defaults(tmp_path: Path) -> None:
    topology = load(tmp_path, WORKER, name="My Project!.yaml")
    assert topology.name == "my-project"
    assert topology.root == tmp_path
    assert list(topology.channels) == ["main"]
    main = topology.channels["main"]
    assert (main.backend, main.url, main.channel) == ("local", None, "my-project.main")
    assert topology.workers["a"].channel == "main"


@pytest.mark.parametrize(("stem", "name"), [
    ("_Hidden", "hidden"), ("__", "topology"), ("a  b--", "a-b"),
    ("Research.Redis", "research.redis"),
])
def test_default_name_is_made_valid(tmp_path: Path, stem: str, name: str) -> None:
    assert load(tmp_path, WORKER, name=f"{stem}.yaml").name == name


def test_root_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    topology = load(tmp_path, "root: ..\n" + WORKER, name="configs/t.yaml")
    assert topology.root == tmp_path
    assert topology.path == tmp_path / "configs" / "t.yaml"


def test_root_must_exist(tmp_path: Path) -> None:
    check(tmp_path, "root: nowhere\n" + WORKER, 1, "root",
          f"directory not found: {tmp_path / 'nowhere'}")


def test_the_only_channel_is_the_default(tmp_path: Path) -> None:
    topology = load(tmp_path, "name: p\nchannels:\n  bus:\n" + WORKER)
    assert topology.workers["a"].channel == "bus"
    assert topology.channels["bus"].channel == "p.bus"
    assert topology.channels["bus"].backend == "local"


def test_main_is_the_default_among_several(tmp_path: Path) -> None:
    text = ("channels:\n  jobs: {}\n  main: {}\n" + WORKER
            + "    channel: jobs\n  b:\n    class: m:B\n")
    topology = load(tmp_path, text)
    assert (topology.workers["a"].channel, topology.workers["b"].channel) == ("jobs", "main")


def test_pgmq_channel(tmp_path: Path) -> None:
    text = "channels:\n  main:\n    backend: pgmq\n    url: postgres://u@h/db\n" + WORKER
    assert load(tmp_path, text).channels["main"].url == "postgres://u@h/db"


@pytest.mark.parametrize(("value", "seconds"), [
    ("10", 10.0), ("2.5", 2.5), ("'500ms'", 0.5), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0),
    ("1.5s", 1.5), ("'.5 s'", 0.5),
])
def test_durations(tmp_path: Path, value: str, seconds: float) -> None:
    worker = load(tmp_path, WORKER + f"    stop_timeout: {value}\n").workers["a"]
    assert worker.stop_timeout == seconds


@pytest.mark.parametrize(("value", "policy"), [
    ("no", RestartPolicy.NO), ("'no'", RestartPolicy.NO), ("false", RestartPolicy.NO),
    ("on-failure", RestartPolicy.ON_FAILURE), ("always", RestartPolicy.ALWAYS),
])
def test_restart_policies(tmp_path: Path, value: str, policy: RestartPolicy) -> None:
    assert load(tmp_path, WORKER + f"    restart: {value}\n").workers["a"].restart is policy


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
workers:
  a: &base
    class: m:A
    args: {n: 1}
    replicas: 2
  b:
    <<: *base
    replicas: 3
""")
    b = topology.workers["b"]
    assert (b.class_path, b.args, b.replicas, b.line) == ("m:A", {"n": 1}, 3, 6)


def test_integer_keys_are_names(tmp_path: Path) -> None:
    topology = load(tmp_path, "workers:\n  1:\n    class: m:A\n  2:\n    class: m:A\n"
                              "    depends_on: [1]\n")
    assert topology.workers["2"].depends_on == ("1",)


def test_depends_on_conditions_and_max_restarts(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
workers:
  db: {class: m:Db, replicas: 2, max_restarts: 5}
  migrate: {class: m:Migrate, restart: "no", max_restarts: "${N}"}
  cache: {class: m:Cache}
  api:
    class: m:Api
    depends_on:
      db: {condition: ready}
      migrate: {condition: completed}
      cache:
""", env={"N": "0"})
    api = topology.workers["api"]
    assert api.depends_on == ("db", "migrate", "cache")
    assert [api.condition(k) for k in api.depends_on] == [
        Condition.READY, Condition.COMPLETED, Condition.READY]
    assert (topology.workers["db"].max_restarts, topology.workers["migrate"].max_restarts,
            api.max_restarts) == (5, 0, None)
    process = next(p for p in expand(topology) if p.name == "api")
    assert process.depends_on == ("db.1", "db.2", "migrate", "cache")
    assert process.completed == {"migrate"}


# -- interpolation --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "env", "result"), [
    ("${HOST}", {"HOST": "h"}, "h"),
    ("x-${HOST}-y", {"HOST": "h"}, "x-h-y"),
    ("${HOST:-d}", {}, "d"),
    ("${HOST:-d}", {"HOST": ""}, "d"),
    ("${HOST-d}", {}, "d"),
    ("${HOST-d}", {"HOST": ""}, ""),
    ("${HOST:-d}", {"HOST": "h"}, "h"),
    ("${A:-${B:-x}}", {"B": "b"}, "b"),
    ("${A:-${B}}", {"A": "a"}, "a"),  # an unused default may name a missing variable
    ("$$HOST", {"HOST": "h"}, "$HOST"),
    ("pa$word", {}, "pa$word"),
    ("${A:-}", {}, ""),
])
def test_interpolation(tmp_path: Path, value: str, env: dict[str, str], result: str) -> None:
    worker = load(tmp_path, WORKER + f"    env: {{X: '{value}'}}\n", env).workers["a"]
    assert worker.env == {"X": result}


def test_interpolated_numbers_and_policies(tmp_path: Path) -> None:
    text = WORKER + ("    replicas: ${N}\n    stop_timeout: ${T}\n    restart: ${R:-no}\n"
                     "    args: {port: '${PORT}'}\n")
    worker = load(tmp_path, text, {"N": "3", "T": "250ms", "PORT": "80"}).workers["a"]
    assert (worker.replicas, worker.stop_timeout, worker.restart) == (3, 0.25, RestartPolicy.NO)
    assert worker.args == {"port": "80"}  # interpolated values stay strings


def test_url_from_the_environment(tmp_path: Path) -> None:
    text = "channels:\n  main:\n    backend: redis\n    url: ${REDIS_URL:-redis://localhost}\n"
    url = load(tmp_path, text + WORKER, {"REDIS_URL": "rediss://r:6380"}).channels["main"].url
    assert url == "rediss://r:6380"


def test_missing_variable(tmp_path: Path) -> None:
    check(tmp_path, WORKER + "    env:\n      X: ${NOPE}\n", 5, "workers.a.env.X",
          "variable NOPE is not set (give a default with ${NOPE:-default})")


@pytest.mark.parametrize("value", ["${NOPE", "${}", "${1X}", "${A:x}", "${A:-x"])
def test_malformed_reference(tmp_path: Path, value: str) -> None:
    check(tmp_path, WORKER + f"    env: {{X: '{value}'}}\n", 4, "workers.a.env.X",
          f"malformed variable reference {value!r}: expected ${{NAME}}, "
          "${NAME:-default} or ${NAME-default}")


def test_unset_variables_in_fields_kept_as_references(tmp_path: Path) -> None:
    """For a caller that writes some fields' references rather than their values (an
    export): an unset variable there stands as its reference, and the URL is not checked;
    anywhere else it is still an error."""
    from pipecat_workers_cli.topology.loader import load as load_with_document

    def kept(field: str) -> bool:
        return field in ("channels.main.url", "workers.a.env.X")

    path = tmp_path / "t.yaml"
    path.write_text("channels:\n  main:\n    backend: redis\n    url: ${URL}\n" + WORKER
                    + "    env:\n      X: k-${KEY}\n")
    loaded = load_with_document(path, {}, keep_unset=kept)
    assert loaded.topology.channels["main"].url == "${URL}"
    assert loaded.topology.workers["a"].env == {"X": "k-${KEY}"}
    written = loaded.document.value["workers"].value["a"].value["env"].value["X"]
    assert (written.raw, written.unset) == ("k-${KEY}", ("KEY",))
    with pytest.raises(TopologyError, match=r"channels\.main\.url: variable URL is not set"):
        load_with_document(path, {}, keep_unset=lambda field: field == "workers.a.env.X")


def test_keys_are_not_interpolated(tmp_path: Path) -> None:
    check(tmp_path, "workers:\n  ${W}:\n    class: m:A\n", 2, "workers.${W}",
          "invalid name '${W}': expected letters, digits, '_' and '-', "
          "starting with a letter or digit", {"W": "a"})


# -- file-level errors ------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "none.yaml")
    assert str(info.value) == f"{tmp_path / 'none.yaml'}: file not found"
    assert info.value.line is None
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, WorkersError)


def test_messages_name_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text(WORKER + "    restart: sometimes\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TopologyError) as info:
        load_topology("configs/x.yaml")
    assert str(info.value) == ("configs/x.yaml:4: workers.a.restart: "
                               "expected one of no, on-failure, always, got 'sometimes'")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r": is a directory, not a topology file$"):
        load_topology(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    check(tmp_path, WORKER, None, None, "cannot read the file: Permission denied")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_bytes(b"workers:\n  a:\n    class: m:\xff\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert str(info.value) == f"{path}:3: not UTF-8 text (byte 0xff)"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("workers:\n  a: [1, 2\n  b: 3\n", 3,
     "invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence)"),
    ("workers:\n\ta: 1\n", 2, "invalid YAML: found character '\\t' that cannot start any "
                              "token (while scanning for the next token)"),
    ("workers: {}\n---\nx: 1\n", 2,
     "invalid YAML: expected a single document in the stream, but found another document"),
    ("# nothing here\n", 1, "the file is empty (expected a mapping with 'workers')"),
    ("", 1, "the file is empty (expected a mapping with 'workers')"),
    ("- a\n- b\n", 1, "expected a mapping at the top level, got a list"),
    ("workers:\n  a: \x01\n", 2,
     "invalid YAML: special characters are not allowed (character #x0001)"),
    ("\nhello\n", 2, "expected a mapping at the top level, got 'hello'"),
])
def test_unusable_documents(tmp_path: Path, text: str, line: int, message: str) -> None:
    check(tmp_path, text, line, None, message)


# -- field errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "field", "message"), [
    # structure
    ("workers:\n  a:\n    class: m:A\n  a:\n    class: m:B\n", 4, "workers.a",
     "duplicate key 'a' (first on line 2)"),
    (WORKER + "    replica: 2\n", 4, "workers.a.replica",
     "unknown key 'replica' (did you mean 'replicas'?)"),
    (WORKER + "    colour: red\n", 4, "workers.a.colour", "unknown key 'colour'"),
    ("worker:\n  a:\n    class: m:A\n", 1, "worker",
     "unknown key 'worker' (did you mean 'workers'?)"),
    ("name: p\n", 1, "workers", "required key missing"),
    ("workers:\n  a:\n    args: {}\n", 2, "workers.a.class", "required key missing"),
    ("workers:\n  a:\n", 2, "workers.a.class", "required key missing"),
    ("workers: {}\n", 1, "workers", "expected a mapping of workers, got an empty mapping"),
    ("workers:\n", 1, "workers", "expected a mapping of workers, got nothing"),
    ("workers: [a]\n", 1, "workers", "expected a mapping of workers, got a list"),
    ("workers:\n  a.b:\n    class: m:A\n", 2, "workers.a.b",
     "invalid name 'a.b': expected letters, digits, '_' and '-', starting with a letter or digit"),
    ("workers:\n  a: 3\n", 2, "workers.a", "expected a mapping, got 3"),
    ("workers:\n  ? [a]\n  : 1\n", 2, "workers", "expected a string key, got a list"),
    ("workers: &w\n  b: *w\n", 1, "workers.b", "an alias refers to itself"),
    (WORKER + "    args: {when: 2024-01-01}\n", 4, "workers.a.args.when",
     "unsupported YAML value '2024-01-01' (a timestamp); quote it to make it a string"),
    # top level
    ("name: Acme\n" + WORKER, 1, "name", "expected a project name (lower-case letters, digits "
     "and '_.-', starting with a letter or digit), got 'Acme'"),
    ("name: 5\n" + WORKER, 1, "name", "expected a string, got 5"),
    # workers
    ("workers:\n  a:\n    class: mA\n", 3, "workers.a.class",
     "expected 'module:attr' (e.g. 'examples.handoff.main:MainWorker'), got 'mA'"),
    ("workers:\n  a:\n    class: [m, A]\n", 3, "workers.a.class",
     "expected a string, got a list"),
    (WORKER + "    restart: sometimes\n", 4, "workers.a.restart",
     "expected one of no, on-failure, always, got 'sometimes'"),
    (WORKER + "    restart: yes\n", 4, "workers.a.restart",
     "expected one of no, on-failure, always, got 'yes' (a boolean)"),
    (WORKER + "    replicas: 0\n", 4, "workers.a.replicas", "expected an integer >= 1, got 0"),
    (WORKER + "    replicas: 1.5\n", 4, "workers.a.replicas",
     "expected an integer >= 1, got 1.5"),
    (WORKER + "    replicas: true\n", 4, "workers.a.replicas",
     "expected an integer >= 1, got 'true' (a boolean)"),
    (WORKER + "    replicas: three\n", 4, "workers.a.replicas",
     "expected an integer >= 1, got 'three'"),
    (WORKER + "    replicas:\n", 4, "workers.a.replicas", "expected an integer >= 1, got nothing"),
    (WORKER + "    stop_timeout: 10 parsecs\n", 4, "workers.a.stop_timeout",
     "expected a duration > 0 (seconds, or '500ms', '10s', '2m'), got '10 parsecs'"),
    (WORKER + "    ready_timeout: 0\n", 4, "workers.a.ready_timeout",
     "expected a duration > 0 (seconds, or '500ms', '10s', '2m'), got 0"),
    (WORKER + "    ready_timeout: -1s\n", 4, "workers.a.ready_timeout",
     "expected a duration > 0 (seconds, or '500ms', '10s', '2m'), got '-1s'"),
    (WORKER + "    ready_timeout: .inf\n", 4, "workers.a.ready_timeout",
     "expected a duration > 0 (seconds, or '500ms', '10s', '2m'), got .inf"),
    (WORKER + "    args: [1]\n", 4, "workers.a.args",
     "expected a mapping of keyword arguments, got a list"),
    (WORKER + "    args:\n      two words: 1\n", 5, "workers.a.args.two words",
     "argument name 'two words' is not a Python identifier"),
    (WORKER + "    args: {name: x}\n", 4, "workers.a.args.name",
     "'name' is not an argument: the worker key is its name"),
    (WORKER + "    env: X=1\n", 4, "workers.a.env",
     "expected a mapping of environment variables, got 'X=1'"),
    (WORKER + "    env:\n      1X: a\n", 5, "workers.a.env.1X",
     "'1X' is not a valid environment variable name"),
    (WORKER + "    env:\n      X:\n", 5, "workers.a.env.X",
     "expected a string, number or boolean, got nothing"),
    (WORKER + "    env:\n      X: [1]\n", 5, "workers.a.env.X",
     "expected a string, number or boolean, got a list"),
    # channels
    ("channels: {}\n" + WORKER, 1, "channels",
     "expected a mapping of channels, got an empty mapping"),
    ("channels:\n  main:\n    backend: kafka\n" + WORKER, 3, "channels.main.backend",
     "expected one of local, redis, pgmq, got 'kafka'"),
    ("channels:\n  main:\n    backend: redis\n" + WORKER, 2, "channels.main.url",
     "required for the redis backend (a redis://, rediss:// or unix:// URL)"),
    ("channels:\n  main:\n    backend: redis\n    url: ${U:-}\n" + WORKER, 4,
     "channels.main.url", "required for the redis backend (a redis://, rediss:// or unix:// URL)"),
    ("channels:\n  main:\n    backend: redis\n    url: http://h\n" + WORKER, 4,
     "channels.main.url",
     "expected a redis://, rediss:// or unix:// URL for the redis backend, got 'http://h'"),
    ("channels:\n  main:\n    backend: pgmq\n    url: redis://h\n" + WORKER, 4,
     "channels.main.url",
     "expected a postgresql:// or postgres:// URL for the pgmq backend, got 'redis://h'"),
    ("channels:\n  main:\n    url: redis://h\n" + WORKER, 3, "channels.main.url",
     "the local backend takes no url"),
    ("channels:\n  main:\n    channel: ''\n" + WORKER, 3, "channels.main.channel",
     "expected a non-empty string"),
    ("channels:\n  main:\n    chanel: x\n" + WORKER, 3, "channels.main.chanel",
     "unknown key 'chanel' (did you mean 'channel'?)"),
    # channel references
    (WORKER + "    channel: main\nchannels:\n  main: 3\n", 6, "channels.main",
     "expected a mapping, got 3"),  # and no echo about the reference above it
    ("channels:\n  x:\n  y:\n" + WORKER, 5, "workers.a.channel",
     "required: there are several channels (x, y) and none is named 'main'"),
    ("channels:\n  main:\n  jobs:\n" + WORKER + "    channel: job\n", 7, "workers.a.channel",
     "unknown channel 'job' (did you mean 'jobs'?) (channels: main, jobs)"),
    # dependencies
    (WORKER + "    depends_on: [gretter]\n  greeter:\n    class: m:G\n", 4,
     "workers.a.depends_on", "unknown worker 'gretter' (did you mean 'greeter'?)"),
    (WORKER + "    depends_on:\n      - a\n", 5, "workers.a.depends_on",
     "'a' cannot depend on itself"),
    (WORKER + "    depends_on: [b, b]\n  b:\n    class: m:B\n", 4, "workers.a.depends_on",
     "'b' is listed twice"),
    (WORKER + "    depends_on: {b: 1}\n", 4, "workers.a.depends_on.b",
     "expected a mapping such as {condition: ready}, got 1"),
    (WORKER + "    depends_on:\n", 4, "workers.a.depends_on",
     "expected a worker key, a list of worker keys or a mapping of them, got nothing"),
    (WORKER + "    depends_on:\n      b: {condition: healthy}\n  b:\n    class: m:B\n", 5,
     "workers.a.depends_on.b.condition", "expected one of ready, completed, got 'healthy'"),
    (WORKER + "    depends_on:\n      b: {conditon: ready}\n  b:\n    class: m:B\n", 5,
     "workers.a.depends_on.b.conditon", "unknown key 'conditon' (did you mean 'condition'?)"),
    (WORKER + "    depends_on:\n      b: {condition: completed}\n  b:\n    class: m:B\n"
     "    restart: always\n", 5, "workers.a.depends_on.b",
     "'b' has restart: always, so it never completes; give it restart: on-failure or no"),
    (WORKER + "    max_restarts: -1\n", 4, "workers.a.max_restarts",
     "expected an integer >= 0, got -1"),
    (WORKER + "    max_restarts: many\n", 4, "workers.a.max_restarts",
     "expected an integer >= 0, got 'many'"),
    (WORKER + "    depends_on:\n      - [b]\n", 5, "workers.a.depends_on",
     "expected a string, got a list"),
])
def test_field_errors(tmp_path: Path, text: str, line: int, field: str, message: str) -> None:
    check(tmp_path, text, line, field, message)


def test_cycle_is_named(tmp_path: Path) -> None:
    text = """\
workers:
  x:
    class: m:A
    depends_on: b
  a:
    class: m:A
    depends_on: c
  b:
    class: m:A
    depends_on: [a]
  c:
    class: m:A
    depends_on: [b]
"""
    # Found from x, named from its first member in the file.
    check(tmp_path, text, 7, "workers.a.depends_on", "dependency cycle: a -> c -> b -> a")


def test_two_worker_cycle(tmp_path: Path) -> None:
    text = WORKER + "    depends_on: b\n  b:\n    class: m:B\n    depends_on: a\n"
    check(tmp_path, text, 4, "workers.a.depends_on", "dependency cycle: a -> b -> a")


def test_first_error_in_file_order(tmp_path: Path) -> None:
    # Interpolation runs first, but the type error above it is reported first.
    text = WORKER + "    replicas: 0\n  b:\n    class: m:B\n    env: {X: '${NOPE}'}\n"
    check(tmp_path, text, 4, "workers.a.replicas", "expected an integer >= 1, got 0")
    # A cross-reference problem above a type error.
    text = WORKER + "    depends_on: c\n  b:\n    class: m:B\n    restart: maybe\n"
    check(tmp_path, text, 4, "workers.a.depends_on", "unknown worker 'c'")


def test_every_error_at_once_in_file_order(tmp_path: Path) -> None:
    text = ("workers:\n  a:\n    class: m:A\n    restart: maybe\n    replicas: 0\n"
            "  b:\n    class: m:B\n    colour: red\n")
    err = error(tmp_path, text)
    file = tmp_path / "t.yaml"
    assert isinstance(err, TopologyErrors)
    assert str(err).splitlines() == [
        f"{file}:4: workers.a.restart: expected one of no, on-failure, always, got 'maybe'",
        f"{file}:5: workers.a.replicas: expected an integer >= 1, got 0",
        f"{file}:8: workers.b.colour: unknown key 'colour'",
    ]
    assert (err.line, err.field) == (4, "workers.a.restart")  # the first one's
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), str(copy)) == (TopologyErrors, str(err))


@pytest.mark.parametrize("command", [["check"], ["up", "-d"]])
def test_check_and_up_print_every_error_one_line_each(tmp_path: Path,
                                                      command: list[str]) -> None:
    (tmp_path / "t.yaml").write_text(
        "workers:\n  a:\n    class: m:A\n    restart: maybe\n    replicas: 0\n"
        "  b:\n    class: m:B\n    colour: red\n")
    result = subprocess.run([sys.executable, "-m", "pipecat_workers_cli", *command, "t.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "error: t.yaml:4: workers.a.restart: expected one of no, on-failure, always, got 'maybe'",
        "error: t.yaml:5: workers.a.replicas: expected an integer >= 1, got 0",
        "error: t.yaml:8: workers.b.colour: unknown key 'colour'",
    ]


def test_errors_are_bounded(tmp_path: Path) -> None:
    text = "workers:\n" + "".join(f"  w{i}:\n    class: m:A\n    replicas: 0\n"
                                   for i in range(25))
    lines = str(error(tmp_path, text)).splitlines()
    assert len(lines) == TopologyErrors.MAX_SHOWN + 1
    assert lines[0].endswith(":4: workers.w0.replicas: expected an integer >= 1, got 0")
    assert lines[-1] == "... and 5 more"


def test_misspelt_required_key_is_reported_once(tmp_path: Path) -> None:
    check(tmp_path, "workers:\n  a:\n    clas: m:A\n", 3, "workers.a.clas",
          "unknown key 'clas' (did you mean 'class'?)")


def test_error_pickles(tmp_path: Path) -> None:
    err = error(tmp_path, WORKER + "    restart: sometimes\n")
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), str(copy), copy.line, copy.field) == (
        TopologyError, str(err), 4, "workers.a.restart")


def test_located_places_an_error(tmp_path: Path) -> None:
    err = TopologyError("module 'm' not found").located(file="x.yaml", line=3,
                                                        field="workers.a.class")
    assert str(err) == "x.yaml:3: workers.a.class: module 'm' not found"


# -- expand -----------------------------------------------------------------------------------

def test_expand_names_replicas_and_orders_dependencies(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
channels:
  main:
  jobs:
workers:
  coordinator:
    class: m:C
    depends_on: [researcher, store]
  researcher:
    class: m:R
    replicas: 3
    channel: jobs
    depends_on: store
  store:
    class: m:S
""")
    processes = expand(topology)
    assert [p.name for p in processes] == [
        "store", "researcher.1", "researcher.2", "researcher.3", "coordinator"]
    by_name = {p.name: p for p in processes}
    assert by_name["coordinator"].depends_on == (
        "researcher.1", "researcher.2", "researcher.3", "store")
    assert by_name["researcher.2"].depends_on == ("store",)
    assert by_name["researcher.2"].channel.key == "jobs"
    assert by_name["coordinator"].channel.key == "main"
    assert by_name["researcher.3"].worker is topology.workers["researcher"]


# -- the JSON Schema and the examples ---------------------------------------------------------

def test_published_schema_is_current() -> None:
    published = ROOT / "configs" / "topology.schema.json"
    assert published.read_text() == render_schema(), (
        "regenerate: python -m pipecat_workers_cli.topology.schema > configs/topology.schema.json")
    assert json.loads(published.read_text()) == topology_schema()


def test_schema_matches_the_loader() -> None:
    schema = topology_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {k.name for k in TOP_KEYS}
    assert schema["required"] == ["workers"]
    channel, worker = schema["$defs"]["channel"], schema["$defs"]["worker"]
    assert set(channel["properties"]) == {k.name for k in CHANNEL_KEYS}
    assert list(worker["properties"]) == list(WORKER_FIELDS) == [k.name for k in WORKER_KEYS]
    assert "required" not in worker  # a class, or a proxy in its place
    assert worker["allOf"][0] == {"oneOf": [{"required": ["class"]}, {"required": ["proxy"]}]}
    for part in (schema, channel, worker):
        assert part["additionalProperties"] is False
    assert channel["properties"]["backend"]["anyOf"][0]["enum"] == list(BACKENDS)
    restart = worker["properties"]["restart"]["anyOf"]
    assert restart[0]["enum"] == [p.value for p in RestartPolicy]
    assert all(p["description"] for p in worker["properties"].values())


@pytest.mark.parametrize("path", CONFIGS or [
    pytest.param(None, marks=pytest.mark.skip(reason="configs/ has no *.yaml yet"))],
    ids=lambda p: p.name if p else "none")
def test_example_topologies_load(path: Path) -> None:
    topology = load_topology(path, env={})  # every ${VAR} in the examples has a default
    assert topology.workers
    assert expand(topology)


def test_public_names() -> None:
    assert pipecat_workers_cli.topology.__all__ == sorted(pipecat_workers_cli.topology.__all__)
    for name in pipecat_workers_cli.topology.__all__:
        assert getattr(pipecat_workers_cli.topology, name) is not None
    with pytest.raises(AttributeError):
        _ = pipecat_workers_cli.topology.nothing_here


# -- bounded input: every error one line, fast, in little memory ------------------------------

def billion_laughs(levels: int) -> str:
    """The classic alias bomb under a worker's ``args``: ``levels`` lists of nine aliases to
    the one before, 10 ** levels values once expanded."""
    names = "abcdefghijklmnop"[:levels]
    text = WORKER + "    args:\n" + f"      a: &a [{', '.join(['lol'] * 9)}]\n"
    for prev, name in itertools.pairwise(names):
        text += f"      {name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    return text


@pytest.mark.timeout(20)
@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_at_once(tmp_path: Path, levels: int) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        err = error(tmp_path, billion_laughs(levels))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err) == (f"{tmp_path / 't.yaml'}:9: more than 20,000 values once aliases are "
                        "expanded (*d here adds 7,381): too large for a topology")
    assert elapsed < 0.5 and peak < 5_000_000, (elapsed, peak)


def test_aliases_that_expand_a_little_are_fine(tmp_path: Path) -> None:
    topology = load(tmp_path, billion_laughs(3))  # 1 + 9 * (1 + 9 * 10): 820 values
    args = topology.workers["a"].args
    assert args["c"] == [[["lol"] * 9] * 9] * 9


def test_a_file_too_large_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(WORKER + "# " + "x" * 1024 * 1024 + "\n")
    started = time.perf_counter()
    with pytest.raises(TopologyError) as info:
        load_topology(path, env={})
    assert time.perf_counter() - started < 0.2
    assert str(info.value) == f"{path}: too large for a topology file: more than 1 MB"


def test_a_pipe_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    os.mkfifo(path)

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), path.open("wb") as pipe:
            pipe.write(WORKER.encode() + b"#" * 2 * 1024 * 1024)  # or /dev/zero, forever

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(TopologyError) as info:
        load_topology(path, env={})
    assert str(info.value) == f"{path}: too large for a topology file: more than 1 MB"
    writer.join(5)


@pytest.mark.parametrize(("text", "line", "message"), [
    (WORKER + "    args: {x: [" + ", ".join(["0"] * 20_001) + "]}\n", 4,
     "more than 20,000 values (counting what aliases expand to): too large for a topology"),
    (WORKER + "    args: {x: " + "[" * 60 + "]" * 60 + "}\n", 4,
     "values nested more than 50 deep"),
    (WORKER + "    args:\n      a: &a [[[[[[[[[[1]]]]]]]]]]\n"
     "      b: &b [[[[[[[[[[*a]]]]]]]]]]\n      c: &c [[[[[[[[[[*b]]]]]]]]]]\n"
     "      d: &d [[[[[[[[[[*c]]]]]]]]]]\n      e: [[[[[[[[[[*d]]]]]]]]]]\n", 9,
     "values nested more than 50 deep once aliases are expanded (*d here)"),
])
def test_documents_too_big_or_too_deep(tmp_path: Path, text: str, line: int,
                                       message: str) -> None:
    started = time.perf_counter()
    check(tmp_path, text, line, None, message)
    assert time.perf_counter() - started < 3.0  # about 0.3 s; a loaded machine is slower


def test_a_deep_document_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    check(tmp_path, "x: " + "[" * 100_000, 1, None, "values nested more than 50 deep")


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    (WORKER + "    replicas: 1001\n", 4, "workers.a.replicas",
     "at most 1,000 replicas (each is a process), got 1001"),
    (WORKER + "    replicas: 1000000000\n", 4, "workers.a.replicas",
     "at most 1,000 replicas (each is a process), got 1000000000"),
    (WORKER + "    replicas: ${N}\n", 4, "workers.a.replicas",
     "at most 1,000 replicas (each is a process), got '99999999999999999999999'"),
    (WORKER + "    replicas: " + "9" * 5000 + "\n", 4, "workers.a.replicas",
     "a number of 5,000 characters: at most 100 (quote it to make it a string)"),
    (WORKER + "    args: {n: 1" + ":00" * 100_000 + "}\n", 4, "workers.a.args.n",
     "a number of 300,001 characters: at most 100 (quote it to make it a string)"),
    ('root: "\\ud800"\n' + WORKER, 1, "root",
     "not valid text: holds a lone surrogate ('\\ud800' at character 1)"),
    ('root: "a\\0b"\n' + WORKER, 1, "root",
     "expected a directory, got 'a\\x00b' (it holds a NUL character)"),
    (WORKER + '    args: {x: "ok \\udfff"}\n', 4, "workers.a.args.x",
     "not valid text: holds a lone surrogate ('\\udfff' at character 4)"),
    (WORKER + '    args: {"\\ud800": 1}\n', 4, "workers.a.args",
     "a key: not valid text: holds a lone surrogate ('\\ud800' at character 1)"),
    (WORKER + '    env: {X: "a\\0b"}\n', 4, "workers.a.env.X",
     "an environment variable cannot hold a NUL character"),
    ('workers:\n  "a\\nb": {class: m:A}\n', 2, "workers['a\\nb']",
     "invalid name 'a\\nb': expected letters, digits, '_' and '-', starting with a "
     "letter or digit"),
    ('name: "p\\n"\n' + WORKER, 1, "name",
     "expected a project name (lower-case letters, digits and '_.-', starting with a letter "
     "or digit), got 'p\\n'"),
    (WORKER + '    args: {"x\\n": 1}\n', 4, "workers.a.args['x\\n']",
     "argument name 'x\\n' is not a Python identifier"),
    (WORKER + "    args: {x: '" + "${A:-" * 11 + "}" * 11 + "'}\n", 4, "workers.a.args.x",
     "variable references nested more than 10 deep in defaults"),
    (WORKER + "    restart: " + "x" * 1000 + "\n", 4, "workers.a.restart",
     f"expected one of no, on-failure, always, got '{'x' * 26}...{'x' * 26}' (1,000 "
     "characters)"),
])
def test_hostile_values_are_one_line_errors(tmp_path: Path, text: str, line: int, field: str,
                                            message: str) -> None:
    check(tmp_path, text, line, field, message, env={"N": "99999999999999999999999"})


def test_a_surrogate_pair_written_as_two_escapes_is_one_character(tmp_path: Path) -> None:
    # As JSON writes it (and YAML reads JSON): PyYAML alone would leave two lone surrogates.
    topology = load(tmp_path, 'channels: {main: {channel: "c\\ud83d\\ude00"}}\n'
                              + WORKER + '    args: {x: "\\ud83d\\ude00!"}\n')
    assert topology.workers["a"].args == {"x": "\U0001f600!"}
    assert topology.channels["main"].channel == "c\U0001f600"


def test_a_thousand_replicas_are_fine(tmp_path: Path) -> None:
    topology = load(tmp_path, WORKER + "    replicas: 1000\n")
    assert len(expand(topology)) == 1000


# Pieces of YAML that have broken loaders: tags, anchors and aliases, escapes for
# surrogates and NUL, huge and odd numbers, interpolation, the keys the loader knows.
_PIECES = [
    "workers:", "channels:", "name:", "root:", "class:", "args:", "env:", "replicas:",
    "depends_on:", "restart:", "channel:", "backend:", "url:", "stop_timeout:", "\n", "  ",
    "    ", "- ", ": ", "&a ", "*a", "&b ", "*b", "<<: ", "!!str ", "!!int ", "!!binary ",
    "!!python/object:os.system ", "!x ", "{", "}", "[", "]", ",", "'", '"', "\\ud800",
    "\\0", "${A}", "${B:-${A}}", "${", "$$", "1", "-1", "1e400", ".inf", ".nan", "no", "~",
    "m:A", "local", "redis", "pgmq", "redis://x", "10s", "?", "#", "|", ">", "---", "...",
    "\t", "\x85", "\ufeff", "é", "1:2:3", "0x1F", "0o7", "9" * 40, "a", "main", "..", "/",
    "~nobody-such",
]
_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=6) | st.sampled_from(_PIECES[:14]), inner, max_size=4),
    max_leaves=20)


def _only_one_line_errors(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load_topology(path, env={"A": "1", "E": ""})
    except TopologyError as exc:
        errors = exc.errors if isinstance(exc, TopologyErrors) else [exc]
        assert all(len(str(e).splitlines()) == 1 and len(str(e)) < 1000 for e in errors), (
            str(exc))
        assert len(str(exc).splitlines()) == min(len(errors), TopologyErrors.MAX_SHOWN + 1)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(_PIECES) | st.text(max_size=4), max_size=50))
@example(pieces=["workers:", "  ", "!!int "])  # pyyaml's int constructor raised IndexError
def test_fuzzed_text_gives_one_line_errors_only(tmp_path: Path, pieces: list[str]) -> None:
    _only_one_line_errors(tmp_path / "t.yaml", "".join(pieces).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=st.fixed_dictionaries({"workers": st.dictionaries(
    st.text(min_size=1, max_size=5), st.dictionaries(
        st.sampled_from([k.name for k in WORKER_KEYS]) | st.text(max_size=4), _PLAIN,
        max_size=4), max_size=3)},
    optional={k.name: _PLAIN for k in TOP_KEYS if k.name != "workers"}),
    flow=st.booleans())
def test_fuzzed_topologies_give_one_line_errors_only(tmp_path: Path, doc: dict[str, Any],
                                                     flow: bool) -> None:
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    _only_one_line_errors(tmp_path / "t.yaml", text.encode())


# A value as YAML source: JSON (YAML's double-quoted strings, with escapes for surrogates
# and NUL), or a piece that has broken a loader.
_TEXT = st.text(st.characters(categories=["Cs"]) | st.characters(categories=["Cc"])
                | st.sampled_from("a1 :/${}-_.é\u2028") | st.characters(), max_size=6)
_SOURCE = (
    _TEXT.map(json.dumps)
    | st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
                   lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=8).map(json.dumps)
    | st.sampled_from(["*a", "&a 1", "[" * 60, "9" * 200, "1" + ":00" * 50, "~root", "..",
                       "/", "${A}", "${NOPE}", "${A:-${B:-${C:-x}}}", "!!binary aGk=",
                       "'${'", "m:A", "1e400", "-.inf", "no", "redis://x", "'  '"]))
_FIELDS = ("name", "root", "backend", "url", "channel", "key", "class", "arg", "arg_name",
           "env", "replicas", "depends_on", "restart", "stop_timeout", "channel_of")


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.dictionaries(st.sampled_from(_FIELDS), _SOURCE, max_size=3))
@example(values={"root": '"\\n"'})  # the missing directory's name held a newline
def test_fuzzed_values_in_every_field_give_one_line_errors_only(
        tmp_path: Path, values: dict[str, str]) -> None:
    value = {"class": "m:A", **values}.get
    text = "".join([
        f"name: {value('name')}\n" if "name" in values else "",
        f"root: {value('root')}\n" if "root" in values else "",
        f"channels: {{main: {{backend: {value('backend', 'local')}, url: {value('url', '~')}, "
        f"channel: {value('channel', 'c')}}}}}\n",
        f"workers:\n  {value('key', 'a')}:\n    class: {value('class')}\n",
        f"    args: {{x: {value('arg', 1)}, {value('arg_name', 'y')}: 2}}\n",
        f"    env: {{X: {value('env', 1)}}}\n",
        *(f"    {key}: {values[field]}\n" for key, field in (
            ("replicas", "replicas"), ("depends_on", "depends_on"), ("restart", "restart"),
            ("stop_timeout", "stop_timeout"), ("channel", "channel_of")) if field in values),
    ])
    _only_one_line_errors(tmp_path / "t.yaml", text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tail=st.binary(max_size=100))
def test_fuzzed_bytes_give_one_line_errors_only(tmp_path: Path, tail: bytes) -> None:
    _only_one_line_errors(tmp_path / "t.yaml", WORKER.encode() + tail)
