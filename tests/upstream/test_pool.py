"""ConnectionPool on real sockets against a scripted upstream: HTTP/1.1 keep-alive and HTTP/2
(h2c) multiplexing, the pool's bounds, body framings, timeouts, resets, cancellation, flow control.

Every test is bounded in time (``@bounded``), and what the server saw (connections accepted, EOFs,
RST_STREAM codes, streams open at once) is asserted, not only what the client got.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from h2.errors import ErrorCodes

from tests.upstream.scripted import H1Reply, H2Reply, Reply, Request, ScriptedServer, bounded
from wsproxy.errors import UpstreamTimeout, UpstreamUnavailable

MakePool = Callable[..., Any]


async def fetch(pool: Any, path: str = "/x", body: bytes = b"", headers: Any = ()) -> tuple[Any, bytes]:
    """One whole request: the response (closed) and its body."""
    response = await pool.request("POST", path, list(headers), body)
    try:
        data = await response.read_all(1 << 30)
    finally:
        response.close()
    return response, data


async def read_to_end(response: Any) -> bytes:
    data = bytearray()
    while chunk := await response.read():
        data += chunk
    return bytes(data)


def conn_of(server: ScriptedServer, path: str) -> int:
    [request] = [r for r in server.requests if r.route == path]
    return request.conn


# -- basics, both protocols ------------------------------------------------------------------


@bounded(10)
async def test_path_headers_and_body_reach_the_server(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    pool = make_pool(server.url, proto)
    response, data = await fetch(
        pool, "/responses", b'{"a": 1}', [("authorization", "Bearer sk-1"), ("x-trace", "T1")]
    )
    assert (response.status, data, response.http_version) == (200, b"ok", proto)
    assert response.complete
    [seen] = server.requests
    assert (seen.method, seen.path, seen.body, seen.proto) == ("POST", "/v1/responses", b'{"a": 1}', proto)
    assert seen.header("authorization") == "Bearer sk-1"
    assert seen.header("x-trace") == "T1"
    authority = seen.header("host") if proto == "1.1" else seen.header(":authority")
    assert authority == f"127.0.0.1:{server.port}"
    if proto == "1.1":
        assert seen.header("content-length") == "8"
    else:
        assert seen.header(":scheme") == "http"


@bounded(10)
async def test_base_url_path_prefix_is_kept(server: ScriptedServer, make_pool: MakePool, proto: str) -> None:
    pool = make_pool(server.url, proto, base_url=server.url + "/api/openai/v1/")
    await fetch(pool, "/responses/compact")
    assert [r.path for r in server.requests] == ["/api/openai/v1/responses/compact"]


@bounded(10)
async def test_response_headers_are_lower_cased(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(201, [("Content-Type", "text/event-stream"), ("X-Request-ID", "Abc-1")], [b"x"])

    server.handler = handler
    pool = make_pool(server.url)
    response, _ = await fetch(pool)
    assert response.status == 201
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-request-id"] == "Abc-1"  # the value is kept as sent
    assert all(name == name.lower() for name in response.headers)


@bounded(10)
async def test_h2_response_headers(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(429, [("retry-after", "3"), ("x-ratelimit-remaining", "0")], [b"slow down"])

    server.handler = handler
    pool = make_pool(server.url, "2")
    response, data = await fetch(pool)
    assert (response.status, response.http_version, data) == (429, "2", b"slow down")
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert not any(name.startswith(":") for name in response.headers)


@bounded(10)
async def test_error_status_is_an_answer_not_an_exception(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(503, [("content-type", "application/json")], [b'{"error": 1}'])

    server.handler = handler
    pool = make_pool(server.url, proto)
    response, data = await fetch(pool)
    assert (response.status, data) == (503, b'{"error": 1}')


@bounded(10)
async def test_connect_refused_is_unavailable(make_pool: MakePool, proto: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    pool = make_pool(f"http://127.0.0.1:{port}", proto)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        await pool.request("POST", "/x", [], b"")
    assert not isinstance(info.value, UpstreamTimeout)
    assert info.value.retryable
    assert time.monotonic() - started < 1.5
    assert pool.connection_count == 0


@bounded(10)
async def test_connect_timeout_is_upstream_timeout(make_pool: MakePool) -> None:
    # A listener that never accepts, its backlog full: the kernel drops further SYNs.
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        await asyncio.sleep(0.1)
        pool = make_pool(f"http://127.0.0.1:{port}", connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.request("POST", "/x", [], b"")
        assert 0.25 <= time.monotonic() - started < 2.0
        assert pool.connection_count == 0
    finally:
        for s in fillers:
            s.close()
        listener.close()


@bounded(10)
async def test_large_request_body_is_delivered_whole(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    """More than the initial HTTP/2 flow-control window (64 KiB): the client must wait for the
    server's WINDOW_UPDATEs instead of overrunning or stalling."""

    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(200, [], [hashlib.sha256(request.body).hexdigest().encode()])

    server.handler = handler
    body = os.urandom(300 * 1024 + 7)
    pool = make_pool(server.url, proto)
    _, digest = await fetch(pool, body=body)
    assert digest == hashlib.sha256(body).hexdigest().encode()
    assert len(server.requests[0].body) == len(body)
    assert not server.conns[0].protocol_error
    # And again on the same connection: the windows were accounted for correctly.
    _, digest = await fetch(pool, body=body[::-1])
    assert digest == hashlib.sha256(body[::-1]).hexdigest().encode()
    assert server.connections == 1


