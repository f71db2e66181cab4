"""One HTTP/2 upstream connection: an asyncio protocol around the ``h2`` state machine.

Many responses share it, one stream each. Every ``data_received`` feeds h2 once and flushes what
it wants to send once. Flow control is tied to the reader: a stream's window is reopened only
for the bytes its reader consumed, so a slow client slows its own stream (and nobody else's),
and what is buffered per stream stays under ``STREAM_WINDOW``.

A response closed before its end resets its stream (RST_STREAM CANCEL), so the provider stops
generating for nobody. GOAWAY fails the streams the server says it never processed (safe to
retry) and lets the others finish; no new stream is opened on that connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState
from h2.errors import ErrorCodes

from wsproxy.errors import ProxyError, UpstreamUnavailable
from wsproxy.upstream.body import Body
from wsproxy.upstream.wire import StaleConnection, WireProtocol

# Streams opened on one connection at most, whatever the server allows: beyond it another
# connection spreads the load (one TCP window, one event-loop callback per read).
MAX_STREAMS_PER_CONNECTION = 100
# Per-stream receive window: what one stream may buffer ahead of its reader. The connection's
# window holds all streams' windows, so slow readers on some streams never stall the others.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = MAX_STREAMS_PER_CONNECTION * STREAM_WINDOW + 1024 * 1024
ACK_EVERY = 16 * 1024
MAX_HEAD_BYTES = 64 * 1024
# Headers HTTP/2 forbids (RFC 9113 8.2.2); callers may pass them for HTTP/1.1.
_CONNECTION_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}
)

_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None)


class H2Response:
    http_version = "2"

    def __init__(self, stream: _Stream, status: int, headers: dict[str, str]) -> None:
        self._stream = stream
        self.status = status
        self.headers = headers
        self.body = stream.body

    def release(self) -> None:
        self._stream.conn.finish(self._stream)


class _Stream:
    __slots__ = ("body", "conn", "consumed", "ended", "head", "id", "send_window", "unacked")

    def __init__(self, conn: H2Connection, stream_id: int, body: Body) -> None:
        self.conn = conn
        self.id = stream_id
        self.body = body
        self.head: asyncio.Future[H2Response] = conn.loop.create_future()
        self.ended = False
        self.send_window: asyncio.Future[None] | None = None
        self.unacked = 0  # flow-controlled bytes received and not yet given back
        self.consumed = 0  # of those, read (or padding): given back in batches of ACK_EVERY


class H2Connection(WireProtocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        provider: str,
        idle_timeout: float,
        on_free: Callable[[H2Connection], None],
        on_close: Callable[[H2Connection], None],
    ) -> None:
        super().__init__(loop, provider, idle_timeout)
        self._on_free = on_free
        self._on_close = on_close
        self._h2 = h2.connection.H2Connection(config=_CONFIG)
        self._streams: dict[int, _Stream] = {}
        self.going_away = False  # GOAWAY received (or sent): no new streams
        self.idle_since = loop.time()

    # -- capacity, for the pool

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def capacity(self) -> int:
        if self.closed or self.going_away:
            return 0
        limit = min(self._h2.remote_settings.max_concurrent_streams, MAX_STREAMS_PER_CONNECTION)
        return limit - len(self._streams)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        conn = self._h2
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD_BYTES,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except (h2.exceptions.ProtocolError, ValueError) as exc:
            # h2 already queued a GOAWAY for a protocol error; send it and give up the connection.
            self._flush()
            name = type(exc).__name__
            self._fail_all(
                UpstreamUnavailable(f"Provider '{self._name}' broke the HTTP/2 protocol: {name}: {exc}.")
            )
            self._abort()
            return
        for event in events:
            self._dispatch(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f"{type(exc).__name__}: {exc}" if exc else "closed by the provider"
        self._fail_all(UpstreamUnavailable(f"The connection to provider '{self._name}' failed: {reason}."))
        self._on_close(self)

    def pause_writing(self) -> None:
        pass  # request bodies are bounded; h2's send windows pace them

    def resume_writing(self) -> None:
        pass

    # -- h2 events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id) if event.stream_id is not None else None
            if stream is not None and event.data is not None:
                size = event.flow_controlled_length or 0
                stream.unacked += size
                # Padding counts against the window but is never read: consumed at once.
                stream.consumed += size - len(event.data)
                # Counted first: in push mode the body hands the bytes on (and reports them
                # consumed) before feed returns.
                stream.body.feed(event.data)
            elif event.flow_controlled_length and event.stream_id:
                # A stream already reset or finished: its bytes still count on the connection.
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ResponseReceived):
            self._on_head(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream.ended = True
                stream.body.end()
                if not stream.head.done():
                    stream.head.set_exception(
                        UpstreamUnavailable(f"Provider '{self._name}' ended a stream without an answer.")
                    )
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id or 0, None)
            if stream is not None:
                code = event.error_code
                if code == ErrorCodes.REFUSED_STREAM and not stream.head.done():
                    # Never processed (RFC 9113 8.7), e.g. opened before the server's SETTINGS
                    # told its stream limit: the pool sends it again.
                    stream.head.set_exception(StaleConnection())
                    stream.head.exception()
                else:
                    name = code.name if isinstance(code, ErrorCodes) else str(code)
                    error = UpstreamUnavailable(
                        f"The stream from provider '{self._name}' was reset ({name})."
                    )
                    self._fail(stream, error)
                self._on_free(self)
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_senders(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_senders(0)
            self._on_free(self)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_head(self, event: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is None or stream.head.done():
            return
        status = 0
        headers: dict[str, str] = {}
        for raw_name, raw_value in event.headers or ():
            name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
            value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
            if name == ":status":
                status = int(value)
            elif not name.startswith(":"):
                previous = headers.get(name)
                headers[name] = value if previous is None else f"{previous}, {value}"
        stream.head.set_result(H2Response(stream, status, headers))

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.going_away = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = event.error_code
        name = code.name if isinstance(code, ErrorCodes) else str(code)
        for sid in [sid for sid in self._streams if sid > last]:
            stream = self._streams.pop(sid)
            if not stream.head.done():
                # Never processed (RFC 9113 6.8): the pool sends it again on another connection.
                stream.head.set_exception(StaleConnection())
                stream.head.exception()
            else:
                going = f"The connection to provider '{self._name}' is going away (GOAWAY {name})."
                self._fail(stream, UpstreamUnavailable(going))
        if event.error_code == ErrorCodes.NO_ERROR and self._streams:
            # A graceful GOAWAY (a server draining): the streams it will still process go on.
            # h2 treats any GOAWAY as the end of the connection and would refuse their frames,
            # so its state machine is put back to open; no new stream is opened here.
            self._h2.state_machine.state = ConnectionState.CLIENT_OPEN
        elif event.error_code != ErrorCodes.NO_ERROR:
            self._fail_all(
                UpstreamUnavailable(f"The connection to provider '{self._name}' failed (GOAWAY {name}).")
            )
        self._on_free(self)
        if not self._streams:
            self._close_transport()

    # -- the pool's side

    async def request(
        self, headers: list[tuple[bytes, bytes]], body: bytes, write_timeout: float
    ) -> H2Response:
        """Open a stream, send the request, wait for the answer's head. Cancellation or any
        failure resets the stream."""
        conn = self._h2
        try:
            stream_id = conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.going_away = True
            raise StaleConnection() from None
        body_buffer = Body(self.loop, self._idle_timeout, self._name, lambda n: self._consumed(stream_id, n))
        stream = self._streams[stream_id] = _Stream(self, stream_id, body_buffer)
        try:
            try:
                conn.send_headers(stream_id, headers, end_stream=not body)
            except h2.exceptions.TooManyStreamsError:
                raise StaleConnection() from None  # the server lowered its limit: another connection
            except h2.exceptions.H2Error as exc:
                raise UpstreamUnavailable(f"Provider '{self._name}' cannot take a stream: {exc}.") from None
            self._flush()
            if body:
                await self._send_body(stream, body, write_timeout)
            return await stream.head
        except BaseException:
            self.finish(stream)
            raise

    async def _send_body(self, stream: _Stream, body: bytes, write_timeout: float) -> None:
        conn = self._h2
        view = memoryview(body)
        deadline = self.loop.time() + write_timeout
        while view:
            if stream.head.done():
                return  # answered (or failed) before the whole body went: the head says which
            if self.closed:
                raise UpstreamUnavailable(f"The connection to provider '{self._name}' failed while sending.")
            try:
                window = min(conn.local_flow_control_window(stream.id), conn.max_outbound_frame_size)
            except h2.exceptions.H2Error as exc:
                raise UpstreamUnavailable(f"Provider '{self._name}' closed the stream: {exc}.") from None
            if window <= 0:
                waiter = stream.send_window = self.loop.create_future()
                try:
                    async with asyncio.timeout_at(deadline):
                        await waiter
                except TimeoutError:
                    raise UpstreamUnavailable(
                        f"Provider '{self._name}' did not read the request within {write_timeout:g}s."
                    ) from None
                finally:
                    stream.send_window = None
                continue
            chunk, view = view[:window], view[window:]
            conn.send_data(stream.id, chunk.tobytes(), end_stream=not view)
            self._flush()

    def _wake_senders(self, stream_id: int | None) -> None:
        for stream in self._streams.values() if not stream_id else [self._streams.get(stream_id)]:
            if stream is not None and stream.send_window is not None and not stream.send_window.done():
                stream.send_window.set_result(None)

    def _consumed(self, stream_id: int, n: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or self.closed:
            return
        stream.consumed += n
        if stream.consumed >= ACK_EVERY:
            # What the reader took is given back in batches: h2's bookkeeping costs about as
            # much as receiving a frame, and a window update per small delta gains nothing.
            self._give_back(stream, stream.consumed)
            self._flush()

    def _give_back(self, stream: _Stream, n: int) -> None:
        n = min(n, stream.unacked)
        if n > 0:
            stream.unacked -= n
            stream.consumed = max(0, stream.consumed - n)
            self._h2.acknowledge_received_data(n, stream.id)

    def finish(self, stream: _Stream) -> None:
        """The response is done with: forget the stream; reset it first when it is still open."""
        stream.body.close()
        if not self.closed:
            # Everything the stream received goes back to the connection's window (buffered and
            # unread included): a finished stream must not shrink it for the others.
            self._give_back(stream, stream.unacked)
        if self._streams.pop(stream.id, None) is None:
            self._flush()
            return
        if not self.closed:
            state = self._h2.streams.get(stream.id)
            if state is not None and not state.closed:
                try:
                    self._h2.reset_stream(stream.id, ErrorCodes.CANCEL)
                except h2.exceptions.H2Error:
                    pass
                self._flush()
        self.idle_since = self.loop.time()
        if self.going_away and not self._streams:
            self._close_transport()
        self._on_free(self)

    def _fail(self, stream: _Stream, error: ProxyError) -> None:
        if not stream.head.done():
            stream.head.set_exception(error)
            stream.head.exception()  # retrieved: a request cancelled meanwhile must not warn
        stream.body.fail(error)
        if stream.send_window is not None and not stream.send_window.done():
            stream.send_window.set_result(None)

    def _fail_all(self, error: ProxyError) -> None:
        for stream in list(self._streams.values()):
            self._fail(stream, error)
        self._streams.clear()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """Say goodbye (GOAWAY) and close, failing what is still open."""
        if self.closed:
            return
        self.going_away = True
        try:
            self._h2.close_connection()
        except h2.exceptions.H2Error:
            pass
        self._flush()
        self._fail_all(UpstreamUnavailable(f"The connection to provider '{self._name}' was closed."))
        self._close_transport()
