"""The dashboard's listening socket and the secret token its URL carries.

The socket is bound before anything else starts, so that a port in use is one line at once
and the URL printed is the one that works (port 0: the system picks a free port).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass

from pipecat_workers_cli.errors import CommandError

DEFAULT_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class Listener:
    """A bound socket, and the token a request must carry to be answered."""

    sock: socket.socket
    host: str
    port: int
    token: str

    @classmethod
    def bind(cls, host: str = DEFAULT_HOST, port: int = 0) -> Listener:
        """Bind ``host:port`` (0: a free port).

        Raises:
            CommandError: the address cannot be bound (in use, not this machine's...).
        """
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as exc:
            raise CommandError(f"dashboard: cannot listen on {host}:{port}: {exc}") from None
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            why = exc.strerror or str(exc)
            raise CommandError(f"dashboard: cannot listen on {host}:{port}: {why}") from None
        bound = sock.getsockname()[1]
        return cls(sock, host, int(bound), secrets.token_urlsafe(24))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else (
            self.host)
        return f"http://{host}:{self.port}/?token={self.token}"

    def allows(self, token: str | None) -> bool:
        """Whether ``token`` is ours (compared in constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def warning(self) -> str | None:
        """What to say when the page can be reached from other machines."""
        if is_loopback(self.host):
            return None
        return (f"warning: the dashboard listens on {self.host}, beyond this machine: anyone "
                "who can reach it and learns the URL sees the project (plain HTTP)")

    def close(self) -> None:
        self.sock.close()
