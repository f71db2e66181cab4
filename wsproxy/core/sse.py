"""Incremental Server-Sent Events decoder and encoder (WHATWG event-stream rules).

The decoder is fed raw byte chunks as they arrive from the network, in any chunking, and returns
complete messages. It never decodes the ``data`` payload: the OpenAI-native path forwards it as
bytes. Lines may end in ``\\n``, ``\\r\\n`` or ``\\r``; comments (``:``) are dropped; multiple
``data:`` lines are joined with ``\\n``. The buffer is bounded: a line longer than ``max_line``
raises ``SSEError`` instead of growing memory without end.
"""

from __future__ import annotations

from dataclasses import dataclass


class SSEError(ValueError):
    pass


@dataclass(slots=True)
class SSEMessage:
    event: str | None
    data: bytes


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_event", "_max_line", "_pending_cr")

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._event: str | None = None
        self._data: list[bytes] = []
        self._max_line = max_line
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        out: list[SSEMessage] = []
        if not chunk:
            return out
        buf = self._buf
        if self._pending_cr:
            # A CR at the end of the previous chunk was a line end; swallow the LF of a CRLF.
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf += chunk
        start = 0
        n = len(buf)
        while start < n:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf != -1 else n)
            if cr != -1:
                end = cr
                if cr + 1 < n:
                    nxt = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
                else:
                    nxt = cr + 1
                    self._pending_cr = True
            elif lf != -1:
                end = lf
                nxt = lf + 1
            else:
                break
            if end - start > self._max_line:
                raise SSEError(f"SSE line longer than {self._max_line} bytes")
            self._line(bytes(buf[start:end]), out)
            start = nxt
        del buf[:start]
        if len(buf) > self._max_line:
            raise SSEError(f"SSE line longer than {self._max_line} bytes")
        return out

    def _line(self, line: bytes, out: list[SSEMessage]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                out.append(SSEMessage(self._event, data))
            self._event = None
            self._data = []
            return
        if line[0] == 0x3A:  # ':' comment
            return
        colon = line.find(b":")
        if colon == -1:
            field, value = line, b""
        else:
            field = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        # id / retry are not used by any upstream we speak to.

    def flush(self) -> list[SSEMessage]:
        """End of stream: a final message without its blank line is still dispatched."""
        out: list[SSEMessage] = []
        if self._buf:
            self._line(bytes(self._buf), out)
            self._buf.clear()
        self._line(b"", out)
        return out


def encode_event(event_type: str, data: bytes) -> bytes:
    """One SSE event: ``event:`` equal to the JSON type, then the single-line JSON."""
    return b"event: " + event_type.encode() + b"\ndata: " + data + b"\n\n"


KEEPALIVE = b": keepalive\n\n"
DONE = b"data: [DONE]\n\n"
