"""HTTP on ``/v1/responses``: ``POST`` answering JSON or SSE, and the 426 for plain ``GET``.

An SSE answer is written event by event as the engine yields them (no buffering), with headers
that stop intermediaries from buffering and keepalive comments while the upstream is silent,
including before its first event: the headers wait at most ``sse_keepalive_interval`` for it. A
listener on ``receive`` notices a client that left and cancels the stream, which closes the
upstream request. Errors before the first event are HTTP errors; after it, events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from wsproxy.asgi.access_log import request_id_of
from wsproxy.asgi.client_secrets import allow_model, grant_for, remember
from wsproxy.asgi.render import error_response, json_response
from wsproxy.asgi.tracking import SHUTDOWN_CODE, SHUTDOWN_MESSAGE, ResponseTracker
from wsproxy.core.events import Event, ResponseBuilder
from wsproxy.core.request import loads_object, parse_create
from wsproxy.core.sse import DONE, KEEPALIVE, encode_event
from wsproxy.errors import InvalidRequest, PayloadTooLarge, ProxyError, UpstreamError, unknown_parameter
from wsproxy.policy.auth import bearer_token
from wsproxy.policy.keys import Principal
from wsproxy.service.tenancy import cache_headers
from wsproxy.service.wiring import Runtime

log = logging.getLogger("wsproxy.http")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def authenticate(runtime: Runtime, request: Request) -> str | None:
    principal = identify(runtime, request)
    return None if principal is None else principal.name


def identify(runtime: Runtime, request: Request) -> Principal | None:
    # A client secret first, then the keyring; the secret is kept in the scope for allow_model.
    grant = grant_for(runtime, bearer_token(request.headers.get("authorization")))
    remember(request.scope, grant)
    principal = grant.identity
    if runtime.limiter.enabled:
        runtime.limiter.check(principal.name if principal else "anonymous", time.monotonic())
    return principal


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
    return bytes(body)


async def create_response(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        if not runtime.ready:
            raise ProxyError("The server is shutting down.", status=503, code="server_shutting_down")
        principal = identify(runtime, request)
        obj = loads_object(await read_body(request, runtime.settings.limits.max_body_bytes))
        req = parse_create(obj, websocket=False)
        allow_model(request.scope, req.model)  # a client secret's model scope
        run = await runtime.engine.prepare(
            req,
            principal.name if principal else None,
            traceparent=request.headers.get("traceparent"),
            request_id=request_id_of(request.scope),
        )
        # Tenancy hook: scopes, limits, usage, response cache (wsproxy.service.tenancy).
        run.gate = runtime.tenancy.gate_for(principal, request.scope.get("client"), request.headers)
    except ProxyError as exc:
        runtime.metrics.inc("wsproxy_http_errors_total", status=str(exc.status))
        return error_response(exc)
    if req.background:
        from wsproxy.asgi.runs import start_background

        try:
            return await start_background(runtime, run, req.stream)
        except ProxyError as exc:
            return error_response(exc)
    events = runtime.engine.events(run)
    if req.stream:
        return SSEResponse(runtime, events, run)
    key = request.headers.get("idempotency-key")
    if key:
        return await idempotent(runtime, run, events, key)
    return JSONResponseFromEvents(runtime, events, run)


async def idempotent(runtime: Runtime, run: Any, events: AsyncIterator[Event], key: str) -> Response:
    """A retried non-streaming POST with the same ``Idempotency-Key`` gets the first result.

    Keys are scoped to the principal. Within one process a retry that arrives while the first
    request still runs waits for it; across replicas the store's atomic claim decides, and a
    retry that finds the first still running elsewhere gets a 409 it may retry.
    """
    scoped = f"{run.principal or 'anonymous'}:{key}"
    inflight: dict[str, asyncio.Future[Response]] = runtime.idempotent_inflight
    pending = inflight.get(scoped)
    if pending is not None:
        await _close(events)
        return await asyncio.shield(pending)
    future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    inflight[scoped] = future  # before any await: concurrent retries in this process wait on it
    # Not tied to the client connection: a client that gave up finds the result when it retries.
    runtime.response_started()
    try:
        existing = await runtime.store.claim_idempotency_key(scoped, run.response_id, time.time())
        if existing is not None:
            await _close(events)
            result = await _replay_idempotent(runtime, existing, run.principal)
        else:
            result = await _run_idempotent(runtime, run, events)
        future.set_result(result)
        return result
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved here: waiters re-raise it themselves
        raise
    finally:
        inflight.pop(scoped, None)
        runtime.response_ended()


async def _replay_idempotent(runtime: Runtime, response_id: str, principal: str | None) -> Response:
    record = await runtime.engine.lookup(response_id, principal)
    if record is None:
        return error_response(
            ProxyError(
                "A request with this Idempotency-Key is still in progress.",
                status=409,
                code="idempotency_key_in_use",
                type="invalid_request_error",
            )
        )
    return json_response(record.response, headers={"idempotent-replayed": "true"})


async def _run_idempotent(runtime: Runtime, run: Any, events: AsyncIterator[Event]) -> Response:
    try:
        async for _ in events:
            pass
    except ProxyError as exc:
        return error_response(exc)
    final = run.final
    if final is None:
        return error_response(UpstreamError("The response ended without a result."))
    if final.id != run.response_id and run.request.store:
        # Passthrough responses carry the upstream's id: the claim points at ours.
        await runtime.store.put(replace(final, id=run.response_id))
    return json_response(final.response, headers=cache_headers(run))


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


class _Streamed(Response):
    """A response that owns its ASGI cycle: it watches ``receive`` for the client leaving.

    The task streaming it is registered with the runtime: when the shutdown grace period is over
    it is cancelled and ends the response with a terminal event (``end``). A client that leaves
    gets its upstream request closed at once and its partial usage recorded."""

    def __init__(self, runtime: Runtime, events: AsyncIterator[Event], run: Any = None) -> None:
        self.runtime = runtime
        self.events = events
        self.run = run
        self.background = None
        self.tracker = ResponseTracker(runtime, run, "http")
        self.slow = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        runtime.response_started()
        body_task = asyncio.current_task()
        assert body_task is not None
        if self.run is not None:
            runtime.streaming.add(body_task)

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    body_task.cancel()
                    return

        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
        try:
            await self.stream(send)
        except asyncio.CancelledError:
            if watcher.done() or self.slow:
                # The client left (or reads nothing): closing the events closes the upstream.
                if not self.slow:
                    runtime.metrics.inc("wsproxy_client_disconnects_total", transport="http")
                self.tracker.cancelled("slow_client" if self.slow else "client_gone")
                body_task.uncancel()  # handled: nobody is left to answer
                return
            if not (runtime.grace_over and self.run is not None):
                raise
            body_task.uncancel()  # the shutdown grace is over: end the response properly
            await self._close_events()
            await self.end(send, SHUTDOWN_CODE, SHUTDOWN_MESSAGE, 503)
        except Exception:
            log.exception("HTTP response failed unexpectedly")
            await self._close_events()
            await self.end(send, "server_error", "The server failed while streaming.", 500)
        finally:
            runtime.streaming.discard(body_task)
            watcher.cancel()
            await self._close_events()
            runtime.response_ended()

    async def _close_events(self) -> None:
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def stream(self, send: Send) -> None:
        raise NotImplementedError

    async def end(self, send: Send, code: str, message: str, status: int) -> None:
        """End what the engine could not (bounded: the client may be why)."""
        raise NotImplementedError


async def _nothing() -> AsyncIterator[Event]:
    return
    yield  # an empty async iterator


_KEEPALIVE_MESSAGE = {"type": "http.response.body", "body": KEEPALIVE, "more_body": True}


class SSEResponse(_Streamed):
    """Events as they come. A send blocked for ``slow_client_timeout`` (the client reads nothing:
    its TCP window is full) ends the stream; until then the blocked send is the backpressure that
    stops the engine reading the upstream. While nothing is sent, comments keep it alive."""

    def __init__(self, runtime: Runtime, events: AsyncIterator[Event], run: Any = None) -> None:
        super().__init__(runtime, events, run)
        self.lock = asyncio.Lock()
        self.sending_since: float | None = None
        self.last_write = time.monotonic()
        self.started = False

    async def _send(self, send: Send, message: Any) -> None:
        async with self.lock:
            self.sending_since = time.monotonic()
            try:
                await send(message)
            finally:
                self.sending_since = None
                self.last_write = time.monotonic()

    async def _event(self, send: Send, event: Event) -> None:
        body = encode_event(event.type, event.data)
        await self._send(send, {"type": "http.response.body", "body": body, "more_body": True})
        self.tracker.saw(event)

    async def _events(self, send: Send, events: list[Event]) -> None:
        """Events that arrived together, in one write (one syscall instead of one each)."""
        body = b"".join([encode_event(event.type, event.data) for event in events])
        await self._send(send, {"type": "http.response.body", "body": body, "more_body": True})
        for event in events:
            self.tracker.saw(event)

    async def _watchdog(self, send: Send, body_task: asyncio.Task[Any]) -> None:
        limits = self.runtime.settings.limits
        interval, slow = limits.sse_keepalive_interval, limits.slow_client_timeout
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
                        await self._send(send, _KEEPALIVE_MESSAGE)
                except TimeoutError:
                    break
        log.warning("ending SSE stream of a slow client (no progress for %ss)", slow)
        self.runtime.metrics.inc("wsproxy_slow_clients_total", transport="http")
        self.slow = True
        body_task.cancel()

    async def stream(self, send: Send) -> None:
        limits = self.runtime.settings.limits
        # The first event is awaited for at most one keepalive interval before the headers go
        # out: an error before it is still an HTTP error, but a provider slow to answer does not
        # leave the client (and a load balancer's idle timer) without a byte.
        pending = asyncio.ensure_future(anext(self.events))
        try:
            await asyncio.wait({pending}, timeout=limits.sse_keepalive_interval)
            first: Event | None = None
            if pending.done():
                try:
                    first = pending.result()
                except ProxyError as exc:
                    await error_response(exc)({"type": "http"}, _no_receive, send)
                    return
                except StopAsyncIteration:
                    first = None
            await self._stream_from(send, first, None if pending.done() else pending)
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.wait({pending})  # the generator is idle again before it is closed

    async def _early_failure(self, exc: ProxyError) -> list[Event]:
        """``created``, ``error``, ``response.failed`` for an error raised after the headers went
        out but before the first event (stored like any terminal event)."""
        run = self.run
        builder = ResponseBuilder(run.response_id, run.request.model, run.created_at, run.request.body)
        events = builder.fail(exc.code or "server_error", exc.message)
        await self.runtime.engine._finish(run, events[-1])
        return events

    async def _stream_from(
        self, send: Send, first: Event | None, pending: asyncio.Future[Event] | None
    ) -> None:
        limits = self.runtime.settings.limits
        self.started = True
        headers = SSE_HEADERS + [(k.encode(), v.encode()) for k, v in cache_headers(self.run).items()]
        await self._send(send, {"type": "http.response.start", "status": 200, "headers": headers})
        body_task = asyncio.current_task()
        assert body_task is not None
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(send, body_task))
        ended = False  # the response ended before its first event
        try:
            if pending is not None:  # the watchdog sends keepalives meanwhile
                try:
                    first = await pending
                except StopAsyncIteration:
                    first = None
                except ProxyError as exc:
                    if self.run is None:
                        raise
                    await self._events(send, await self._early_failure(exc))
                    ended = True
            if first is not None:
                await self._event(send, first)
            held: list[Event] = []
            async for event in _nothing() if ended else self.events:
                if event.more:
                    held.append(event)  # another is at hand: one write for both
                elif held:
                    held.append(event)
                    await self._events(send, held)
                    held = []
                else:
                    await self._event(send, event)
            if held:
                await self._events(send, held)
        finally:
            watchdog.cancel()
        tail = DONE if limits.sse_done_sentinel else b""
        await self._send(send, {"type": "http.response.body", "body": tail, "more_body": False})

    async def end(self, send: Send, code: str, message: str, status: int) -> None:
        if not self.started:
            error = ProxyError(message, status=status, code=code)
            await error_response(error)({"type": "http"}, _no_receive, send)
            return
        tail = DONE if self.runtime.settings.limits.sse_done_sentinel else b""
        ending = await self.tracker.end(code, message)  # stored before it is sent
        try:
            async with asyncio.timeout(2.0):
                for event in ending:
                    await self._event(send, event)
                await self._send(send, {"type": "http.response.body", "body": tail, "more_body": False})
        except (TimeoutError, OSError):
            pass


class JSONResponseFromEvents(_Streamed):
    def __init__(self, runtime: Runtime, events: AsyncIterator[Event], run: Any) -> None:
        super().__init__(runtime, events, run)

    async def stream(self, send: Send) -> None:
        try:
            async for event in self.events:
                self.tracker.saw(event)
        except ProxyError as exc:
            await error_response(exc)({"type": "http"}, _no_receive, send)
            return
        final = self.run.final
        if final is None:
            err: ProxyError = UpstreamError("The response ended without a result.")
            await error_response(err)({"type": "http"}, _no_receive, send)
            return
        answer = json_response(final.response, headers=cache_headers(self.run))
        await answer({"type": "http"}, _no_receive, send)

    async def end(self, send: Send, code: str, message: str, status: int) -> None:
        await self.tracker.end(code, message)
        final = self.run.final
        answer = (
            json_response(final.response)
            if final is not None
            else error_response(ProxyError(message, status=status, code=code))
        )
        try:
            async with asyncio.timeout(2.0):
                await answer({"type": "http"}, _no_receive, send)
        except (TimeoutError, OSError):
            pass


async def _no_receive() -> Any:
    raise RuntimeError("receive is owned by the disconnect watcher")


async def responses_get(request: Request) -> Response:
    """``GET /v1/responses`` that is not a WebSocket upgrade: 426 at once, so clients that
    probe WebSocket mode fall back to HTTP without waiting."""
    err = InvalidRequest(
        "This endpoint speaks WebSocket mode on GET; send an Upgrade: websocket request, "
        "or POST /v1/responses.",
        status=426,
        code="upgrade_required",
    )
    response = error_response(err)
    response.headers["upgrade"] = "websocket"
    return response


async def compact(request: Request) -> Response:
    """``POST /v1/responses/compact``: a shorter input window that continues the conversation."""
    runtime = runtime_of(request)
    try:
        principal = authenticate(runtime, request)
        obj = loads_object(await read_body(request, runtime.settings.limits.max_body_bytes))
        allowed = {"model", "input", "instructions", "previous_response_id", "prompt_cache_key"}
        unknown = next((k for k in obj if k not in allowed), None)
        if unknown is not None:
            raise unknown_parameter(unknown)
        if isinstance(obj.get("model"), str):
            allow_model(request.scope, obj["model"])  # a client secret's model scope
        result = await runtime.engine.compact(obj, principal)
    except ProxyError as exc:
        return error_response(exc)
    return json_response(result)
