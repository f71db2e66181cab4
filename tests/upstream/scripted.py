"""A scripted fake upstream on raw sockets, in the test's own event loop.

Each test gives the server a handler, ``async def handler(request, reply)``, that answers one
request by hand: status, headers, body chunks, delays, a stall, a TCP reset, an HTTP/2
RST_STREAM or GOAWAY, bytes that are not HTTP/2. The server speaks HTTP/1.1 (keep-alive: the
next request on a connection is read once the handler returns, unless it closed the connection)
and HTTP/2 with prior knowledge (h2c, via the ``h2`` state machine), on the same port.

Everything the client did is recorded for the test to assert on: the connections it opened (in
accept order, numbered from 1), each request with the connection and stream it came on, when a
connection was closed by the client (EOF or reset), the RST_STREAM codes it sent, the most
streams it had open at once on one HTTP/2 connection, and HTTP/2 protocol errors it made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Headers = Iterable[tuple[str, str]]


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]  # names lower-cased, in the order received
    body: bytes
    conn: int  # the connection it came on (1 = the first accepted)
    stream_id: int | None  # HTTP/2 only
    proto: str  # "1.1" or "2"

    @property
    def route(self) -> str:
        """The path without the ``/v1`` prefix of the test's base URL."""
        return self.path.removeprefix("/v1")

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass
class Conn:
    id: int
    proto: str = "?"
    requests: int = 0
    # The client closed or reset the connection (seen as EOF or an error on read).
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    closed_by_server: bool = False
    # HTTP/2: RST_STREAM codes the client sent, by stream id.
    resets: dict[int, int] = field(default_factory=dict)
    max_open_streams: int = 0
    refused: int = 0  # HTTP/2 streams over the advertised limit, refused (RST_STREAM REFUSED_STREAM)
    protocol_error: str | None = None
    streams_after_goaway: int = 0


class StreamGone(Exception):
    """The stream (or connection) the handler writes to was reset or closed by the client."""


Handler = Callable[[Request, "Reply"], Awaitable[None]]


async def ok(request: Request, reply: Reply) -> None:
    """The default handler: 200 with body ``ok``."""
    await reply.respond(200, [("content-type", "text/plain")], [b"ok"])


