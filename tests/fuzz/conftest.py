"""A wsproxy (local model only: fast, no network) shared by the fuzz tests of one module.

Hypothesis runs many examples per test, so the server is module-scoped; every example opens its
own WebSocket, so examples do not share a connection-local cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings

CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture(scope="module")
def fuzz_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornThread]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = tmp / "wsproxy.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{tmp / "store.sqlite3"}"\n'
        "[limits]\nws_max_queued = 64\n"
        '[providers.local]\nkind = "local"\ntoken_delay = 0.0\nmodels = ["local"]\n'
    )
    settings = load_settings(str(config), environ={})
    server = UvicornThread(create_app(settings, environ={}), ws_max_size=settings.limits.max_ws_message_bytes)
    server.start()
    try:
        yield server
    finally:
        server.stop()