@bounded(10)
async def test_aclose_closes_every_connection(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    release = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        await release.wait()
        await reply.respond(200, [], [b"ok"])

    server.handler = handler
    pool = make_pool(server.url, proto)
    tasks = [asyncio.ensure_future(fetch(pool, f"/{i}")) for i in range(2)]
    await server.wait_for(lambda: len(server.requests) == 2)
    release.set()
    await asyncio.gather(*tasks)
    assert pool.connection_count == server.connections
    await pool.aclose()
    for conn in server.conns:
        async with asyncio.timeout(2):
            await conn.client_gone.wait()
    assert pool.connection_count == 0
    assert pool.idle_count == 0


# -- HTTP/1.1 keep-alive ---------------------------------------------------------------------


@bounded(10)
async def test_keepalive_reuses_the_connection(server: ScriptedServer, make_pool: MakePool) -> None:
    pool = make_pool(server.url)
    for _ in range(3):
        response, data = await fetch(pool)
        assert data == b"ok" and response.complete
        assert (pool.connection_count, pool.idle_count) == (1, 1)
    assert server.connections == 1
    assert server.conns[0].requests == 3
    assert not server.conns[0].client_gone.is_set()


@bounded(10)
async def test_idle_connections_are_reused_lifo(server: ScriptedServer, make_pool: MakePool) -> None:
    pool = make_pool(server.url)
    a = await pool.request("POST", "/a", [], b"")
    b = await pool.request("POST", "/b", [], b"")  # a is busy: a second connection
    assert server.connections == 2
    assert await a.read_all(100) == b"ok"
    a.close()
    assert await b.read_all(100) == b"ok"
    b.close()  # back last: first out
    assert pool.idle_count == 2
    await fetch(pool, "/c")
    assert conn_of(server, "/c") == conn_of(server, "/b") != conn_of(server, "/a")
    await fetch(pool, "/d")
    assert conn_of(server, "/d") == conn_of(server, "/b")
    assert server.connections == 2


@bounded(10)
async def test_keepalive_expiry_is_respected(server: ScriptedServer, make_pool: MakePool, proto: str) -> None:
    pool = make_pool(server.url, proto, keepalive_expiry=0.3)
    await fetch(pool, "/a")
    await asyncio.sleep(0.1)
    await fetch(pool, "/b")  # within the expiry: reused
    assert server.connections == 1
    await asyncio.sleep(0.5)
    await fetch(pool, "/c")  # idle longer than keepalive_expiry: a new connection
    assert server.connections == 2
    assert conn_of(server, "/c") == 2
    # The expired connection is closed, not leaked.
    async with asyncio.timeout(2):
        await server.conns[0].client_gone.wait()
    assert pool.connection_count == 1


@bounded(10)
async def test_max_keepalive_connections_bounds_the_idle_list(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    release = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        await release.wait()
        await reply.respond(200, [], [b"ok"])

    server.handler = handler
    pool = make_pool(server.url, max_keepalive_connections=1)
    tasks = [asyncio.ensure_future(fetch(pool, f"/{i}")) for i in range(3)]
    await server.wait_for(lambda: len(server.requests) == 3)
    assert server.connections == 3
    release.set()
    await asyncio.gather(*tasks)
    assert pool.idle_count == 1
    assert pool.connection_count == 1
    await server.wait_for(lambda: sum(c.client_gone.is_set() for c in server.conns) == 2, timeout=2)
    await fetch(pool, "/again")  # the one kept is used
    assert server.connections == 3


@pytest.mark.parametrize("how", ["fin", "rst", "fin-at-once"])
@bounded(10)
async def test_server_closing_an_idle_connection_does_not_break_the_next_request(
    server: ScriptedServer, make_pool: MakePool, how: str
) -> None:
    """The server drops a keep-alive connection after answering (no ``connection: close``): the
    next request must not fail on it (nor be lost)."""

    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(200, [], [request.route.encode()])
        if request.route == "/first":
            reply.abort() if how == "rst" else reply.close()

    server.handler = handler
    pool = make_pool(server.url)
    _, data = await fetch(pool, "/first")
    assert data == b"/first"
    if how != "fin-at-once":
        await server.wait_for(lambda: server.conns[0].closed_by_server)
        await asyncio.sleep(0.1)  # the FIN/RST reached the client
    _, data = await fetch(pool, "/second")
    assert data == b"/second"
    assert conn_of(server, "/second") == 2
    assert [r.route for r in server.requests] == ["/first", "/second"]


@bounded(10)
async def test_connection_close_header_is_honoured(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(200, [("Connection", "close")], [b"ok"])  # and the server keeps it open

    server.handler = handler
    pool = make_pool(server.url)
    await fetch(pool, "/a")
    await fetch(pool, "/b")
    assert (conn_of(server, "/a"), conn_of(server, "/b")) == (1, 2)
    async with asyncio.timeout(2):
        await server.conns[0].client_gone.wait()  # the client closed it


@bounded(10)
async def test_max_connections_is_never_exceeded(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await asyncio.sleep(0.1)
        await reply.respond(200, [], [request.route.encode()])

    server.handler = handler
    pool = make_pool(server.url, max_connections=2, pool_timeout=5)
    results = await asyncio.gather(*(fetch(pool, f"/{i}") for i in range(6)))
    assert [data for _, data in results] == [f"/{i}".encode() for i in range(6)]
    assert server.connections == 2


@bounded(10)
async def test_pool_exhausted_is_503(server: ScriptedServer, make_pool: MakePool, proto: str) -> None:
    if proto == "2":
        server.h2_max_concurrent_streams = 1

    async def handler(request: Request, reply: Reply) -> None:
        await reply.head(200, [("content-length", "10")])
        await reply.data(b"12345")
        await reply.wait_client_gone()

    server.handler = handler
    pool = make_pool(server.url, proto, max_connections=1, pool_timeout=0.3)
    held = await pool.request("POST", "/held", [], b"")
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        await pool.request("POST", "/more", [], b"")
    assert info.value.status == 503
    assert 0.25 <= time.monotonic() - started < 2.0
    assert server.connections == 1
    assert [r.route for r in server.requests] == ["/held"]
    held.close()


@pytest.mark.parametrize("complete", [True, False])
@bounded(10)
async def test_a_waiter_gets_the_freed_connection(
    server: ScriptedServer, make_pool: MakePool, proto: str, complete: bool
) -> None:
    """Waiting for a free connection (max_connections reached) ends when one is given back:
    reused after a complete body, replaced after an incomplete one."""
    if proto == "2":
        server.h2_max_concurrent_streams = 1
    release = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if request.route == "/held":
            await reply.head(200, [("content-length", "4")])
            await reply.data(b"he")
            await release.wait()
            await reply.data(b"ld")
            if isinstance(reply, H2Reply):
                await reply.end()
        else:
            await reply.respond(200, [], [b"next"])

    server.handler = handler
    pool = make_pool(server.url, proto, max_connections=1, pool_timeout=5)
    held = await pool.request("POST", "/held", [], b"")
    waiter = asyncio.ensure_future(fetch(pool, "/next"))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    if complete:
        release.set()
        assert await held.read_all(100) == b"held"
        assert held.complete
    held.close()
    _, data = await waiter
    assert data == b"next"
    if complete or proto == "2":
        assert server.connections == 1
    else:
        assert server.connections == 2


# -- HTTP/1.1 bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@bounded(10)
async def test_body_framings(server: ScriptedServer, make_pool: MakePool, framing: str) -> None:
    parts = [b"hello ", b"", b"chunked ", b"w" * 70000, b"orld"]

    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(200, [("content-type", "text/plain")], parts, framing=framing, delay=0.05)

    server.handler = handler
    pool = make_pool(server.url)
    response = await pool.request("POST", "/a", [], b"")
    assert response.status == 200 and not response.complete
    first = await response.read()
    assert first == b"hello "  # what arrived, without waiting for the rest
    rest = await read_to_end(response)
    assert first + rest == b"".join(parts)
    assert response.complete
    assert await response.read() == b""  # the end stays the end
    response.close()
    _, data = await fetch(pool, "/b")
    assert data == b"".join(parts)
    if framing == "close":
        assert server.connections == 2  # a body delimited by the close cannot be followed
    else:
        assert server.connections == 1 and conn_of(server, "/b") == 1


@pytest.mark.parametrize("framing", ["length", "chunked"])
@bounded(10)
async def test_empty_body(server: ScriptedServer, make_pool: MakePool, framing: str) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(204 if framing == "length" else 200, [], [], framing=framing)

    server.handler = handler
    pool = make_pool(server.url)
    response, data = await fetch(pool, "/a")
    assert data == b"" and response.complete
    await fetch(pool, "/b")
    assert server.connections == 1


@bounded(10)
async def test_read_all_stops_at_the_limit(server: ScriptedServer, make_pool: MakePool, proto: str) -> None:
    body = bytes(range(256)) * 400  # 100 KiB

    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(200, [], [body[:1000], body[1000:]], delay=0.05)

    server.handler = handler
    pool = make_pool(server.url, proto)
    response = await pool.request("POST", "/a", [], b"")
    assert await response.read_all(100) == body[:100]
    response.close()
    response = await pool.request("POST", "/b", [], b"")
    assert await response.read_all(len(body)) == body
    assert await response.read_all(10) == b""
    assert response.complete
    response.close()


@bounded(10)
async def test_close_of_an_incomplete_h1_response_closes_the_connection(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    gone = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if request.route == "/b":
            await reply.respond(200, [], [b"ok"])
            return
        await reply.head(200, [("content-length", "1000")])
        await reply.data(b"x" * 10)
        await reply.wait_client_gone()
        gone.set()

    server.handler = handler
    pool = make_pool(server.url)
    response = await pool.request("POST", "/a", [], b"")
    assert await response.read() == b"x" * 10
    assert not response.complete
    response.close()
    async with asyncio.timeout(2):
        await gone.wait()  # the server saw EOF
    assert pool.connection_count == 0 and pool.idle_count == 0
    await fetch(pool, "/b")
    assert conn_of(server, "/b") == 2


# -- timeouts and failures while reading, both protocols --------------------------------------


@bounded(10)
async def test_idle_timeout_while_reading(server: ScriptedServer, make_pool: MakePool, proto: str) -> None:
    gone = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        await reply.head(200, [("content-type", "text/event-stream")])  # no length: a stream
        await reply.data(b"data: 1\n\n")
        await reply.wait_client_gone()
        gone.set()

    server.handler = handler
    pool = make_pool(server.url, proto, idle_timeout=0.3)
    response = await pool.request("POST", "/a", [], b"")
    assert await response.read() == b"data: 1\n\n"
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await response.read()
    assert 0.2 <= time.monotonic() - started < 2.0
    assert not response.complete
    response.close()
    async with asyncio.timeout(2):
        await gone.wait()  # HTTP/1.1: the connection closed; HTTP/2: the stream reset
    if proto == "2":
        assert server.conns[0].resets == {server.requests[0].stream_id: ErrorCodes.CANCEL}


@bounded(10)
async def test_idle_timeout_restarts_with_each_chunk(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await reply.respond(200, [], [b"a", b"b", b"c", b"d", b"e", b"f"], delay=0.15)

    server.handler = handler
    pool = make_pool(server.url, proto, idle_timeout=0.4)
    _, data = await fetch(pool)  # 0.75 s in total, never 0.4 s of silence
    assert data == b"abcdef"


@bounded(10)
async def test_h2_idle_timeout_is_per_stream(server: ScriptedServer, make_pool: MakePool) -> None:
    """A silent stream times out even while another stream of the same connection is busy."""

    async def handler(request: Request, reply: Reply) -> None:
        await reply.head(200, [])
        await reply.data(b"start")
        if request.route == "/silent":
            await reply.wait_client_gone()
            return
        for _ in range(30):
            await asyncio.sleep(0.05)
            await reply.data(b".")
        assert isinstance(reply, H2Reply)
        await reply.end()

    server.handler = handler
    pool = make_pool(server.url, "2", idle_timeout=0.4)
    silent = await pool.request("POST", "/silent", [], b"")
    busy = await pool.request("POST", "/busy", [], b"")
    assert server.connections == 1
    busy_reader = asyncio.ensure_future(read_to_end(busy))
    assert await silent.read() == b"start"
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await silent.read()
    assert 0.3 <= time.monotonic() - started < 1.2
    assert await busy_reader == b"start" + b"." * 30
    silent.close()
    busy.close()


@bounded(10)
async def test_connection_reset_mid_body(server: ScriptedServer, make_pool: MakePool, proto: str) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.route == "/b":
            await reply.respond(200, [], [b"ok"])
            return
        await reply.head(200, [("content-length", "100000")])
        await reply.data(b"y" * 1000)
        await asyncio.sleep(0.2)
        reply.abort()

    server.handler = handler
    pool = make_pool(server.url, proto)
    response = await pool.request("POST", "/a", [], b"")
    got = bytearray()
    with pytest.raises(UpstreamUnavailable):
        while chunk := await response.read():
            got += chunk
    assert bytes(got) == b"y" * 1000
    assert not response.complete
    response.close()
    assert pool.connection_count == 0
    _, data = await fetch(pool, "/b")  # a new connection
    assert data == b"ok" and conn_of(server, "/b") == 2


@bounded(10)
async def test_h1_early_eof_with_content_length_is_an_error(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    """A body cut short by a plain close (FIN) is not a complete body."""

    async def handler(request: Request, reply: Reply) -> None:
        await reply.head(200, [("content-length", "100")])
        await reply.data(b"z" * 10)
        reply.close()

    server.handler = handler
    pool = make_pool(server.url)
    response = await pool.request("POST", "/a", [], b"")
    got = bytearray()
    with pytest.raises(UpstreamUnavailable):
        while chunk := await response.read():
            got += chunk
    assert bytes(got) == b"z" * 10 and not response.complete
    response.close()


@bounded(10)
async def test_server_closing_before_answering_is_unavailable(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        reply.close()

    server.handler = handler
    pool = make_pool(server.url, proto)
    with pytest.raises(UpstreamUnavailable):
        await pool.request("POST", "/a", [], b"")
    assert pool.connection_count == 0


@bounded(10)
async def test_h2_stream_reset_mid_body_leaves_the_connection_usable(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        if request.route == "/b":
            await reply.respond(200, [], [b"fine"])
            return
        await reply.head(200, [])
        await reply.data(b"part")
        await asyncio.sleep(0.1)
        reply.reset(ErrorCodes.INTERNAL_ERROR)

    server.handler = handler
    pool = make_pool(server.url, "2")
    response = await pool.request("POST", "/a", [], b"")
    got = bytearray()
    with pytest.raises(UpstreamUnavailable):
        while chunk := await response.read():
            got += chunk
    assert bytes(got) == b"part"
    response.close()
    _, data = await fetch(pool, "/b")
    assert data == b"fine"
    assert server.connections == 1
    assert server.conns[0].resets == {}  # nothing to reset: the server did


@bounded(10)
async def test_h2_protocol_error_is_unavailable(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        if request.conn > 1:
            await reply.respond(200, [], [b"fine"])
            return
        await reply.head(200, [])
        await reply.data(b"part")
        await asyncio.sleep(0.1)
        reply.garbage()

    server.handler = handler
    pool = make_pool(server.url, "2")
    response = await pool.request("POST", "/a", [], b"")
    with pytest.raises(UpstreamUnavailable):
        while await response.read():
            pass
    response.close()
    _, data = await fetch(pool, "/b")
    assert data == b"fine" and conn_of(server, "/b") == 2


# -- HTTP/2 multiplexing, cancellation, GOAWAY, flow control ----------------------------------


@bounded(15)
async def test_h2_many_concurrent_streams_share_one_connection(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    n = 40
    everyone = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if len(server.requests) == n:
            everyone.set()
        await everyone.wait()  # all n streams are open at once before any is answered
        await reply.respond(200, [], [request.route.encode(), b"!"], delay=0.01)

    server.handler = handler
    pool = make_pool(server.url, "2")  # a cold pool: the first connection is shared
    results = await asyncio.gather(*(fetch(pool, f"/{i}") for i in range(n)))
    assert [data for _, data in results] == [f"/{i}!".encode() for i in range(n)]
    assert all(r.http_version == "2" for r, _ in results)
    assert server.connections == 1
    assert server.conns[0].max_open_streams == n
    assert pool.connection_count == 1


@bounded(10)
async def test_h2_close_of_an_incomplete_response_sends_cancel(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.route == "/b":
            await reply.respond(200, [], [b"fine"])
            return
        await reply.head(200, [])
        await reply.data(b"part")
        await reply.wait_client_gone()

    server.handler = handler
    pool = make_pool(server.url, "2")
    response = await pool.request("POST", "/a", [], b"")
    assert await response.read() == b"part"
    response.close()
    sid = server.requests[0].stream_id
    await server.wait_for(lambda: sid in server.conns[0].resets, timeout=2)
    assert server.conns[0].resets[sid] == ErrorCodes.CANCEL
    assert not server.conns[0].client_gone.is_set()
    _, data = await fetch(pool, "/b")
    assert data == b"fine"
    assert server.connections == 1 and pool.connection_count == 1


@bounded(10)
async def test_h2_close_before_the_body_was_read_still_cancels(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    """Closed right after the head (a client that left): the stream must not stay open on the
    server, and its slot must be freed (max_concurrent_streams 1: the next request needs it)."""
    server.h2_max_concurrent_streams = 1

    async def handler(request: Request, reply: Reply) -> None:
        if request.route != "/a":
            await reply.respond(200, [], [b"fine"])
            return
        await reply.head(200, [])
        await reply.wait_client_gone()

    server.handler = handler
    pool = make_pool(server.url, "2", max_connections=1, pool_timeout=2)
    await fetch(pool, "/warm")
    response = await pool.request("POST", "/a", [], b"")
    response.close()
    _, data = await fetch(pool, "/b")
    assert data == b"fine"
    assert server.connections == 1
    assert server.conns[0].resets == {server.requests[1].stream_id: ErrorCodes.CANCEL}


@bounded(10)
async def test_h2_goaway_sends_new_requests_to_a_new_connection(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        await reply.respond(200, [], [request.route.encode()])
        if request.route == "/a":
            reply.goaway(last_stream_id=reply.sid)  # NO_ERROR: /a was processed, no new streams

    server.handler = handler
    pool = make_pool(server.url, "2")
    _, data = await fetch(pool, "/a")
    assert data == b"/a"
    await asyncio.sleep(0.1)  # the GOAWAY reached the client
    for path in ("/b", "/c"):
        _, data = await fetch(pool, path)
        assert data == path.encode()
        assert conn_of(server, path) == 2
    assert server.conns[0].streams_after_goaway == 0
    async with asyncio.timeout(2):
        await server.conns[0].client_gone.wait()  # the client let the old connection go


@bounded(10)
async def test_h2_goaway_with_error_fails_open_streams(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        if request.conn > 1:
            await reply.respond(200, [], [b"fine"])
            return
        await reply.head(200, [])
        await reply.data(b"part")
        await asyncio.sleep(0.1)
        reply.goaway(last_stream_id=0, code=ErrorCodes.INTERNAL_ERROR)
        await asyncio.sleep(0.05)
        reply.close()

    server.handler = handler
    pool = make_pool(server.url, "2")
    response = await pool.request("POST", "/a", [], b"")
    with pytest.raises(UpstreamUnavailable):
        while await response.read():
            pass
    response.close()
    _, data = await fetch(pool, "/b")
    assert data == b"fine" and conn_of(server, "/b") == 2


@bounded(20)
async def test_h2_slow_reader_is_flow_controlled(server: ScriptedServer, make_pool: MakePool) -> None:
    """A reader that stops reading makes the server stop sending: the client's buffering is
    bounded by its flow-control window, not by the size of the body."""
    total = 64 * 1024 * 1024
    piece = b"f" * (256 * 1024)
    replies: list[Reply] = []

    async def handler(request: Request, reply: Reply) -> None:
        replies.append(reply)
        await reply.head(200, [("content-length", str(total))])
        for _ in range(total // len(piece)):
            await reply.data(piece)
        assert isinstance(reply, H2Reply)
        await reply.end()

    server.handler = handler
    pool = make_pool(server.url, "2")
    response = await pool.request("POST", "/a", [], b"")
    await asyncio.sleep(0.5)  # not reading
    stalled_at = replies[0].sent
    await asyncio.sleep(0.3)
    assert replies[0].sent == stalled_at, "the server kept sending to a reader that does not read"
    assert stalled_at <= 16 * 1024 * 1024, f"{stalled_at} bytes buffered for a reader that does not read"
    received = 0
    while chunk := await response.read():
        received += len(chunk)
    assert received == total and response.complete
    response.close()


@bounded(20)
async def test_h1_slow_reader_is_flow_controlled(server: ScriptedServer, make_pool: MakePool) -> None:
    """The HTTP/1.1 equivalent: the client stops reading the socket (TCP backpressure)."""
    total = 256 * 1024 * 1024
    piece = b"f" * (1024 * 1024)
    replies: list[Reply] = []

    async def handler(request: Request, reply: Reply) -> None:
        replies.append(reply)
        await reply.head(200, [("content-length", str(total))])
        for _ in range(total // len(piece)):
            await reply.data(piece)

    server.handler = handler
    pool = make_pool(server.url)
    response = await pool.request("POST", "/a", [], b"")
    await asyncio.sleep(0.5)  # not reading
    stalled_at = replies[0].sent
    await asyncio.sleep(0.3)
    assert replies[0].sent == stalled_at, "the server kept sending to a reader that does not read"
    # Kernel socket buffers on loopback hold tens of MiB; the point is that it stops.
    assert stalled_at <= 64 * 1024 * 1024, f"{stalled_at} bytes buffered for a reader that does not read"
    received = 0
    while chunk := await response.read():
        received += len(chunk)
    assert received == total and response.complete
    response.close()
    assert isinstance(replies[0], H1Reply)


# -- cancellation and the pool's bookkeeping ---------------------------------------------------


@bounded(10)
async def test_cancelled_while_waiting_for_the_head(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    """HTTP/1.1: the connection is closed (its answer would come later); HTTP/2: the stream is
    reset with CANCEL and the connection kept."""
    gone = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if request.route == "/b":
            await reply.respond(200, [], [b"fine"])
            return
        await reply.wait_client_gone()
        gone.set()

    server.handler = handler
    pool = make_pool(server.url, proto)
    task = asyncio.ensure_future(pool.request("POST", "/a", [], b""))
    await server.wait_for(lambda: len(server.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(2):
        await gone.wait()
    if proto == "2":
        assert server.conns[0].resets == {server.requests[0].stream_id: ErrorCodes.CANCEL}
        assert pool.connection_count == 1
    else:
        assert pool.connection_count == 0 and pool.idle_count == 0
    _, data = await fetch(pool, "/b")
    assert data == b"fine"


@bounded(10)
async def test_a_cancelled_waiter_does_not_take_a_connection(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    if proto == "2":
        server.h2_max_concurrent_streams = 1
    pool = make_pool(server.url, proto, max_connections=1, pool_timeout=5)
    held = await pool.request("POST", "/held", [], b"")
    waiters = [asyncio.ensure_future(fetch(pool, f"/w{i}")) for i in range(3)]
    await asyncio.sleep(0.1)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert await held.read_all(100) == b"ok"
    held.close()
    _, data = await fetch(pool, "/next")  # at once: no cancelled waiter holds the slot
    assert data == b"ok"
    assert [r.route for r in server.requests] == ["/held", "/next"]
    assert server.connections == 1


@pytest.mark.parametrize("status", [204, 304])
@bounded(10)
async def test_bodyless_statuses_without_length_keep_the_connection(
    server: ScriptedServer, make_pool: MakePool, status: int
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.route == "/a":
            await reply.head(status, [("etag", "x")])  # no length, no chunking: none is needed
        else:
            await reply.respond(200, [], [b"next"])

    server.handler = handler
    pool = make_pool(server.url)
    response, data = await fetch(pool, "/a")
    assert (response.status, data) == (status, b"")
    assert response.complete
    _, data = await fetch(pool, "/b")
    assert data == b"next"
    assert server.connections == 1


@bounded(10)
async def test_informational_answer_is_skipped(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H1Reply)
        await reply.head(100, [])
        await reply.respond(200, [("x-final", "1")], [b"final"])

    server.handler = handler
    pool = make_pool(server.url)
    response, data = await fetch(pool)
    assert (response.status, data, response.headers.get("x-final")) == (200, b"final", "1")


@bounded(10)
async def test_h2_headers_only_answer(server: ScriptedServer, make_pool: MakePool) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        reply.c.h2.send_headers(reply.sid, [(":status", "204"), ("x-a", "1")], end_stream=True)
        reply.c.flush()

    server.handler = handler
    pool = make_pool(server.url, "2")
    response, data = await fetch(pool)
    assert (response.status, data, response.headers["x-a"]) == (204, b"", "1")
    assert response.complete
    assert server.conns[0].resets == {}  # complete: nothing to cancel


@bounded(10)
async def test_connection_count_returns_to_zero_after_failures(
    server: ScriptedServer, make_pool: MakePool, proto: str
) -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await reply.head(200, [("content-length", "10")])
        await reply.data(b"12")
        reply.abort()

    server.handler = handler
    pool = make_pool(server.url, proto)
    for _ in range(3):
        response = await pool.request("POST", "/a", [], b"")
        with pytest.raises(UpstreamUnavailable):
            await response.read_all(100)
        response.close()
    await asyncio.sleep(0.05)
    assert (pool.connection_count, pool.idle_count) == (0, 0)


@bounded(30)
async def test_h2_unread_bytes_of_closed_streams_go_back_to_the_connection_window(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    """Streams closed with data still buffered (clients that left) must return those bytes to the
    connection's flow-control window, or after enough of them no stream on the connection could
    receive anything. 140 x 200 KiB is more than the whole connection window."""
    piece = b"u" * (200 * 1024)
    replies: dict[str, Reply] = {}

    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        if request.route == "/last":
            await reply.respond(200, [], [piece, piece])
            return
        replies[request.route] = reply
        await reply.head(200, [])
        await reply.data(piece)
        await reply.wait_client_gone()

    server.handler = handler
    pool = make_pool(server.url, "2")
    for i in range(140):
        response = await pool.request("POST", f"/left-{i}", [], b"")
        await server.wait_for(lambda i=i: replies[f"/left-{i}"].sent >= len(piece), timeout=2)
        response.close()  # nothing read
    _, data = await fetch(pool, "/last")
    assert data == piece + piece
    assert server.connections == 1


@bounded(10)
async def test_h1_header_with_a_line_break_is_refused_before_anything_is_sent(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    from wsproxy.errors import UpstreamError

    pool = make_pool(server.url, "1.1")
    with pytest.raises(UpstreamError, match="line break"):
        await pool.request("POST", "/x", [("x-note", "a\r\nx-forged: 1")], b"")
    with pytest.raises(UpstreamError, match="Latin-1"):
        await pool.request("POST", "/x", [("authorization", "Bearer \u2603")], b"")
    _, data = await fetch(pool, "/y")
    assert data == b"ok"
    assert [r.route for r in server.requests] == ["/y"]
    assert server.connections == 1 and pool.connection_count == 1


@bounded(10)
async def test_h2_stream_reset_while_the_request_body_waits_for_window_is_a_clean_error(
    make_pool: MakePool,
) -> None:
    """A server that resets the stream instead of opening its flow-control window for the rest
    of a large request body: the request fails with UpstreamUnavailable, not an h2 exception."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        await asyncio.sleep(0.1)  # the client is now waiting for window
                        conn.reset_stream(event.stream_id, ErrorCodes.INTERNAL_ERROR)
                writer.write(conn.data_to_send())
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = make_pool(f"http://127.0.0.1:{port}/v1", "2")
        with pytest.raises(UpstreamUnavailable, match="reset"):
            await pool.request("POST", "/x", [], b"b" * 100_000)
        await pool.aclose()  # the server's handler sees the end of the connection
    finally:
        server.close()
        async with asyncio.timeout(5):
            await server.wait_closed()
