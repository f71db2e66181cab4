"""What runs under uvicorn: protocol classes, the frame writer, graceful shutdown, the config.

Imports the service (the drain) and the ASGI app (to build it); nothing below imports this."""

from wsproxy.server.config import build_config
from wsproxy.server.graceful import GracefulServer
from wsproxy.server.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol
from wsproxy.server.run import serve
from wsproxy.server.websocket_protocol import (
    DEFLATE_CLIENT_WINDOW_BITS,
    DEFLATE_MEM_LEVEL,
    DEFLATE_SERVER_WINDOW_BITS,
    LEAN_DEFLATE,
    FrameWriter,
    LazyPerMessageDeflate,
    LeanDeflateFactory,
    LeanWebSocketProtocol,
    deflate_factory,
    text_frame_header,
)

__all__ = [
    "DEFLATE_CLIENT_WINDOW_BITS",
    "DEFLATE_MEM_LEVEL",
    "DEFLATE_SERVER_WINDOW_BITS",
    "LEAN_DEFLATE",
    "MAX_HEAD_BYTES",
    "BoundedHttpToolsProtocol",
    "FrameWriter",
    "GracefulServer",
    "LazyPerMessageDeflate",
    "LeanDeflateFactory",
    "LeanWebSocketProtocol",
    "build_config",
    "deflate_factory",
    "serve",
    "text_frame_header",
]
