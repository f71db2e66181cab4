"""Background responses, replay and resume of event streams: the edge half (the runs themselves
are ``wsproxy.service.runs``'s).

A ``background: true`` request runs in a task owned by the runtime, not by the client connection:
the POST returns as soon as the response exists (``in_progress``), and the response runs on. Its
events are kept in a bounded log, so that ``GET /v1/responses/{id}?stream=true&starting_after=N``
can replay them from any point and then follow the live stream: a client whose SSE connection
dropped resumes from the last ``sequence_number`` it saw. Finished runs stay in the registry for
``RETENTION`` seconds (bounded in count); after that, and for responses that did not run in the
background, the stream is rebuilt from the stored Response (same items, one delta per part).

``POST /v1/responses/{id}/cancel`` cancels a running background response (status ``cancelled``,
stored); it is idempotent and answers 400 for responses that did not run in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from wsproxy.asgi.admission import owner_of
from wsproxy.asgi.formats import sse_response
from wsproxy.asgi.render import json_response
from wsproxy.core.events import Event
from wsproxy.core.replay import replay_events
from wsproxy.errors import InvalidRequest, response_not_found
from wsproxy.service.engine import ResponseRun
from wsproxy.service.runs import BackgroundRun
from wsproxy.service.runs import start_background as run_in_background
from wsproxy.service.wiring import Runtime
from wsproxy.store.base import StoredResponse

log = logging.getLogger("wsproxy.background")


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
        record = await runtime.engine.lookup(response_id, principal)
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
