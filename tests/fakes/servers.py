"""Run ASGI apps on real sockets in background threads: wsproxy under uvicorn, fake upstreams
under hypercorn (HTTP/1.1 and HTTP/2 with prior knowledge, as real providers' edges speak).

Every server binds 127.0.0.1 on a free port and is stopped (and its thread joined) by the
fixture that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class ServerThread:
    """A uvicorn ``server`` running in ``thread``, listening on 127.0.0.1:``port``."""

    port: int
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class UvicornThread(ServerThread):
    """wsproxy (or any ASGI app) under real uvicorn, uvloop + httptools, in a thread, with the
    protocol classes ``wsproxy serve`` uses (bounded request heads; WebSocket frames written by
    wsproxy, compression as configured by default). The app is wrapped in
    :class:`tests.schema.SchemaChecked`."""

    def __init__(self, app: Any, **config: Any) -> None:
        import wsproxy.server as srv
        from tests.schema import SchemaChecked
        from wsproxy.settings import LimitSettings

        self.port = free_port()
        self.config = uvicorn.Config(
            # Everything wsproxy sends in a test is checked against the Open Responses schemas.
            SchemaChecked(app),
            host="127.0.0.1",
            port=self.port,
            loop="uvloop",
            http=srv.BoundedHttpToolsProtocol,
            ws=srv.LeanWebSocketProtocol,
            lifespan="on",
            log_level="warning",
            access_log=False,
            **config,
        )
        self.config.wsproxy_deflate = srv.deflate_factory(  # type: ignore[attr-defined]
            LimitSettings().ws_compression_min_bytes
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"uvicorn-{self.port}")
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        # Signal handlers can only be installed in the main thread.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.server.run()

    @property
    def app_state(self) -> Any:
        return self.config.loaded_app


class HypercornThread:
    """An ASGI app under hypercorn: HTTP/1.1, and HTTP/2 for clients with prior knowledge."""

    def __init__(self, app: Any) -> None:
        from hypercorn.config import Config

        self.app = app
        self.port = free_port()
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{self.port}"]
        self.config.loglevel = "WARNING"
        self.config.accesslog = None
        self.config.errorlog = None
        self.config.keep_alive_timeout = 30
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"hypercorn-{self.port}")

    def _run(self) -> None:
        from hypercorn.asyncio import serve

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._stop = asyncio.Event()
        self.loop.run_until_complete(serve(self.app, self.config, shutdown_trigger=self._stop.wait))
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HypercornThread:
        self.thread.start()
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=15)


@contextlib.contextmanager
def running(server: Any) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def serve_lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI ``lifespan`` scope: startup and shutdown both complete at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI HTTP request."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
