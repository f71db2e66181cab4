"""An upstream slow to send its response headers: SSE clients get the headers and keepalive
comments within ``sse_keepalive_interval`` (a load balancer's idle timer never fires), and an
error that comes after that ends the stream with ``error`` + one ``response.failed``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.sdk import client
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.servers import HypercornThread, UvicornThread, read_body
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings

HOLD = 1.2  # seconds the upstream waits before its response headers
INTERVAL = 0.3  # the proxy's sse_keepalive_interval


class SlowHeaders:
    """Waits HOLD seconds before answering: ``hold-ok`` then streams like FakeOpenAI,
    ``hold-fail`` then answers OpenAI's 400."""

    def __init__(self) -> None:
        self.fake = FakeOpenAI()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.fake(scope, receive, send)
            return
        body = await read_body(receive)
        model = orjson.loads(body).get("model")
        await asyncio.sleep(HOLD)
        if model == "hold-fail":
            err = {
                "error": {
                    "message": "bad things",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "bad",
                }
            }
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": orjson.dumps(err)})
            return
        events = self.fake.events({**orjson.loads(body), "model": "fake"})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for event in events:
            chunk = b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[UvicornThread]:
    upstream = HypercornThread(SlowHeaders()).start()
    cfg = tmp_path / "slow.toml"
    cfg.write_text(
        f'[limits]\nsse_keepalive_interval = {INTERVAL}\n[store]\nbackend = "memory"\n'
        f'[providers.slow]\nkind = "openai"\nbase_url = "{upstream.url}/v1"\napi_key = "k"\nmax_retries = 0\n'
    )
    server = UvicornThread(create_app(load_settings(str(cfg), environ={}), environ={})).start()
    try:
        yield server
    finally:
        server.stop()
        upstream.stop()


def _raw_sse(proxy: Any, model: str) -> list[tuple[float, bytes]]:
    """POST a streaming request over a socket; (seconds since sent, bytes) for each read."""
    body = orjson.dumps({"model": model, "input": "hi", "stream": True})
    head = (
        b"POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    reads: list[tuple[float, bytes]] = []
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(head + body)
        for _ in range(10_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reads.append((time.monotonic() - start, chunk))
    return reads


def test_headers_and_keepalives_flow_while_the_upstream_has_not_answered(proxy) -> None:
    reads = _raw_sse(proxy, "slow@hold-ok")
    first_at, first = reads[0]
    assert first.startswith(b"HTTP/1.1 200 ") and first_at < HOLD - 0.3
    data = b"".join(chunk for _, chunk in reads)
    before_events = data[: data.index(b"event: response.created")]
    assert before_events.count(b": keepalive") >= 2  # every INTERVAL while the upstream is silent
    assert data.count(b"event: response.completed") == 1


def test_the_sdk_streams_normally_from_a_slow_upstream(proxy) -> None:
    start = time.monotonic()
    stream = client(proxy).responses.create(model="slow@hold-ok", input="hi there", stream=True)
    assert time.monotonic() - start < HOLD - 0.3  # the SDK returns as soon as headers arrive
    events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "hi there" in events[-1].response.output_text


def test_an_error_after_the_headers_ends_the_stream_with_one_failed_event(proxy) -> None:
    c = client(proxy)
    events = list(c.responses.create(model="slow@hold-fail", input="hi", stream=True))
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", "error", "response.failed"]
    assert [e.sequence_number for e in events] == [0, 1, 2, 3]
    failed = events[-1].response
    assert failed.error is not None and failed.error.message == "bad things"
    # The failed response is stored like any other.
    assert c.responses.retrieve(failed.id).status == "failed"


def test_a_quick_upstream_error_is_still_an_http_error(tmp_path: Path) -> None:
    import openai

    cfg = tmp_path / "quick.toml"
    cfg.write_text('[limits]\nsse_keepalive_interval = 5\n[store]\nbackend = "memory"\n')
    server = UvicornThread(create_app(load_settings(str(cfg), environ={}), environ={})).start()
    try:
        with pytest.raises(openai.NotFoundError):
            list(client(server).responses.create(model="no-such-model", input="hi", stream=True))
    finally:
        server.stop()
