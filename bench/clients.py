"""Cheap clients for the load generator: HTTP/1.1 SSE (keep-alive) and WebSocket mode, as raw
asyncio Protocols (no httpx, no ``websockets`` connection object on the per-delta path).

Per received event the clients do a couple of ``bytes.find`` calls: the event type (the first JSON
key of every Responses event), and for text deltas the ``t<ns>`` stamp the fake upstream put in the
text (:func:`bench.streams.delta_stamp`). The receive time is taken once per ``data_received``
call, before parsing, with ``time.monotonic_ns()`` (the clock the upstream stamped with).

The WebSocket client offers ``permessage-deflate; client_max_window_bits`` like the ``websockets``
library does by default (the openai SDK offers it when given a ``max_size``), or nothing with
``deflate=False``. It answers pings so that idle sessions stay open.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import zlib
from array import array
from typing import Any

import orjson

try:
    from websockets.speedups import apply_mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask  # type: ignore[assignment]

from bench.streams import delta_stamp

TERMINAL = frozenset({b"response.completed", b"response.failed", b"response.incomplete", b"error"})
_DELTA = b"response.output_text.delta"


class Recorder:
    """Measurements of one run. Only what happens inside ``[t_start, t_end)`` (monotonic ns) counts
    towards latencies and rates; errors count whenever they happen."""

    def __init__(self) -> None:
        self.lat = array("q")  # receive - stamp, per text delta, ns
        self.ttfd = array("q")  # first text delta - request written, per response, ns
        self.turn = array("q")  # request written - terminal event, per response, ns
        self.deltas = 0
        self.responses = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.seen_deltas = 0  # every delta, for the progress display
        self.t_start = 0
        self.t_end = 1 << 62

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Exchange:
    """One request/response on a connection; ``done`` resolves with the terminal event's bytes."""

    __slots__ = ("chat", "done", "first", "keep_terminal", "rec", "t_sent", "terminal")

    def __init__(self, rec: Recorder, chat: bool = False, keep_terminal: bool = False) -> None:
        self.rec = rec
        self.chat = chat
        self.keep_terminal = keep_terminal
        self.t_sent = 0
        self.first = True
        self.terminal: bytes | None = None
        self.done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    def on_event(self, data: bytes, t: int) -> bool:
        """One event payload (a Responses event JSON, or a Chat chunk / ``[DONE]``); True at the end."""
        rec = self.rec
        if self.chat:
            if data == b"[DONE]":
                return self._end(b"response.completed", data, t)
            ts = delta_stamp(data, b'"content":"t')
            if ts < 0:
                return False
        else:
            if data.startswith(b'{"type":"'):
                end = data.find(b'"', 9)
                kind = data[9:end]
            else:
                kind = b""
            if kind != _DELTA:
                if kind in TERMINAL:
                    return self._end(kind, data, t)
                return False
            ts = delta_stamp(data)
        rec.seen_deltas += 1
        if rec.t_start <= t < rec.t_end:
            rec.deltas += 1
            if ts > 0:
                rec.lat.append(t - ts)
            if self.first:
                rec.ttfd.append(t - self.t_sent)
        self.first = False
        return False

    def _end(self, kind: bytes, data: bytes, t: int) -> bool:
        rec = self.rec
        if kind != b"response.completed":
            rec.error(kind.decode())
        elif rec.t_start <= t < rec.t_end:
            rec.responses += 1
            rec.turn.append(t - self.t_sent)
        self.terminal = data if (self.keep_terminal or kind != b"response.completed") else b""
        return True

    def fail(self, why: str) -> None:
        if not self.done.done():
            self.rec.error(why)
            self.done.set_result(None)


