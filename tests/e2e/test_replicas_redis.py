"""Two wsproxy replicas behind no load balancer at all, sharing one real Redis store: whatever one
replica stored, the other retrieves, continues from (HTTP and WebSocket) and deletes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.sdk import client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[tuple[UvicornThread, UvicornThread]]:
    cfg = tmp_path / "r.toml"
    cfg.write_text(
        f'api_keys = ["sk-a"]\n[store]\nbackend = "redis"\nurl = "{redis_url}"\n'
        '[providers.local]\nkind = "local"\ntoken_delay = 0.0\n'
    )
    settings = load_settings(str(cfg), environ={})
    a = UvicornThread(create_app(settings, environ={})).start()
    b = UvicornThread(create_app(settings, environ={})).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_state_is_shared_between_replicas(replicas) -> None:
    a, b = (client(r, "sk-a") for r in replicas)
    first = a.responses.create(model="local", input="stored on replica A")
    assert b.responses.retrieve(first.id).output_text == first.output_text
    second = b.responses.create(model="local", input="continued on B", previous_response_id=first.id)
    assert second.usage.input_tokens > first.usage.input_tokens
    assert [i.type for i in a.responses.input_items.list(second.id, order="asc")] == ["message"] * 3
    with b.responses.connect() as conn:
        conn.response.create(model="local", input="over websocket on B", previous_response_id=second.id)
        assert until_terminal(conn)[-1].type == "response.completed"
    a.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(first.id)
