"""WebSocket mode on ``/v1/responses``: the asyncio half of a session.

The rules (lanes, queueing, connection-local cache) live in :class:`wsproxy.core.session.
SessionRules`; this module only moves data:

- admission (shutdown, key, rate limit) happened before the upgrade (``wsproxy.asgi.admission``:
  a bad key is a 401 the client sees); the principal is in the scope;
- one reader loop parses ``response.create`` frames and hands them to the rules; each started
  response runs in its own task, owned by the session and cancelled when it ends, through a
  :class:`~wsproxy.asgi.sink.ResponseSink` with the WebSocket formatter
  (``wsproxy.asgi.formats.WSFormat``): lifecycle, terminal guarantee and accounting are the sink's;
- a response task writes its frame itself while nothing is ahead of it: synchronously through
  the server's frame writer (the ASGI extension ``wsproxy.frames``, see
  ``wsproxy.server.websocket_protocol``) when there is one, else with the plain ASGI send (with
  ``wsproxy.more`` when another frame follows at once); either returns at once unless the
  client's TCP window is full. Behind a blocked write, frames queue for one
  writer task (the bounded queue and the task are made the first time they are needed): a slow
  client blocks the write or fills the queue, which blocks the response tasks, and they stop
  reading their upstream (backpressure). A client that takes nothing for
  ``slow_client_timeout`` is closed with 1013 (a blocked direct write is watched by one timer per
  session, the queue by a timeout on the blocked put);
- the session waits on one future, woken by whichever comes first: the reader or writer ending,
  a stuck client, the age limit (a timer), or shutdown (one watch task per runtime);
- at the connection age limit the client gets ``websocket_connection_limit_reached`` and a 1000
  close; a session opened with a client secret gets ``client_secret_expired`` and a 1008 close
  when the secret expires; on shutdown, queued responses get a 503 ``server_shutting_down``
  error, running ones get the grace period; those still running then end with ``response.failed``
  (``server_shutting_down``, stored first), and the socket closes with 1001;
- a client that leaves mid-response gets its upstream request closed at once (the response's
  events iterator is closed) and its partial usage recorded (the sink);
- toward OpenAI-native providers each lane's responses go over an upstream WebSocket of its own
  (``wsproxy.service.ws_upstream``), closed with the session.

Close codes: 1000 normal/age limit, 1001 shutdown, 1008 policy, 1009 too big (uvicorn), 1011
internal error, 1013 slow client.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from wsproxy.asgi.access_log import request_id_of
from wsproxy.asgi.admission import principal_of, runtime_of
from wsproxy.asgi.client_secrets import allow_model
from wsproxy.asgi.formats import WSFormat
from wsproxy.asgi.render import ws_error
from wsproxy.asgi.sink import SHUTDOWN_CODE, ResponseSink, SlowClient
from wsproxy.core.request import CreateRequest, parse_create
from wsproxy.core.session import SessionRules
from wsproxy.errors import InvalidRequest, ProxyError, Unauthorized
from wsproxy.policy.client_secrets import ClientSecret
from wsproxy.policy.keys import Principal
from wsproxy.service.wiring import Runtime

if TYPE_CHECKING:
    from wsproxy.service.engine import ResponseRun

log = logging.getLogger("wsproxy.ws")

_CLOSE = object()  # writer sentinel


class _ShutdownWatch:
    """One task per runtime waits for ``runtime.closing`` and wakes every open session, so that an
    idle session keeps no task of its own for it."""

    __slots__ = ("sessions", "task")

    def __init__(self) -> None:
        self.sessions: set[WSSession] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, session: WSSession, runtime: Runtime) -> None:
        if runtime.closing.is_set():
            session.wakeup("closing")
            return
        self.sessions.add(session)
        if self.task is None or self.task.done():
            self.task = runtime.spawn(self._watch(runtime.closing), "ws-shutdown")

    async def _watch(self, closing: asyncio.Event) -> None:
        await closing.wait()
        for session in list(self.sessions):
            session.wakeup("closing")


# By runtime (its ``closing`` event, which the watch does not hold): an entry goes with its runtime.
_WATCHES: weakref.WeakKeyDictionary[asyncio.Event, _ShutdownWatch] = weakref.WeakKeyDictionary()


def _shutdown_watch(runtime: Runtime) -> _ShutdownWatch:
    watch = _WATCHES.get(runtime.closing)
    if watch is None:
        watch = _WATCHES[runtime.closing] = _ShutdownWatch()
    return watch


class WebSocketMode:
    """The ASGI app of ``WebSocketRoute("/v1/responses")``: a plain ASGI callable, so the session
    holds the raw ASGI ``send`` (Starlette's ``WebSocket.send`` checks the state per frame)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = runtime_of(scope)
        caller = principal_of(scope)
        websocket = WebSocket(scope, receive, send)
        await websocket.accept(subprotocol=caller.subprotocol)
        frames = scope.get("extensions", {}).get("wsproxy.frames")
        session = WSSession(websocket, runtime, caller.identity, caller.secret, send=send, frames=frames)
        runtime.metrics.gauge("wsproxy_ws_sessions", 1)
        runtime.session_opened()
        try:
            await session.run()
        finally:
            runtime.session_closed()
            runtime.metrics.gauge("wsproxy_ws_sessions", -1)


class WSSession:
    """One WebSocket connection: its reader, its responses (lanes), its outgoing frames.

    ``send`` is the raw ASGI send of the connection; ``frames`` the server's synchronous frame
    writer (``scope["extensions"]["wsproxy.frames"]``), if it offers one."""

    def __init__(
        self,
        websocket: WebSocket,
        runtime: Runtime,
        principal: Principal | None,
        secret: ClientSecret | None = None,
        *,
        send: Send,
        frames: Any = None,
    ) -> None:
        limits = runtime.settings.limits
        self.ws = websocket
        self.raw_send = send
        self.frames = frames
        self.runtime = runtime
        # The caller's principal (scopes, limits) and its owner id.
        self.identity = principal
        self.principal = principal.name if principal else None
        # Opened with a client secret: its model scope, and its expiry closes the session.
        self.secret = secret
        # For every response of the session: the handshake's request id and trace context.
        self.request_id = request_id_of(websocket.scope)
        self.traceparent = websocket.headers.get("traceparent")
        # Upstream WebSockets (wsproxy.service.ws_upstream): one socket per lane and provider.
        upstreams = getattr(runtime, "ws_upstream", None)
        self.upstreams = upstreams.session() if upstreams is not None else None
        self.limits = limits
        self.rules = SessionRules(
            max_inflight=limits.ws_max_inflight,
            max_lanes=limits.ws_max_lanes,
            max_queued=limits.ws_max_queued,
        )
        # The outgoing queue and its writer task, made with the first frame to send.
        self.out: asyncio.Queue[Any] | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.close_code = 1000
        self.closed = False
        # A send found the client gone (set before the session itself ends).
        self.peer_gone = False
        # Shutting down: queued responses are refused, running ones may finish.
        self.draining = False
        self.peer_closed = False
        # run() waits on this for the first reason to end or change the session: "reader" (the
        # client left), "writer" (sending failed), "closing" (shutdown), "abort" (a stuck client)
        # or "age" (the connection age limit).
        self._wake: asyncio.Future[str] | None = None
        # While a shutdown waits for the running responses to end.
        self._idle: asyncio.Future[None] | None = None
        # Frames being written (by a response task or the writer: a frame is written directly
        # only when none is, and nothing is queued); the loop time the direct one started, and
        # the slow-client timer that watches it.
        self._busy = 0
        self._since = 0.0
        self._stuck_timer: asyncio.TimerHandle | None = None

    def wakeup(self, reason: str) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(reason)

    # -- sending ----------------------------------------------------------------------------

    def _outgoing(self) -> asyncio.Queue[Any]:
        out = self.out
        if out is None:
            out = self.out = asyncio.Queue(maxsize=self.limits.event_queue_size)
            writer = asyncio.get_running_loop().create_task(self.writer(out), name="ws-writer")
            writer.add_done_callback(self._writer_done)
            self.writer_task = writer
        return out

    def _writer_done(self, _: asyncio.Task[None]) -> None:
        self.wakeup("writer")

    def write_nowait(self, frames: Sequence[tuple[bytes, bool]]) -> int:
        """Write frames now, synchronously, while nothing is ahead of them; how many were
        written (a prefix: the rest goes through :meth:`send`, in order)."""
        writer = self.frames
        if writer is None or self._busy or self.closed:
            return 0
        out = self.out
        if out is not None and not out.empty():
            return 0
        write = writer.write_text
        written = 0
        for data, more in frames:
            if not write(data, more):
                break
            written += 1
        return written

    async def send(self, text: str | bytes, more: bool = False) -> None:
        if self.closed:
            raise asyncio.CancelledError
        out = self.out
        if not self._busy and (out is None or out.empty()):
            # Nothing is ahead of this frame: it is written now, from this task, instead of
            # waking the writer task for it (one event-loop hop less per delta).
            frames = self.frames
            if frames is not None and frames.write_text(text, more):
                return
            await self._write_now(text, more)
            return
        out = self._outgoing()
        try:
            out.put_nowait(text)
        except asyncio.QueueFull:
            try:
                async with asyncio.timeout(self.limits.slow_client_timeout):
                    await out.put(text)
            except TimeoutError:
                raise SlowClient from None

    async def _write_now(self, text: str | bytes, more: bool = False) -> None:
        """A send returns at once unless the client's TCP window is full; then it waits (the
        backpressure that stops this response reading its upstream), watched by one lazily
        re-armed timer per session instead of a timeout per frame: stuck for
        ``slow_client_timeout``, the session closes with 1013."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._stuck_timer is None:
            self._stuck_timer = loop.call_at(now + self.limits.slow_client_timeout, self._check_stuck)
        self._since = now
        self._busy += 1
        message: dict[str, Any] = {
            "type": "websocket.send",
            "text": text.decode() if isinstance(text, bytes) else text,
        }
        if more:
            # Another frame follows at once (Event.more): wsproxy's protocol class writes both
            # with one syscall; any other server ignores the key.
            message["wsproxy.more"] = True
        try:
            await self.raw_send(message)
        except OSError:
            # The client is gone: the session ends (as when the writer task finds it gone).
            self.ws.application_state = WebSocketState.DISCONNECTED
            self.peer_gone = True
            self.wakeup("writer")
            raise asyncio.CancelledError from None
        finally:
            self._busy -= 1
            self._since = 0.0

    def _check_stuck(self) -> None:
        self._stuck_timer = None
        since = self._since
        if not since or self.closed:
            return  # not sending now: the next send arms the timer again
        due = since + self.limits.slow_client_timeout
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            self._stuck_timer = loop.call_at(due, self._check_stuck)
        else:
            self.slow()

    async def writer(self, out: asyncio.Queue[Any]) -> None:
        # Every frame here is a websocket.send on an accepted socket that the session closes only
        # after the writer has stopped: Starlette's WebSocket.send would check that state per
        # frame (~0.8 us). The raw ASGI send is called instead, and its rule for a send that
        # fails (the client is gone) is kept here, once.
        send = self.raw_send
        try:
            while True:
                item = await out.get()
                if item is _CLOSE:
                    return
                if isinstance(item, bytes):
                    item = item.decode()
                # Counted as sending: no frame is written directly until this one is out.
                self._busy += 1
                try:
                    await send({"type": "websocket.send", "text": item})
                finally:
                    self._busy -= 1
        except OSError:
            self.ws.application_state = WebSocketState.DISCONNECTED
            self.peer_gone = True
            raise WebSocketDisconnect(code=1006) from None

    # -- the session ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        reader = loop.create_task(self.reader(), name="ws-reader")
        reader.add_done_callback(self._reader_done)
        age = loop.call_at(loop.time() + self.limits.ws_connection_max_age, self.wakeup, "age")
        expiry = None
        if self.secret is not None:
            left = max(0.0, self.secret.expires_at - time.time())
            expiry = loop.call_at(loop.time() + left, self.wakeup, "expired")
        watch = _shutdown_watch(self.runtime)
        watch.add(self, self.runtime)
        try:
            reason = await wake
            if reason == "age":
                await self._age_limit()
            elif reason == "expired":
                await self._secret_expired()
            elif reason == "closing":
                await self._shutdown(reader)
            elif reason == "writer":
                writer = self.writer_task
                if writer is not None and not writer.cancelled() and writer.exception() is not None:
                    log.info("websocket writer stopped: %r", writer.exception())
        finally:
            self.closed = True
            age.cancel()
            if expiry is not None:
                expiry.cancel()
            if self._stuck_timer is not None:
                self._stuck_timer.cancel()
            watch.sessions.discard(self)
            for task in (reader, *self.tasks):
                task.cancel()
            await asyncio.gather(reader, *self.tasks, return_exceptions=True)
            if self.upstreams is not None:
                await self.upstreams.aclose()  # upstream WebSockets close with the session
            writer = self.writer_task
            if writer is not None:
                await self._stop_writer(writer)
            if self.ws.application_state != WebSocketState.DISCONNECTED and not self.peer_closed:
                # The close frame queues behind what the client has not read yet: a client that
                # reads nothing more within slow_client_timeout does not hold the session.
                try:
                    async with asyncio.timeout(self.limits.slow_client_timeout):
                        await self.ws.close(self.close_code)
                except (RuntimeError, OSError, WebSocketDisconnect, TimeoutError):
                    pass  # the peer went away while we were closing

    def _reader_done(self, _: asyncio.Task[None]) -> None:
        self.wakeup("reader")

    async def _stop_writer(self, writer: asyncio.Task[None]) -> None:
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            log.debug("websocket writer stopped: %r", writer.exception())  # retrieved: client gone
        if self.close_code == 1013:
            writer.cancel()  # the client reads nothing: do not wait for it
        if not writer.done():
            # Let queued frames go out, bounded, then close.
            assert self.out is not None
            try:
                self.out.put_nowait(_CLOSE)
            except asyncio.QueueFull:
                writer.cancel()
            try:
                async with asyncio.timeout(2.0):
                    await writer
            except (TimeoutError, asyncio.CancelledError, Exception):
                writer.cancel()

    async def _age_limit(self) -> None:
        err = InvalidRequest(
            "Responses websocket connection limit reached "
            f"({self.limits.ws_connection_max_age / 60:g} minutes). "
            "Create a new websocket connection to continue.",
            code="websocket_connection_limit_reached",
        )
        await self._send_direct(ws_error(err, request_id=self.request_id))
        self.close_code = 1000

    async def _secret_expired(self) -> None:
        """The client secret the session was opened with has expired: an ``error`` event, then a
        1008 close (policy). Responses still running end with the session."""
        err = Unauthorized("The client secret has expired.", code="client_secret_expired")
        await self._send_direct(ws_error(err, request_id=self.request_id))
        self.close_code = 1008

    async def _shutdown(self, reader: asyncio.Task[None]) -> None:
        """Stop taking new responses; refuse the queued ones; let running ones finish. When the
        grace period is over the runtime cancels them and they end with a terminal event
        (``respond``); this wait is only a safety bound. Then a 1001 close."""
        reader.cancel()
        self.draining = True
        error = ProxyError("The server is shutting down.", status=503, code=SHUTDOWN_CODE)
        for lane, _ in self.rules.drop_queued():
            await self._send_direct(ws_error(error, lane, request_id=self.request_id))
        if not self.rules.idle:
            self._idle = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.limits.shutdown_grace + 10.0):
                    await self._idle
            except TimeoutError:
                pass
        self.close_code = 1001

    async def _send_direct(self, data: bytes) -> None:
        if self.closed and self.out is None:
            return  # the session has ended: no writer will start for it
        out = self._outgoing()
        try:
            async with asyncio.timeout(2.0):
                await out.put(data)
        except TimeoutError:
            pass

    async def reader(self) -> None:
        try:
            await self._read()
        except SlowClient:
            # Frames keep coming but the client reads none of our answers.
            self.slow()

    def slow(self) -> None:
        log.warning("closing slow websocket client (no progress for %ss)", self.limits.slow_client_timeout)
        self.close_code = 1013
        self.runtime.metrics.inc("wsproxy_slow_clients_total", transport="ws")
        self.wakeup("abort")

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.close_code = message.get("code", 1000)
                self.peer_closed = True
                return
            text = message.get("text")
            if text is None:
                await self.send(
                    ws_error(
                        InvalidRequest(
                            "Binary frames are not supported; send JSON text frames.", code="invalid_frame"
                        ),
                        request_id=self.request_id,
                    )
                )
                continue
            await self.handle(text)

    async def handle(self, text: str) -> None:
        stream_id: str | None = None
        try:
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"Invalid JSON in message: {exc}.", code="invalid_json") from None
            if not isinstance(obj, dict):
                raise InvalidRequest("Messages must be JSON objects.", code="invalid_json")
            sid = obj.get("stream_id")
            stream_id = sid if isinstance(sid, str) else None
            kind = obj.get("type")
            if kind != "response.create":
                raise InvalidRequest(
                    f"Unsupported event type {kind!r}; this server accepts 'response.create'.",
                    param="type",
                    code="unknown_event_type",
                )
            request = parse_create(obj, websocket=True)
            if self.secret is not None:
                allow_model(None, request.model, self.secret)  # a client secret's model scope
            rejected = self.rules.submit(request)
            if rejected is not None:
                raise rejected
        except ProxyError as exc:
            await self.send(ws_error(exc, stream_id, request_id=self.request_id))
            return
        self._start_ready()

    def _start_ready(self) -> None:
        if self.draining:
            return
        for lane, request in self.rules.next_ready():
            task = asyncio.get_running_loop().create_task(self.respond(lane, request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def respond(self, lane: str | None, request: CreateRequest) -> None:
        """One response on ``lane``, run by a sink (lifecycle, shutdown ending, accounting)."""
        runtime = self.runtime
        sink = ResponseSink(runtime, WSFormat(self, lane))

        async def prepare() -> ResponseRun:
            run = await runtime.engine.prepare(
                request,
                self.principal,
                cache=lambda rid: self.rules.lookup(rid, lane),
                traceparent=self.traceparent,
                request_id=self.request_id,
            )
            # Tenancy: scopes, limits (a 429 is an error event), usage, the response cache.
            run.gate = runtime.tenancy.gate_for(self.identity, self.ws.scope.get("client"), self.ws.headers)
            return run

        upstream = self.upstreams.lane(lane) if self.upstreams is not None else None
        try:
            await sink.serve(prepare=prepare, upstream=upstream)
        finally:
            run = sink.run
            final = run.final if run is not None else None
            self.rules.finished(lane, request, final, run is not None and run.status == "completed")
            if not self.closed:
                self._start_ready()
            if self.rules.idle and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)


__all__ = ["WSSession", "WebSocketMode"]
