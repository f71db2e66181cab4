"""``wsproxy serve``: argv -> Settings -> uvicorn (uvloop, httptools).

SIGTERM/SIGINT start a graceful shutdown: readiness turns false, new requests are refused, and
in-flight responses get ``limits.shutdown_grace`` seconds to finish; WebSocket sessions then close
with 1001. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wsproxy import __version__
from wsproxy.settings import Settings, SettingsError, load_settings

log = logging.getLogger("wsproxy")

# The largest request head (request line + headers) accepted; more is a 431.
MAX_HEAD_BYTES = 64 * 1024


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
        from wsproxy.runtime import Runtime

        assert isinstance(runtime, Runtime)
        try:
            await runtime.drain(self.settings.limits.shutdown_grace)
        finally:
            self.should_exit = True


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools sets no limit on the size of a request head: a client could make the server
    buffer any number of header bytes. A head larger than ``max_head_bytes`` (plus one read)
    is answered with 431 and the connection closed."""

    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                body = (
                    b'{"error":{"message":"Request header fields are larger than '
                    + str(self.max_head_bytes).encode()
                    + b' bytes.","type":"invalid_request_error","param":null,'
                    + b'"code":"headers_too_large"}}'
                )
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsproxy", description="A proxy for the OpenAI Responses API.")
    parser.add_argument("--version", action="version", version=f"wsproxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080)")
    serve.add_argument("--config", help="TOML settings file (or WSPROXY_CONFIG)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    return parser


def serve(settings: Settings) -> None:
    from wsproxy.asgi.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    limits = settings.limits
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        ws="websockets-sansio",
        ws_max_size=limits.max_ws_message_bytes,
        ws_ping_interval=limits.ws_ping_interval,
        ws_ping_timeout=limits.ws_ping_timeout,
        ws_per_message_deflate=True,
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(limits.shutdown_grace) + 5,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    server = GracefulServer(config, settings)
    server.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "log_level": args.log_level}.items()
        if v is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
    except (SettingsError, OSError) as exc:
        print(f"wsproxy: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
