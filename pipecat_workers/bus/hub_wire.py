"""The bus hub's wire protocol and socket file: frames, opcodes, readers, the socket path.

:class:`~pipecat_workers.bus.hub.BusHub` and :class:`~pipecat_workers.bus.backends.hub.HubBus`
both speak it through these helpers, so the two ends cannot drift apart.

Wire protocol, version 1. Every frame, both ways::

    length: u32 big-endian | opcode: u8 | body: (length - 1) bytes

``length`` counts the opcode and the body, 1 <= length <= MAX_FRAME (16 MiB); strings are
UTF-8. A connection starts with HELLO, answered by WELCOME (or REFUSED, then the hub hangs up).

Client to hub::

    0x01 HELLO    version u8 | flags u8 | incarnation f64 | channel length u16 | channel | runner
    0x02 PAYLOAD  payload: broadcast it to the other connections of the channel
    0x03 SEND     runner length u16 | runner | payload: only to that runner's connection
    0x04 PROBE    request id u32 | runner: is that runner connected on the channel?

Hub to client::

    0x81 WELCOME  version u8 | features u8 (bit 0: this hub reports presence)
    0x02 PAYLOAD  payload (a broadcast is forwarded as the very frame its sender wrote)
    0x83 PROBED   request id u32 | connected u8
    0x84 REFUSED  reason
    0x85 PRESENT  (runner length u16 | runner)*: every runner on the channel now
    0x86 JOINED   runner: a runner connected (it had no connection on the channel)
    0x87 LEFT     runner: the last connection of a runner closed

HELLO flags: bit 0 (OBSERVE) also receives the targeted payloads between other runners of the
channel, for tools that show all traffic; bit 1 (PRESENCE) asks for presence: PRESENT right
after WELCOME, then JOINED and LEFT as runners come and go (the client's own name included),
so clients know at once when a process dies, without heartbeats. Other bits are reserved and
ignored; an older hub ignores PRESENCE too, and its WELCOME has no features byte, so its
clients know to heartbeat. An empty runner name joins for broadcasts only. When one runner
name has several connections (a restart that overlaps its predecessor), targeted payloads go
to its newest incarnation, and the runner stays present until the last one closes. A hub that
stops says LEFT to nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Callable

from pipecat_workers.errors import BusError, ConfigurationError

logger = logging.getLogger("pipecat_workers.bus.hub")

VERSION = 1
MAX_FRAME = 16 * 1024 * 1024
OP_HELLO, OP_PAYLOAD, OP_SEND, OP_PROBE = 0x01, 0x02, 0x03, 0x04
OP_WELCOME, OP_PROBED, OP_REFUSED = 0x81, 0x83, 0x84
OP_PRESENT, OP_JOINED, OP_LEFT = 0x85, 0x86, 0x87
FLAG_OBSERVE, FLAG_PRESENCE = 0x01, 0x02
FEATURE_PRESENCE = 0x01  # in WELCOME: the hub tells who is present
HEAD = struct.Struct(">IB")  # length, opcode
HELLO = struct.Struct(">BBdH")  # version, flags, incarnation, channel length
READ_SIZE = 256 * 1024
STREAM_LIMIT = 4 * READ_SIZE
# sun_path holds 108 bytes on Linux and 104 on macOS and the BSDs, the final NUL included.
MAX_PATH = 107 if sys.platform.startswith("linux") else 103
MAX_HELLO = 2 * 65536  # a channel and a runner name of up to 64 KiB each
_LENGTH = struct.Struct(">I")

OnFrame = Callable[[int, bytes, int, int], None]


class ProtocolError(BusError):
    """Raised when a peer breaks the wire protocol; its connection is closed.

    It never leaves the hub's modules: the hub drops the connection, and a :class:`HubBus`
    treats it as a lost hub (reconnecting), or raises :class:`BusConnectionError` when it
    cannot connect. So it is not in the tree of :mod:`pipecat_workers.errors`.
    """


def check_socket_path(path: str | os.PathLike[str]) -> str:
    """The path as a string, or a :class:`ConfigurationError` if no Unix socket can have it."""
    text = os.fspath(path)
    if not text:
        raise ConfigurationError("the bus hub needs a socket path")
    size = len(os.fsencode(text))
    if size > MAX_PATH:
        raise ConfigurationError(
            f"the socket path {text!r} is {size} bytes long, more than the {MAX_PATH} a Unix "
            "socket allows: choose a shorter one (under /tmp, for instance)")
    return text


def frame(op: int, body: bytes) -> bytes:
    """One whole frame."""
    return HEAD.pack(len(body) + 1, op) + body


def hello(channel: str, runner: str, incarnation: float, flags: int = 0) -> bytes:
    """The HELLO frame a client opens its connection with."""
    name = channel.encode()
    return frame(OP_HELLO, HELLO.pack(VERSION, flags, incarnation, len(name)) + name
                 + runner.encode())


def names_body(names: list[bytes]) -> bytes:
    """A PRESENT body: each name as ``length u16 | name``."""
    return b"".join(len(name).to_bytes(2, "big") + name for name in names)


def parse_names(body: bytes) -> list[str]:
    """The names of a PRESENT body."""
    names, pos = [], 0
    while pos < len(body):
        if pos + 2 > len(body):
            raise ProtocolError("PRESENT is cut short")
        end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
        if end > len(body):
            raise ProtocolError("PRESENT names a runner longer than the frame")
        names.append(body[pos + 2:end].decode(errors="replace"))
        pos = end
    return names


def parse_hello(body: bytes) -> tuple[int, int, float, str, bytes]:
    """(version, flags, incarnation, channel, runner name as bytes) of a HELLO body."""
    if body and body[0] != VERSION:  # another version may lay out the rest differently
        return body[0], 0, 0.0, "", b""
    if len(body) < HELLO.size:
        raise ProtocolError("HELLO is too short")
    version, flags, incarnation, size = HELLO.unpack_from(body)
    end = HELLO.size + size
    if size == 0 or end > len(body):
        raise ProtocolError("HELLO has no channel, or a channel longer than the frame")
    try:
        channel = body[HELLO.size:end].decode()
        runner = body[end:]
        runner.decode()
    except UnicodeDecodeError:
        raise ProtocolError("HELLO names are not UTF-8") from None
    return version, flags, incarnation, channel, runner


def scan(data: bytes, on_frame: OnFrame) -> int:
    """Call ``on_frame(opcode, data, start, end)`` for each complete frame at the start of
    ``data`` (its body is ``data[start + 5:end]``); returns how many bytes they took."""
    pos, size = 0, len(data)
    unpack = HEAD.unpack_from
    while size - pos >= 5:
        length, op = unpack(data, pos)
        if not 0 < length <= MAX_FRAME:
            raise ProtocolError(f"bad frame length {length}")
        end = pos + 4 + length
        if end > size:
            break
        on_frame(op, data, pos, end)
        pos = end
    return pos


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> tuple[int, bytes]:
    """Read one whole frame: (opcode, body). For handshakes; :func:`pump` reads the rest."""
    length, op = HEAD.unpack(await reader.readexactly(HEAD.size))
    if not 0 < length <= limit:
        raise ProtocolError(f"bad frame length {length}")
    return op, await reader.readexactly(length - 1)


async def pump(reader: asyncio.StreamReader, on_data: Callable[[bytes], int]) -> None:
    """Feed what arrives to ``on_data`` until the end of the stream.

    ``on_data`` handles the complete frames at the start of its argument and returns how many
    bytes they took; the rest waits for more. One wake-up per chunk, however many frames it
    holds; a frame bigger than a chunk is read whole instead of being glued together piecewise.
    """
    rest = b""
    read = reader.read
    while True:
        chunk = await read(READ_SIZE)
        if not chunk:
            return  # a frame cut short by the end (a killed writer) is no protocol error
        data = rest + chunk if rest else chunk
        used = on_data(data)
        rest = data[used:]
        if len(rest) >= 4:
            (length,) = _LENGTH.unpack_from(rest)
            if not 0 < length <= MAX_FRAME:
                raise ProtocolError(f"bad frame length {length}")
            missing = 4 + length - len(rest)
            if missing > READ_SIZE:
                rest += await reader.readexactly(missing)
                on_data(rest)
                rest = b""


async def clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on (a supervisor that was killed)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigurationError(f"{path} exists and is not a socket: not replacing it")
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_unix_connection(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        logger.info("bus hub: replaced the stale socket %s", path)
        return
    except (TimeoutError, OSError) as exc:
        raise ConfigurationError(f"a bus hub may be listening at {path} already (it "
                                 f"does not answer: {exc})") from exc
    writer.close()
    raise ConfigurationError(f"a bus hub is already listening at {path}: stop it, "
                             "or choose another path")


def listening_socket(path: str) -> socket.socket:
    """A Unix socket bound at ``path`` with mode 0600 from the start (umask), not after a
    window in which anyone could connect."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot create the bus hub socket {path}: {exc}") from exc
    return sock
