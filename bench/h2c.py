"""A minimal HTTP/2 server connection (h2c, prior knowledge) for the fake upstream.

Hand-rolled framing, because the ``h2`` package costs tens of microseconds per DATA frame and the
fake upstream must stay far cheaper than the proxy it feeds. What it does, and no more:

- SETTINGS (ours: 10,000 concurrent streams, 16 MiB stream windows), SETTINGS ACK, PING ACK;
- request HEADERS are *not decoded*: the fake routes on the JSON body (``messages`` -> Chat), so no
  HPACK decoder state is needed; CONTINUATION frames are skipped;
- request DATA is collected until END_STREAM; the connection window is replenished as it is used;
- response HEADERS are one fixed HPACK block (``:status 200``, ``content-type: text/event-stream``);
- response DATA honours the peer's connection and stream windows and MAX_FRAME_SIZE, queueing what
  does not fit until WINDOW_UPDATE; RST_STREAM cancels the stream's generator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8

# :status 200 (static index 8), content-type (static index 31, literal without indexing) text/event-stream
_RESPONSE_HEADERS = b"\x88\x0f\x10\x11text/event-stream"
_JSON_HEADERS = b"\x88\x0f\x10\x10application/json"
_OUR_STREAM_WINDOW = 1 << 24


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


class H2Stream:
    __slots__ = ("body", "end_pending", "ended", "on_cancel", "pending", "sid", "window")

    def __init__(self, sid: int, window: int) -> None:
        self.sid = sid
        self.body = bytearray()
        self.window = window
        self.pending = bytearray()
        self.end_pending = False
        self.ended = False
        self.on_cancel: Callable[[], None] | None = None


class H2Sink:
    """What a response generator writes to: one HTTP/2 stream."""

    __slots__ = ("conn", "stream")

    def __init__(self, conn: H2Connection, stream: H2Stream) -> None:
        self.conn = conn
        self.stream = stream

    @property
    def closed(self) -> bool:
        return self.stream.ended or self.conn.closed

    def send(self, data: bytes) -> None:
        self.conn.send_data(self.stream, data, False)

    def end(self, data: bytes = b"") -> None:
        self.conn.send_data(self.stream, data, True)


class H2Connection:
    """Server side of one h2c connection. ``on_request(sink, body)`` starts a response."""

    def __init__(
        self, transport: asyncio.Transport, on_request: Callable[[H2Sink, bytes], Any], initial: bytes
    ) -> None:
        self.t = transport
        self.on_request = on_request
        self.buf = bytearray(initial)
        self.got_preface = False
        self.closed = False
        self.peer_window = 65535  # peer's SETTINGS_INITIAL_WINDOW_SIZE: our send window per stream
        self.max_frame = 16384
        self.conn_window = 65535
        self.recv_unacked = 0
        self.streams: dict[int, H2Stream] = {}
        settings = (3).to_bytes(2, "big") + (10_000).to_bytes(4, "big")
        settings += (4).to_bytes(2, "big") + _OUR_STREAM_WINDOW.to_bytes(4, "big")
        self.t.write(
            frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, (1 << 30).to_bytes(4, "big"))
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.got_preface:
            if len(buf) < len(PREFACE):
                return
            if not buf.startswith(PREFACE):
                self.t.close()
                return
            del buf[: len(PREFACE)]
            self.got_preface = True
        pos = 0
        n = len(buf)
        while n - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if n - pos < 9 + length:
                break
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._frame(ftype, flags, sid, payload)
        if pos:
            del buf[:pos]

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == DATA:
            self.recv_unacked += len(payload)
            if self.recv_unacked > (1 << 20):
                self.t.write(frame(WINDOW_UPDATE, 0, 0, self.recv_unacked.to_bytes(4, "big")))
                self.recv_unacked = 0
            st = self.streams.get(sid)
            if st is None:
                return
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            st.body += payload
            if flags & END_STREAM:
                self._dispatch(st)
        elif ftype == HEADERS:
            st = H2Stream(sid, self.peer_window)
            self.streams[sid] = st
            if flags & END_STREAM:
                self._dispatch(st)
        elif ftype == SETTINGS:
            if flags & ACK:
                return
            for i in range(0, len(payload) - 5, 6):
                ident = int.from_bytes(payload[i : i + 2], "big")
                value = int.from_bytes(payload[i + 2 : i + 6], "big")
                if ident == 4:
                    delta = value - self.peer_window
                    self.peer_window = value
                    for st in self.streams.values():
                        st.window += delta
                elif ident == 5:
                    self.max_frame = value
            self.t.write(frame(SETTINGS, ACK, 0))
            self._flush_all()
        elif ftype == WINDOW_UPDATE:
            incr = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += incr
                self._flush_all()
            else:
                st = self.streams.get(sid)
                if st is not None:
                    st.window += incr
                    self._flush(st)
        elif ftype == PING:
            if not flags & ACK:
                self.t.write(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            st = self.streams.pop(sid, None)
            if st is not None:
                st.ended = True
                if st.on_cancel is not None:
                    st.on_cancel()
        elif ftype == GOAWAY:
            pass  # the peer closes the socket when its streams are done
        # PRIORITY, CONTINUATION (header blocks are not decoded), PUSH_PROMISE: ignored

    def _dispatch(self, st: H2Stream) -> None:
        body = bytes(st.body)
        st.body = bytearray()
        self.t.write(frame(HEADERS, END_HEADERS, st.sid, _RESPONSE_HEADERS))
        self.on_request(H2Sink(self, st), body)

    def send_data(self, st: H2Stream, data: bytes, end: bool) -> None:
        if st.ended or self.closed:
            return
        n = len(data)
        if not st.pending and n <= st.window and n <= self.conn_window and n <= self.max_frame:
            st.window -= n
            self.conn_window -= n
            if end:
                st.ended = True
                self.streams.pop(st.sid, None)
            self.t.write(frame(DATA, END_STREAM if end else 0, st.sid, data))
            return
        st.pending += data
        st.end_pending = st.end_pending or end
        self._flush(st)

    def _flush(self, st: H2Stream) -> None:
        out = []
        pending = st.pending
        while pending:
            n = min(len(pending), st.window, self.conn_window, self.max_frame)
            if n <= 0:
                break
            chunk = bytes(pending[:n])
            del pending[:n]
            st.window -= n
            self.conn_window -= n
            last = not pending and st.end_pending
            out.append(frame(DATA, END_STREAM if last else 0, st.sid, chunk))
            if last:
                st.ended = True
        if not pending and st.end_pending and not st.ended:
            out.append(frame(DATA, END_STREAM, st.sid))
            st.ended = True
        if st.ended:
            self.streams.pop(st.sid, None)
        if out:
            self.t.write(b"".join(out))

    def _flush_all(self) -> None:
        for st in list(self.streams.values()):
            if st.pending or st.end_pending:
                self._flush(st)

    def connection_lost(self) -> None:
        self.closed = True
        for st in self.streams.values():
            st.ended = True
            if st.on_cancel is not None:
                st.on_cancel()
        self.streams.clear()
