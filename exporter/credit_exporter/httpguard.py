"""Connection limits and timeouts for the HTTP server, so idle sockets cannot exhaust it.

aiohttp keeps a connection open for as long as the client likes while it sends
nothing, or trickles a request's headers a byte at a time. Each such socket
holds a file descriptor; at the open-file limit ``accept()`` fails and nothing
is served. ``ConnectionGuard`` wraps every connection's protocol:

- a connection must deliver a complete request's headers within
  ``header_timeout`` seconds of opening, and, once answered, send the next
  one within ``idle_timeout`` seconds (keep-alive), or it is closed;
- at most ``max_connections`` are open at once (by default half the
  open-file limit, leaving the rest to database pools and files). A new
  connection beyond that closes the oldest connection that has no request
  in progress; when every connection is busy, the new one is closed.

A request "arrives" when aiohttp hands it to the application, which
``ConnectionGuard.middleware`` (the first middleware) reports.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

HEADER_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 60.0
MAX_CONNECTIONS = 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def default_max_connections() -> int:
    """Half the soft open-file limit, between 16 and ``MAX_CONNECTIONS``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 2))


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, with a deadline around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests in the application
        self.started = False
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, seconds: float) -> None:
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.busy or self.transport is None:
            return
        if self.transport.get_write_buffer_size():  # a slow reader of a long answer
            self.arm(self.guard.idle_timeout)
            return
        self.guard.timed_out += 1
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # no answer is owed: free the descriptor now

    # --- asyncio.Protocol, forwarded --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.guard.admit(self):
            transport.abort()
            return
        self.started = True
        self.arm(self.guard.header_timeout)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.guard.forget(self)
        self.transport = None
        if self.started:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    """Counts, times and, past the limit, closes the HTTP server's connections."""

    def __init__(
        self,
        max_connections: int | None = None,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        self.max_connections = max_connections or default_max_connections()
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self._open: OrderedDict[_Connection, None] = OrderedDict()  # oldest first
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, connection: _Connection) -> bool:
        if len(self._open) >= self.max_connections:
            victim = next((c for c in self._open if not c.busy), None)
            if victim is None:
                self.refused += 1
                log.warning(
                    "connection limit (%d) reached with every connection busy: "
                    "closing the new one", self.max_connections,
                )  # fmt: skip
                return False
            self.evicted += 1
            log.warning(
                "connection limit (%d) reached: closing the oldest idle connection",
                self.max_connections,
            )
            self.forget(victim)
            victim.close()
        self._open[connection] = None
        assert connection.transport is not None
        self._by_transport[connection.transport] = connection
        return True

    def forget(self, connection: _Connection) -> None:
        self._open.pop(connection, None)
        if connection.transport is not None:
            self._by_transport.pop(connection.transport, None)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        return lambda: _Connection(self, inner())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self._by_transport.get(request.transport)  # type: ignore[arg-type]
        if connection is None:
            return await handler(request)
        connection.busy += 1
        connection.disarm()
        try:
            return await handler(request)
        finally:
            connection.busy -= 1
            if not connection.busy:
                connection.arm(self.idle_timeout)


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through a ``ConnectionGuard``; a TLS
    handshake gets ``guard.header_timeout`` too (asyncio's default is 60 s)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.guard = guard
        self._listen = (host, port)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        host, port = self._listen
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.protocol_factory(server),
            host,
            port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self.guard.header_timeout if self._ssl_context else None,
            backlog=self._backlog,
        )
