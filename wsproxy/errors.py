"""The one error tree of wsproxy.

Every failure that can reach a client is a :class:`ProxyError`. Lower layers map their own
exceptions (httpx2, sqlite3, redis, JSON decoding) into this tree once, at their boundary; the
ASGI edge renders it once (``wsproxy.asgi.render``) as an HTTP JSON body, an SSE event or a
WebSocket ``error`` event.

    ProxyError                      status, type, code, message, param
    ├── ClientError                 4xx: the request is wrong; retrying it unchanged will not help
    │   ├── InvalidRequest          400 invalid_request_error (bad JSON, bad field, unknown field)
    │   ├── Unauthorized            401 invalid_api_key
    │   ├── NotFound                404 (unknown response id, unknown model)
    │   ├── PayloadTooLarge         413 (body or frame over the limit)
    │   └── RateLimited             429 rate_limit_exceeded (ours, not the provider's)
    ├── UpstreamError               the provider failed or refused; status is the provider's
    │   │                           (4xx passed through) or 502/503/504 for transport failures
    │   ├── UpstreamUnavailable     connect error, reset, GOAWAY before output: retryable
    │   └── UpstreamTimeout         no first byte / stalled stream
    ├── TranslationError            500 the provider's answer could not be turned into events
    └── StoreError                  500 the response store failed

``retryable`` says whether a fallback provider may be tried *before any output reached the client*.
This module is pure: no I/O, no clock. :func:`error_json` is the one encoding of an error body.
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "server_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if retryable is not None:
            self.retryable = retryable
        # Headers the client should see with the error (e.g. retry-after from the provider).
        self.headers: dict[str, str] = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"message", "type", "param", "code"}``."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class ClientError(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class InvalidRequest(ClientError):
    pass


class Unauthorized(ClientError):
    status = 401
    code = "invalid_api_key"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(ProxyError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retryable = True


class TranslationError(ProxyError):
    status = 500
    code = "server_error"


class StoreError(ProxyError):
    status = 500
    code = "server_error"


def error_json(error: ProxyError) -> bytes:
    """The body of an HTTP error answer: ``{"error": {"message", "type", "param", "code"}}``.
    The one encoding of an error body: the ASGI edge (``wsproxy.asgi.render``) and the server's
    own answers written before any ASGI app runs (the 431 of an oversized head) both use it."""
    return orjson.dumps({"error": error.body()})


def invalid_param(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def unknown_parameter(name: str) -> InvalidRequest:
    return InvalidRequest(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")


def unsupported_parameter(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Unsupported parameter: '{name}' {why}", param=name, code="unsupported_parameter")


def previous_response_not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def response_not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", code="not_found")


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def upstream_status_error(
    status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None
) -> UpstreamError:
    """Map a provider's non-2xx answer to an error with the provider's status.

    4xx are passed through (the client's request was wrong for that provider); 429 and 5xx are
    retryable on a fallback provider.
    """
    err = (body or {}).get("error") if isinstance(body, dict) else None
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        err = {}
    message = str(err.get("message") or f"Upstream answered HTTP {status}.")
    etype = err.get("type")
    code = err.get("code")
    if not isinstance(etype, str):
        etype = "invalid_request_error" if 400 <= status < 500 else "server_error"
    if code is not None and not isinstance(code, str):
        code = str(code)
    param = err.get("param") if isinstance(err.get("param"), str) else None
    return UpstreamError(
        message,
        status=status,
        type=etype,
        code=code or ("rate_limit_exceeded" if status == 429 else None),
        param=param,
        headers=headers,
        retryable=status == 429 or status >= 500,
    )
