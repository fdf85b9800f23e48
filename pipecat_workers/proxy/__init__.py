"""Proxy workers: join workers on different buses over a WebSocket.

A :class:`WebSocketProxyServer` exposes workers of its bus; a :class:`WebSocketProxyClient`
on another bus connects to it, and each side gets a *stand-in* for the other's workers, so
activation, hand-off, jobs, streaming and pipeline frames work across as they do on one bus.
Needs the ``websockets`` package (``pip install 'pipecat-workers[proxy]'``) for the client
and for a server that listens on its own.
"""

from pipecat_workers.proxy.client import WebSocketProxyClient
from pipecat_workers.proxy.server import WebSocketProxyServer
from pipecat_workers.proxy.standin import StandIn
from pipecat_workers.proxy.worker import TOKEN_ENV, LinkLimits, ProxyWorker

__all__ = ["TOKEN_ENV", "LinkLimits", "ProxyWorker", "StandIn", "WebSocketProxyClient",
           "WebSocketProxyServer"]
