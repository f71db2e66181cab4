"""Request ids and access logs: a pure ASGI middleware, outermost in the stack.

Every HTTP answer carries ``x-request-id``: the client's own when it sent a well-formed one (at
most 128 characters of ``[A-Za-z0-9._:-]``), else a new ``req_...``. The id is put in
``scope["state"]["request_id"]`` for the layers below (WebSocket ``error`` events carry it too).

One log line (logger ``wsproxy.access``) per HTTP request when its answer ends, and one per
WebSocket session when it closes: method, path (no query string: it may carry ids a client
considers private), status or close code, duration, bytes sent, the key's name (set by the auth
layer in ``scope["state"]["key_name"]``), the client address and the request id. Never a header
value other than the request id, a key, or a body.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import MutableMapping
from typing import Any

from wsproxy.observability.logs import ACCESS, log_fields

Scope = MutableMapping[str, Any]
Message = dict[str, Any]

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _VALID_ID.fullmatch(value):
                return value.decode()
            break
    return new_request_id()


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


class AccessLogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers") or [])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.monotonic()
        facts: dict[str, Any] = {"status": 0, "bytes": 0}
        header = (REQUEST_ID_HEADER, request_id.encode())

        if kind == "http":

            async def send_http(message: Message) -> None:
                mtype = message["type"]
                if mtype == "http.response.start":
                    facts["status"] = message["status"]
                    message = {**message, "headers": [*message.get("headers", ()), header]}
                elif mtype == "http.response.body":
                    facts["bytes"] += len(message.get("body", b""))
                await send(message)

            try:
                await self.app(scope, receive, send_http)
            finally:
                if ACCESS.isEnabledFor(logging.INFO):
                    self._log("http request", scope, state, facts, started)
            return

        async def send_ws(message: Message) -> None:
            mtype = message["type"]
            if mtype == "websocket.accept":
                facts["status"] = 101
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif mtype == "websocket.close":
                facts["close_code"] = message.get("code", 1000)
            elif mtype == "websocket.http.response.start":
                facts["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        async def receive_ws() -> Message:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                facts.setdefault("close_code", message.get("code", 1005))
            return message

        try:
            await self.app(scope, receive_ws, send_ws)
        finally:
            if ACCESS.isEnabledFor(logging.INFO):
                self._log("websocket session", scope, state, facts, started)

    @staticmethod
    def _log(
        message: str, scope: Scope, state: dict[str, Any], facts: dict[str, Any], started: float
    ) -> None:
        client = scope.get("client")
        fields: dict[str, Any] = {
            "request_id": state.get("request_id"),
            "method": scope.get("method", "GET"),
            "path": scope.get("path", ""),
            "status": facts["status"],
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            # Bytes through the ASGI send, and those the server's synchronous body writer
            # wrote (SSE on the push data plane).
            "bytes_sent": facts["bytes"] + getattr(
                scope.get("extensions", {}).get("wsproxy.body"), "written", 0
            ),
            "client": f"{client[0]}:{client[1]}" if client else None,
            "key": state.get("key_name"),
        }
        if scope["type"] == "websocket":
            del fields["bytes_sent"]  # frames are written below ASGI, on the hot path
            fields["close_code"] = facts.get("close_code")
            fields["responses"] = state.get("responses", 0)
        log_fields(ACCESS, message, **fields)
