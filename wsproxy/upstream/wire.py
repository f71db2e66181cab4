"""What both kinds of upstream connection (``h1``, ``h2``) share: the transport they own and
closing it once, and the signal that a request never reached the server."""

from __future__ import annotations

import asyncio
from typing import cast


class StaleConnection(Exception):
    """The server provably did not process the request (a reused keep-alive connection it had
    closed, a refused stream, a stream past its GOAWAY): the pool sends it again."""


class WireProtocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, provider: str, idle_timeout: float) -> None:
        self.loop = loop
        self._name = provider  # for error messages
        self._idle_timeout = idle_timeout  # for the bodies it receives
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = cast(asyncio.Transport, transport)

    def _abort(self) -> None:
        """Drop the connection now (what is unsent is lost)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _close_transport(self) -> None:
        """Close after what is already written has been sent."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
