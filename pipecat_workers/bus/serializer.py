"""Turning bus messages into bytes and back, safely.

Envelope (version 1): one compact UTF-8 JSON object, keys in this order::

    {"v":1,"id":"3f2a9c01d4e7-2a","from":"runner-1","inc":1718000000.5,"ts":1718000001.25,
     "ch":"acme","tinc":1718000000.75,"tp":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     "type":"job.request","body":{"source":"parent",...}}

``v`` is the protocol version, ``id`` a message id unique per sender (``<prefix>-<counter>``: a
random hex prefix per serializer and a hex counter from 0), ``from`` and ``inc`` the sending
runner and its incarnation, ``ts`` the send time (``time.time()``), ``ch`` the channel it was
sent on, ``tinc`` the incarnation of the runner it is for, ``tp`` the W3C ``traceparent`` of
the trace it belongs to (:mod:`pipecat_workers.tracing`), ``type`` the registered wire name of
the message class (never a Python import path) and ``body`` its init fields. ``ch`` is left out
when empty (a serializer used on its own), ``tinc`` when the message is not bound to one
runner's incarnation (see :mod:`pipecat_workers.bus.network` for when it is), ``tp`` when it
belongs to no trace. A ``tp`` that is not a valid traceparent is ignored, not a reason to drop.

Values in the body are encoded by :mod:`pipecat_workers.bus.codec` (JSON where JSON is exact,
tagged objects otherwise). Anything that cannot be encoded, NaN and infinities included, fails at
the sender with a :class:`~pipecat_workers.errors.SerializationError` that names the field.

Guarantee: the receiver resolves types only through the allow-list in
:mod:`pipecat_workers.catalogue`; nothing from the wire is ever imported, and only
registered classes are constructed, through their ``__init__`` (or their adapter's ``decode``).
Decoding never raises: a bad message is dropped, counted by reason
(:meth:`MessageSerializer.stats`) and logged once per reason and type; a value of a type this
process has not registered drops the whole message (``unknown_type``), wherever it is nested.
A receiver told its channel (every network bus tells it) drops a message sent on another one
(``wrong_channel``); an unsigned envelope that names no channel passes, a signed one must name
it.

Signing: with a shared secret (argument, or ``PIPECAT_WORKERS_SECRET`` read at construction),
the sender signs the exact bytes ``U`` of the unsigned envelope with HMAC-SHA256 and sends
``U[:-1] + b',"sig":"' + hex + b'"}'``; so the signature is always the last 74 bytes. The
receiver cuts them off, restores ``U``, checks the HMAC over ``U`` and parses ``U`` only, so it
verifies exactly what was signed, channel and target incarnation included. Carriers must keep
the bytes as they are (store them as a string, not as re-normalised JSON). A signing receiver
drops unsigned and forged messages, messages whose ``ts`` is more than ``max_age`` seconds away
from its clock, and replays (:mod:`pipecat_workers.bus.replay` says how).

A receiver without a secret reads signed messages without checking them, counts them
(:attr:`JSONMessageSerializer.unverified`) and says once that the channel is signed: its own
messages are dropped by the signing receivers, which is what a tool should tell its user.
"""

from __future__ import annotations

import abc
import hmac
import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from pipecat_workers.bus.codec import (
    Drop,
    OutOfRange,
    Unsupported,
    build,
    encode_fields,
    nonfinite_path,
)
from pipecat_workers.bus.messages import BusLocalMessage, BusMessage, BusUnregisteredMessage
from pipecat_workers.bus.replay import ReplayGuard
from pipecat_workers.catalogue import adapter_named, lookup, type_name
from pipecat_workers.errors import ConfigurationError, MessageTooLargeError, SerializationError
from pipecat_workers.tracing.context import TraceContext

logger = logging.getLogger("pipecat_workers.bus")

PROTOCOL_VERSION = 1
SECRET_ENV = "PIPECAT_WORKERS_SECRET"
# Marks the log record that says a process without the secret reads a signed channel, for a
# tool that reports it otherwise (``workers call`` and ``tail`` end with one line instead).
UNVERIFIED = {"bus_event": "unverified"}
_SIG_HEAD = b',"sig":"'
_SIG_LEN = len(_SIG_HEAD) + 64 + 2  # ,"sig":" + 64 hex digits + "}
_MAX_LOGGED = 1024  # distinct (reason, type) keys that get a log line

_REASONS: dict[str, str] = {
    "malformed": "malformed envelope or body",
    "version": "unsupported protocol version",
    "unknown_type": "type not registered in this process",
    "not_a_message": "registered type is not a bus message",
    "local_only": "local-only message type",
    "oversize": "larger than max_size",
    "unsigned": "missing signature",
    "forged": "bad signature",
    "stale": "timestamp outside max_age",
    "replayed": "message id already seen, or too old to tell",
    "wrong_channel": "sent on another channel",
    "invalid": "a field does not match its declared type",
}

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_dumps_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else OutOfRange(value)  # ``1e400``


