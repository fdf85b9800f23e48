"""The control socket's requests are checked before the supervisor acts on any."""

from __future__ import annotations

from typing import Any

import pytest
from pipecat_workers_cli.errors import CommandError
from pipecat_workers_cli.supervisor.requests import (
    ApplyRequest,
    RestartRequest,
    ScaleRequest,
    StatusRequest,
    StopRequest,
    parse_request,
)


def test_each_command_makes_its_request() -> None:
    assert parse_request({"cmd": "status"}) == StatusRequest()
    assert parse_request({"cmd": "down"}) == StopRequest(None, down=True)
    assert parse_request({"cmd": "stop", "workers": ["a"]}) == StopRequest(["a"], down=False)
    assert parse_request({"cmd": "restart", "workers": [], "rolling": True}) == RestartRequest(
        None, rolling=True)
    assert parse_request({"cmd": "restart", "rolling": "yes"}) == RestartRequest(
        None, rolling=False)
    assert parse_request({"cmd": "scale", "replicas": {"w": 0}}) == ScaleRequest({"w": 0})
    assert parse_request({"cmd": "apply", "file": "w.yaml", "env": {"A": "1"}}) == (
        ApplyRequest("w.yaml", {"A": "1"}, [], None))


@pytest.mark.parametrize(("payload", "error"), [
    ({}, "unknown command 'None'"),
    ({"cmd": "x" * 1000}, "unknown command 'xxxx"),
    ({"cmd": "stop", "workers": "a"}, "expected a list of names"),
    ({"cmd": "stop", "workers": ["a", 1]}, "expected a list of names"),
    ({"cmd": "stop", "workers": [""]}, "expected a list of names"),
    ({"cmd": "scale", "replicas": {}}, "expected worker keys and replica counts"),
    ({"cmd": "scale", "replicas": {"w": True}}, "expected worker keys and replica counts"),
    ({"cmd": "scale", "replicas": {"w": "3"}}, "expected worker keys and replica counts"),
    ({"cmd": "scale", "replicas": {"w": 1001}}, "w: expected 0 to 1000 replicas, got 1001"),
    ({"cmd": "scale", "replicas": {"w": -1}}, "w: expected 0 to 1000 replicas, got -1"),
    ({"cmd": "apply"}, "apply: expected the topology file's name"),
    ({"cmd": "apply", "file": "w.yaml", "env": {"A": 1}}, "environment as names and values"),
    ({"cmd": "apply", "file": "w.yaml", "env_files": [None]}, "expected a list of names"),
])
def test_a_malformed_request_is_one_line_back(payload: dict[str, Any], error: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_request(payload)
    assert error in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200
