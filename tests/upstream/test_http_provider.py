"""HTTPProvider against httpx2.MockTransport: retries, Retry-After, error mapping, streaming."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import orjson
import pytest

from wsproxy.dialects.base import UpstreamCall
from wsproxy.dialects.openai_responses import OpenAIResponsesDialect
from wsproxy.errors import UpstreamError, UpstreamUnavailable
from wsproxy.settings import ProviderSettings
from wsproxy.upstream.http import HTTPProvider, retry_after_seconds

SSE_OK = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
    b'{"id":"resp_1","object":"response","status":"in_progress","output":[]}}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1,"response":'
    b'{"id":"resp_1","object":"response","status":"completed","output":[]}}\n\n'
)


class Chunks(httpx2.AsyncByteStream):
    """A streamed body, as the network delivers it (MockTransport bodies are otherwise pre-read)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk


def sse(*chunks: bytes) -> httpx2.Response:
    return httpx2.Response(200, stream=Chunks(*chunks), headers={"content-type": "text/event-stream"})


def error(status: int, payload: Any, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(
        status,
        stream=Chunks(orjson.dumps(payload)),
        headers={"content-type": "application/json", **(headers or {})},
    )


def provider(handler: Any, **settings: Any) -> HTTPProvider:
    cfg = ProviderSettings(
        name="up", kind="openai", base_url="http://upstream.test/v1", retry_max_wait=1.0, **settings
    )
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return HTTPProvider(cfg, OpenAIResponsesDialect(), client, api_key="sk-up")


def call() -> UpstreamCall:
    return UpstreamCall(
        body={"model": "m", "input": "hi"}, input=[{"role": "user", "content": "hi"}], model="m"
    )


async def collect(p: HTTPProvider) -> list[Any]:
    return [e async for e in p.stream(call(), "resp_x", 0)]


async def test_streams_events_and_sends_auth_and_body() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return sse(SSE_OK[:50], SSE_OK[50:])

    events = await collect(provider(handler))
    assert [e.type for e in events] == ["response.created", "response.completed"]
    assert seen[0].url == "http://upstream.test/v1/responses"
    assert seen[0].headers["authorization"] == "Bearer sk-up"
    body = orjson.loads(seen[0].content)
    assert body["stream"] is True and body["model"] == "m"


async def test_429_is_retried_after_retry_after() -> None:
    attempts: list[float] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return error(
                429,
                {"error": {"message": "slow down", "type": "rate_limit_error"}},
                headers={"retry-after": "0.2"},
            )
        return sse(SSE_OK)

    events = await collect(provider(handler, max_retries=2))
    assert events[-1].type == "response.completed"
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.19


async def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    attempts = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal attempts
        attempts += 1
        return error(
            503, {"error": {"message": "overloaded", "type": "server_error"}}, headers={"retry-after": "0"}
        )

    with pytest.raises(UpstreamError) as info:
        await collect(provider(handler, max_retries=2))
    assert attempts == 3
    assert info.value.status == 503 and info.value.retryable
    assert info.value.message == "overloaded"


async def test_retry_after_longer_than_allowed_fails_over_at_once() -> None:
    attempts = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal attempts
        attempts += 1
        return error(429, {"error": {"message": "later"}}, headers={"retry-after": "3600"})

    with pytest.raises(UpstreamError) as info:
        await collect(provider(handler, max_retries=5))
    assert attempts == 1
    assert info.value.headers["retry-after"] == "3600"


async def test_client_errors_are_not_retried_and_keep_their_status() -> None:
    attempts = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal attempts
        attempts += 1
        return error(
            400,
            {
                "error": {
                    "message": "bad",
                    "type": "invalid_request_error",
                    "param": "input",
                    "code": "invalid_value",
                }
            },
        )

    with pytest.raises(UpstreamError) as info:
        await collect(provider(handler, max_retries=3))
    assert attempts == 1
    assert (info.value.status, info.value.param, info.value.code) == (400, "input", "invalid_value")
    assert not info.value.retryable


async def test_connect_errors_map_to_retryable_unavailable() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    with pytest.raises(UpstreamUnavailable) as info:
        await collect(provider(handler, max_retries=1))
    assert info.value.retryable and info.value.status == 502


async def test_stream_without_terminal_event_ends_failed() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return sse(SSE_OK.split(b"\n\n")[0] + b"\n\n")

    events = await collect(provider(handler))
    assert [e.type for e in events] == ["response.created", "error", "response.failed"]
    assert [e.seq for e in events] == [0, 1, 2]
    failed = events[-1].json()["response"]
    assert failed["status"] == "failed" and failed["id"] == "resp_1"


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"retry-after": "2.5"}, 0) == 2.5
    assert retry_after_seconds({}, 0) is None
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1445412480.0) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}, 0) is None
