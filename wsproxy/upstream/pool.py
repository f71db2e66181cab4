"""A provider's connections: HTTP/1.1 keep-alive and multiplexed HTTP/2, with bounds.

Why not httpx/httpcore here: on every request and again at every response's end, httpcore's
pool asks each idle connection whether it is still readable (a socket poll behind several
layers), so the cost of a response grows with the number of idle connections; and every read
goes through anyio's timeout and exception-mapping layers. A streaming proxy pays those per
response and per chunk (bench/FINDINGS.md). This pool does O(1) work per request: idle HTTP/1.1
connections are a LIFO stack (the most recently used is the most likely alive, and a dead one
already knows it is dead, from ``connection_lost``); HTTP/2 streams go to the first connection
with a free stream slot, and a new connection opens only when all are full.

Bounds: ``max_connections`` (connecting ones included), ``max_keepalive_connections`` idle
HTTP/1.1 connections, each at most ``keepalive_expiry`` idle; waiting for a free connection at
most ``pool_timeout`` (then a 503); connecting at most ``connect_timeout``; a request body not
read by the provider within ``write_timeout`` fails; silence while reading a body longer than
``idle_timeout`` fails (timed per stream, in ``Body``).

Retries, by concern -- this module does only the first:

- **connection-level resend** (here, :meth:`ConnectionPool.request`): a request the server
  provably never saw (a keep-alive connection it had closed, a refused HTTP/2 stream:
  ``StaleConnection``) is sent again on another connection, at most ``MAX_ATTEMPTS`` times, at
  once. Nothing else is retried here: an answer, or a failure after the request may have been
  processed, goes up as it is;
- provider-level retry (``wsproxy.upstream.http.HTTPProvider``): 429/5xx/transport errors, with
  backoff, before the first event;
- fallback (``wsproxy.service.engine.Engine.events``): the next provider of the route.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from wsproxy.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from wsproxy.settings import ProviderSettings
from wsproxy.upstream.body import Body
from wsproxy.upstream.h1 import H1Connection, H1Response
from wsproxy.upstream.h2 import _CONNECTION_HEADERS, H2Connection, H2Response
from wsproxy.upstream.wire import StaleConnection

log = logging.getLogger("wsproxy.upstream")

# Attempts of one request when the server provably did not process it (see StaleConnection).
MAX_ATTEMPTS = 5


class _Head(Protocol):
    status: int
    headers: dict[str, str]
    http_version: str
    body: Body

    def release(self) -> None: ...


class UpstreamResponse:
    """An answer's head, and its body to read as it arrives. ``close()`` it exactly once."""

    __slots__ = ("_body", "_head", "closed", "headers", "http_version", "status")

    def __init__(self, head: _Head) -> None:
        self._head = head
        self._body = head.body
        self.status = head.status
        self.headers = head.headers
        self.http_version = head.http_version
        self.closed = False

    @property
    def complete(self) -> bool:
        """The whole body was read."""
        return self._body.done

    async def read(self) -> bytes:
        """The next bytes of the body (all that arrived since the last read), b"" at its end."""
        return await self._body.read()

    async def read_all(self, limit: int) -> bytes:
        """The rest of the body, up to ``limit`` bytes (more is left unread)."""
        data = bytearray()
        while len(data) <= limit:
            chunk = await self._body.read()
            if not chunk:
                break
            data += chunk
        return bytes(data[:limit])

    # Push mode (wsproxy.upstream.push): the body handed on from the connection's callback.
    def body_push(
        self, on_data: Callable[[bytes], bool], on_end: Callable[[ProxyError | None], None]
    ) -> None:
        self._body.push(on_data, on_end)

    def body_resume(self) -> None:
        self._body.resume()

    def body_unpush(self) -> None:
        self._body.unpush()

    def close(self) -> None:
        """Give the connection back: reused when the body was read whole, otherwise closed
        (HTTP/1.1) or its stream reset (HTTP/2)."""
        if not self.closed:
            self.closed = True
            self._head.release()


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def ssl_context(verify: str, http2: bool) -> ssl.SSLContext:
    v = verify.strip()
    if v.lower() in ("false", "0", "no"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif v.lower() in ("true", "1", "yes", ""):
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cafile=v)
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context


