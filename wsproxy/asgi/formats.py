"""The three formatters of the response sink: SSE, one JSON body, WebSocket frames.

Each says how events become bytes and how those reach one client connection; everything else
(backpressure, client gone, shutdown, the terminal guarantee, accounting) is the sink's
(``wsproxy.asgi.sink``). :class:`StreamedResponse` is the ASGI response that runs a sink over HTTP.

- SSE: ``event:``/``data:`` lines, the events of one upstream read in one write (synchronously
  through the server's body writer, ``wsproxy.server.http_protocol.BodyWriter``, when it offers
  one and nothing is pending, else one ``http.response.body``);
  the head (status 200, no-buffering headers) goes out with the first event, so an error before
  it is an HTTP error -- or, when the first event takes longer than ``sse_keepalive_interval``,
  then (the sink's ``first_within``), so that a client and a load balancer waiting on a slow
  provider get bytes; an error after that becomes ``response.failed`` in the stream. While
  nothing is written, keepalive comments keep intermediaries from closing the stream; a write
  blocked for ``slow_client_timeout`` drops the client.
- JSON: nothing is written until the end; then the final response (or the error) in one body.
- WebSocket: one text frame per event (``stream_id`` spliced in on a named lane), written by the
  session (``wsproxy.asgi.ws``): synchronously through the server's frame writer while nothing
  is queued ahead, else through the session's bounded queue.

Must not touch: the engine, the store, the session rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from wsproxy.asgi.render import send_error, send_json, ws_error, ws_event_frame
from wsproxy.asgi.sink import ResponseSink
from wsproxy.core.events import Event
from wsproxy.core.records import StoredResponse
from wsproxy.core.sse import DONE, KEEPALIVE, encode_event
from wsproxy.errors import ProxyError, UpstreamError
from wsproxy.service.tenancy import cache_headers

if TYPE_CHECKING:
    from wsproxy.observability.metrics import Metrics
    from wsproxy.service.engine import ResponseRun
    from wsproxy.service.wiring import Runtime
    from wsproxy.settings import LimitSettings

log = logging.getLogger("wsproxy.http")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
_KEEPALIVE_MESSAGE = {"type": "http.response.body", "body": KEEPALIVE, "more_body": True}


class HTTPClient:
    """One HTTP exchange as a formatter sees it: the ASGI send, and a watch on ``receive`` that
    cancels the task serving the response when the client leaves."""

    __slots__ = ("_watcher", "left", "send", "slow")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.left = False
        self.slow = False
        self._watcher: asyncio.Task[None] | None = None

    def watch(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.left = True
                    task.cancel()
                    return

        self._watcher = asyncio.get_running_loop().create_task(watch_disconnect())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    def gone(self) -> str | None:
        return "slow_client" if self.slow else "client_gone" if self.left else None


class SSEFormat:
    """Events as an SSE stream. See the module docstring."""

    transport = "http"

    def __init__(
        self,
        client: HTTPClient,
        limits: LimitSettings,
        metrics: Metrics,
        run: ResponseRun | None = None,
        body_writer: Callable[[bytes], bool] | None = None,
    ) -> None:
        # The server's synchronous body writer (wsproxy.server.http_protocol.BodyWriter), if it
        # offers one; without it every write is the ASGI send (a coroutine).
        self._write_body = body_writer
        self.writes_nowait = body_writer is not None
        self.client = client
        self.limits = limits
        self.metrics = metrics
        self.run = run  # for the response cache's header
        self.started = False
        self.lock = asyncio.Lock()  # the watchdog's keepalive and the events share the send
        self.sending_since: float | None = None
        self.last_write = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def committed(self) -> bool:
        return self.started

    def write_nowait(self, events: Sequence[Event]) -> int:
        write_body = self._write_body
        if write_body is None or not self.started or self.lock.locked():
            return 0  # the head first, and nothing ahead of a pending send or keepalive
        if len(events) == 1:
            body = encode_event(events[0].type, events[0].data)
        else:
            body = b"".join([encode_event(event.type, event.data) for event in events])
        if not write_body(body):
            return 0
        self.last_write = time.monotonic()
        return len(events)

    async def write(self, events: Sequence[Event]) -> None:
        if not self.started:
            await self.start()
        if len(events) == 1:
            body = encode_event(events[0].type, events[0].data)
        else:
            body = b"".join([encode_event(event.type, event.data) for event in events])
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def refuse(self, error: ProxyError) -> None:
        if self.started:
            await self._send_tail()  # (only after a stream that began without a response)
        else:
            await send_error(self.client.send, error)

    async def close(self, final: StoredResponse | None) -> None:
        if not self.started:
            await self.start()
        self._stop_watchdog()
        await self._send_tail()

    def gone(self) -> str | None:
        return self.client.gone()

    def on_slow(self) -> None:
        self.client.slow = True

    def stop(self) -> None:
        self._stop_watchdog()

    async def start(self) -> None:
        """The head, and the watchdog that sends keepalives while nothing else is sent."""
        self.started = True
        headers = SSE_HEADERS
        extra = cache_headers(self.run)
        if extra:
            headers = SSE_HEADERS + [(k.encode(), v.encode()) for k, v in extra.items()]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        task = asyncio.current_task()
        assert task is not None
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(task))

    async def _send_tail(self) -> None:
        tail = DONE if self.limits.sse_done_sentinel else b""
        await self._send({"type": "http.response.body", "body": tail, "more_body": False})

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _send(self, message: Message) -> None:
        async with self.lock:
            self.sending_since = time.monotonic()
            try:
                await self.client.send(message)
            finally:
                self.sending_since = None
                self.last_write = time.monotonic()

    async def _watch(self, task: asyncio.Task[Any]) -> None:
        """A send blocked for ``slow_client_timeout`` (the client reads nothing: its TCP window
        is full) ends the stream; until then the blocked send is the backpressure that stops the
        engine reading the upstream. While nothing is sent, comments keep the stream alive."""
        interval, slow = self.limits.sse_keepalive_interval, self.limits.slow_client_timeout
        tick = max(0.05, min(interval, slow) / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            since = self.sending_since
            if since is not None:
                if now - since >= slow:
                    break
            elif now - self.last_write >= interval:
                # Comments keep intermediaries from closing a stream while the model thinks.
                try:
                    async with asyncio.timeout(slow):
                        await self._send(_KEEPALIVE_MESSAGE)
                except TimeoutError:
                    break
        log.warning("ending SSE stream of a slow client (no progress for %ss)", slow)
        self.metrics.inc("wsproxy_slow_clients_total", transport="http")
        self.client.slow = True
        task.cancel()


class JSONFormat:
    """The final response as one JSON body; the events are only accounted for."""

    transport = "http"
    writes_nowait = True

    def __init__(self, client: HTTPClient, run: ResponseRun | None = None) -> None:
        self.client = client
        self.run = run  # for the response cache's header

    @property
    def committed(self) -> bool:
        return False  # nothing is written before the end

    def write_nowait(self, events: Sequence[Event]) -> int:
        return len(events)

    async def write(self, events: Sequence[Event]) -> None:
        pass

    async def refuse(self, error: ProxyError) -> None:
        await send_error(self.client.send, error)

    async def close(self, final: StoredResponse | None) -> None:
        if final is None:
            await send_error(self.client.send, UpstreamError("The response ended without a result."))
        else:
            await send_json(self.client.send, final.response, cache_headers(self.run))

    def gone(self) -> str | None:
        return self.client.gone()

    def on_slow(self) -> None:
        self.client.slow = True

    def stop(self) -> None:
        pass


class FrameOutput(Protocol):
    """The WebSocket session as its responses write to it (``wsproxy.asgi.ws.WSSession``)."""

    closed: bool
    close_code: int
    request_id: str | None
    peer_gone: bool

    def write_nowait(self, frames: Sequence[tuple[bytes, bool]]) -> int: ...

    async def send(self, data: str | bytes, more: bool = False) -> None: ...

    def slow(self) -> None: ...


class WSFormat:
    """Events as WebSocket text frames on one lane of a session."""

    transport = "ws"
    writes_nowait = True  # through the server's frame writer, when nothing is queued

    __slots__ = ("lane", "session", "written")

    def __init__(self, session: FrameOutput, lane: str | None) -> None:
        self.session = session
        self.lane = lane
        self.written = False

    @property
    def committed(self) -> bool:
        return self.written

    def write_nowait(self, events: Sequence[Event]) -> int:
        lane = self.lane
        written = self.session.write_nowait([(ws_event_frame(e, lane), e.more) for e in events])
        if written:
            self.written = True
        return written

    async def write(self, events: Sequence[Event]) -> None:
        self.written = True
        send, lane = self.session.send, self.lane
        for event in events:
            await send(ws_event_frame(event, lane), event.more)

    async def refuse(self, error: ProxyError) -> None:
        await self.session.send(ws_error(error, self.lane, request_id=self.session.request_id))

    async def close(self, final: StoredResponse | None) -> None:
        pass  # the terminal event was the last frame of this response

    def gone(self) -> str | None:
        session = self.session
        if session.close_code == 1013 and (session.closed or session.peer_gone):
            return "slow_client"
        # peer_gone: a send found the client gone before the session noticed (it ends soon).
        return "client_gone" if session.closed or session.peer_gone else None

    def on_slow(self) -> None:
        self.session.slow()


class StreamedResponse(Response):
    """An HTTP answer (SSE or one JSON body) run by a :class:`ResponseSink`. It owns its ASGI
    cycle: ``receive`` is watched for the client leaving."""

    def __init__(
        self, runtime: Runtime, events: AsyncIterator[Event], run: ResponseRun | None = None, *, sse: bool
    ) -> None:
        self.runtime = runtime
        self.events = events
        self.run = run
        self.sse = sse
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        client = HTTPClient(send)
        limits = runtime.settings.limits
        writer = (scope.get("extensions") or {}).get("wsproxy.body")
        formatter: SSEFormat | JSONFormat = (
            SSEFormat(client, limits, runtime.metrics, self.run, writer.write if writer is not None else None)
            if self.sse
            else JSONFormat(client, self.run)
        )
        task = asyncio.current_task()
        assert task is not None
        client.watch(receive, task)
        sink = ResponseSink(runtime, formatter, self.run)
        if self.sse and self.run is not None:
            # A provider slow to answer: headers and keepalives after one interval.
            sink.first_within = limits.sse_keepalive_interval
        try:
            await sink.serve(self.events)
        finally:
            formatter.stop()
            client.stop()


def sse_response(runtime: Runtime, events: AsyncIterator[Event], run: ResponseRun | None = None) -> Response:
    return StreamedResponse(runtime, events, run, sse=True)


def json_from_events(runtime: Runtime, events: AsyncIterator[Event], run: ResponseRun) -> Response:
    return StreamedResponse(runtime, events, run, sse=False)
