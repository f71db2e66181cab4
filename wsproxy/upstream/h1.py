"""One HTTP/1.1 upstream connection: an asyncio protocol around httptools' response parser.

One request at a time (no pipelining). The connection knows at once when the server closes it
(``connection_lost``), so checking an idle connection before reuse is reading one attribute.
A request on a reused connection that the server closed before any byte of the answer raises
``StaleConnection``: the pool retries it once on a fresh connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools

from wsproxy.errors import ProxyError, UpstreamUnavailable
from wsproxy.upstream.body import Body
from wsproxy.upstream.wire import StaleConnection, WireProtocol

# Bounds: the response head, and the body bytes buffered ahead of a slow reader.
MAX_HEAD_BYTES = 64 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


class H1Response:
    """What ``H1Connection.request`` returns: the head, and the body as it arrives."""

    http_version = "1.1"

    def __init__(self, conn: H1Connection, status: int, headers: dict[str, str], body: Body) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self.body = body

    def release(self) -> None:
        self._conn.finish(self.body.done)


class H1Connection(WireProtocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        provider: str,
        idle_timeout: float,
        on_idle: Callable[[H1Connection], None],
        on_close: Callable[[H1Connection], None],
    ) -> None:
        super().__init__(loop, provider, idle_timeout)
        self._on_idle = on_idle
        self._on_close = on_close
        self.used = 0  # requests sent on this connection
        self.idle_since = loop.time()
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[H1Response] | None = None
        self._body: Body | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._until_close = False  # neither content-length nor chunked: the body ends with the connection
        self._complete = False
        self._keep_alive = True
        self._paused = False
        self._got_bytes = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._head is None and self._body is None:
            self._abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamUnavailable(f"Provider '{self._name}' sent malformed HTTP/1.1: {exc}."))
            self._abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._parser = None  # type: ignore[assignment]  # nothing is parsed after this
        if self._body is not None and self._until_close and exc is None and not self._complete:
            self._complete = True
            self._body.end()
        elif self._head is not None and not self._head.done() and not self._got_bytes and self.used > 1:
            self._head.set_exception(StaleConnection())
        else:
            reason = f"{type(exc).__name__}: {exc}" if exc else "closed by the provider"
            self._fail(UpstreamUnavailable(f"The connection to provider '{self._name}' failed: {reason}."))
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._on_close(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("response head too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._headers = {}
            return  # an informational answer; the real one follows
        self._status = status
        self._keep_alive = self._parser.should_keep_alive()
        headers = self._headers
        self._until_close = "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )
        body = self._body = Body(self.loop, self._idle_timeout, self._name, self._consumed)
        head = self._head
        self._head = None
        if head is not None and not head.done():
            head.set_result(H1Response(self, status, headers, body))

    def on_body(self, data: bytes) -> None:
        body = self._body
        if body is None:
            return
        body.feed(data)
        if body.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._status == 0:
            return  # the end of an informational answer
        self._complete = True
        if self._body is not None:
            self._body.end()

    # -- the pool's side

    async def request(self, head: bytes, body: bytes, write_timeout: float) -> H1Response:
        """Send one request (``head`` is the serialized request head) and wait for the answer's
        head. Cancellation or any failure closes the connection."""
        transport = self.transport
        if transport is None or self.closed:
            raise StaleConnection()
        self.used += 1
        self._status = 0
        self._headers = {}
        self._head_bytes = 0
        self._complete = False
        self._got_bytes = False
        head_future: asyncio.Future[H1Response] = self.loop.create_future()
        self._head = head_future
        try:
            transport.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                transport.write(body)
            if self._write_paused:
                await self._drained(write_timeout)
            return await head_future
        except BaseException:
            self._head = None
            self._abort()
            raise

    async def _drained(self, write_timeout: float) -> None:
        self._drain = self.loop.create_future()
        try:
            async with asyncio.timeout(write_timeout):
                await self._drain
        except TimeoutError:
            raise UpstreamUnavailable(
                f"Provider '{self._name}' did not read the request within {write_timeout:g}s."
            ) from None
        finally:
            self._drain = None

    def _consumed(self, n: int) -> None:
        body = self._body
        if self._paused and body is not None and body.buffered < LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def finish(self, complete: bool) -> None:
        """The response is done with: back to the pool when it was read whole and the server
        keeps the connection, else closed."""
        body = self._body
        self._body = None
        if body is not None:
            body.close()
        if complete and self._complete and self._keep_alive and not self.closed:
            self.idle_since = self.loop.time()
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            self._on_idle(self)
        else:
            self._abort()

    def _fail(self, error: ProxyError) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        if self._body is not None:
            self._body.fail(error)

    def close(self) -> None:
        self._close_transport()
