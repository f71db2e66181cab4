"""Endpoints on stored responses: retrieve, delete, cancel, input_items.

Ids of other principals answer 404, exactly like ids that never existed. Requests were admitted
already (``wsproxy.asgi.admission``); a ``ProxyError`` raised here is rendered by the app's one
exception handler.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsproxy.asgi.admission import owner_of, runtime_of
from wsproxy.asgi.formats import sse_response
from wsproxy.asgi.render import json_response
from wsproxy.asgi.runs import cancel_background, live_entry, replay_response, starting_after
from wsproxy.errors import InvalidRequest, invalid_param, response_not_found
from wsproxy.store.base import StoredResponse


async def _owned(request: Request) -> tuple[Any, StoredResponse]:
    runtime = runtime_of(request)
    principal = owner_of(request)
    response_id = request.path_params["response_id"]
    record = await runtime.engine.lookup(response_id, principal)
    if record is None:
        raise response_not_found(response_id)
    return runtime, record


async def retrieve(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = owner_of(request)
    response_id = request.path_params["response_id"]
    stream = request.query_params.get("stream") in ("true", "1")
    entry = live_entry(runtime, response_id, principal)
    if entry is not None:
        # A background response: its real event log, live while it runs.
        if stream:
            return sse_response(runtime, entry.follow(starting_after(request)))
        final = entry.run.final
        return json_response(final.response if entry.done and final is not None else entry.snapshot)
    record = await runtime.engine.lookup(response_id, principal)
    if record is None:
        raise response_not_found(response_id)
    if stream:
        return await replay_response(request, runtime, record)
    return json_response(record.response)


async def delete(request: Request) -> Response:
    runtime, record = await _owned(request)
    await runtime.store.delete(record.id)
    return json_response({"id": record.id, "object": "response", "deleted": True})


async def cancel(request: Request) -> Response:
    return await cancel_background(request, runtime_of(request))


def _page(items: list[dict[str, Any]], params: Any) -> dict[str, Any]:
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_param("order", "Invalid 'order': expected 'asc' or 'desc'.")
    raw_limit = params.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise invalid_param("limit", "Invalid 'limit': expected an integer.") from None
    if not 1 <= limit <= 100:
        raise invalid_param("limit", "Invalid 'limit': expected an integer between 1 and 100.")
    ordered = items if order == "asc" else list(reversed(items))
    after = params.get("after")
    before = params.get("before")
    start = 0
    end = len(ordered)
    ids = [item.get("id") for item in ordered]
    if after:
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}'.", param="after")
        start = ids.index(after) + 1
    if before:
        if before not in ids:
            raise InvalidRequest(f"No input item with id '{before}'.", param="before")
        end = ids.index(before)
    window = ordered[start:end]
    data = window[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": len(window) > limit,
    }


async def input_items(request: Request) -> Response:
    _, record = await _owned(request)
    return json_response(_page(record.input_items, request.query_params))


def routes() -> list[Route]:
    return [
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
    ]
