"""HTTP on ``/v1/responses``: ``POST`` answering JSON or SSE, and the 426 for plain ``GET``.

An SSE answer is written event by event as the engine yields them (no buffering), with headers
that stop intermediaries from buffering and keepalive comments while the upstream is silent. A
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

from wsproxy.asgi.render import error_response, json_response
from wsproxy.core.events import Event
from wsproxy.core.request import loads_object, parse_create
from wsproxy.core.sse import DONE, KEEPALIVE, encode_event
from wsproxy.errors import InvalidRequest, PayloadTooLarge, ProxyError, UpstreamError, unknown_parameter
from wsproxy.policy.auth import bearer_token
from wsproxy.runtime import Runtime

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
    principal = runtime.keyring.authenticate(bearer_token(request.headers.get("authorization")))
    if runtime.limiter.enabled:
        runtime.limiter.check(principal or "anonymous", time.monotonic())
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
        principal = authenticate(runtime, request)
        obj = loads_object(await read_body(request, runtime.settings.limits.max_body_bytes))
        req = parse_create(obj, websocket=False)
        run = await runtime.engine.prepare(req, principal)
    except ProxyError as exc:
        runtime.metrics.inc("wsproxy_http_errors_total", status=str(exc.status))
        return error_response(exc)
    if req.background:
        from wsproxy.asgi.background import start_background

        try:
            return await start_background(runtime, run, req.stream)
        except ProxyError as exc:
            return error_response(exc)
    events = runtime.engine.events(run)
    if req.stream:
        return SSEResponse(runtime, events)
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
        return error_response(ProxyError(
            "A request with this Idempotency-Key is still in progress.", status=409,
            code="idempotency_key_in_use", type="invalid_request_error",
        ))
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
    return json_response(final.response)


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


class _Streamed(Response):
    """A response that owns its ASGI cycle: it watches ``receive`` for the client leaving."""

    def __init__(self, runtime: Runtime, events: AsyncIterator[Event]) -> None:
        self.runtime = runtime
        self.events = events
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.runtime.response_started()
        body_task = asyncio.current_task()
        assert body_task is not None

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
            if watcher.done():
                # The client left: the upstream request is closed by the generator's finally.
                self.runtime.metrics.inc("wsproxy_client_disconnects_total", transport="http")
                log.info("client disconnected mid-response")
                return
            raise
        finally:
            watcher.cancel()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            self.runtime.response_ended()

    async def stream(self, send: Send) -> None:
        raise NotImplementedError


class SSEResponse(_Streamed):
    async def stream(self, send: Send) -> None:
        limits = self.runtime.settings.limits
        try:
            first = await anext(self.events)
        except ProxyError as exc:
            await error_response(exc)({"type": "http"}, _no_receive, send)
            return
        except StopAsyncIteration:
            first = None
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        last_write = time.monotonic()

        async def keepalive() -> None:
            # Comments keep intermediaries from closing a stream while the model thinks.
            interval = limits.sse_keepalive_interval
            while True:
                await asyncio.sleep(max(0.05, interval - (time.monotonic() - last_write)))
                if time.monotonic() - last_write >= interval:
                    await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})

        pinger = asyncio.get_running_loop().create_task(keepalive())
        try:
            if first is not None:
                await send({"type": "http.response.body", "body": encode_event(first.type, first.data), "more_body": True})
                last_write = time.monotonic()
            async for event in self.events:
                await send({"type": "http.response.body", "body": encode_event(event.type, event.data), "more_body": True})
                last_write = time.monotonic()
        finally:
            pinger.cancel()
        tail = DONE if limits.sse_done_sentinel else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})


class JSONResponseFromEvents(_Streamed):
    def __init__(self, runtime: Runtime, events: AsyncIterator[Event], run: Any) -> None:
        super().__init__(runtime, events)
        self.run = run

    async def stream(self, send: Send) -> None:
        try:
            async for _ in self.events:
                pass
        except ProxyError as exc:
            await error_response(exc)({"type": "http"}, _no_receive, send)
            return
        final = self.run.final
        if final is None:
            err: ProxyError = UpstreamError("The response ended without a result.")
            await error_response(err)({"type": "http"}, _no_receive, send)
            return
        await json_response(final.response)({"type": "http"}, _no_receive, send)


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
        result = await runtime.engine.compact(obj, principal)
    except ProxyError as exc:
        return error_response(exc)
    return json_response(result)
