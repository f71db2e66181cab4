from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cliserver import CliServer
from tests.e2e.sdk import close_all
from tests.fakes.servers import HypercornThread
from tests.fakes.translated_upstreams import FakeAnthropic, FakeChat


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture
def make_cli_proxy(tmp_path: Path) -> Iterator[Any]:
    """Start wsproxy on ``cli.build_config`` with some ``limits`` changed; stopped after the test."""
    servers: list[CliServer] = []

    def start(**limits: Any) -> CliServer:
        server = CliServer(tmp_path, **limits).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def translated_upstreams() -> Iterator[dict[str, Any]]:
    """The fake Chat Completions and Anthropic upstreams, one pair per test module:
    ``{"chat", "anthropic", "chat_url", "anth_url"}``."""
    chat, anthropic = FakeChat(), FakeAnthropic()
    chat_server = HypercornThread(chat).start()
    anth_server = HypercornThread(anthropic).start()
    try:
        yield {"chat": chat, "anthropic": anthropic, "chat_url": chat_server.url, "anth_url": anth_server.url}
    finally:
        chat_server.stop()
        anth_server.stop()
