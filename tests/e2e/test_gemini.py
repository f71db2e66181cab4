"""The SDK over HTTP JSON, SSE and WebSocket through wsproxy to a fake Gemini API on real sockets:
text, parallel calls with ids and thought signatures over two turns (stored and stateless),
thought summaries, JSON schema output, blocked prompts and safety stops, usage, 429 with
RetryInfo, and Google's errors as OpenAI errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.sdk import WEATHER_TOOLS, client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.gemini_upstream import DUMMY, FakeGemini
from tests.fakes.servers import HypercornThread, UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings

TOOLS = WEATHER_TOOLS


@pytest.fixture(scope="module")
def gemini() -> Iterator[tuple[FakeGemini, str]]:
    fake = FakeGemini(key="gk-test")
    server = HypercornThread(fake).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, gemini: tuple[FakeGemini, str]
) -> Iterator[UvicornThread]:
    url = gemini[1]
    cfg: Path = tmp_path_factory.mktemp("gemini") / "t.toml"
    cfg.write_text(
        '[store]\nbackend = "memory"\n'
        f'[providers.gem]\nkind = "gemini"\nbase_url = "{url}/v1beta"\napi_key = "gk-test"\nmax_retries = 0\n'
        f'[providers.gemretry]\nkind = "gemini"\nbase_url = "{url}/v1beta"\napi_key_env = "TEST_GEMINI_KEY"\n'
        "max_retries = 2\nretry_max_wait = 5\n"
        f'[providers.gembad]\nkind = "gemini"\nbase_url = "{url}/v1beta"\napi_key = "wrong"\n'
        "max_retries = 0\n"
    )
    env = {"TEST_GEMINI_KEY": "gk-test"}
    server = UvicornThread(create_app(load_settings(str(cfg), environ=env), environ=env)).start()
    try:
        yield server
    finally:
        server.stop()


def test_text_over_json_sse_and_websocket(proxy, gemini) -> None:
    fake, _ = gemini
    c = client(proxy)
    resp = c.responses.create(model="gem@gemini-2.5-flash", input="hello there")
    assert resp.status == "completed" and resp.output_text == "Gemini echo: hello there"
    assert (resp.usage.input_tokens, resp.usage.input_tokens_details.cached_tokens) == (20, 8)
    assert resp.usage.output_tokens == 4 and resp.usage.total_tokens == 24  # a token per word
    assert fake.paths[-1] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert fake.headers[-1]["x-goog-api-key"] == "gk-test" and "authorization" not in fake.headers[-1]

    events = list(c.responses.create(model="gem@gemini-2.5-flash", input="over sse", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == "Gemini echo: over sse"

    with c.responses.connect() as conn:
        conn.response.create(model="gem@gemini-2.5-flash", input="over websocket", store=False)
        ws = until_terminal(conn)
    assert ws[-1].type == "response.completed"
    assert ws[-1].response.output_text == "Gemini echo: over websocket"


def test_history_that_opens_with_the_assistant_translates(proxy, gemini) -> None:
    """Real clients send histories that start with the assistant (here with Codex's ``phase``);
    Gemini refuses those, so wsproxy puts a placeholder user turn first."""
    fake, _ = gemini
    history = [
        {"type": "message", "role": "assistant", "phase": "commentary", "content": "Looking around."},
        {"type": "message", "role": "assistant", "phase": "final_answer", "content": "Done."},
        {"type": "message", "role": "user", "content": "and now?"},
    ]
    resp = client(proxy).responses.create(model="gem@gemini-2.5-flash", input=history)
    assert resp.status == "completed" and resp.output_text == "Gemini echo: and now?"
    sent = fake.requests[-1]["contents"]
    assert [c["role"] for c in sent] == ["user", "model", "user"]
    assert "phase" not in json.dumps(sent)


def _calls(output: Any) -> list[Any]:
    return [o for o in output if o.type == "function_call"]


def test_parallel_calls_round_trip_with_ids_and_signatures_over_websocket(proxy, gemini) -> None:
    fake, _ = gemini
    c = client(proxy)
    with c.responses.connect() as conn:
        conn.response.create(
            model="gem@gemini-3-pro-preview",
            input="get_weather for Paris and London",
            tools=TOOLS,
            store=False,
        )
        first = until_terminal(conn)
        done = first[-1]
        assert done.type == "response.completed", done
        calls = _calls(done.response.output)
        assert [(x.name, json.loads(x.arguments)["city"]) for x in calls] == [
            ("get_weather", "Paris"),
            ("get_weather", "London"),
        ]
        # Gemini 3 gave the calls ids: they are the call_ids, unchanged.
        assert all(x.call_id.startswith("fc") for x in calls)
        conn.response.create(
            model="gem@gemini-3-pro-preview",
            tools=TOOLS,
            store=False,
            previous_response_id=done.response.id,
            input=[
                # Answered out of order on purpose: Gemini pairs responses by position.
                {"type": "function_call_output", "call_id": calls[1].call_id, "output": "12C"},
                {"type": "function_call_output", "call_id": calls[0].call_id, "output": "15C"},
            ],
        )
        second = until_terminal(conn)[-1]
    assert second.type == "response.completed", second
    assert second.response.output_text == "Tool result was: 15C, 12C"
    sent = fake.requests[-1]["contents"]
    model_parts = sent[1]["parts"]
    assert [p["functionCall"]["id"] for p in model_parts] == [x.call_id for x in calls]
    # The signature Gemini issued comes back on the first call (not the validator-skipping dummy).
    assert model_parts[0]["thoughtSignature"] in fake.signatures
    assert model_parts[0]["thoughtSignature"] != DUMMY and "thoughtSignature" not in model_parts[1]
    assert [p["functionResponse"]["id"] for p in sent[2]["parts"]] == [x.call_id for x in calls]


def test_stateless_client_round_trips_the_signature_through_reasoning_items(proxy, gemini) -> None:
    """store=false and no previous_response_id: the client sends the output back itself; the
    signature travels in a reasoning item's encrypted_content. Gemini 2.5 style: calls without
    ids get made-up call ids that are never sent to Gemini."""
    fake, _ = gemini
    c = client(proxy)
    items: list[Any] = [{"role": "user", "content": "get_weather for Oslo"}]
    first = c.responses.create(
        model="gem@gemini-2.5-flash",
        input=items,
        tools=TOOLS,
        store=False,
        include=["reasoning.encrypted_content"],
    )
    kinds = [o.type for o in first.output]
    assert kinds == ["reasoning", "function_call"], kinds
    assert first.output[0].encrypted_content.startswith("gemini:")
    call = first.output[1]
    assert call.call_id.startswith("call_gemini")
    events = list(
        c.responses.create(
            model="gem@gemini-2.5-flash",
            input=[
                *items,
                *[o.model_dump(exclude_none=True) for o in first.output],
                {"type": "function_call_output", "call_id": call.call_id, "output": "-3C"},
            ],
            tools=TOOLS,
            store=False,
            stream=True,
        )
    )
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Tool result was: -3C"
    sent = fake.requests[-1]["contents"]
    call_part = sent[1]["parts"][0]
    assert call_part["functionCall"] == {"name": "get_weather", "args": {"city": "Oslo"}}
    assert call_part["thoughtSignature"] in fake.signatures
    assert sent[2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"output": "-3C"}}}]


def test_thought_summaries_and_reasoning_usage(proxy, gemini) -> None:
    fake, _ = gemini
    resp = client(proxy).responses.create(
        model="gem@gemini-3-flash-preview",
        input="think first",
        reasoning={"effort": "low", "summary": "auto"},
    )
    assert fake.requests[-1]["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": "LOW",
        "includeThoughts": True,
    }
    reasoning = [o for o in resp.output if o.type == "reasoning"]
    assert reasoning[0].summary[0].text == "**Considering the request**"
    assert resp.output_text == "Gemini echo: think first"
    assert resp.usage.output_tokens_details.reasoning_tokens == 5
    assert resp.usage.output_tokens == 4 + 5  # thoughts count as output


def test_json_schema_output(proxy, gemini) -> None:
    fake, _ = gemini
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
        "required": ["city", "celsius"],
        "additionalProperties": False,
    }
    resp = client(proxy).responses.create(
        model="gem@gemini-2.5-flash",
        input="weather as json",
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}},
    )
    assert json.loads(resp.output_text) == {"city": "Paris", "celsius": 21.5}
    gen = fake.requests[-1]["generationConfig"]
    assert gen == {"responseMimeType": "application/json", "responseJsonSchema": schema}


def test_blocked_prompt_and_safety_stop_are_incomplete_content_filter(proxy) -> None:
    c = client(proxy)
    blocked = c.responses.create(model="gem@blocked", input="something bad")
    assert blocked.status == "incomplete" and blocked.incomplete_details.reason == "content_filter"
    refusal = blocked.output[0].content[0]
    assert refusal.type == "refusal" and "blockReason: SAFETY" in refusal.refusal
    events = list(c.responses.create(model="gem@unsafe", input="how to", stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "content_filter"
    assert events[-1].response.output_text == "Here is how"


def test_429_retry_waits_for_the_retry_delay(proxy, gemini) -> None:
    fake, _ = gemini
    before = len(fake.paths)
    started = time.monotonic()
    resp = client(proxy).responses.create(model="gemretry@retry-once-1", input="patience")
    elapsed = time.monotonic() - started
    assert resp.status == "completed" and resp.output_text == "Gemini echo: patience"
    assert len(fake.paths) - before == 2  # the 429, then the retry
    assert 1.0 <= elapsed < 4.0, elapsed


def test_429_without_retries_reaches_the_client_with_retry_after(proxy) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client(proxy).responses.create(model="gem@retry-once-7", input="now")
    assert info.value.status_code == 429
    assert info.value.response.headers.get("retry-after") == "7"
    assert info.value.body["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("gembad@gemini-2.5-flash", 401, "upstream_authentication_error"),
        ("gem@fail-404", 404, "model_not_found"),
        ("gem@fail-503", 503, "server_is_overloaded"),
        ("gem@fail-400", 400, "invalid_request_error"),
    ],
)
def test_google_errors_become_openai_errors_over_http_and_websocket(
    proxy, model: str, status: int, code: str
) -> None:
    c = client(proxy)
    with pytest.raises(openai.APIStatusError) as info:
        c.responses.create(model=model, input="hi")
    assert info.value.status_code == status
    assert info.value.body["code"] == code and "gk-test" not in str(info.value.body)
    with c.responses.connect() as conn:
        conn.response.create(model=model, input="hi", store=False)
        events = until_terminal(conn)
        assert events[-1].type == "error"
        assert events[-1].error.code == code
        # The session survives: the next turn on the same socket works.
        conn.response.create(model="gem@gemini-2.5-flash", input="still here", store=False)
        assert until_terminal(conn)[-1].response.output_text == "Gemini echo: still here"
