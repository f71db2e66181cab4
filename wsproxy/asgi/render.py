"""The one place errors and events become bytes for a client.

- HTTP: ``{"error": {...}}`` JSON with the error's status (and its headers, e.g. retry-after);
  the body is :func:`wsproxy.errors.error_json`, which the server's own 431 uses too. Handlers
  raise ``ProxyError``; :func:`handle_proxy_error` (the app's one exception handler) renders it,
  and code that owns its ASGI cycle (middleware, the sink) calls :func:`send_error`.
- SSE: ``event:``/``data:`` lines (``wsproxy.core.sse``); an error before any event is an HTTP
  error instead.
- Request bodies: :func:`read_body` reads one up to a limit (413 beyond it), for every handler
  that takes a JSON body.
- WebSocket: the nested ``error`` envelope with ``status`` (and ``stream_id`` on a lane; a
  ``retry-after`` goes in ``error.headers``); events
  get ``stream_id`` spliced in without re-encoding.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from wsproxy.core.events import Event
from wsproxy.errors import PayloadTooLarge, ProxyError, error_json


def _error_headers(error: ProxyError) -> dict[str, str]:
    headers = dict(error.headers)
    if 400 <= error.status < 500 and error.status not in (408, 429):
        # The SDK retries 409 and friends; a client error must not be retried unchanged.
        headers["x-should-retry"] = "false"
    return headers


def error_response(error: ProxyError) -> Response:
    return Response(
        error_json(error),
        status_code=error.status,
        media_type="application/json",
        headers=_error_headers(error),
    )


async def handle_proxy_error(request: Request, exc: Exception) -> Response:
    """The app's exception handler for ``ProxyError``: every handler just raises."""
    assert isinstance(exc, ProxyError)
    return error_response(exc)


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


async def send_error(send: Send, error: ProxyError, prefix: str = "") -> None:
    """``error`` as a whole HTTP answer on a raw ASGI ``send``. ``prefix="websocket."`` answers
    a WebSocket handshake with it (the ASGI denial response: the client sees the status)."""
    body = error_json(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in _error_headers(error).items()]
    await send({"type": prefix + "http.response.start", "status": error.status, "headers": headers})
    await send({"type": prefix + "http.response.body", "body": body})


async def send_json(send: Send, payload: Any, extra: dict[str, str] | None = None) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# Error headers a WebSocket client gets inside the error object (it has no response headers).
_WS_ERROR_HEADERS = ("retry-after",)


def ws_error(
    error: ProxyError,
    stream_id: str | None = None,
    sequence_number: int | None = None,
    request_id: str | None = None,
) -> bytes:
    """An ``error`` event of WebSocket mode; ``request_id``: the session's (its handshake's
    ``x-request-id``), so that a client can quote it."""
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
    if request_id is not None:
        payload["request_id"] = request_id
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


def ws_event_frame(event: Event, stream_id: str | None) -> bytes:
    """The text frame of an event (UTF-8); on a named lane ``stream_id`` is the first key. An
    in-stream ``error`` event takes WebSocket mode's nested shape."""
    data = event.data
    if event.type == "error":
        data = _ws_stream_error(data)
    if stream_id is not None:
        data = b'{"stream_id":' + orjson.dumps(stream_id) + b"," + data[1:]
    return data


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: a larger declared Content-Length is refused
    before reading, a body that grows past the limit as soon as it does (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
    return bytes(body)
