"""Client faults: clients that leave mid-response, and clients that stop reading.

What is asserted, for each: what the upstream saw (the request closed at once, or its sends
blocked by backpressure), what the proxy recorded (``/metrics``), how the client was told (a
1013 close for a stuck WebSocket reader), and that other sessions were not affected.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import Any

import httpx2
import pytest
import websockets

from tests.faults.conftest import (
    create,
    metric,
    metrics,
    recv_json,
    until_outcome,
    wait_upstream,
    ws_connect,
    ws_url,
)

LONG = " ".join(f"w{i}" for i in range(300))  # ~300 deltas


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]


async def read_deltas(ws: Any, n: int) -> int:
    """Read until ``n`` text deltas arrived; return how many events were read."""
    seen = deltas = 0
    while deltas < n:
        event = await recv_json(ws)
        seen += 1
        deltas += event["type"] == "response.output_text.delta"
    return seen


@pytest.mark.parametrize("provider", ["up", "up1"])
@pytest.mark.parametrize("how", ["close", "drop"])
async def test_ws_client_leaving_cancels_upstream_and_records_usage(
    fault_proxy, fault_upstream, provider, how
) -> None:
    fake, _ = fault_upstream
    proxy = fault_proxy()
    m = marker()
    before = await metrics(proxy)
    async with ws_connect(proxy) as ws:
        await ws.send(create(f"{provider}@slow-20", f"{m} {LONG}"))
        await read_deltas(ws, 5)
        if how == "close":
            await ws.close()
        else:
            ws.transport.abort()  # no close frame: the TCP connection just goes away
    assert await wait_upstream(fake, lambda: fake.find(m)[0]["disconnected"], 3.0), (
        "the upstream saw the cancel"
    )
    record = fake.find(m)[0]
    assert not record["finished"] and record["sent"] < 100
    after = await metrics(proxy)
    assert (
        metric(after, 'wsproxy_cancelled_responses_total{reason="client_gone",transport="ws"}')
        - metric(before, 'wsproxy_cancelled_responses_total{reason="client_gone",transport="ws"}')
        == 1
    )
    partial = metric(after, f'wsproxy_partial_output_tokens_total{{provider="{provider}"}}') - metric(
        before, f'wsproxy_partial_output_tokens_total{{provider="{provider}"}}'
    )
    assert partial >= 5, "the deltas forwarded before the client left are counted"
    assert metric(after, "wsproxy_ws_sessions") == 0


@pytest.mark.parametrize("provider", ["up", "up1"])
async def test_sse_client_leaving_cancels_upstream_and_records_usage(
    fault_proxy, fault_upstream, provider
) -> None:
    fake, _ = fault_upstream
    proxy = fault_proxy()
    m = marker()
    before = await metrics(proxy)
    async with httpx2.AsyncClient(timeout=10) as client:
        body = {"model": f"{provider}@slow-20", "input": f"{m} {LONG}", "stream": True}
        async with client.stream("POST", proxy.url + "/v1/responses", json=body) as r:
            deltas = 0
            async for line in r.aiter_lines():
                deltas += line == "event: response.output_text.delta"
                if deltas >= 5:
                    break
    assert await wait_upstream(fake, lambda: fake.find(m)[0]["disconnected"], 3.0), (
        "the upstream saw the cancel"
    )
    assert not fake.find(m)[0]["finished"]
    after = await metrics(proxy)
    key = 'wsproxy_cancelled_responses_total{reason="client_gone",transport="http"}'
    assert metric(after, key) - metric(before, key) == 1
    assert metric(after, "wsproxy_active_responses") == 0


async def test_many_cancelled_http2_streams_leave_the_connection_usable(fault_proxy, fault_upstream) -> None:
    """A cancelled HTTP/2 stream forgotten without a RST_STREAM would stay open upstream
    (hypercorn allows 100 at once) and new streams would be refused. The pool resets each
    one (CANCEL), so 120 cancels on one connection still leave it working."""
    fake, _ = fault_upstream
    proxy = fault_proxy()
    tags = [marker() for _ in range(120)]

    async def one(tag: str) -> None:
        async with ws_connect(proxy) as ws:
            await ws.send(create("up@stall-after-5", tag))
            await read_deltas(ws, 1)

    for i in range(0, len(tags), 30):
        await asyncio.gather(*(one(t) for t in tags[i : i + 30]))
    assert await wait_upstream(fake, lambda: all(fake.find(t)[0]["disconnected"] for t in tags), 5.0)
    async with ws_connect(proxy) as ws:
        await ws.send(create("up@fake", "still fine"))
        events = await until_outcome(ws)
    assert events[-1]["type"] == "response.completed"
    assert {r["http_version"] for t in tags for r in fake.find(t)} == {"2"}


# -- slow readers -------------------------------------------------------------------------------


def small_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so a client that stops reading is felt at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def plateau(fake: Any, m: str, quiet: float = 0.6, limit: float = 10.0) -> int:
    """Wait until the upstream's send count for ``m`` stops growing for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        records = fake.find(m)
        sent = records[0]["sent"] if records else 0
        if sent == last and sent > 0:
            return sent
        last = sent
        await asyncio.sleep(quiet)
    raise AssertionError(f"the upstream never stopped sending ({last} events)")


