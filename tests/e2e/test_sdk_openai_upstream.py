"""The SDK through wsproxy to a fake OpenAI-native upstream, over HTTP/2 (h2c) and HTTP/1.1."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.sdk import client
from tests.e2e.test_sdk_websocket import until_terminal


@pytest.mark.parametrize("provider,version", [("up2", "2"), ("up1", "1.1")])
def test_passthrough_json_and_sse(proxy, fake_openai, provider: str, version: str) -> None:
    fake, _ = fake_openai
    before = len(fake.requests)
    resp = client(proxy).responses.create(model=f"{provider}@fake", input="hello upstream")
    assert resp.output_text == "Echo: hello upstream"
    seen = fake.requests[before]
    assert seen["http_version"] == version
    assert seen["body"]["model"] == "fake" and seen["body"]["stream"] is True
    assert seen["headers"]["authorization"] == "Bearer sk-up"

    events = list(client(proxy).responses.create(model=f"{provider}@fake", input="a b c", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # Forwarded without re-encoding: the upstream's extra fields survive.
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and all(getattr(d, "obfuscation", None) == "xyz" for d in deltas)
    assert events[-1].type == "response.completed"


def test_passthrough_websocket_continuation_store_false(proxy, fake_openai) -> None:
    fake, _ = fake_openai
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up2@fake", input="turn one", store=False)
        first = until_terminal(conn)[-1]
        assert first.type == "response.completed"
        n = len(fake.requests)
        conn.response.create(
            model="up2@fake", input="turn two", store=False, previous_response_id=first.response.id
        )
        second = until_terminal(conn)[-1]
        assert second.type == "response.completed"
        body: dict[str, Any] = fake.requests[n]["body"]
        # store=false upstream cannot hold the chain: the proxy expanded it.
        assert "previous_response_id" not in body

        def text(item: dict[str, Any]) -> str:
            content = item.get("content")
            return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)

        texts = [text(i) for i in body["input"] if i.get("type", "message") == "message"]
        assert texts == ["turn one", "Echo: turn one", "turn two"]
        assert len(body["input"]) == 3


def test_fallback_from_failing_provider(proxy, fake_openai) -> None:
    resp = client(proxy).responses.create(model="fallback", input="fall back please")
    assert resp.output_text == "Echo: fall back please"


def test_upstream_error_status_passes_through(proxy) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client(proxy).responses.create(model="up2@fail-400", input="x")
    assert "fake failure 400" in info.value.message


def test_upstream_dies_midstream_gives_one_failed_event(proxy) -> None:
    events = list(client(proxy).responses.create(model="up1@die-after-5", input="x y z", stream=True))
    terminal = [
        e
        for e in events
        if e.type.startswith("response.")
        and e.type in ("response.completed", "response.failed", "response.incomplete")
    ]
    assert len(terminal) == 1 and terminal[0].type == "response.failed"
    assert events[-1].type == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