class SSEConnection(asyncio.Protocol):
    """HTTP/1.1 keep-alive client for streamed POSTs; one exchange at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.transport: Any = None
        self.buf = bytearray()
        self.ex: Exchange | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.in_head = True
        self.status = 0
        self.chunked = False
        self.remaining = 0  # content-length bodies (errors)
        self.sse = bytearray()
        self.got_terminal = False

    @classmethod
    async def open(cls, host: str, port: int) -> SSEConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(host, port), host, port)
        return proto

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.ex is not None:
            self.ex.fail("connection_lost")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def post(self, path: str, body: bytes, ex: Exchange) -> asyncio.Future[bytes | None]:
        self.ex = ex
        self._reset()
        ex.t_sent = time.monotonic_ns()
        self.transport.write(
            b"POST %b HTTP/1.1\r\nhost: %b:%d\r\ncontent-type: application/json\r\n"
            b"accept: text/event-stream\r\n"
            b"authorization: Bearer sk-bench\r\ncontent-length: %d\r\n\r\n%b"
            % (path.encode(), self.host.encode(), self.port, len(body), body)
        )
        return ex.done

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        buf = self.buf
        buf += data
        ex = self.ex
        if ex is None:
            buf.clear()
            return
        if self.in_head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            if not self.chunked:
                self.remaining = _content_length(head)
            self.in_head = False
        if self.chunked:
            self._chunks(t, ex)
        else:
            take = min(self.remaining, len(buf))
            self.remaining -= take
            del buf[:take]
            if self.remaining == 0:
                self._finish(ex)

    def _chunks(self, t: int, ex: Exchange) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while pos < n:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol], 16)
            if n < eol + 2 + size + 2:
                break
            start = eol + 2
            pos = start + size + 2
            if size == 0:
                del buf[:pos]
                self._finish(ex)
                return
            if self.status == 200:
                self._sse(buf[start : start + size], t, ex)
        if pos:
            del buf[:pos]

    def _sse(self, payload: bytearray, t: int, ex: Exchange) -> None:
        sse = self.sse
        sse += payload
        pos = 0
        while True:
            end = sse.find(b"\n\n", pos)
            if end < 0:
                break
            i = sse.find(b"data: ", pos, end)
            if i >= 0 and ex.on_event(bytes(sse[i + 6 : end]), t):
                self.got_terminal = True
            pos = end + 2
        if pos:
            del sse[:pos]

    def _finish(self, ex: Exchange) -> None:
        self.ex = None
        self.in_head = True
        if self.status != 200:
            ex.fail(f"http_{self.status}")
            return
        if not self.got_terminal:
            ex.fail("no_terminal_event")
            return
        if not ex.done.done():
            ex.done.set_result(ex.terminal)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line[15:])
    return 0


class WSConnection(asyncio.Protocol):
    """WebSocket-mode client: handshake, masked text frames out, (deflated) text frames in."""

    def __init__(self, host: str, port: int, path: str, deflate: bool) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.offer_deflate = deflate
        self.deflate = False
        self.inflater: Any = None
        self.transport: Any = None
        self.buf = bytearray()
        self.handshaken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ex: Exchange | None = None
        self.closed = False
        self.frag: list[bytes] = []
        self.frag_compressed = False

    @classmethod
    async def open(
        cls, host: str, port: int, path: str = "/v1/responses", deflate: bool = True
    ) -> WSConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(host, port, path, deflate), host, port)
        await proto.handshaken
        return proto

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        ext = (
            b"sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n"
            if self.offer_deflate
            else b""
        )
        transport.write(
            b"GET %b HTTP/1.1\r\nhost: %b:%d\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-key: %b\r\nsec-websocket-version: 13\r\n%bauthorization: Bearer sk-bench\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self.port, key, ext)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))
        if self.ex is not None:
            self.ex.fail("connection_lost")

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            with_code = (1000).to_bytes(2, "big")
            self._send_frame(0x8, with_code)
            self.transport.close()

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.transport.write(head + mask + apply_mask(payload, mask))

    def send_create(self, body: bytes, ex: Exchange) -> asyncio.Future[bytes | None]:
        self.ex = ex
        ex.t_sent = time.monotonic_ns()
        self._send_frame(0x1, body)
        return ex.done

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        buf = self.buf
        buf += data
        if not self.handshaken.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1.1 101"):
                self.handshaken.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                self.transport.close()
                return
            if b"permessage-deflate" in head:
                self.deflate = True
                self.inflater = zlib.decompressobj(-15)
            self.handshaken.set_result(None)
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            off = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                off = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                off = pos + 10
            if n < off + length:
                break
            payload = bytes(buf[off : off + length])
            pos = off + length
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x2 or opcode == 0x0:
                if opcode != 0x0:
                    self.frag_compressed = bool(b0 & 0x40)
                if not b0 & 0x80:
                    self.frag.append(payload)
                    continue
                if self.frag:
                    self.frag.append(payload)
                    payload = b"".join(self.frag)
                    self.frag = []
                if self.frag_compressed:
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                self._message(payload, t)
            elif opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                self.closed = True
                if self.ex is not None:
                    self.ex.fail(f"ws_close_{int.from_bytes(payload[:2], 'big') if payload else 1005}")
                self.transport.close()
                break
        if pos:
            del buf[:pos]

    def _message(self, payload: bytes, t: int) -> None:
        ex = self.ex
        if ex is None:
            return
        if ex.on_event(payload, t):
            self.ex = None
            if not ex.done.done():
                ex.done.set_result(ex.terminal)


def terminal_json(data: bytes | None) -> dict[str, Any]:
    """The parsed terminal event (only the agent loop needs it)."""
    if not data:
        return {}
    value = orjson.loads(data)
    return value if isinstance(value, dict) else {}