class ScriptedServer:
    def __init__(
        self,
        handler: Handler = ok,
        *,
        h2_max_concurrent_streams: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.h2_max_concurrent_streams = h2_max_concurrent_streams
        self.ssl_context = ssl_context
        self.conns: list[Conn] = []
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []  # unexpected handler failures (a broken test)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._stopping = False

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self.conns)

    async def start(self, sock: socket.socket | None = None) -> ScriptedServer:
        """Listen on 127.0.0.1 (a free port), or on ``sock``, a bound socket."""
        if sock is None:
            server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl_context)
        else:
            server = await asyncio.start_server(self._accept, sock=sock, ssl=self.ssl_context)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever the server records something)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await changed.wait()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- connections ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn = Conn(id=len(self.conns) + 1)
        self.conns.append(conn)
        self._transports.add(writer.transport)
        self.notify()
        try:
            alpn = None
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                alpn = ssl_object.selected_alpn_protocol()
            try:
                head = await reader.readexactly(len(PREFACE))
            except asyncio.IncompleteReadError as exc:
                head = exc.partial
                if not head:
                    return
            if head == PREFACE:
                conn.proto = "2"
                await H2Conn(self, conn, reader, writer).run()
            elif alpn == "h2":
                conn.protocol_error = f"no HTTP/2 preface after ALPN h2: {head!r}"
            else:
                conn.proto = "1.1"
                await self._http1(conn, head, reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Stopped: end quietly (asyncio logs an error for a cancelled connection task).
        except Exception as exc:  # a bug in the test's script
            self.errors.append(exc)
        finally:
            if not conn.closed_by_server:
                conn.client_gone.set()
            self._transports.discard(writer.transport)
            if not writer.transport.is_closing():
                writer.transport.abort()
            self.notify()

    async def _http1(
        self, conn: Conn, pending: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                head = pending + await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed the connection (between requests: keep-alive ended)
            pending = b""
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
            hdr = dict(headers)
            if "chunked" in hdr.get("transfer-encoding", "").lower():
                body = bytearray()
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    body += await reader.readexactly(size + 2)
                    del body[-2:]
                    if size == 0:
                        break
                data = bytes(body)
            else:
                data = await reader.readexactly(int(hdr.get("content-length", "0")))
            conn.requests += 1
            request = Request(method, path, headers, data, conn.id, None, "1.1")
            self.requests.append(request)
            self.notify()
            reply = H1Reply(self, conn, reader, writer)
            try:
                await self.handler(request, reply)
            except StreamGone:
                return
            if reply.closed or writer.transport.is_closing():
                return


class Reply:
    """What a handler answers with; the same calls on HTTP/1.1 and HTTP/2."""

    proto: str
    sent: int  # body bytes written so far (HTTP/2: accepted by flow control and written)
    closed: bool

    async def head(self, status: int = 200, headers: Headers = ()) -> None:
        raise NotImplementedError

    async def data(self, chunk: bytes) -> None:
        """Body bytes (HTTP/1.1: written raw, the handler chose the framing in ``head``)."""
        raise NotImplementedError

    async def respond(
        self,
        status: int = 200,
        headers: Headers = (),
        chunks: Iterable[bytes] = (),
        *,
        framing: str = "length",
        delay: float = 0.0,
    ) -> None:
        """A whole answer. HTTP/1.1 ``framing``: ``length`` (content-length), ``chunked``, or
        ``close`` (no length: the body ends when the server closes the connection)."""
        raise NotImplementedError

    async def wait_client_gone(self, timeout: float = 5.0) -> None:
        """Until the client resets this stream or closes the connection (no reading of further
        requests: on HTTP/1.1 whatever the client sends is discarded)."""
        raise NotImplementedError

    def abort(self) -> None:
        """A TCP reset (SO_LINGER 0) on the connection."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection (FIN)."""
        raise NotImplementedError


class H1Reply(Reply):
    proto = "1.1"

    def __init__(
        self, server: ScriptedServer, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.sent = 0
        self.closed = False
        self._chunked = False

    async def _write(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            raise StreamGone()
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            raise StreamGone() from None

    async def head(self, status: int = 200, headers: Headers = (), reason: str = "X") -> None:
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
        await self._write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def data(self, chunk: bytes) -> None:
        await self._write(chunk)
        self.sent += len(chunk)

    async def chunk(self, chunk: bytes) -> None:
        """One chunk of a chunked body (the terminating empty chunk when ``chunk`` is empty)."""
        await self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.sent += len(chunk)

    async def respond(
        self,
        status: int = 200,
        headers: Headers = (),
        chunks: Iterable[bytes] = (),
        *,
        framing: str = "length",
        delay: float = 0.0,
    ) -> None:
        chunks = list(chunks)
        headers = list(headers)
        if framing == "length":
            headers.append(("content-length", str(sum(map(len, chunks)))))
        elif framing == "chunked":
            headers.append(("transfer-encoding", "chunked"))
        await self.head(status, headers)
        for i, piece in enumerate(chunks):
            if delay and i:
                await asyncio.sleep(delay)
            if framing == "chunked":
                if piece:
                    await self.chunk(piece)
            else:
                await self.data(piece)
        if framing == "chunked":
            await self.chunk(b"")
        elif framing == "close":
            self.close()

    async def wait_client_gone(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            try:
                while await self.reader.read(65536):
                    pass
            except (ConnectionError, OSError):
                pass
        self.conn.client_gone.set()
        self.closed = True
        self.server.notify()

    def abort(self) -> None:
        abort_with_rst(self.writer.transport)
        self.conn.closed_by_server = True
        self.closed = True

    def close(self) -> None:
        self.writer.close()
        self.conn.closed_by_server = True
        self.closed = True


def abort_with_rst(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class H2Conn:
    """One HTTP/2 connection: the ``h2`` state machine fed from the socket; each request is
    answered by the handler in its own task once its body has ended."""

    def __init__(
        self, server: ScriptedServer, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.heads: dict[int, list[tuple[str, str]]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.gone: dict[int, asyncio.Event] = {}
        self.window = asyncio.Event()
        self.goaway_last_stream: int | None = None
        self.refused: set[int] = set()
        self.dead = False
        # Body bytes the server has not acknowledged yet (a test may hold back WINDOW_UPDATEs).
        self.ack = True

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.transport.is_closing():
            self.writer.write(data)

    def stream_gone(self, sid: int) -> asyncio.Event:
        return self.gone.setdefault(sid, asyncio.Event())

    def window_changed(self) -> None:
        self.window.set()
        self.window = asyncio.Event()

    async def run(self) -> None:
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.h2_max_concurrent_streams
            },
        )
        self.h2.initiate_connection()
        # h2 would enforce the advertised limit as a connection error (GOAWAY PROTOCOL_ERROR)
        # from the start, even on streams the client opened before it could know the limit.
        # Real servers (nginx) refuse the excess streams instead, each with RST_STREAM
        # REFUSED_STREAM (safe to retry: never processed): so does this one, in on_event.
        self.h2.local_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque(
            [2**31 - 1]
        )
        self.flush()
        pending = PREFACE
        try:
            while True:
                if pending:
                    data, pending = pending, b""
                else:
                    data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self.conn.protocol_error = f"{type(exc).__name__}: {exc}"
                    self.flush()
                    break
                for event in events:
                    self.on_event(event)
                self.flush()
        finally:
            self.dead = True
            for event in self.gone.values():
                event.set()
            self.window_changed()

    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            if self.h2.open_inbound_streams > self.server.h2_max_concurrent_streams:
                self.conn.refused += 1
                self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                self.refused.add(sid)
                self.server.notify()
                return
            self.heads[sid] = [(k.lower(), v) for k, v in event.headers]
            self.bodies[sid] = bytearray()
            self.conn.max_open_streams = max(self.conn.max_open_streams, self.h2.open_inbound_streams)
            if self.goaway_last_stream is not None and sid > self.goaway_last_stream:
                self.conn.streams_after_goaway += 1
            self.server.notify()
        elif getattr(event, "stream_id", None) in self.refused:
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
            if self.ack:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            sid = event.stream_id
            heads = self.heads.pop(sid)
            pseudo = dict(h for h in heads if h[0].startswith(":"))
            headers = [h for h in heads if not h[0].startswith(":")]
            self.conn.requests += 1
            request = Request(
                pseudo.get(":method", ""),
                pseudo.get(":path", ""),
                [*headers, *pseudo.items()],
                bytes(self.bodies.pop(sid)),
                self.conn.id,
                sid,
                "2",
            )
            self.server.requests.append(request)
            self.server.notify()
            if self.goaway_last_stream is not None and sid > self.goaway_last_stream:
                return  # refused by the GOAWAY: not processed
            self.server.spawn(self.answer(request, H2Reply(self, sid)))
        elif isinstance(event, h2.events.StreamReset):
            self.conn.resets[event.stream_id] = int(event.error_code)
            self.stream_gone(event.stream_id).set()
            self.window_changed()
            self.server.notify()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_changed()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.server.notify()

    async def answer(self, request: Request, reply: H2Reply) -> None:
        try:
            await self.server.handler(request, reply)
        except (StreamGone, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.server.errors.append(exc)


class H2Reply(Reply):
    proto = "2"

    def __init__(self, h2conn: H2Conn, sid: int) -> None:
        self.c = h2conn
        self.sid = sid
        self.sent = 0
        self.closed = False

    @property
    def conn(self) -> Conn:
        return self.c.conn

    def _check(self) -> None:
        if self.c.dead or self.c.stream_gone(self.sid).is_set() or self.c.writer.transport.is_closing():
            raise StreamGone()

    async def head(self, status: int = 200, headers: Headers = ()) -> None:
        self._check()
        self.c.h2.send_headers(self.sid, [(":status", str(status)), *headers])
        self.c.flush()

    async def data(self, chunk: bytes, end: bool = False) -> None:
        """Body bytes, as flow control allows: waits for WINDOW_UPDATEs like a real server."""
        view = memoryview(chunk)
        while view:
            self._check()
            try:
                window = min(self.c.h2.local_flow_control_window(self.sid), self.c.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                raise StreamGone() from None
            if window <= 0:
                waiter = self.c.window
                await waiter.wait()
                continue
            piece = bytes(view[:window])
            view = view[window:]
            try:
                self.c.h2.send_data(self.sid, piece)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                raise StreamGone() from None
            self.c.flush()
            try:
                await self.c.writer.drain()
            except (ConnectionError, OSError):
                raise StreamGone() from None
            self.sent += len(piece)
        if end:
            await self.end()

    async def end(self) -> None:
        self._check()
        try:
            self.c.h2.end_stream(self.sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            raise StreamGone() from None
        self.c.flush()

    async def respond(
        self,
        status: int = 200,
        headers: Headers = (),
        chunks: Iterable[bytes] = (),
        *,
        framing: str = "length",
        delay: float = 0.0,
    ) -> None:
        chunks = list(chunks)
        headers = list(headers)
        if framing == "length":
            headers.append(("content-length", str(sum(map(len, chunks)))))
        await self.head(status, headers)
        for i, piece in enumerate(chunks):
            if delay and i:
                await asyncio.sleep(delay)
            if piece:
                await self.data(piece)
        await self.end()

    async def wait_client_gone(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self.c.stream_gone(self.sid).wait()

    def reset(self, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None:
        self.c.h2.reset_stream(self.sid, code)
        self.c.flush()

    def goaway(self, last_stream_id: int, code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        """A GOAWAY that leaves the connection open: streams up to ``last_stream_id`` go on
        (written by hand: h2 refuses to send anything after its own GOAWAY)."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=int(code))
        self.c.flush()
        self.c.writer.write(frame.serialize())
        self.c.goaway_last_stream = last_stream_id

    def garbage(self) -> None:
        """A SETTINGS frame of 5 bytes (settings are 6 bytes each): a FRAME_SIZE_ERROR."""
        self.c.writer.write(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)

    def abort(self) -> None:
        abort_with_rst(self.c.writer.transport)
        self.c.conn.closed_by_server = True

    def close(self) -> None:
        self.c.writer.close()
        self.c.conn.closed_by_server = True


def bounded(seconds: float) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """A test that fails (TimeoutError) instead of hanging when it takes longer than ``seconds``."""

    def wrap(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap
