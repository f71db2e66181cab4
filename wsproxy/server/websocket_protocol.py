"""uvicorn's sans-I/O WebSocket protocol, lean: lazy permessage-deflate with a small window, a
size threshold under which messages go out uncompressed, and the hot-path text frame written
directly (header + payload), the frames of one upstream read in one ``transport.write``.

The ASGI extension ``scope["extensions"]["wsproxy.frames"]`` (a :class:`FrameWriter`) lets the
application write such a frame synchronously, without a coroutine per frame: ``write_text``
returns False when the frame must take the ordinary ASGI ``websocket.send`` instead (compressed,
closing, or the transport's buffer is full: then the ASGI send waits, which is the backpressure).
The plain ASGI send understands one extra key: ``"wsproxy.more": True`` on a ``websocket.send``
says another frame follows at once, so both may go out in one write. Other servers ignore both.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import OP_BINARY, OP_TEXT, Frame
from websockets.protocol import State
from websockets.typing import ExtensionParameter

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

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # (none when the handshake was refused)
        if scope is not None:
            scope["extensions"]["wsproxy.frames"] = FrameWriter(self)

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send":
            text = message.get("text")
            if text is not None and self.write_text(text, bool(message.get("wsproxy.more"))):
                return
        self._flush_held()
        await super().send(message)

    def write_text(self, text: str | bytes, more: bool = False) -> bool:
        """Write a text message now, as one plain frame, if it may go that way; False if not.

        One delta is one text frame: header + UTF-8 payload, written as websockets would write
        it (server frames are not masked; a message under the deflate threshold, or on a
        connection without extensions, is not transformed). Skipping websockets' Frame and
        uvicorn's generic path saves several us per frame. Everything else -- a closing or
        paused connection, compression, control frames -- takes uvicorn's path (False)."""
        if not (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.writable.is_set()
            and self.conn.state is State.OPEN
            and not self.conn.expect_continuation_frame
        ):
            return False
        data = text.encode() if isinstance(text, str) else text
        if len(data) >= self._plain_threshold():
            return False
        frame = text_frame_header(len(data)) + data
        held = self._held
        if more:
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
        return True

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


class FrameWriter:
    """``scope["extensions"]["wsproxy.frames"]``: synchronous frame writes for the application.

    ``write_text(text, more=False) -> bool``: the text message written now (True), or not at all
    (False: send it with the ASGI ``websocket.send``, which waits while the client's buffer is
    full). ``more``: another frame follows at once; the two go out in one write (held at most
    until the end of this event-loop iteration). ``paused``: the transport's buffer is full."""

    __slots__ = ("_protocol", "write_text")

    def __init__(self, protocol: LeanWebSocketProtocol) -> None:
        self._protocol = protocol
        self.write_text = protocol.write_text

    @property
    def paused(self) -> bool:
        return not self._protocol.writable.is_set()
