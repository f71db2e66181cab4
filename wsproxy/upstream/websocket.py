"""Responses WebSocket mode towards an OpenAI-native provider: one socket, and one client lane.

``UpstreamSocket`` is an asyncio ``Protocol`` around the ``websockets`` library's sans-I/O
``ClientProtocol``: bytes from the transport go into the protocol, the text messages that come
out are queued as raw bytes (never decoded or re-encoded) for one reader at a time. No task runs
per socket or per frame:

- backpressure: when more than ``HIGH_WATER`` bytes of messages wait for the reader (the client
  is slow, so the response does not ask for the next frame), the transport stops reading; the
  provider's TCP window fills and it stops sending. Reading resumes below ``LOW_WATER``;
- keepalive: the library answers the provider's pings; a timer sends ours every
  ``ping_interval`` and closes the socket when no pong comes within ``ping_timeout`` (not while
  reading is paused on purpose: the pong is then unread, not missing);
- a refused upgrade (any answer but 101) is :class:`UpgradeRefused`, with the status.

``UpstreamLane`` carries the responses of one client lane (the provider runs one response at a
time per socket, and caches the latest one per socket). It opens its socket with the first
response, replaces it when it is gone or too old, and decides per response what to send:

- ``previous_response_id`` and only the new input when the socket holds that response, when the
  provider stores it (``store: true``), or when wsproxy does not know it (the provider may);
- otherwise the history expanded from wsproxy's records, without ``previous_response_id``;
- a ``previous_response_not_found`` before the response starts, or a socket that closed before
  it started, is retried once on a (new) socket with the expanded history, so the client never
  sees that error for a response wsproxy still holds.

Frames become :class:`Event` objects through the OpenAI dialect's passthrough translator, which
also ends a response whose socket dies mid-way with exactly one ``response.failed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from wsproxy.core.events import Event
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.openai_responses import PassthroughTranslator
from wsproxy.errors import (
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_status_error,
)

log = logging.getLogger("wsproxy.upstream.websocket")

# Messages waiting for the reader beyond this stop the reads from the provider.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
# What current clients send for Responses WebSocket mode (Codex; responses-websocket.md).
OPENAI_BETA = "responses_websockets=2026-02-06"
# Request fields that are wsproxy's business or not sent over a socket.
_NOT_SENT = frozenset(
    {"stream", "stream_options", "background", "stream_id", "type", "generate", "previous_response_id"}
)
_FIRST_TYPES = frozenset({"response.created", "response.queued"})


class WebSocketUnavailable(UpstreamError):
    """No upstream socket could be opened (unreachable, timed out, refused): nothing was sent,
    and the response may go over HTTP instead."""

    retryable = True


class UpgradeRefused(WebSocketUnavailable):
    """The provider answered the upgrade with something else than 101."""

    def __init__(self, provider: str, status: int, body: bytes = b"") -> None:
        super().__init__(
            f"Provider '{provider}' refused the WebSocket upgrade (HTTP {status}).",
            status=502,
            retryable=True,
        )
        self.upstream_status = status
        self.upstream_body = body


def websocket_url(base_url: str) -> str:
    """``<base_url>/responses`` with ``ws``/``wss`` for ``http``/``https``."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/responses"
    return f"{scheme}://{parts.netloc}{path}" + (f"?{parts.query}" if parts.query else "")


