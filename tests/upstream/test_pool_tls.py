"""ConnectionPool over TLS: HTTP/2 or HTTP/1.1 chosen by ALPN, certificate verification."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.upstream.scripted import ScriptedServer, bounded
from wsproxy.errors import UpstreamUnavailable

MakePool = Callable[..., Any]


def tls_pool(
    make_pool: MakePool, srv: ScriptedServer, crt: str, http2: bool, verify: str | None = None
) -> Any:
    return make_pool(srv.url, "1.1", http2=http2, http2_prior_knowledge=False, verify=verify or crt)


async def fetch(pool: Any, path: str = "/x") -> tuple[Any, bytes]:
    response = await pool.request("POST", path, [], b"")
    try:
        return response, await response.read_all(1 << 20)
    finally:
        response.close()


@pytest.mark.parametrize("tls_server", [["h2", "http/1.1"]], indirect=True)
@bounded(10)
async def test_alpn_h2(tls_server: ScriptedServer, make_pool: MakePool, cert: tuple[str, str]) -> None:
    pool = tls_pool(make_pool, tls_server, cert[0], http2=True)
    response, data = await fetch(pool, "/first")
    assert (response.http_version, data) == ("2", b"ok")
    results = await asyncio.gather(*(fetch(pool, f"/{i}") for i in range(5)))
    assert all((r.http_version, data) == ("2", b"ok") for r, data in results)
    assert tls_server.connections == 1 and tls_server.conns[0].proto == "2"
    assert tls_server.requests[0].header(":scheme") == "https"


@pytest.mark.parametrize("tls_server", [["http/1.1"]], indirect=True)
@bounded(10)
async def test_alpn_http11_when_the_server_has_no_h2(
    tls_server: ScriptedServer, make_pool: MakePool, cert: tuple[str, str]
) -> None:
    pool = tls_pool(make_pool, tls_server, cert[0], http2=True)
    for _ in range(2):
        response, data = await fetch(pool)
        assert (response.http_version, data) == ("1.1", b"ok")
    assert tls_server.connections == 1 and tls_server.conns[0].proto == "1.1"


@pytest.mark.parametrize("tls_server", [["h2", "http/1.1"]], indirect=True)
@bounded(10)
async def test_http2_false_speaks_http11_over_tls(
    tls_server: ScriptedServer, make_pool: MakePool, cert: tuple[str, str]
) -> None:
    pool = tls_pool(make_pool, tls_server, cert[0], http2=False)
    response, data = await fetch(pool)
    assert (response.http_version, data) == ("1.1", b"ok")
    assert tls_server.conns[0].proto == "1.1"


@pytest.mark.parametrize("tls_server", [["h2", "http/1.1"]], indirect=True)
@bounded(10)
async def test_an_untrusted_certificate_is_unavailable(
    tls_server: ScriptedServer, make_pool: MakePool, cert: tuple[str, str]
) -> None:
    pool = tls_pool(make_pool, tls_server, cert[0], http2=True, verify="true")  # system CAs only
    with pytest.raises(UpstreamUnavailable):
        await pool.request("POST", "/x", [], b"")
    assert pool.connection_count == 0
    # verify = false: accepted.
    pool = tls_pool(make_pool, tls_server, cert[0], http2=True, verify="false")
    response, data = await fetch(pool)
    assert (response.http_version, data) == ("2", b"ok")


def test_cert_fixture_path(cert: tuple[str, str]) -> None:
    assert Path(cert[0]).read_text().startswith("-----BEGIN CERTIFICATE-----")
