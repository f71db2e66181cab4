"""Fixtures for the upstream tests: a scripted fake upstream on 127.0.0.1 (``scripted.py``) in the
test's event loop, and connection pools / providers that are closed (bounded) after each test."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.upstream.scripted import ScriptedServer
from wsproxy.settings import ProviderSettings


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    srv = await ScriptedServer().start()
    try:
        yield srv
    finally:
        await srv.stop()
    assert not srv.errors, f"the scripted server's handler failed: {srv.errors!r}"


@pytest.fixture(params=["1.1", "2"])
def proto(request: pytest.FixtureRequest) -> str:
    """Both wire protocols: HTTP/1.1 and HTTP/2 with prior knowledge (h2c)."""
    return str(request.param)


def provider_settings(url: str, proto: str = "1.1", **overrides: Any) -> ProviderSettings:
    """Small bounds, so a failing test fails in seconds (every one can be overridden)."""
    values: dict[str, Any] = {
        "name": "up",
        "kind": "openai",
        "base_url": url + "/v1",
        "http2": proto == "2",
        "http2_prior_knowledge": proto == "2",
        "connect_timeout": 2.0,
        "first_byte_timeout": 5.0,
        "idle_timeout": 5.0,
        "write_timeout": 5.0,
        "pool_timeout": 2.0,
    }
    values.update(overrides)
    return ProviderSettings(**values)


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., Any]]:
    """``make_pool(url, proto="1.1", **settings)``: a ConnectionPool, closed after the test."""
    from wsproxy.upstream.pool import ConnectionPool

    pools: list[ConnectionPool] = []

    def make(url: str, proto: str = "1.1", **overrides: Any) -> ConnectionPool:
        pool = ConnectionPool(provider_settings(url, proto, **overrides))
        pools.append(pool)
        return pool

    yield make
    async with asyncio.timeout(5):
        for pool in pools:
            await pool.aclose()


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return str(crt), str(key)


def server_context(cert: tuple[str, str], alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    context.set_alpn_protocols(alpn)
    return context


@pytest.fixture
async def tls_server(cert: tuple[str, str], request: pytest.FixtureRequest) -> AsyncIterator[ScriptedServer]:
    srv = await ScriptedServer(ssl_context=server_context(cert, request.param)).start()
    try:
        yield srv
    finally:
        await srv.stop()
    assert not srv.errors
