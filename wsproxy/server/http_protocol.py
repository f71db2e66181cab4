"""uvicorn's httptools protocol with a bounded request head (431 past ``MAX_HEAD_BYTES``)."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wsproxy.errors import ClientError, error_json

# The largest request head (request line + headers) accepted; more is a 431.
MAX_HEAD_BYTES = 64 * 1024


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

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._messages += 1