_parse = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float).decode


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message with its envelope metadata."""

    message: BusMessage
    sender: str
    incarnation: float
    message_id: str
    timestamp: float
    channel: str = ""
    target_incarnation: float = 0.0  # 0: not bound to one incarnation of its target's runner


def looks_signed(data: bytes) -> bool:
    """Whether ``data`` ends the way a signed envelope does (not whether its signature is
    good); what a process without the secret can tell of a message cheaply."""
    return data[-_SIG_LEN : 8 - _SIG_LEN] == _SIG_HEAD and data[-2:] == b'"}'


class MessageSerializer(abc.ABC):
    """Turns bus messages into bytes for network buses, and back."""

    @property
    def signed(self) -> bool:
        """Whether this serializer signs and verifies messages."""
        return False

    @abc.abstractmethod
    def serialize(
        self, message: BusMessage, *, sender: str = "", incarnation: float = 0.0,
        channel: str = "", target_incarnation: float = 0.0,
    ) -> bytes:
        """Encode a message; raises :class:`SerializationError` if it cannot be encoded.

        Args:
            message: The message.
            sender: The sending runner's name.
            incarnation: The sending runner's incarnation.
            channel: The channel it is sent on (part of what is signed).
            target_incarnation: The incarnation of the runner it is for, or 0 if not bound.
        """

    @abc.abstractmethod
    def decode(self, data: bytes, *, channel: str | None = None) -> Envelope | None:
        """Decode bytes into an envelope, or ``None`` (dropped and counted); never raises.

        Args:
            data: What the carrier delivered.
            channel: The channel it arrived on: a message sent on another is dropped.
                ``None`` (a serializer used on its own) does not check.
        """

    def deserialize(self, data: bytes) -> BusMessage | None:
        """Decode bytes into a message, or ``None``."""
        envelope = self.decode(data)
        return envelope.message if envelope is not None else None

    def stats(self) -> dict[str, int]:
        """Dropped incoming messages, by reason."""
        return {}


class JSONMessageSerializer(MessageSerializer):
    """The default serializer: compact JSON envelopes, an allow-list of types, optional HMAC.

    Args:
        secret: Shared signing secret; ``None`` reads ``PIPECAT_WORKERS_SECRET`` now, and an
            empty value means no signing.
        max_size: Largest encoded message in bytes: larger fails at send, is dropped at receive.
        max_age: With a secret, how far (seconds) a timestamp may be from the receiver's clock
            (older messages are refused as stale, so replay memory needs to cover no more).
        keep_unknown: Decode a message of an unregistered type to a
            :class:`BusUnregisteredMessage` (its name and raw fields) instead of dropping it;
            for observers that show traffic, not for runners.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        max_size: int = 1024 * 1024,
        max_age: float = 60.0,
        keep_unknown: bool = False,
    ) -> None:
        if secret is None:
            secret = os.environ.get(SECRET_ENV, "")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, bytes):
            raise ConfigurationError("secret must be str or bytes")
        if max_size <= 0 or not max_age > 0:
            raise ConfigurationError("max_size and max_age must be positive")
        self._key: bytes | None = secret or None
        self._max_size = max_size
        self._max_age = float(max_age)
        self._keep_unknown = keep_unknown
        self._id_prefix = os.urandom(6).hex() + "-"
        self._counter = itertools.count()
        self._replay = ReplayGuard(self._max_age)
        self._unverified = 0
        self._drops: dict[str, int] = dict.fromkeys(_REASONS, 0)
        self._logged: set[tuple[str, str]] = set()

    @property
    def signed(self) -> bool:
        """Whether this serializer signs and verifies messages."""
        return self._key is not None

    @property
    def unverified(self) -> int:
        """Signed messages decoded without checking them, because this serializer has no
        secret: the channel is signed, and what this process sends is dropped there."""
        return self._unverified

    def stats(self) -> dict[str, int]:
        return dict(self._drops)

    def serialize(
        self, message: BusMessage, *, sender: str = "", incarnation: float = 0.0,
        channel: str = "", target_incarnation: float = 0.0,
    ) -> bytes:
        cls = type(message)
        if isinstance(message, BusLocalMessage):
            raise SerializationError(f"cannot encode {cls.__name__}: it is a local-only message")
        name = type_name(cls)
        if name is None or not isinstance(message, BusMessage):
            raise SerializationError(
                f"cannot encode {cls.__name__}: not a registered bus message "
                "(register it with register_message)"
            )
        try:
            body = encode_fields(message, cls)
            envelope: dict[str, Any] = {
                "v": PROTOCOL_VERSION,
                "id": f"{self._id_prefix}{next(self._counter):x}",
                "from": sender,
                "inc": float(incarnation),
                "ts": time.time(),
            }
            if channel:
                envelope["ch"] = channel
            if target_incarnation:
                envelope["tinc"] = float(target_incarnation)
            if message.trace is not None:
                envelope["tp"] = message.trace.traceparent
            envelope["type"] = name
            envelope["body"] = body
            text = _dumps(envelope)
        except Unsupported as e:
            path = "".join(reversed(e.path))
            raise SerializationError(f"cannot encode {cls.__name__}{path}: {e.what}") from None
        except ValueError:
            path = nonfinite_path(message, cls.__name__) or cls.__name__
            raise SerializationError(
                f"cannot encode {path}: NaN and infinity are not supported"
            ) from None
        except RecursionError:
            raise SerializationError(
                f"cannot encode {cls.__name__}: nested too deeply (or circular)"
            ) from None
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them instead
            raw = _dumps_ascii(envelope).encode("ascii")
        if self._key is not None:
            sig = hmac.digest(self._key, raw, "sha256").hex().encode("ascii")
            raw = b"".join((raw[:-1], _SIG_HEAD, sig, b'"}'))
        if len(raw) > self._max_size:
            raise MessageTooLargeError(
                f"{cls.__name__} ({name}) encodes to {len(raw)} bytes, "
                f"more than max_size={self._max_size}"
            )
        return raw

    def decode(self, data: bytes, *, channel: str | None = None) -> Envelope | None:
        try:
            return self._decode(data, channel)
        except Drop as drop:
            self._drop(drop.reason, drop.name)
        except Exception:
            self._drop("malformed", "")
        return None

    def _decode(self, data: bytes, channel: str | None) -> Envelope:
        if type(data) is not bytes:
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(data) > self._max_size:
            raise Drop("oversize")
        key = self._key
        signed = looks_signed(data)
        if key is not None:
            if not signed:
                raise Drop("unsigned")
            sig = data[-66:-2]
            data = data[:-_SIG_LEN] + b"}"
            if not hmac.compare_digest(hmac.digest(key, data, "sha256").hex().encode("ascii"), sig):
                raise Drop("forged")
        try:
            env = _parse(data.decode("utf-8"))
        except ValueError:
            raise Drop("malformed") from None
        if type(env) is not dict:
            raise Drop("malformed")
        version = env.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise Drop("malformed" if version is None else "version")
        get = env.get
        mid: Any = get("id")
        sender: Any = get("from")
        inc: Any = get("inc")
        ts: Any = get("ts")
        ch: Any = get("ch")
        tinc: Any = get("tinc", 0.0)
        name: Any = get("type")
        body: Any = get("body")
        if type(name) is not str:
            raise Drop("malformed")
        if (
            type(mid) is not str
            or type(sender) is not str
            or not _number(inc)
            or not _number(ts)
            or not (ch is None or type(ch) is str)
            or not _number(tinc)
            or tinc < 0
            or type(body) is not dict
        ):
            raise Drop("malformed", name)
        # Unsigned, nothing is authenticated: an envelope that names no channel passes.
        if channel is not None and ch != channel and (ch is not None or key is not None):
            raise Drop("wrong_channel", name)
        if key is not None:
            self._check_fresh(mid, float(ts), name)
        elif signed:
            self._count_unverified()
        cls = lookup(name)
        if cls is None:
            if adapter_named(name) is not None:
                raise Drop("not_a_message", name)
            if not self._keep_unknown:
                raise Drop("unknown_type", name)
            source, target = body.get("source"), body.get("target")
            if type(source) is not str:
                raise Drop("malformed", name)
            message: BusMessage = BusUnregisteredMessage(
                source=source, target=target, type_name=name,
                body={k: v for k, v in body.items() if k not in ("source", "target")})
        elif not issubclass(cls, BusMessage):
            raise Drop("not_a_message", name)
        elif issubclass(cls, BusLocalMessage):
            raise Drop("local_only", name)
        else:
            message = build(cls, name, body)
        if type(message.source) is not str or not (
            message.target is None or type(message.target) is str
        ):
            raise Drop("malformed", name)
        tp = get("tp")
        if tp is not None:  # one that does not parse starts a new trace (the W3C rule)
            message.trace = TraceContext.from_traceparent(tp)
        return Envelope(
            message=message,
            sender=sender,
            incarnation=float(inc),
            message_id=mid,
            timestamp=float(ts),
            channel=ch or "",
            target_incarnation=float(tinc),
        )

    def _check_fresh(self, mid: str, ts: float, name: str) -> None:
        """Refuse a stale message or a replay; remember the id of a fresh one."""
        if (reason := self._replay.check(mid, ts)) is not None:
            raise Drop(reason, name)

    def _count_unverified(self) -> None:
        self._unverified += 1
        if self._unverified == 1:
            logger.warning("messages on this channel are signed, and this process has no "
                           "secret: what it sends is dropped there (set %s)", SECRET_ENV,
                           extra=UNVERIFIED)

    def _drop(self, reason: str, name: str) -> None:
        self._drops[reason] += 1
        key = (reason, name)
        if key not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(key)
            logger.warning(
                "dropped an incoming bus message%s: %s (further ones are counted, not logged)",
                f" of type {name!r}" if name else "",
                _REASONS[reason],
            )


def _number(value: Any) -> bool:
    """A JSON number that is finite (:func:`_parse` reads ``1e400`` as an
    :class:`~pipecat_workers.bus.codec.OutOfRange`)."""
    t = type(value)
    return t is int or t is float
