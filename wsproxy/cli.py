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
import zlib
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import OP_BINARY, OP_TEXT, Frame
from websockets.protocol import State
from websockets.typing import ExtensionParameter

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
        self._messages = 0  # requests parsed to their end

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        messages = self._messages
        super().data_received(data)
        # Counted only when the whole chunk went to an unfinished head. A chunk in which a
        # request ended also held its body (a large POST often arrives whole in one read): those
        # bytes are no head, and the next head, if any, starts counting with the next chunk.
        if self._in_head and self._messages == messages and not self.transport.is_closing():
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
        self._messages += 1


# permessage-deflate for WebSocket mode. A zlib compressor takes 2^(wbits+2) + 2^(memLevel+9)
# bytes plus ~6 KB: 38 KB at uvicorn's 12/5, 14 KB at 10/3. Deltas are ~200-byte frames that
# repeat the previous frame's keys, and a 1 KB window still holds several of them: 10/3 sends
# 0.105 of the raw bytes against 0.099 at 12/5, for the same CPU per frame. The client's window
# stays at 12 bits: requests are large, and our decompressor is ~7 KB of state plus that 4 KB.
DEFLATE_SERVER_WINDOW_BITS = 10
DEFLATE_CLIENT_WINDOW_BITS = 12
DEFLATE_MEM_LEVEL = 3
_DATA_OPCODES = (OP_TEXT, OP_BINARY)


class LazyPerMessageDeflate(PerMessageDeflate):
    """websockets' permessage-deflate with its zlib streams created on first use: a session that
    has not yet sent (or received) a compressed message holds no compressor (or decompressor).
    The negotiated parameters and the codec are websockets' own."""

    def __init__(self, negotiated: PerMessageDeflate, min_bytes: int = 0) -> None:
        self.min_bytes = min_bytes
        # Built as if without context takeover, so the base class allocates no zlib stream ...
        super().__init__(
            True,
            True,
            negotiated.remote_max_window_bits,
            negotiated.local_max_window_bits,
            negotiated.compress_settings,
        )
        # ... then given the negotiated behaviour.
        self.remote_no_context_takeover = negotiated.remote_no_context_takeover
        self.local_no_context_takeover = negotiated.local_no_context_takeover

    def encode(self, frame: Frame) -> Frame:
        # A short message goes out as it is (RSV1 clear): RFC 7692 lets the sender choose per
        # message, and the peer's decompressor never sees it, so both windows stay in step.
        if frame.fin and frame.opcode in _DATA_OPCODES and len(frame.data) < self.min_bytes:
            return frame
        return super().encode(frame)

    def __getattr__(self, name: str) -> Any:
        # Only called for a missing attribute: the first frame in each direction.
        if name == "encoder":
            self.encoder = zlib.compressobj(wbits=-self.local_max_window_bits, **self.compress_settings)
            return self.encoder
        if name == "decoder":
            self.decoder = zlib.decompressobj(wbits=-self.remote_max_window_bits)
            return self.decoder
        raise AttributeError(name)


class LeanDeflateFactory(ServerPerMessageDeflateFactory):
    """Negotiates like websockets' factory, then hands out a :class:`LazyPerMessageDeflate`. (The
    negotiated extension websockets builds is dropped at once, with its zlib streams.)"""

    min_bytes = 0  # messages shorter than this are sent uncompressed

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Any]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        return response, LazyPerMessageDeflate(negotiated, self.min_bytes)


def deflate_factory(min_bytes: int) -> LeanDeflateFactory:
    factory = LeanDeflateFactory(
        server_max_window_bits=DEFLATE_SERVER_WINDOW_BITS,
        client_max_window_bits=DEFLATE_CLIENT_WINDOW_BITS,
        compress_settings={"memLevel": DEFLATE_MEM_LEVEL},
    )
    factory.min_bytes = min_bytes
    return factory


# What a protocol built outside ``build_config`` offers: compress every message.
LEAN_DEFLATE = deflate_factory(0)


def text_frame_header(length: int) -> bytes:
    """The header of an unfragmented, unmasked (server-to-client) text frame (RFC 6455 5.2)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol offering :data:`LEAN_DEFLATE` instead of its own
    permessage-deflate factory (when ``ws_per_message_deflate`` is on), and writing the frames
    of the hot path (a text message of an open connection, sent uncompressed) itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            self.conn.available_extensions = [getattr(self.config, "wsproxy_deflate", LEAN_DEFLATE)]
        # Text messages shorter than this go out as plain frames (-1: not known yet).
        self._plain_below = -1
        # Frames of messages marked ``wsproxy.more`` (another follows at once), written together
        # with the next one, or at the end of this event-loop iteration at the latest.
        self._held: list[bytes] | None = None

    async def send(self, message: Any) -> None:
        # One delta is one text frame: header + UTF-8 payload, written as websockets would write
        # it (server frames are not masked; a message under the deflate threshold, or on a
        # connection without extensions, is not transformed). Skipping websockets' Frame and
        # uvicorn's generic path saves several us per frame. Everything else -- a closing or
        # paused connection, compression, control frames -- takes uvicorn's path.
        text = message.get("text") if message["type"] == "websocket.send" else None
        if (
            text is not None
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.writable.is_set()
            and self.conn.state is State.OPEN
            and not self.conn.expect_continuation_frame
        ):
            data = text.encode()
            if len(data) < self._plain_threshold():
                frame = text_frame_header(len(data)) + data
                held = self._held
                if message.get("wsproxy.more"):
                    if held is None:
                        self._held = [frame]
                        asyncio.get_running_loop().call_soon(self._flush_held)
                    else:
                        held.append(frame)
                elif held:
                    held.append(frame)
                    self._held = None
                    self.transport.write(b"".join(held))
                else:
                    self.transport.write(frame)
                return
        self._flush_held()
        await super().send(message)

    def _flush_held(self) -> None:
        held = self._held
        if held:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(b"".join(held))

    def _plain_threshold(self) -> int:
        if self._plain_below < 0:
            extensions = self.conn.extensions
            if not extensions:
                self._plain_below = 1 << 62
            elif len(extensions) == 1 and isinstance(extensions[0], LazyPerMessageDeflate):
                self._plain_below = extensions[0].min_bytes
            else:
                self._plain_below = 0  # an extension we do not know: websockets does it all
        return self._plain_below


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


def build_config(settings: Settings, app: Any = None) -> uvicorn.Config:
    """The uvicorn configuration ``wsproxy serve`` runs (``app`` defaults to ``create_app``)."""
    if app is None:
        from wsproxy.asgi.app import create_app

        app = create_app(settings)
    limits = settings.limits
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        ws=LeanWebSocketProtocol,
        ws_max_size=limits.max_ws_message_bytes,
        ws_ping_interval=limits.ws_ping_interval,
        ws_ping_timeout=limits.ws_ping_timeout,
        ws_per_message_deflate=limits.ws_compression,
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(limits.shutdown_grace) + 5,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    # Read by LeanWebSocketProtocol (uvicorn builds protocols from the config alone).
    config.wsproxy_deflate = deflate_factory(limits.ws_compression_min_bytes)  # type: ignore[attr-defined]
    return config


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    server = GracefulServer(build_config(settings), settings)
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
