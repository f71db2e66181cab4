"""The SDK over WebSocket and SSE through wsproxy to fake Chat Completions and Anthropic servers:
text, a two-turn tool loop, thinking round-trip, fallback from a failing provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.sdk import WEATHER_TOOLS, client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings

TOOLS = WEATHER_TOOLS


@pytest.fixture
def proxy(tmp_path: Path, translated_upstreams: dict[str, Any]) -> Iterator[UvicornThread]:
    chat_url, anth_url = translated_upstreams["chat_url"], translated_upstreams["anth_url"]
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[store]\nbackend = "memory"\n'
        f'[providers.cc]\nkind = "chat_completions"\nbase_url = "{chat_url}/v1"\napi_key = "k"\n'
        "http2 = false\nmax_retries = 0\n"
        f'[providers.cc2]\nkind = "chat_completions"\nbase_url = "{chat_url}/v1"\n'
        "http2_prior_knowledge = true\nmax_retries = 0\n"
        f'[providers.claude]\nkind = "anthropic"\nbase_url = "{anth_url}/v1"\napi_key = "ak"\n'
        "max_retries = 0\n"
        '[aliases]\nresilient = ["cc@fail-503", "claude@claude-x"]\n'
    )
    server = UvicornThread(create_app(load_settings(str(cfg), environ={}), environ={})).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["cc@m", "cc2@m", "claude@claude-x"])
def test_text_over_sse(proxy, model: str) -> None:
    events = list(client(proxy).responses.create(model=model, input="hello there", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "echo: hello there" in text
    assert events[-1].response.output_text == text
    usage = events[-1].response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0


def test_anthropic_usage_counts_cache_tokens(proxy) -> None:
    resp = client(proxy).responses.create(model="claude@claude-x", input="hi")
    assert resp.usage.input_tokens == 27  # 20 + 5 cache read + 2 cache write
    assert resp.usage.input_tokens_details.cached_tokens == 5
    assert resp.usage.output_tokens == 9


@pytest.mark.parametrize("model", ["cc@m", "claude@claude-x"])
def test_two_turn_tool_loop_over_websocket(proxy, translated_upstreams, model: str) -> None:
    with client(proxy).responses.connect() as conn:
        conn.response.create(model=model, input="get_weather for Paris please", tools=TOOLS, store=False)
        first = until_terminal(conn)
        done = first[-1]
        assert done.type == "response.completed", done
        calls = [o for o in done.response.output if o.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert calls[0].arguments.replace(" ", "") == '{"city":"Paris"}'
        arg_deltas = [e.delta for e in first if e.type == "response.function_call_arguments.delta"]
        assert "".join(arg_deltas) == calls[0].arguments

        conn.response.create(
            model=model,
            tools=TOOLS,
            store=False,
            previous_response_id=done.response.id,
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        )
        second = until_terminal(conn)[-1]
        assert second.type == "response.completed", second
        assert second.response.output_text.startswith("Tool result was: sunny")
    # The upstream saw the whole history: user, the call, and its result.
    seen = translated_upstreams["chat" if model.startswith("cc") else "anthropic"].requests[-1]
    flat = str(seen["messages"])
    assert "get_weather" in flat and "sunny" in flat


def test_fallback_from_failing_provider(proxy, translated_upstreams) -> None:
    resp = client(proxy).responses.create(model="resilient", input="are you there")
    assert resp.status == "completed"
    assert "Claude echo: are you there" in resp.output_text


def test_anthropic_thinking_signature_round_trips(proxy, translated_upstreams) -> None:
    c = client(proxy)
    first = c.responses.create(
        model="claude@claude-x",
        input="think about get_weather in Paris",
        tools=TOOLS,
        reasoning={"effort": "low"},
        max_output_tokens=4096,
    )
    kinds = [o.type for o in first.output]
    assert kinds[0] == "reasoning" and "function_call" in kinds
    call = next(o for o in first.output if o.type == "function_call")
    c.responses.create(
        model="claude@claude-x",
        previous_response_id=first.id,
        tools=TOOLS,
        reasoning={"effort": "low"},
        max_output_tokens=4096,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
    )
    sent = translated_upstreams["anthropic"].requests[-1]
    assistant = next(m for m in sent["messages"] if m["role"] == "assistant")
    thinking = [b for b in assistant["content"] if b["type"] == "thinking"]
    assert thinking and thinking[0]["signature"].startswith("sig-")
    assert assistant["content"][-1]["type"] == "tool_use"
    user_after = sent["messages"][sent["messages"].index(assistant) + 1]
    assert user_after["content"][0]["type"] == "tool_result"
