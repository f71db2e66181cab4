"""wsproxy on ``srv.build_config`` (the protocol classes ``wsproxy serve`` runs) in a thread of its
own, with its event loop and runtime at hand. Bound to 127.0.0.1; stopped by the fixture that
started it."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

import wsproxy.server as srv
from tests.conftest import proxy_settings
from tests.fakes.servers import ServerThread, free_port
from tests.schema import SchemaChecked
from wsproxy.asgi.app import create_app
from wsproxy.service.wiring import Runtime


class CliServer(ServerThread):
    def __init__(self, tmp_path: Path, **limits: Any) -> None:
        settings = proxy_settings(tmp_path)
        settings = settings.replace(
            port=free_port(), log_level="warning", limits=dataclasses.replace(settings.limits, **limits)
        )
        self.port = settings.port
        self.app = create_app(settings, environ={})
        self.config = srv.build_config(settings, app=SchemaChecked(self.app))
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        # uvicorn installs no signal handlers outside the main thread.
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"wsproxy-{self.port}")

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            self.loop = runner.get_loop()
            runner.run(self.server.serve())

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the server's loop; a concurrent future for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def ws_sessions(self) -> list[srv.LeanWebSocketProtocol]:
        connections = list(self.server.server_state.connections)
        return [c for c in connections if isinstance(c, srv.LeanWebSocketProtocol)]