class ConnectionPool:
    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        url = urlsplit(settings.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"provider {settings.name!r}: base_url must be http:// or https://, got {settings.base_url!r}"
            )
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        default_port = self.port == (443 if url.scheme == "https" else 80)
        self.authority = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:
            self.authority = f"[{self.host}]:{self.port}"
        self.scheme = url.scheme
        self.ssl = ssl_context(settings.verify, settings.http2) if url.scheme == "https" else None
        # "h2" when known to speak HTTP/2 (prior knowledge, or learnt from ALPN), "h1" when known
        # not to, None until the first TLS handshake says.
        self.mode: str | None = (
            "h2" if settings.http2_prior_knowledge else None if self.ssl and settings.http2 else "h1"
        )
        self._idle: deque[H1Connection] = deque()  # right end: most recently used
        self._h2: list[H2Connection] = []
        self._connecting: asyncio.Task[H1Connection | H2Connection] | None = None
        self._connections = 0  # open or opening
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._h1_static = f"host: {self.authority}\r\n".encode("latin-1")

    # -- introspection (tests, metrics)

    @property
    def connection_count(self) -> int:
        return self._connections

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    # -- requests

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send a request and return once the answer's head arrived. Errors are ``ProxyError``."""
        target = self.prefix + path
        for name, value in headers:
            # (Configured headers only; still, a line break would forge a header.)
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise UpstreamError(f"Provider '{self.name}': header {name!r} has a line break.")
            if not (name + value).isascii() and not _latin1(name + value):
                raise UpstreamError(f"Provider '{self.name}': header {name!r} is not Latin-1.")
        for attempt in range(MAX_ATTEMPTS):
            conn = await self._acquire()
            head: H1Response | H2Response
            try:
                if isinstance(conn, H2Connection):
                    head = await conn.request(
                        self._h2_headers(method, target, headers, body), body, self.settings.write_timeout
                    )
                else:
                    head = await conn.request(
                        self._h1_head(method, target, headers, body), body, self.settings.write_timeout
                    )
            except StaleConnection:
                # The server never saw the request: it had closed this keep-alive connection,
                # or refused the stream (REFUSED_STREAM, e.g. beyond its stream limit).
                log.debug("provider=%s: stale keep-alive connection, retrying (%d)", self.name, attempt)
                continue
            return UpstreamResponse(head)
        raise UpstreamUnavailable(
            f"The connection to provider '{self.name}' failed: closed before answering."
        )

    def _h1_head(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._h1_static]
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        return b"".join(lines)

    def _h2_headers(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> list[tuple[bytes, bytes]]:
        out = [
            (b":method", method.encode()),
            (b":scheme", self.scheme.encode()),
            (b":authority", self.authority.encode()),
            (b":path", target.encode()),
        ]
        for name, value in headers:
            lower = name.lower()
            if lower not in _CONNECTION_HEADERS:
                out.append((lower.encode("latin-1"), value.encode("latin-1")))
        if body:
            out.append((b"content-length", str(len(body)).encode()))
        return out

    # -- connections

    async def _acquire(self) -> H1Connection | H2Connection:
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise UpstreamUnavailable(f"Provider '{self.name}' is shutting down.")
            conn = self._h2_with_room() if self.mode == "h2" else self._pop_idle()
            if conn is not None:
                return conn
            if self.mode != "h1" and self._connecting is not None:
                # A connection is being opened that may serve everybody (HTTP/2, or not yet
                # known: the TLS handshake decides): wait for it, then look again. Its failure
                # is everybody's.
                await asyncio.shield(self._connecting)
                continue
            if self._connections < self.settings.max_connections:
                return await self._connect()
            if deadline is None:
                deadline = loop.time() + self.settings.pool_timeout
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise UpstreamUnavailable(
                    f"Provider '{self.name}' has no free connection (pool exhausted).", status=503
                ) from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def _pop_idle(self) -> H1Connection | None:
        idle = self._idle
        now = asyncio.get_running_loop().time()
        expiry = self.settings.keepalive_expiry
        # The oldest first: one expired connection closed per request keeps the stack clean.
        if idle and now - idle[0].idle_since > expiry:
            idle.popleft().close()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since <= expiry:
                return conn
            conn.close()
        return None

    def _h2_with_room(self) -> H2Connection | None:
        expired = asyncio.get_running_loop().time() - self.settings.keepalive_expiry
        for conn in self._h2:
            if conn.capacity > 0:
                if conn.open_streams == 0 and conn.idle_since < expired:
                    conn.close()  # idle too long: the server may be about to drop it
                    continue
                return conn
        return None

    async def _connect(self) -> H1Connection | H2Connection:
        """Open a connection in a task of its own: a requester that gives up (cancelled) does not
        fail those sharing the connect, and the connection it started still serves the next."""
        loop = asyncio.get_running_loop()
        self._connections += 1
        task = loop.create_task(self._open(loop))
        task.add_done_callback(self._connect_done)
        if self.mode != "h1":
            self._connecting = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._adopt)
            raise

    def _connect_done(self, task: asyncio.Task[H1Connection | H2Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            self._connections -= 1
            self._wake()

    def _adopt(self, task: asyncio.Task[H1Connection | H2Connection]) -> None:
        """A connection whose requester left: idle, for the next request (an HTTP/2 one is
        already listed)."""
        if not task.cancelled() and task.exception() is None:
            conn = task.result()
            if isinstance(conn, H1Connection):
                self._h1_idle(conn)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> H1Connection | H2Connection:
        settings = self.settings
        idle = settings.idle_timeout
        try:
            async with asyncio.timeout(settings.connect_timeout):
                transport, _ = await loop.create_connection(
                    asyncio.Protocol,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"Timed out talking to provider '{self.name}': "
                f"ConnectTimeout after {settings.connect_timeout:g}s."
            ) from None
        except OSError as exc:
            raise UpstreamUnavailable(
                f"Could not reach provider '{self.name}': {type(exc).__name__}: {exc}."
            ) from None
        if self.mode is None:
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            self.mode = "h2" if alpn == "h2" else "h1"
            log.info("provider=%s speaks %s", self.name, "HTTP/2" if self.mode == "h2" else "HTTP/1.1")
        conn: H1Connection | H2Connection
        if self.mode == "h2":
            conn = H2Connection(loop, self.name, idle, self._h2_free, self._h2_closed)
            self._h2.append(conn)
        else:
            conn = H1Connection(loop, self.name, idle, self._h1_idle, self._h1_closed)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        return conn

    # -- callbacks from the connections

    def _h1_idle(self, conn: H1Connection) -> None:
        if self._closed or len(self._idle) >= self.settings.max_keepalive_connections:
            conn.close()
            return
        self._idle.append(conn)
        self._wake()

    def _h1_closed(self, conn: H1Connection) -> None:
        self._connections -= 1
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._wake()

    def _h2_free(self, conn: H2Connection) -> None:
        self._wake()

    def _h2_closed(self, conn: H2Connection) -> None:
        self._connections -= 1
        try:
            self._h2.remove(conn)
        except ValueError:
            pass
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        conns: list[H1Connection | H2Connection] = [*self._idle, *self._h2]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports run their close callbacks
