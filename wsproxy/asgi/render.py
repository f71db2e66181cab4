"""The one place errors and events become bytes for a client.

- HTTP: ``{"error": {...}}`` JSON with the error's status (and its headers, e.g. retry-after).
- SSE: ``event:``/``data:`` lines; an error before any event is an HTTP error instead.
- WebSocket: the nested ``error`` envelope with ``status`` (and ``stream_id`` on a lane; a
  ``retry-after`` goes in ``error.headers``); events
  get ``stream_id`` spliced in without re-encoding.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from wsproxy.core.events import Event
from wsproxy.errors import ProxyError


def error_response(error: ProxyError) -> Response:
    headers = dict(error.headers)
    if 400 <= error.status < 500 and error.status not in (408, 429):
        # The SDK retries 409 and friends; a client error must not be retried unchanged.
        headers["x-should-retry"] = "false"
    return Response(
        orjson.dumps({"error": error.body()}),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


# Error headers a WebSocket client gets inside the error object (it has no response headers).
_WS_ERROR_HEADERS = ("retry-after",)


def ws_error(error: ProxyError, stream_id: str | None = None, sequence_number: int | None = None) -> bytes:
    body = error.body()
    headers = {k: v for k, v in error.headers.items() if k.lower() in _WS_ERROR_HEADERS}
    if headers:
        body["headers"] = headers
    payload: dict[str, Any] = {"type": "error", "status": error.status, "error": body}
    if sequence_number is not None:
        payload["sequence_number"] = sequence_number
    if stream_id is not None:
        payload["stream_id"] = stream_id
    return orjson.dumps(payload)


def ws_event_text(event: Event, stream_id: str | None) -> str:
    """The text frame of an event; on a named lane ``stream_id`` is added as the first key."""
    data = event.data
    if stream_id is not None:
        data = b'{"stream_id":' + orjson.dumps(stream_id) + b"," + data[1:]
    return data.decode()