FLOOD_EVENTS = 200_000
# 200 MB of deltas if nobody pushed back (socket buffers on loopback hold up to ~40 MB), from the
# raw upstream over HTTP/1.1: it writes each delta once the previous one drained, so what it
# manages to send measures the proxy's reads, and it sees the connection close. (Over HTTP/2
# the bound is the stream's flow-control window, 256 KB: tests/upstream covers it.)
FLOOD = f"raw1@flood-{FLOOD_EVENTS}-1000"


async def warm_up(proxy: Any) -> int:
    """One request through the process, so its RSS is measured warm; returns RSS in KiB."""
    await quick_request_works(proxy)
    return int(proxy.rss_kib())


async def quick_request_works(proxy: Any) -> float:
    start = time.monotonic()
    async with ws_connect(proxy) as ws:
        await ws.send(create("up@fake", "another session"))
        events = await until_outcome(ws)
    assert events[-1]["type"] == "response.completed"
    return time.monotonic() - start


async def test_slow_websocket_reader_gets_backpressure_then_1013(proxy_process, raw_upstream) -> None:
    fake = raw_upstream
    proxy = proxy_process(slow_client_timeout=2.0, event_queue_size=8)
    m = marker()
    rss = await warm_up(proxy)
    before = await metrics(proxy)
    sock = small_socket(proxy.port)
    async with websockets.connect(
        ws_url(proxy), sock=sock, max_queue=1, max_size=None, compression=None
    ) as ws:
        await ws.send(create(FLOOD, m))
        await recv_json(ws)  # the stream started; from now on this client reads nothing
        sent = await plateau(fake, m)
        # Socket buffers (kernel memory, up to a few MB each way on loopback) hold some; the
        # upstream is blocked long before the end, and the proxy's own memory did not grow.
        assert sent < FLOOD_EVENTS * 0.4, f"backpressure stopped the upstream: {sent} of {FLOOD_EVENTS} sent"
        assert proxy.rss_kib() - rss < 8 * 1024, "the proxy buffered the flood in memory"
        # Other sessions are unaffected while this one is stuck.
        assert await quick_request_works(proxy) < 5.0
        # Past slow_client_timeout the proxy gives up: the upstream is closed...
        assert await wait_upstream(fake, lambda: fake.find(m)[0]["reset_by_client"], 5.0)
        # ...and once the client reads again it finds what was buffered, then a 1013 close.
        with pytest.raises(websockets.ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1013
    assert not fake.find(m)[0]["finished"]
    after = await metrics(proxy)
    key = 'wsproxy_slow_clients_total{transport="ws"}'
    assert metric(after, key) - metric(before, key) == 1
    assert metric(after, 'wsproxy_cancelled_responses_total{reason="slow_client",transport="ws"}') >= 1
    assert metric(after, "wsproxy_ws_sessions") == 0


async def test_slow_sse_reader_gets_backpressure_then_is_cut(proxy_process, raw_upstream) -> None:
    fake = raw_upstream
    proxy = proxy_process(slow_client_timeout=2.0)
    m = marker()
    rss = await warm_up(proxy)
    before = await metrics(proxy)
    sock = small_socket(proxy.port)
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": FLOOD, "input": m, "stream": True}).encode()
    request = (
        b"POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    try:
        await loop.sock_sendall(sock, request)
        async with asyncio.timeout(5):
            head = await loop.sock_recv(sock, 1024)
        assert head.startswith(b"HTTP/1.1 200")
        sent = await plateau(fake, m)
        assert sent < FLOOD_EVENTS * 0.4, f"backpressure stopped the upstream: {sent} of {FLOOD_EVENTS} sent"
        assert proxy.rss_kib() - rss < 8 * 1024, "the proxy buffered the flood in memory"
        assert await quick_request_works(proxy) < 5.0
        assert await wait_upstream(fake, lambda: fake.find(m)[0]["reset_by_client"], 5.0)
        # The stream was cut: reading on finds the buffered events, then the end, no terminal event.
        received = bytearray(head)
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 1 << 20):
                received += chunk
    finally:
        sock.close()
    assert b"response.completed" not in received
    after = await metrics(proxy)
    key = 'wsproxy_slow_clients_total{transport="http"}'
    assert metric(after, key) - metric(before, key) == 1
    assert metric(after, "wsproxy_active_responses") == 0
