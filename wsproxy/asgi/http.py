"""HTTP on ``/v1/responses``: ``POST`` answering JSON or SSE, compaction, and the 426 for a
plain ``GET``.

The request was admitted already (``wsproxy.asgi.admission``: shutdown, key, rate limit); a
``ProxyError`` raised here is rendered by the app's one exception handler. The answer is run by
the response sink with the SSE or JSON formatter (``wsproxy.asgi.formats``); background runs
are ``wsproxy.asgi.stored``'s.
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

from wsproxy.asgi.access_log import request_id_of
from wsproxy.asgi.admission import identity_of, owner_of, runtime_of
from wsproxy.asgi.client_secrets import allow_model
from wsproxy.asgi.formats import json_from_events, sse_response
from wsproxy.asgi.render import json_response, read_body
from wsproxy.asgi.stored import start_background
from wsproxy.core.events import Event
from wsproxy.core.request import loads_object, parse_create
from wsproxy.errors import InvalidRequest, ProxyError, UpstreamError, unknown_parameter
from wsproxy.service.tenancy import cache_headers
from wsproxy.service.wiring import Runtime

log = logging.getLogger("wsproxy.http")


async def create_response(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        obj = loads_object(await read_body(request, runtime.settings.limits.max_body_bytes))
        req = parse_create(obj, websocket=False)
        allow_model(request.scope, req.model)  # a client secret's model scope
        principal = identity_of(request)
        run = await runtime.engine.prepare(
            req,
            owner_of(request),
            traceparent=request.headers.get("traceparent"),
            request_id=request_id_of(request.scope),
        )
        # Tenancy: scopes, limits, usage, the response cache (wsproxy.service.tenancy).
        run.gate = runtime.tenancy.gate_for(principal, request.scope.get("client"), request.headers)
    except ProxyError as exc:
        runtime.metrics.inc("wsproxy_http_errors_total", status=str(exc.status))
        raise
    if req.background:
        return await start_background(runtime, run, req.stream)
    events = runtime.engine.events(run)
    if req.stream:
        return sse_response(runtime, events, run)
    key = request.headers.get("idempotency-key")
    if key:
        return await idempotent(runtime, run, events, key)
    return json_from_events(runtime, events, run)


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
        raise ProxyError(
            "A request with this Idempotency-Key is still in progress.",
            status=409,
            code="idempotency_key_in_use",
            type="invalid_request_error",
        )
    return json_response(record.response, headers={"idempotent-replayed": "true"})


async def _run_idempotent(runtime: Runtime, run: Any, events: AsyncIterator[Event]) -> Response:
    """Runs to the end (a ``ProxyError`` is the answer of this request and of its retries)."""
    async for _ in events:
        pass
    final = run.final
    if final is None:
        raise UpstreamError("The response ended without a result.")
    if final.id != run.response_id and run.request.store:
        # Passthrough responses carry the upstream's id: the claim points at ours.
        await runtime.store.put(replace(final, id=run.response_id))
    return json_response(final.response, headers=cache_headers(run))


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def responses_get(request: Request) -> Response:
    """``GET /v1/responses`` that is not a WebSocket upgrade: 426 at once, so clients that
    probe WebSocket mode fall back to HTTP without waiting."""
    raise InvalidRequest(
        "This endpoint speaks WebSocket mode on GET; send an Upgrade: websocket request, "
        "or POST /v1/responses.",
        status=426,
        code="upgrade_required",
        headers={"upgrade": "websocket"},
    )


async def compact(request: Request) -> Response:
    """``POST /v1/responses/compact``: a shorter input window that continues the conversation."""
    runtime = runtime_of(request)
    obj = loads_object(await read_body(request, runtime.settings.limits.max_body_bytes))
    allowed = {"model", "input", "instructions", "previous_response_id", "prompt_cache_key"}
    unknown = next((k for k in obj if k not in allowed), None)
    if unknown is not None:
        raise unknown_parameter(unknown)
    if isinstance(obj.get("model"), str):
        allow_model(request.scope, obj["model"])  # a client secret's model scope
    return json_response(await runtime.engine.compact(obj, owner_of(request)))