class UpstreamSocket(asyncio.Protocol):
    """One upstream WebSocket (see the module docstring)."""

    def __init__(self, name: str, url: str, *, ping_interval: float, ping_timeout: float) -> None:
        self.name = name
        self.uri = parse_uri(url)
        self.ws = ClientProtocol(self.uri, max_size=None)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.opened_at = time.monotonic()
        # The response the provider caches on this socket (its latest completed one).
        self.holds: str | None = None
        self.responses = 0
        self.closed = False
        self.close_reason = ""
        self._handshake: asyncio.Future[Response] = self.loop.create_future()
        self._messages: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._fragments: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None

    # -- opening ------------------------------------------------------------------------------

    async def open(
        self, headers: Mapping[str, str], ssl_context: ssl.SSLContext | None, limit: float
    ) -> None:
        """Connect and upgrade. Raises :class:`UpgradeRefused` or ``UpstreamUnavailable``."""
        try:
            async with asyncio.timeout(limit):
                await self.loop.create_connection(
                    lambda: self,
                    self.uri.host,
                    self.uri.port,
                    ssl=ssl_context,
                    server_hostname=self.uri.host if ssl_context is not None else None,
                )
                request = self.ws.connect()
                for key, value in headers.items():
                    request.headers[key] = value
                self.ws.send_request(request)
                self._flush()
                response = await self._handshake
        except TimeoutError:
            self.abort()
            raise WebSocketUnavailable(
                f"Provider '{self.name}' did not answer the WebSocket upgrade.", status=504
            ) from None
        except OSError as exc:
            self.abort()
            raise WebSocketUnavailable(f"Provider '{self.name}' is unreachable: {exc}.") from None
        failed = self.ws.handshake_exc
        if failed is not None:
            self.abort()
            if isinstance(failed, InvalidStatus):
                raise UpgradeRefused(self.name, failed.response.status_code, failed.response.body or b"")
            raise UpgradeRefused(self.name, response.status_code)
        self.opened_at = time.monotonic()
        self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Frames are small and latency matters: no Nagle delay behind an unacked frame.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response) and not self._handshake.done():
                self._handshake.set_result(event)
        self._flush()  # pongs, the echoed close
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        if ws.close_rcvd is not None:
            self._gone(f"closed by the provider with code {ws.close_rcvd.code}")
        elif ws.state is State.CLOSED:
            self._gone("closed")

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._handshake.done():
            self._handshake.set_exception(ConnectionResetError("closed during the upgrade"))
        self._gone(f"connection lost ({exc!r})" if exc else "connection closed")
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- frames -------------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or (op is Opcode.CONT and self._fragments):
            data = bytes(frame.data)
            if not frame.fin:
                self._fragments.append(data)
                return
            if self._fragments:
                self._fragments.append(data)
                data = b"".join(self._fragments)
                self._fragments.clear()
            self._messages.append(data)
            self._buffered += len(data)
            self._wake()
        elif op is Opcode.PONG:
            if self._pong_timer is not None:
                self._pong_timer.cancel()
                self._pong_timer = None
        elif op is Opcode.BINARY:
            log.warning("provider=%s sent a binary frame; ignored", self.name)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _gone(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.holds = None
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._wake()
        if self.transport is not None and self.ws.close_rcvd is not None:
            self.transport.close()

    def pending(self) -> int:
        return len(self._messages)

    def discard_pending(self) -> list[bytes]:
        stale = list(self._messages)
        self._messages.clear()
        self._buffered = 0
        self._resume()
        return stale

    async def recv(self, limit: float) -> bytes | None:
        """The next text message as the provider sent it, or None once the socket is gone."""
        while not self._messages:
            if self.closed:
                return None
            self._waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(limit):
                    await self._waiter
            finally:
                self._waiter = None
        data = self._messages.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < LOW_WATER:
            self._resume()
        return data

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    async def send_text(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError(self.close_reason)
        self.ws.send_text(data)
        self._flush()
        drain = self._drain
        if drain is not None and not drain.done():
            await drain

    def _flush(self) -> None:
        transport = self.transport
        for data in self.ws.data_to_send():
            if transport is None:
                return
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    # -- keepalive ----------------------------------------------------------------------------

    def _ping(self) -> None:
        self._ping_timer = None
        if self.closed:
            return
        if not self._paused and self._pong_timer is None:
            self.ws.send_ping(os.urandom(4))
            self._flush()
            self._pong_timer = self.loop.call_later(self.ping_timeout, self._no_pong)
        self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)

    def _no_pong(self) -> None:
        self._pong_timer = None
        if self._paused or self.closed:
            return
        log.warning("provider=%s: no pong within %.0fs; closing its socket", self.name, self.ping_timeout)
        self.abort()

    # -- closing ------------------------------------------------------------------------------

    def close(self, code: int = 1000) -> None:
        """A close frame, then the transport (no wait for the provider's answer)."""
        if self.transport is not None and self.ws.state is State.OPEN:
            with contextlib.suppress(Exception):
                self.ws.send_close(code)
                self._flush()
        self.abort()

    def abort(self) -> None:
        self._gone("closed by wsproxy")
        transport = self.transport
        if transport is not None:
            transport.close()


@dataclass(slots=True)
class Turn:
    """One response to run on a lane: the request as the client sent it (``body`` without the
    transport fields), its new input, and what wsproxy knows about the previous response."""

    body: dict[str, Any]
    model: str
    new_input: list[dict[str, Any]]
    previous_response_id: str | None
    # The whole history plus the new input, when wsproxy holds the previous response (or there
    # is none); None when it does not.
    expanded_input: list[dict[str, Any]] | None
    # The provider itself stores the previous response (store: true there).
    provider_stores_previous: bool
    generate: bool = True


class UpstreamLane:
    """The upstream socket of one client lane, opened on demand (see the module docstring)."""

    def __init__(
        self,
        name: str,
        url: str,
        headers: Mapping[str, str],
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        first_byte_timeout: float,
        idle_timeout: float,
        max_age: float,
        ping_interval: float,
        ping_timeout: float,
    ) -> None:
        self.name = name
        self.url = url
        self.headers = dict(headers)
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.socket: UpstreamSocket | None = None
        self.opened = 0  # sockets opened over the lane's life (for tests and metrics)

    @property
    def connected(self) -> bool:
        sock = self.socket
        return sock is not None and not sock.closed

    async def _socket(self) -> UpstreamSocket:
        sock = self.socket
        if sock is not None and not sock.closed and time.monotonic() - sock.opened_at < self.max_age:
            return sock
        if sock is not None:
            sock.close(1000)
        self.socket = None
        sock = UpstreamSocket(
            self.name, self.url, ping_interval=self.ping_interval, ping_timeout=self.ping_timeout
        )
        await sock.open(self.headers, self.ssl_context, self.connect_timeout)
        self.socket = sock
        self.opened += 1
        return sock

    async def connect(self) -> None:
        """Open the socket now (raises :class:`UpgradeRefused` when the provider refuses)."""
        await self._socket()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(1000)
            self.socket = None

    def _frame(self, turn: Turn, sock: UpstreamSocket, expand: bool) -> bytes:
        body = {k: v for k, v in turn.body.items() if k not in _NOT_SENT}
        body["model"] = turn.model
        if turn.previous_response_id and not expand:
            body["previous_response_id"] = turn.previous_response_id
            body["input"] = turn.new_input
        else:
            body["input"] = turn.expanded_input if turn.expanded_input is not None else turn.new_input
        if not turn.generate:
            body["generate"] = False
        return orjson.dumps({"type": "response.create", **body})

    def _short_ok(self, turn: Turn, sock: UpstreamSocket) -> bool:
        prev = turn.previous_response_id
        if not prev:
            return False
        return sock.holds == prev or turn.provider_stores_previous or turn.expanded_input is None

    async def stream(self, turn: Turn, response_id: str, created_at: int) -> AsyncGenerator[Event, None]:
        """Run one response. Raises ``ProxyError`` only before its first event (no socket:
        :class:`WebSocketUnavailable`, a refused upgrade :class:`UpgradeRefused`); after it,
        any failure ends the stream with one ``response.failed``."""
        sock = await self._socket()
        expand = not self._short_ok(turn, sock)
        retries = 0
        while True:
            stale = sock.discard_pending()
            if stale:
                log.info("provider=%s: %d frames between responses dropped", self.name, len(stale))
            first = await self._start(sock, turn, expand)
            if isinstance(first, bytes):
                break
            # Not started: the socket went away, or the provider does not hold the previous
            # response. Again (at most twice: a new socket, then the history wsproxy holds).
            if retries >= 2 or (first == "not_found" and (expand or turn.expanded_input is None)):
                raise self._not_started(sock, first)
            retries += 1
            if first == "gone":
                self.socket = None
                sock = await self._socket()
            expand = first == "not_found" or not self._short_ok(turn, sock)
        async for event in self._events(sock, turn, first, response_id, created_at):
            yield event

    async def _start(self, sock: UpstreamSocket, turn: Turn, expand: bool) -> bytes | str:
        """Send the create; its first frame, or why it did not start: "gone", "not_found", or
        an error event (raised)."""
        try:
            await sock.send_text(self._frame(turn, sock, expand))
        except (ConnectionError, OSError):
            return "gone"
        sock.responses += 1
        try:
            data = await sock.recv(self.first_byte_timeout)
        except TimeoutError:
            sock.abort()
            raise UpstreamTimeout(
                f"Provider '{self.name}' sent no event within {self.first_byte_timeout:g}s."
            ) from None
        if data is None:
            return "gone"
        kind = _peek_type(data)
        if kind == "error":
            error = _error_from_event(data)
            if error.code == "previous_response_not_found":
                sock.holds = None
                return "not_found"
            if error.code == "websocket_connection_limit_reached":
                sock.close(1000)
                return "gone"
            raise error
        if kind not in _FIRST_TYPES:
            sock.abort()
            raise UpstreamError(
                f"Provider '{self.name}' sent {kind} before response.created.", retryable=True
            )
        return data

    def _not_started(self, sock: UpstreamSocket, why: str) -> ProxyError:
        if why == "gone":
            return UpstreamUnavailable(
                f"Provider '{self.name}' closed the WebSocket before the response started "
                f"({sock.close_reason})."
            )
        return UpstreamError(
            "Previous response not found by the provider.",
            status=400,
            type="invalid_request_error",
            code="previous_response_not_found",
            param="previous_response_id",
        )

    async def _events(
        self, sock: UpstreamSocket, turn: Turn, first: bytes, response_id: str, created_at: int
    ) -> AsyncGenerator[Event, None]:
        translator = PassthroughTranslator(response_id, turn.model, created_at)
        data: bytes | None = first
        ended = False
        try:
            while True:
                if data is None:
                    try:
                        data = await sock.recv(self.idle_timeout)
                    except TimeoutError:
                        failure = ("upstream_timeout", f"Provider '{self.name}' went silent mid-response.")
                        sock.abort()
                        break
                    if data is None:
                        reason = f"The upstream WebSocket closed mid-response ({sock.close_reason})."
                        failure = ("server_error", reason)
                        break
                try:
                    data.decode()  # a text frame must be UTF-8: forwarded as it is
                    events = translator.feed(SSEMessage(None, data))
                except (ValueError, KeyError, TypeError) as exc:
                    failure = ("server_error", f"Malformed event from provider: {exc}.")
                    sock.abort()
                    break
                data = None
                if translator.done:
                    # Before the terminal event is yielded: its consumer may close us right
                    # after it, and the socket stays for the next response.
                    ended = True
                    status = translator.response.get("status")
                    sock.holds = str(translator.response.get("id")) if status == "completed" else None
                for event in events:
                    yield event
                if ended:
                    return
            log.warning("provider=%s: %s", self.name, failure[1])
            for event in translator.fail(*failure):
                yield event
            ended = True
        finally:
            if not ended:
                # The client left (or the session ended) mid-response: closing the socket is
                # the only way to stop the provider; the lane opens a new one next time.
                sock.abort()
                if self.socket is sock:
                    self.socket = None


def _peek_type(data: bytes) -> str | None:
    if data.startswith(b'{"type":"'):
        end = data.find(b'"', 9)
        if end != -1:
            return data[9:end].decode(errors="replace")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def _error_from_event(data: bytes) -> UpstreamError:
    """A WebSocket ``error`` event before the response started, mapped like an HTTP answer."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    status = payload.get("status")
    err = payload.get("error")
    if not isinstance(status, int) or not 400 <= status < 600:
        status = 400 if isinstance(err, dict) and err.get("type") == "invalid_request_error" else 500
    return upstream_status_error(status, {"error": err if isinstance(err, dict) else {}})
