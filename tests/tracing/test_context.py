"""The trace context as a value, and on the wire."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pipecat_workers.bus import BusJobRequestMessage, JSONMessageSerializer
from pipecat_workers.tracing import TraceContext

EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_round_trip() -> None:
    context = TraceContext.from_traceparent(EXAMPLE)
    assert context is not None
    assert context.trace_hex == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.span_hex == "00f067aa0ba902b7"
    assert context.sampled
    assert TraceContext(context.trace_id, context.span_id).traceparent == EXAMPLE


def test_child_keeps_the_trace_and_gets_a_new_span() -> None:
    root = TraceContext.new_root()
    child = root.child()
    assert child.trace_id == root.trace_id
    assert child.span_id != root.span_id
    assert TraceContext.new_root().trace_id != root.trace_id


def test_invalid_traceparents_are_refused() -> None:
    for bad in ["", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
                EXAMPLE.upper(), "01" + EXAMPLE[2:], EXAMPLE + "-x", EXAMPLE[:-1],
                None, 42, ["00"], EXAMPLE.replace("-", "_")]:
        assert TraceContext.from_traceparent(bad) is None, bad


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_without_raising(text: str) -> None:
    context = TraceContext.from_traceparent(text)
    assert context is None or context.traceparent == text


def _request() -> BusJobRequestMessage:
    return BusJobRequestMessage(source="a", target="b", job_id="j1", job_name="echo")


def test_the_envelope_carries_the_trace() -> None:
    serializer = JSONMessageSerializer(secret="")
    message = _request()
    message.trace = TraceContext.from_traceparent(EXAMPLE)
    data = serializer.serialize(message)
    assert json.loads(data)["tp"] == EXAMPLE
    decoded = serializer.deserialize(data)
    assert decoded is not None and decoded.trace == message.trace
    untraced = serializer.deserialize(serializer.serialize(_request()))
    assert untraced is not None and untraced.trace is None
    assert "tp" not in json.loads(serializer.serialize(_request()))


def test_a_bad_traceparent_starts_over_but_the_message_is_kept() -> None:
    serializer = JSONMessageSerializer(secret="")
    envelope = json.loads(serializer.serialize(_request()))
    for bad in ["garbage", 12, {"x": 1}, "00-" + "0" * 32 + "-00f067aa0ba902b7-01"]:
        envelope["tp"] = bad
        decoded = serializer.deserialize(json.dumps(envelope).encode())
        assert decoded is not None and decoded.job_id == "j1"
        assert decoded.trace is None
    assert serializer.stats()["malformed"] == 0


def test_the_trace_is_signed_with_the_rest() -> None:
    serializer = JSONMessageSerializer(secret="s3cret")
    message = _request()
    message.trace = TraceContext.from_traceparent(EXAMPLE)
    data = serializer.serialize(message)
    forged = data.replace(b"00f067aa0ba902b7", b"00f067aa0ba902b8")
    assert JSONMessageSerializer(secret="s3cret").deserialize(forged) is None
    decoded = JSONMessageSerializer(secret="s3cret").deserialize(data)
    assert decoded is not None and decoded.trace == message.trace
