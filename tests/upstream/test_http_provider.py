"""HTTPProvider against a scripted upstream on real sockets: retries, Retry-After, error mapping,
streaming, stalls and resets, cancellation reaching the upstream, connection reuse."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from h2.errors import ErrorCodes

from tests.upstream.conftest import provider_settings
from tests.upstream.scripted import H2Reply, Reply, Request, ScriptedServer, bounded
from wsproxy.dialects.base import UpstreamCall
from wsproxy.dialects.openai_responses import OpenAIResponsesDialect
from wsproxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from wsproxy.upstream.http import HTTPProvider, retry_after_seconds

SSE_OK = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
    b'{"id":"resp_1","object":"response","status":"in_progress","output":[]}}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1,"response":'
    b'{"id":"resp_1","object":"response","status":"completed","output":[]}}\n\n'
)
SSE_CREATED = SSE_OK.split(b"\n\n")[0] + b"\n\n"
SSE_HEADERS = [("content-type", "text/event-stream")]

Answer = Callable[[Request, Reply], Any]


def sse(*chunks: bytes, delay: float = 0.02) -> Answer:
    """A streamed SSE body, as the network delivers it (one write per chunk)."""

    async def answer(request: Request, reply: Reply) -> None:
        await reply.respond(200, SSE_HEADERS, chunks, framing="chunked", delay=delay)

    return answer


def error(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    async def answer(request: Request, reply: Reply) -> None:
        head = [("content-type", "application/json"), *(headers or {}).items()]
        await reply.respond(status, head, [orjson.dumps(payload)])

    return answer


def script(server: ScriptedServer, *answers: Answer) -> list[float]:
    """The server answers the n-th request with the n-th answer (the last one repeats). Returns
    the times (monotonic) the requests arrived."""
    times: list[float] = []

    async def handler(request: Request, reply: Reply) -> None:
        times.append(time.monotonic())
        await answers[min(len(times), len(answers)) - 1](request, reply)

    server.handler = handler
    return times


@pytest.fixture
async def make_provider() -> AsyncIterator[Callable[..., HTTPProvider]]:
    providers: list[HTTPProvider] = []

    def make(server: ScriptedServer | str, proto: str = "1.1", **settings: Any) -> HTTPProvider:
        url = server.url if isinstance(server, ScriptedServer) else server
        settings.setdefault("retry_max_wait", 1.0)
        cfg = provider_settings(url, proto, **settings)
        p = HTTPProvider(cfg, OpenAIResponsesDialect(), api_key="sk-up")
        providers.append(p)
        return p

    yield make
    async with asyncio.timeout(5):
        for p in providers:
            await p.aclose()


def call() -> UpstreamCall:
    return UpstreamCall(
        body={"model": "m", "input": "hi"}, input=[{"role": "user", "content": "hi"}], model="m"
    )


async def collect(p: HTTPProvider) -> list[Any]:
    return [e async for e in p.stream(call(), "resp_x", 0)]


# -- the behaviour the httpx2 MockTransport tests asserted ------------------------------------


@bounded(10)
async def test_streams_events_and_sends_auth_and_body(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    script(server, sse(SSE_OK[:50], SSE_OK[50:]))
    events = await collect(make_provider(server, proto))
    assert [e.type for e in events] == ["response.created", "response.completed"]
    [seen] = server.requests
    assert (seen.method, seen.path, seen.proto) == ("POST", "/v1/responses", proto)
    assert seen.header("authorization") == "Bearer sk-up"
    assert seen.header("accept") == "text/event-stream"
    assert seen.header("content-type") == "application/json"
    body = orjson.loads(seen.body)
    assert body["stream"] is True and body["model"] == "m"


@bounded(10)
async def test_429_is_retried_after_retry_after(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    attempts = script(
        server,
        error(429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, {"retry-after": "0.2"}),
        sse(SSE_OK),
    )
    events = await collect(make_provider(server, proto, max_retries=2))
    assert events[-1].type == "response.completed"
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.19


@bounded(10)
async def test_retries_are_bounded_and_the_last_error_is_raised(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    attempts = script(
        server, error(503, {"error": {"message": "overloaded", "type": "server_error"}}, {"retry-after": "0"})
    )
    with pytest.raises(UpstreamError) as info:
        await collect(make_provider(server, proto, max_retries=2))
    assert len(attempts) == 3
    assert info.value.status == 503 and info.value.retryable
    assert info.value.message == "overloaded"


@bounded(10)
async def test_retry_after_longer_than_allowed_fails_over_at_once(
    server: ScriptedServer, make_provider: Any
) -> None:
    attempts = script(server, error(429, {"error": {"message": "later"}}, {"retry-after": "3600"}))
    with pytest.raises(UpstreamError) as info:
        await collect(make_provider(server, max_retries=5))
    assert len(attempts) == 1
    assert info.value.headers["retry-after"] == "3600"


@bounded(10)
async def test_client_errors_are_not_retried_and_keep_their_status(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    attempts = script(
        server,
        error(
            400,
            {
                "error": {
                    "message": "bad",
                    "type": "invalid_request_error",
                    "param": "input",
                    "code": "invalid_value",
                }
            },
        ),
    )
    with pytest.raises(UpstreamError) as info:
        await collect(make_provider(server, proto, max_retries=3))
    assert len(attempts) == 1
    assert (info.value.status, info.value.param, info.value.code) == (400, "input", "invalid_value")
    assert not info.value.retryable


@bounded(10)
async def test_connect_errors_map_to_retryable_unavailable(make_provider: Any, proto: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(make_provider(f"http://127.0.0.1:{port}", proto, max_retries=1))
    assert info.value.retryable and info.value.status == 502


@bounded(10)
async def test_stream_without_terminal_event_ends_failed(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    script(server, sse(SSE_CREATED))
    events = await collect(make_provider(server, proto))
    assert [e.type for e in events] == ["response.created", "error", "response.failed"]
    assert [e.seq for e in events] == [0, 1, 2]
    failed = events[-1].json()["response"]
    assert failed["status"] == "failed" and failed["id"] == "resp_1"


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"retry-after": "2.5"}, 0) == 2.5
    assert retry_after_seconds({}, 0) is None
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1445412480.0) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}, 0) is None


# -- on real sockets: what MockTransport could not show ----------------------------------------


@bounded(10)
async def test_provider_headers_are_sent(server: ScriptedServer, make_provider: Any, proto: str) -> None:
    script(server, sse(SSE_OK))
    await collect(make_provider(server, proto, headers={"OpenAI-Organization": "org-1", "x-extra": "E"}))
    [seen] = server.requests
    assert seen.header("openai-organization") == "org-1"
    assert seen.header("x-extra") == "E"


@bounded(10)
async def test_a_complete_stream_gives_its_connection_back(
    server: ScriptedServer, make_provider: Any
) -> None:
    """HTTP/1.1: the body's end comes a little after the terminal event; the provider reads it
    and the next stream reuses the connection."""
    script(server, sse(SSE_OK[:60], SSE_OK[60:], b"", delay=0.05))
    p = make_provider(server)
    for _ in range(3):
        events = await collect(p)
        assert events[-1].type == "response.completed"
    assert server.connections == 1
    assert server.conns[0].requests == 3


@bounded(10)
async def test_h2_streams_share_one_connection(server: ScriptedServer, make_provider: Any) -> None:
    script(server, sse(SSE_OK[:60], SSE_OK[60:], delay=0.1))
    p = make_provider(server, "2")
    results = await asyncio.gather(*(collect(p) for _ in range(10)))
    assert all(r[-1].type == "response.completed" for r in results)
    assert server.connections == 1
    assert server.conns[0].max_open_streams == 10
    assert server.conns[0].resets == {}  # every stream ended cleanly, none was cancelled


@bounded(10)
async def test_stall_after_the_first_event_ends_failed_and_cancels_upstream(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    gone = asyncio.Event()

    async def stall(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEADERS)
        await reply.data(SSE_CREATED)  # HTTP/1.1: no length, the body runs until the close
        await reply.wait_client_gone()
        gone.set()

    script(server, stall)
    started = time.monotonic()
    events = await collect(make_provider(server, proto, idle_timeout=0.3))
    assert time.monotonic() - started < 2.0
    assert [e.type for e in events] == ["response.created", "error", "response.failed"]
    assert events[-1].json()["response"]["error"]["code"] == "upstream_timeout"
    async with asyncio.timeout(2):
        await gone.wait()
    if proto == "2":
        assert server.conns[0].resets == {server.requests[0].stream_id: ErrorCodes.CANCEL}
    assert len(server.requests) == 1  # output was sent: never retried


@bounded(10)
async def test_reset_after_the_first_event_ends_failed(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    async def reset(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEADERS)
        await reply.data(SSE_CREATED)
        await asyncio.sleep(0.1)
        reply.abort()

    script(server, reset)
    events = await collect(make_provider(server, proto))
    assert [e.type for e in events] == ["response.created", "error", "response.failed"]
    assert events[-1].json()["response"]["error"]["code"] == "server_error"
    assert len(server.requests) == 1


@bounded(10)
async def test_h2_stream_reset_after_the_first_event_ends_failed(
    server: ScriptedServer, make_provider: Any
) -> None:
    async def reset(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        await reply.head(200, SSE_HEADERS)
        await reply.data(SSE_CREATED)
        await asyncio.sleep(0.1)
        reply.reset(ErrorCodes.INTERNAL_ERROR)

    script(server, reset, sse(SSE_OK))
    p = make_provider(server, "2")
    events = await collect(p)
    assert [e.type for e in events] == ["response.created", "error", "response.failed"]
    events = await collect(p)  # the connection is fine
    assert events[-1].type == "response.completed"
    assert server.connections == 1


@bounded(10)
async def test_reset_before_the_first_event_is_retried(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    async def reset(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEADERS)
        await asyncio.sleep(0.05)
        reply.abort()

    attempts = script(server, reset, sse(SSE_OK))
    events = await collect(make_provider(server, proto, max_retries=1))
    assert [e.type for e in events] == ["response.created", "response.completed"]
    assert len(attempts) == 2


@bounded(10)
async def test_first_byte_timeout_cancels_the_request_upstream(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    gone = asyncio.Event()

    async def silent(request: Request, reply: Reply) -> None:
        await reply.wait_client_gone()
        gone.set()

    script(server, silent)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await collect(make_provider(server, proto, first_byte_timeout=0.3, max_retries=0))
    assert time.monotonic() - started < 2.0
    async with asyncio.timeout(2):
        await gone.wait()  # HTTP/1.1: connection closed; HTTP/2: RST_STREAM
    if proto == "2":
        assert server.conns[0].resets == {server.requests[0].stream_id: ErrorCodes.CANCEL}


@bounded(10)
async def test_a_client_that_leaves_cancels_the_upstream_request(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    gone = asyncio.Event()

    async def endless(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEADERS)
        await reply.data(SSE_CREATED)
        await reply.wait_client_gone(timeout=10)
        gone.set()

    script(server, endless)
    p = make_provider(server, proto)
    stream = p.stream(call(), "resp_x", 0)
    async with contextlib.aclosing(stream):
        first = await anext(stream)
        assert first.type == "response.created"
    async with asyncio.timeout(2):
        await gone.wait()
    if proto == "2":
        assert server.conns[0].resets == {server.requests[0].stream_id: ErrorCodes.CANCEL}
        assert not server.conns[0].client_gone.is_set()  # only the stream, not the connection


@bounded(10)
async def test_a_cancelled_consumer_cancels_the_upstream_request(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    """The task reading the stream is cancelled (the client's socket died) while waiting."""
    gone = asyncio.Event()

    async def endless(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEADERS)
        await reply.data(SSE_CREATED)
        await reply.wait_client_gone(timeout=10)
        gone.set()

    script(server, endless)
    p = make_provider(server, proto)
    task = asyncio.ensure_future(collect(p))
    await server.wait_for(lambda: len(server.requests) == 1)
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with asyncio.timeout(2):
        await gone.wait()


@bounded(10)
async def test_pool_exhausted_maps_to_503(server: ScriptedServer, make_provider: Any) -> None:
    async def endless(request: Request, reply: Reply) -> None:
        await reply.head(200, SSE_HEADERS)
        await reply.data(SSE_CREATED)
        await reply.wait_client_gone(timeout=10)

    script(server, endless)
    p = make_provider(server, max_connections=1, pool_timeout=0.2, max_retries=0)
    held = p.stream(call(), "resp_x", 0)
    async with contextlib.aclosing(held):
        await anext(held)
        with pytest.raises(UpstreamUnavailable) as info:
            await collect(p)
        assert info.value.status == 503
    assert len(server.requests) == 1


@bounded(10)
async def test_error_bodies_are_read_bounded(server: ScriptedServer, make_provider: Any, proto: str) -> None:
    """A huge error body is not read whole; the status still maps."""
    huge = b'{"error": {"message": "' + b"x" * (4 * 1024 * 1024) + b'"}}'

    async def answer(request: Request, reply: Reply) -> None:
        await reply.respond(500, [("content-type", "application/json")], [huge])

    script(server, answer)
    with pytest.raises(UpstreamError) as info:
        await collect(make_provider(server, proto, max_retries=0))
    assert info.value.status == 500


@bounded(10)
async def test_post_json_returns_the_object(server: ScriptedServer, make_provider: Any, proto: str) -> None:
    async def answer(request: Request, reply: Reply) -> None:
        echo = {"id": "cmp_1", "got": orjson.loads(request.body), "accept": request.header("accept")}
        await reply.respond(200, [("content-type", "application/json")], [orjson.dumps(echo)])

    script(server, answer)
    value = await make_provider(server, proto).post_json("/responses/compact", {"input": "hi"})
    assert value == {"id": "cmp_1", "got": {"input": "hi"}, "accept": "application/json"}
    assert server.requests[0].path == "/v1/responses/compact"


@bounded(10)
async def test_post_json_retries_and_maps_errors(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    async def not_json(request: Request, reply: Reply) -> None:
        await reply.respond(200, [("content-type", "application/json")], [b"<html>"])

    attempts = script(server, error(503, {"error": {"message": "busy"}}, {"retry-after": "0"}), not_json)
    with pytest.raises(UpstreamError) as info:
        await make_provider(server, proto).post_json("/responses/compact", {})
    assert len(attempts) == 2
    assert "invalid JSON" in info.value.message


@bounded(10)
async def test_aclose_closes_the_connections(server: ScriptedServer, make_provider: Any, proto: str) -> None:
    script(server, sse(SSE_OK))
    p = make_provider(server, proto)
    await collect(p)
    await p.aclose()
    async with asyncio.timeout(2):
        await server.conns[0].client_gone.wait()


def _delta(seq: int, text: str) -> bytes:
    payload = {
        "type": "response.output_text.delta",
        "sequence_number": seq,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": text,
    }
    return b"event: response.output_text.delta\ndata: " + orjson.dumps(payload) + b"\n\n"


@bounded(10)
async def test_events_of_one_read_are_marked_as_followed_except_before_a_terminal(
    server: ScriptedServer, make_provider: Any, proto: str
) -> None:
    """Events that arrive in one read are marked ``more`` (a transport may write them at once),
    but the last of a read is not (nothing is at hand behind it: it must not wait for the next
    read), nor the one before the terminal event (which waits for the store)."""
    created, completed = SSE_OK.split(b"\n\n")[:2]
    together = _delta(1, "a") + _delta(2, "b") + _delta(3, "c")
    ending = _delta(4, "d") + _delta(5, "e") + completed + b"\n\n"
    script(server, sse(created + b"\n\n", together, ending, delay=0.1))
    events = await collect(make_provider(server, proto))
    marks = [(e.type.rsplit(".", 1)[-1], e.more) for e in events]
    assert marks == [
        ("created", False),  # alone in its read
        ("delta", True),
        ("delta", True),
        ("delta", False),  # the last of its read
        ("delta", True),
        ("delta", False),  # before the terminal event
        ("completed", False),
    ]
