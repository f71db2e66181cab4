"""Shared fixtures: a fake OpenAI upstream under hypercorn, and wsproxy under real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.servers import HypercornThread, UvicornThread
from tests.redis_server import redis_url  # noqa: F401  (a session fixture: a real redis-server)
from tests.schema import take_violations
from wsproxy.asgi.app import create_app
from wsproxy.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _open_responses_schema() -> Iterator[None]:
    """Fail a test in which wsproxy sent anything that breaks the Open Responses schemas
    (checked by ``tests.schema.SchemaChecked`` around every app the tests serve)."""
    take_violations()
    yield
    violations = take_violations()
    assert not violations, "schema violations:\n" + "\n".join(violations[:5])


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    server = HypercornThread(fake).start()
    try:
        yield fake, server.url + "/v1"
    finally:
        server.stop()


def proxy_settings(tmp_path: Path, upstream_url: str | None = None, **overrides: Any) -> Settings:
    """Settings for a test proxy: local model (fast), a fake OpenAI provider over HTTP/2 (h2c)
    and the same over HTTP/1.1, SQLite store in tmp_path."""
    toml = [
        f'[store]\nbackend = "sqlite"\npath = "{tmp_path / "store.sqlite3"}"\n',
        '[providers.local]\nkind = "local"\ntoken_delay = 0.001\nmodels = ["local"]\n',
    ]
    if upstream_url:
        toml.append(
            f'[providers.up2]\nkind = "openai"\nbase_url = "{upstream_url}"\napi_key = "sk-up"\n'
            "http2_prior_knowledge = true\nmax_retries = 1\nretry_max_wait = 0.5\n"
            f'[providers.up1]\nkind = "openai"\nbase_url = "{upstream_url}"\napi_key = "sk-up"\n'
            "http2 = false\nmax_retries = 1\nretry_max_wait = 0.5\n"
            '[aliases]\nfallback = ["up2@fail-503", "up1@fake"]\n'
        )
    path = tmp_path / "wsproxy.toml"
    path.write_text("\n".join(toml))
    return load_settings(str(path), environ={}, **overrides)


@pytest.fixture
def make_proxy(tmp_path: Path, fake_openai: tuple[FakeOpenAI, str]) -> Iterator[Any]:
    servers: list[UvicornThread] = []

    def start(**overrides: Any) -> UvicornThread:
        settings = proxy_settings(tmp_path, fake_openai[1], **overrides)
        limits = settings.limits
        server = UvicornThread(
            create_app(settings, environ={}),
            ws_max_size=limits.max_ws_message_bytes,
            ws_ping_interval=limits.ws_ping_interval,
            ws_ping_timeout=limits.ws_ping_timeout,
        ).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def proxy(make_proxy: Any) -> UvicornThread:
    server: UvicornThread = make_proxy()
    return server
