"""Incremental Server-Sent Events decoder and encoder (WHATWG event-stream rules).

The decoder is fed raw byte chunks as they arrive from the network, in any chunking, and returns
complete messages. It never decodes the ``data`` payload: the OpenAI-native path forwards it as
bytes. Lines may end in ``\\n``, ``\\r\\n`` or ``\\r``; comments (``:``) are dropped; multiple
``data:`` lines are joined with ``\\n``. The buffer is bounded: a line longer than ``max_line``
raises ``SSEError`` instead of growing memory without end.

Chunks without any CR (every upstream we know ends lines with LF) take a fast path that splits
lines in C; the general decoder handles CR and CRLF. Both give the same messages and refuse the
same lines.
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
        if not self._pending_cr and b"\r" not in chunk:
            return self._feed_lf(chunk)
        return self._feed_any(chunk)

    def _feed_lf(self, chunk: bytes) -> list[SSEMessage]:
        """Fast path, no CR anywhere (every upstream we know ends lines with LF): complete lines are
        split in C and the common fields handled inline, without a method call per line."""
        out: list[SSEMessage] = []
        buf = self._buf
        end = chunk.rfind(b"\n")
        if end < 0:
            buf += chunk
            if len(buf) > self._max_line:
                raise SSEError(f"SSE line longer than {self._max_line} bytes")
            return out
        # No line is longer than the pending partial line plus the chunk up to its last LF: only
        # when that exceeds the bound are the lines measured one by one.
        longest = len(buf) + end
        if buf:
            buf += chunk[: end + 1]
            lines = bytes(buf).split(b"\n")
            buf.clear()
        else:
            lines = chunk[: end + 1].split(b"\n")
        lines.pop()  # the empty tail after the last LF
        if longest > self._max_line and max(map(len, lines)) > self._max_line:
            raise SSEError(f"SSE line longer than {self._max_line} bytes")
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append(SSEMessage(self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                    data = self._data = []
                self._event = None
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                self._event = (line[7:] if line[6:7] == b" " else line[6:]).decode("utf-8", "replace")
            elif line[0] != 0x3A:  # id, retry, unknown fields; ':' comments are dropped
                self._line(line, out)
                data = self._data
        rest = chunk[end + 1 :]
        if rest:
            buf += rest
            if len(buf) > self._max_line:
                raise SSEError(f"SSE line longer than {self._max_line} bytes")
        return out

    def _feed_any(self, chunk: bytes) -> list[SSEMessage]:
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
