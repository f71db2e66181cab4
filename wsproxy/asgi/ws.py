"""WebSocket mode on ``/v1/responses``: the asyncio half of a session.

The rules (lanes, queueing, connection-local cache) live in :class:`wsproxy.core.session.
SessionRules`; this module only moves data:

- auth happens at the handshake; a bad key is refused *before* the upgrade with a 401 and
  OpenAI's JSON error (clients see the status code);
- one reader loop parses ``response.create`` frames and hands them to the rules; each started
  response runs in its own task, owned by the session and cancelled when it ends;
- one writer task sends frames from a bounded queue: a slow client fills the queue, the queue
  blocks the response tasks, they stop reading their upstream (backpressure). A client that takes
  nothing for ``slow_client_timeout`` is closed with 1013;
- at the connection age limit the client gets ``websocket_connection_limit_reached`` and a 1000
  close; on shutdown, queued responses get a 503 ``server_shutting_down`` error, running ones get
  the grace period; those still running then end with ``response.failed``
  (``server_shutting_down``, stored first), and the socket closes with 1001;
- a client that leaves mid-response gets its upstream request closed at once (the response's
  events iterator is closed) and its partial usage recorded (``wsproxy.asgi.tracking``).

Close codes: 1000 normal/age limit, 1001 shutdown, 1008 policy, 1009 too big (uvicorn), 1011
internal error, 1013 slow client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from wsproxy.asgi.render import error_response, ws_error, ws_event_text
from wsproxy.asgi.tracking import SHUTDOWN_CODE, SHUTDOWN_MESSAGE, ResponseTracker
from wsproxy.core.request import CreateRequest, parse_create
from wsproxy.core.session import SessionRules
from wsproxy.errors import InvalidRequest, ProxyError
from wsproxy.policy.auth import bearer_token, key_from_subprotocols
from wsproxy.runtime import Runtime

log = logging.getLogger("wsproxy.ws")

_CLOSE = object()  # writer sentinel


class _SlowClient(Exception):
    pass


async def websocket_endpoint(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    key = bearer_token(websocket.headers.get("authorization"))
    offered = websocket.scope.get("subprotocols") or []
    proto_key, echo = key_from_subprotocols(offered)
    try:
        if not runtime.ready:
            raise ProxyError("The server is shutting down.", status=503, code="server_shutting_down")
        principal = runtime.keyring.authenticate(key or proto_key)
        if runtime.limiter.enabled:
            runtime.limiter.check(principal or "anonymous", time.monotonic())
    except ProxyError as exc:
        runtime.metrics.inc("wsproxy_ws_rejected_total", status=str(exc.status))
        await websocket.send_denial_response(error_response(exc))
        return
    await websocket.accept(subprotocol=echo)
    session = WSSession(websocket, runtime, principal)
    runtime.metrics.gauge("wsproxy_ws_connections", 1)
    runtime.session_opened()
    try:
        await session.run()
    finally:
        runtime.session_closed()
        runtime.metrics.gauge("wsproxy_ws_connections", -1)


class WSSession:
    def __init__(self, websocket: WebSocket, runtime: Runtime, principal: str | None) -> None:
        limits = runtime.settings.limits
        self.ws = websocket
        self.runtime = runtime
        self.principal = principal
        self.limits = limits
        self.rules = SessionRules(
            max_inflight=limits.ws_max_inflight,
            max_lanes=limits.ws_max_lanes,
            max_queued=limits.ws_max_queued,
        )
        self.out: asyncio.Queue[Any] = asyncio.Queue(maxsize=limits.event_queue_size)
        self.tasks: set[asyncio.Task[None]] = set()
        self.close_code = 1000
        self.closed = False
        # Shutting down: queued responses are refused, running ones may finish.
        self.draining = False
        self.peer_closed = False
        self.idle = asyncio.Event()
        self.idle.set()
        # Set when the session must end now (a stuck client).
        self.abort = asyncio.Event()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, text: str | bytes) -> None:
        if self.closed:
            raise asyncio.CancelledError
        try:
            self.out.put_nowait(text)
        except asyncio.QueueFull:
            try:
                async with asyncio.timeout(self.limits.slow_client_timeout):
                    await self.out.put(text)
            except TimeoutError:
                raise _SlowClient from None

    async def writer(self) -> None:
        send = self.ws.send
        while True:
            item = await self.out.get()
            if item is _CLOSE:
                return
            if isinstance(item, bytes):
                item = item.decode()
            await send({"type": "websocket.send", "text": item})

    # -- the session ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self.writer(), name="ws-writer")
        reader = loop.create_task(self.reader(), name="ws-reader")
        closing = loop.create_task(self.runtime.closing.wait(), name="ws-shutdown")
        abort = loop.create_task(self.abort.wait(), name="ws-abort")
        deadline = loop.time() + self.limits.ws_connection_max_age
        try:
            done, _ = await asyncio.wait(
                {writer, reader, closing, abort},
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                await self._age_limit()
            elif closing in done:
                await self._shutdown(reader)
            elif writer in done and writer.exception() is not None:
                log.info("websocket writer stopped: %r", writer.exception())
        finally:
            self.closed = True
            for task in (reader, closing, abort, *self.tasks):
                task.cancel()
            await asyncio.gather(reader, closing, abort, *self.tasks, return_exceptions=True)
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                log.debug("websocket writer stopped: %r", writer.exception())  # retrieved: client gone
            if self.close_code == 1013:
                writer.cancel()  # the client reads nothing: do not wait for it
            if not writer.done():
                # Let queued frames go out, bounded, then close.
                try:
                    self.out.put_nowait(_CLOSE)
                except asyncio.QueueFull:
                    writer.cancel()
                try:
                    async with asyncio.timeout(2.0):
                        await writer
                except (TimeoutError, asyncio.CancelledError, Exception):
                    writer.cancel()
            if self.ws.application_state != WebSocketState.DISCONNECTED and not self.peer_closed:
                # The close frame queues behind what the client has not read yet: a client that
                # reads nothing more within slow_client_timeout does not hold the session.
                try:
                    async with asyncio.timeout(self.limits.slow_client_timeout):
                        await self.ws.close(self.close_code)
                except (RuntimeError, OSError, WebSocketDisconnect, TimeoutError):
                    pass  # the peer went away while we were closing

    async def _age_limit(self) -> None:
        err = InvalidRequest(
            "Responses websocket connection limit reached "
            f"({self.limits.ws_connection_max_age / 60:g} minutes). "
            "Create a new websocket connection to continue.",
            code="websocket_connection_limit_reached",
        )
        await self._send_direct(ws_error(err))
        self.close_code = 1000

    async def _shutdown(self, reader: asyncio.Task[None]) -> None:
        """Stop taking new responses; refuse the queued ones; let running ones finish. When the
        grace period is over the runtime cancels them and they end with a terminal event
        (``respond``); this wait is only a safety bound. Then a 1001 close."""
        reader.cancel()
        self.draining = True
        error = ProxyError("The server is shutting down.", status=503, code=SHUTDOWN_CODE)
        for lane, _ in self.rules.drop_queued():
            await self._send_direct(ws_error(error, lane))
        if self.rules.idle:
            self.idle.set()
        try:
            async with asyncio.timeout(self.limits.shutdown_grace + 10.0):
                await self.idle.wait()
        except TimeoutError:
            pass
        self.close_code = 1001

    async def _send_direct(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(2.0):
                await self.out.put(data)
        except TimeoutError:
            pass

    async def reader(self) -> None:
        try:
            await self._read()
        except _SlowClient:
            # Frames keep coming but the client reads none of our answers.
            self._slow()

    def _slow(self) -> None:
        log.warning("closing slow websocket client (no progress for %ss)", self.limits.slow_client_timeout)
        self.close_code = 1013
        self.runtime.metrics.inc("wsproxy_slow_clients_total", transport="ws")
        self.abort.set()

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
                        )
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
            rejected = self.rules.submit(request)
            if rejected is not None:
                raise rejected
        except ProxyError as exc:
            await self.send(ws_error(exc, stream_id))
            return
        self._start_ready()

    def _start_ready(self) -> None:
        if self.draining:
            return
        for lane, request in self.rules.next_ready():
            self.idle.clear()
            task = asyncio.get_running_loop().create_task(self.respond(lane, request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def respond(self, lane: str | None, request: CreateRequest) -> None:
        runtime = self.runtime
        run = None
        ok = False
        tracker: ResponseTracker | None = None
        events: Any = None
        task = asyncio.current_task()
        assert task is not None
        runtime.response_started()
        runtime.streaming.add(task)
        try:
            run = await runtime.engine.prepare(
                request, self.principal, cache=lambda rid: self.rules.lookup(rid, lane)
            )
            tracker = ResponseTracker(runtime, run, "ws")
            events = runtime.engine.events(run)
            async for event in events:
                await self.send(ws_event_text(event, lane))
                tracker.saw(event)
            ok = run.status == "completed"
        except ProxyError as exc:
            await self.send(ws_error(exc, lane))
        except _SlowClient:
            if tracker is not None:
                tracker.cancelled("slow_client")
            self._slow()
        except asyncio.CancelledError:
            if not runtime.grace_over or self.closed:
                if tracker is not None:
                    tracker.cancelled("client_gone")  # the session ended under it
                raise
            task.uncancel()  # the shutdown grace is over: end it properly
            await self._end(events, tracker, lane, SHUTDOWN_CODE, SHUTDOWN_MESSAGE, 503)
        except Exception:
            log.exception("websocket response failed unexpectedly")
            await self._end(events, tracker, lane, "server_error", "The server failed while streaming.", 500)
        finally:
            runtime.streaming.discard(task)
            if events is not None:
                await events.aclose()  # closes the upstream request (client gone, slow, ended)
            runtime.response_ended()
            self.rules.finished(lane, request, run.final if run is not None else None, ok)
            if not self.closed:
                self._start_ready()
            if self.rules.idle:
                self.idle.set()

    async def _end(
        self,
        events: Any,
        tracker: ResponseTracker | None,
        lane: str | None,
        code: str,
        message: str,
        status: int,
    ) -> None:
        """End a response the engine could not: a terminal event if the client saw it start,
        else an ``error`` event. Bounded: the client may be the reason it could not end."""
        if events is not None:
            await events.aclose()
        ending = await tracker.end(code, message) if tracker is not None else []
        if not ending and (tracker is None or not tracker.terminal):
            await self._send_direct(ws_error(ProxyError(message, status=status, code=code), lane))
        for event in ending:
            await self._send_direct(ws_event_text(event, lane).encode())


__all__ = ["WebSocketDisconnect", "websocket_endpoint"]
