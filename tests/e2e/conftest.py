from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cliserver import CliServer
from tests.e2e.sdk import close_all


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
