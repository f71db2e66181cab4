"""Responses by id: retrieve, delete, cancel, input_items; background runs and stream resume.

Ids of other principals answer 404, exactly like ids that never existed. Requests were admitted
already (``wsproxy.asgi.admission``); a ``ProxyError`` raised here is rendered by the app's one
exception handler.

A ``background: true`` request runs in a task owned by the runtime, not by the client connection
(``wsproxy.service.runs``): the POST returns as soon as the response exists (``in_progress``),
and the response runs on. Its events are kept in a bounded log, so that
``GET /v1/responses/{id}?stream=true&starting_after=N`` can replay them from any point and then
follow the live stream: a client whose SSE connection dropped resumes from the last
``sequence_number`` it saw. Finished runs stay in the registry for ``RETENTION`` seconds (bounded
in count); after that, and for responses that did not run in the background, the stream is
rebuilt from the stored Response (same items, one delta per part).

``POST /v1/responses/{id}/cancel`` cancels a running background response (status ``cancelled``,
stored); it is idempotent and answers 400 for responses that did not run in the background.

With several processes on one store (``--workers N``, replicas) a background run's log is in the
store too: any process can retrieve it, stream it from any point and cancel it
(``wsproxy.service.runs``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsproxy.asgi.admission import owner_of, runtime_of
from wsproxy.asgi.formats import sse_response
from wsproxy.asgi.render import json_response
from wsproxy.core.events import Event
from wsproxy.core.replay import replay_events
from wsproxy.errors import InvalidRequest, invalid_param, response_not_found
from wsproxy.service.engine import ResponseRun
from wsproxy.service.runs import BackgroundRun
from wsproxy.service.runs import start_background as run_in_background
from wsproxy.service.wiring import Runtime
from wsproxy.store.base import StoredResponse


async def start_background(runtime: Runtime, run: ResponseRun, stream: bool) -> Response:
    """Start ``run`` detached from the client; answer once the response exists: its snapshot,
    or (``stream``) its event log followed live."""
    if not run.request.store:
        raise InvalidRequest(
            "Background responses require store=true.", param="background", code="invalid_request_error"
        )
    entry = await run_in_background(runtime, run)
    if stream:
        return sse_response(runtime, entry.follow(-1))
    return json_response({**entry.snapshot, "background": True})


async def cancel_background(request: Request, runtime: Runtime) -> Response:
    principal = owner_of(request)
    response_id = request.path_params["response_id"]
    entry = runtime.background.get(response_id, principal)
    if entry is None:
        state = await runtime.background.cancel_remote(response_id, principal)  # run elsewhere
        record = await runtime.engine.lookup(response_id, principal)
        if state is not None:  # a background run (its log says so), now over
            if record is not None:
                return json_response(record.response)
            return json_response({**orjson.loads(state.snapshot), "status": "cancelled"})
        if record is None:
            raise response_not_found(response_id)
        if not record.response.get("background"):
            raise InvalidRequest("Only background responses can be cancelled.", code="invalid_request_error")
        return json_response(record.response)  # already finished: cancelling again is a no-op
    if not entry.done and entry.task is not None:
        entry.task.cancel()
        try:
            await entry.task
        except asyncio.CancelledError:
            pass
    final = entry.run.final
    return json_response(final.response if final is not None else {**entry.snapshot, "status": "cancelled"})


def starting_after(request: Request) -> int:
    try:
        return int(request.query_params.get("starting_after", "-1"))
    except ValueError:
        raise InvalidRequest(
            "Invalid 'starting_after': expected an integer.", param="starting_after"
        ) from None


async def replay_response(request: Request, runtime: Runtime, record: StoredResponse) -> Response:
    after = starting_after(request)
    events = [e for e in replay_events(record.response) if e.seq > after]

    async def gen() -> AsyncIterator[Event]:
        for event in events:
            yield event

    return sse_response(runtime, gen())


def live_entry(runtime: Runtime, response_id: str, principal: str | None) -> BackgroundRun | None:
    return runtime.background.get(response_id, principal)


async def retrieve_background(
    request: Request, runtime: Runtime, principal: str | None, stream: bool
) -> Response | None:
    """A background response, run by this process or (its log in the store) by another one;
    None if there is no such run."""
    response_id = request.path_params["response_id"]
    entry = live_entry(runtime, response_id, principal)
    if entry is not None:
        # Run here: its event log, live while it runs.
        if stream:
            return sse_response(runtime, entry.follow(starting_after(request)))
        final = entry.run.final
        return json_response(final.response if entry.done and final is not None else entry.snapshot)
    state = await runtime.background.remote(response_id, principal)
    if state is None:
        return None
    if stream:
        return sse_response(runtime, runtime.background.follow_remote(response_id, starting_after(request)))
    if state.done:
        return None  # its final Response is stored
    return json_response(orjson.loads(state.snapshot))


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
    background = await retrieve_background(request, runtime, principal, stream)
    if background is not None:
        return background
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
