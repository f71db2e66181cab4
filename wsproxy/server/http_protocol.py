"""uvicorn's httptools protocol with a bounded request head (431 past ``MAX_HEAD_BYTES``), and a
synchronous body writer for streamed answers.

The ASGI extension ``scope["extensions"]["wsproxy.body"]`` (a :class:`BodyWriter`) lets the
application write a piece of a chunked response body (an SSE event) without a coroutine per
write: ``write(data)`` returns False when it must take the ordinary ASGI ``http.response.body``
instead (the head not sent yet, the body not chunked, the response complete, the client gone, or
the transport's buffer full: then the ASGI send waits, which is the backpressure). Other servers
do not offer it.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wsproxy.errors import ClientError, error_json

# The largest request head (request line + headers) accepted; more is a 431.
MAX_HEAD_BYTES = 64 * 1024


class BodyWriter:
    """``scope["extensions"]["wsproxy.body"]``: see the module docstring. ``write(data) -> bool``
    writes one chunk of a chunked body now (True), or nothing (False). ``written``: the body
    bytes it wrote (they pass no ASGI send: the access log adds them)."""

    __slots__ = ("_cycle", "written")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self.written = 0

    def write(self, data: bytes) -> bool:
        cycle = self._cycle
        if (
            not cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or not cycle.chunked_encoding
            or cycle.flow.write_paused
            or not data
        ):
            return False
        transport = cycle.transport
        if transport.is_closing():
            return False
        # What uvicorn's send writes for a chunk of a chunked body, in one write.
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.written += len(data)
        return True


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and uvicorn answers (see
    ``send_400_response``)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools sets no limit on the size of a request head: a client could make the server
    buffer any number of header bytes. A head larger than ``max_head_bytes`` is answered with
    431 and the connection closed, whatever the read sizes:

    - the parsed head (URL and headers, counted in the parser's callbacks) is checked as it is
      parsed, so a whole oversized head that arrives in one read is refused before the app
      sees the request;
    - a head still unfinished (a header that never ends) is bounded by the bytes received for
      it (plus one read), since the parser reports a header only once it is complete."""

    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # received while the head is unfinished
        self._parsed_head = 0  # parsed head bytes of the current request
        self._head_too_large = False
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
                self._reject_head()

    def _reject_head(self) -> None:
        body = error_json(
            ClientError(
                f"Request header fields are larger than {self.max_head_bytes} bytes.",
                status=431,
                code="headers_too_large",
            )
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()

    def _count(self, size: int) -> None:
        self._parsed_head += size
        if self._parsed_head > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url) + 16)  # + method and version
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # + ": " and CRLF
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers any parser error with a 400; ours (a callback raised) is a 431.
        if self._head_too_large:
            self._reject_head()
            return
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()
        cycle = self.cycle
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        if cycle is not None and cycle.scope is scope and scope.get("type") == "http":
            # (the application's task starts on the next loop iteration: it sees the writer)
            extensions: dict[str, Any] = scope.setdefault("extensions", {})
            extensions["wsproxy.body"] = BodyWriter(cycle)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._messages += 1
