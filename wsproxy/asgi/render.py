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
    if body.get("code") is None:
        # WebSocket mode's error event always names a code (the SDK's ResponseWsError, Open
        # Responses' WebSocketErrorEvent); HTTP errors such as a 404 may have none.
        body["code"] = body.get("type") or "error"
    headers = {k: v for k, v in error.headers.items() if k.lower() in _WS_ERROR_HEADERS}
    if headers:
        body["headers"] = headers
    payload: dict[str, Any] = {"type": "error", "status": error.status, "error": body}
    if sequence_number is not None:
        payload["sequence_number"] = sequence_number
    if stream_id is not None:
        payload["stream_id"] = stream_id
    return orjson.dumps(payload)


# The in-stream error codes and the HTTP-style status a WebSocket error envelope carries.
_WS_ERROR_STATUS = {
    "rate_limit_exceeded": 429,
    "server_is_overloaded": 503,
    "server_shutting_down": 503,
    "upstream_timeout": 504,
}


def _ws_stream_error(data: bytes) -> bytes:
    """An in-stream ``error`` event (OpenAI's flat SSE shape) as WebSocket mode sends it: the
    nested ``error`` envelope with ``status`` (openai-python ``ResponseWsError``, Open Responses
    ``WebSocketErrorEvent``). Rare (a failing response), so re-encoding costs nothing."""
    payload = orjson.loads(data)
    if not isinstance(payload, dict) or "status" in payload:
        return data
    if isinstance(payload.get("error"), dict):
        error = payload["error"]
    else:
        error = {
            "type": "server_error",
            "code": payload.get("code") or "server_error",
            "message": str(payload.get("message") or "The response failed."),
            "param": payload.get("param"),
        }
    out: dict[str, Any] = {
        "type": "error",
        "status": _WS_ERROR_STATUS.get(str(error.get("code")), 500),
        "error": error,
    }
    if isinstance(payload.get("sequence_number"), int):
        out["sequence_number"] = payload["sequence_number"]
    return orjson.dumps(out)


def ws_event_text(event: Event, stream_id: str | None) -> str:
    """The text frame of an event; on a named lane ``stream_id`` is added as the first key."""
    data = event.data
    if event.type == "error":
        data = _ws_stream_error(data)
    if stream_id is not None:
        data = b'{"stream_id":' + orjson.dumps(stream_id) + b"," + data[1:]
    return data.decode()
