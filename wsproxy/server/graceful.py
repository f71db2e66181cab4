"""The uvicorn server ``wsproxy serve`` runs, with a drain phase.

SIGTERM/SIGINT start a graceful shutdown: readiness turns false, new requests are refused, and
in-flight responses get ``limits.shutdown_grace`` seconds to finish; WebSocket sessions then close
with 1001. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn

from wsproxy.settings import Settings


class GracefulServer(uvicorn.Server):
    """uvicorn's server with a drain phase (``Runtime.drain``) before it stops accepting and
    closes connections."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A Python signal handler runs between two bytecodes of whatever the loop was doing: it
        # hands the drain to the loop (thread-safe, and it wakes the loop) instead of touching it.
        if self._drain_requested or self.should_exit:
            self.force_exit = True
            self.should_exit = True
            return
        app = self.config.loaded_app
        runtime = getattr(getattr(getattr(app, "app", app), "state", None), "runtime", None)
        if runtime is None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        self._loop.call_soon_threadsafe(self._start_drain, runtime)

    def _start_drain(self, runtime: object) -> None:
        assert self._loop is not None
        self._draining = self._loop.create_task(self._drain(runtime))

    async def _drain(self, runtime: object) -> None:
        from wsproxy.service.wiring import Runtime

        assert isinstance(runtime, Runtime)
        try:
            await runtime.drain(self.settings.limits.shutdown_grace)
        finally:
            self.should_exit = True
