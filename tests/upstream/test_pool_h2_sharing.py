"""ConnectionPool under HTTP/2 stream limits, graceful GOAWAY, shared connects and ALPN bursts.

- a new HTTP/2 connection may take more streams than the server allows before its SETTINGS
  arrive: the streams the server refuses (RST_STREAM REFUSED_STREAM) are sent again;
- a graceful GOAWAY (NO_ERROR, last_stream_id = an open stream) lets that stream finish;
- cancelling the request that opens an HTTP/2 connection fails nobody waiting to share it;
- over https with ALPN, a cold burst shares the first TLS connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.upstream.scripted import H2Reply, Reply, Request, ScriptedServer, bounded
from tests.upstream.test_pool import conn_of, fetch, read_to_end
from tests.upstream.test_pool_tls import tls_pool

MakePool = Callable[..., Any]


@bounded(15)
async def test_h2_more_streams_than_the_server_allows_open_more_connections(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    server.h2_max_concurrent_streams = 3
    n = 7
    everyone = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if request.route != "/warm":
            if len(server.requests) == n + 1:
                everyone.set()
            await everyone.wait()  # all n at once: more than one connection may carry
        await reply.respond(200, [], [request.route.encode()])

    server.handler = handler
    pool = make_pool(server.url, "2")
    await fetch(pool, "/warm")  # the server's SETTINGS are known from here on
    results = await asyncio.gather(*(fetch(pool, f"/{i}") for i in range(n)))
    assert [data for _, data in results] == [f"/{i}".encode() for i in range(n)]
    assert server.connections >= 3
    assert all(c.max_open_streams <= 3 for c in server.conns), [c.max_open_streams for c in server.conns]
    # The first connection's limit was known: none of its streams had to be refused. (A new
    # connection's streams sent before its SETTINGS arrived may be: see the next test.)
    assert server.conns[0].refused == 0
    assert not any(c.protocol_error for c in server.conns), [c.protocol_error for c in server.conns]


@bounded(15)
async def test_h2_streams_refused_on_a_new_connection_are_retried(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    """A cold pool sends a burst before the server's SETTINGS (limit 3) arrive: the server refuses
    the excess streams (RST_STREAM REFUSED_STREAM, as nginx does). A refused stream was never
    processed (RFC 9113 8.7): the request must go out again, not fail."""
    server.h2_max_concurrent_streams = 3
    n = 7

    async def handler(request: Request, reply: Reply) -> None:
        await asyncio.sleep(0.1)
        await reply.respond(200, [], [request.route.encode()])

    server.handler = handler
    pool = make_pool(server.url, "2")
    results = await asyncio.gather(*(fetch(pool, f"/{i}") for i in range(n)), return_exceptions=True)
    got = [r if isinstance(r, BaseException) else r[1] for r in results]
    assert got == [f"/{i}".encode() for i in range(n)]
    processed = sorted(r.route for r in server.requests)
    assert processed == sorted(f"/{i}" for i in range(n))  # each exactly once
    assert all(c.max_open_streams <= 3 for c in server.conns)


@bounded(10)
async def test_h2_graceful_goaway_lets_the_open_stream_finish(
    server: ScriptedServer, make_pool: MakePool
) -> None:
    release = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        assert isinstance(reply, H2Reply)
        if request.route != "/a":
            await reply.respond(200, [], [request.route.encode()])
            return
        await reply.head(200, [])
        await reply.data(b"before ")
        reply.goaway(last_stream_id=reply.sid)  # graceful: stream /a goes on
        await release.wait()
        await reply.data(b"after", end=True)

    server.handler = handler
    pool = make_pool(server.url, "2")
    a = await pool.request("POST", "/a", [], b"")
    assert await a.read() == b"before "
    await asyncio.sleep(0.1)  # the GOAWAY reached the client
    _, data = await fetch(pool, "/b")
    assert data == b"/b"
    assert conn_of(server, "/b") == 2
    assert server.conns[0].streams_after_goaway == 0
    release.set()
    assert await read_to_end(a) == b"after"  # the stream the GOAWAY let finish did
    assert a.complete
    a.close()
    _, data = await fetch(pool, "/c")
    assert conn_of(server, "/c") == 2


@bounded(15)
async def test_h2_one_cancelled_request_does_not_fail_those_sharing_its_connect(
    make_pool: MakePool,
) -> None:
    """Requests that wait for the HTTP/2 connection another request is opening must not fail
    because that request was cancelled (its client left) while connecting."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    srv = ScriptedServer()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # the backlog is full: connecting hangs (SYNs dropped, retried)
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        await asyncio.sleep(0.1)
        pool = make_pool(f"http://127.0.0.1:{port}", "2", connect_timeout=5)
        first = asyncio.ensure_future(fetch(pool, "/first"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(fetch(pool, "/second"))
        await asyncio.sleep(0.1)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        for s in fillers:
            s.close()
        await srv.start(sock=listener)  # accepting now: the client's SYN retry gets through
        _, data = await second
        assert data == b"ok"
    finally:
        for s in fillers:
            s.close()
        await srv.stop()
        listener.close()


@pytest.mark.parametrize("tls_server", [["h2", "http/1.1"]], indirect=True)
@bounded(10)
async def test_alpn_h2_cold_burst_shares_one_connection(
    tls_server: ScriptedServer, make_pool: MakePool, cert: tuple[str, str]
) -> None:
    """A burst on a cold pool, before the first handshake told whether the provider speaks
    HTTP/2: it must not open one TLS connection per request (up to max_connections)."""
    pool = tls_pool(make_pool, tls_server, cert[0], http2=True)
    results = await asyncio.gather(*(fetch(pool, f"/{i}") for i in range(20)))
    assert all((r.http_version, data) == ("2", b"ok") for r, data in results)
    assert tls_server.connections <= 2, f"{tls_server.connections} TLS connections for one burst"
