"""Anthropic Messages dialect: request mapping (translation.md C), stream translation (D, E),
error mapping (F) and the thinking-signature round trip."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from tests.dialects.golden import (
    CREATED_AT,
    GMAIL_NAMESPACE,
    WEATHER_TOOL,
    check_golden,
    check_stream,
    fixture_names,
    translate,
)
from wsproxy.core.events import Event
from wsproxy.core.ids import counter_ids
from wsproxy.core.request import normalize_input
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.anthropic_messages import AnthropicMessagesDialect, AnthropicStreamTranslator
from wsproxy.dialects.anthropic_request import (
    HISTORY_PLACEHOLDER,
    decode_envelope,
    encode_redacted,
    encode_thinking,
)
from wsproxy.dialects.base import DialectOptions, UpstreamCall
from wsproxy.errors import InvalidRequest

DIALECT = AnthropicMessagesDialect()


def body_of(body: dict[str, Any], items: Any = None, **options: Any) -> dict[str, Any]:
    body = {"model": "client-model", **body}
    call = UpstreamCall(
        body=body,
        input=normalize_input(body.get("input") if items is None else items),
        model="claude-x",
        options=DialectOptions(**options),
    )
    req = DIALECT.build_request(call)
    assert req.path == "/messages"
    assert req.headers == {"anthropic-version": call.options.anthropic_version}
    out: dict[str, Any] = orjson.loads(req.body)
    return out


def rejected(body: dict[str, Any], items: Any = None, **options: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        body_of(body, items, **options)
    assert info.value.status == 400
    return info.value


def user(content: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": content}


def assistant(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def fc(
    call_id: str, arguments: str = '{"city":"Paris"}', name: str = "get_weather", **extra: Any
) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, **extra}


def fco(call_id: str, output: Any = "sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def thinking_item(text: str = "hmm", signature: str = "sig==") -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "encrypted_content": encode_thinking(text, signature),
    }


# -- golden transcripts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names("anthropic"))
def test_golden(name: str) -> None:
    check_stream(check_golden("anthropic", name))


# -- request --------------------------------------------------------------------------------------


def test_minimal_request() -> None:
    assert body_of({"input": "hi"}) == {
        "model": "claude-x",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": True,
    }
    assert (
        body_of({"input": "hi"}, anthropic_version="2099-01-01", default_max_tokens=100)["max_tokens"] == 100
    )


def test_instructions_and_system_messages_are_hoisted_in_order() -> None:
    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": "dev rules"}]},
        user("hi"),
        {"role": "system", "content": "late system"},
        assistant("hello"),
        user("bye"),
    ]
    out = body_of({"instructions": "top"}, items)
    assert out["system"] == [
        {"type": "text", "text": "top"},
        {"type": "text", "text": "dev rules"},
        {"type": "text", "text": "late system"},
    ]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_images_in_system_messages_are_rejected() -> None:
    items = [
        {"role": "system", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]},
        user("hi"),
    ]
    assert rejected({}, items).code == "unsupported_parameter"


def test_user_content_blocks() -> None:
    text_b64 = base64.b64encode(b"notes").decode()
    items = [
        user(
            [
                {"type": "input_text", "text": "see"},
                {"type": "input_text", "text": "  "},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
                {"type": "input_image", "image_url": "https://x/a.jpg"},
                {
                    "type": "input_file",
                    "file_data": "data:application/pdf;base64,JVBERi0=",
                    "filename": "a.pdf",
                },
                {"type": "input_file", "file_data": f"data:text/plain;base64,{text_b64}"},
                {"type": "input_file", "file_url": "https://x/b.pdf"},
            ]
        )
    ]
    assert body_of({}, items)["messages"][0]["content"] == [
        {"type": "text", "text": "see"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://x/a.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
        {"type": "document", "source": {"type": "url", "url": "https://x/b.pdf"}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image", "file_id": "file-1"}, "input[0].content[0].file_id"),
        ({"type": "input_file", "file_id": "file-1"}, "input[0].content[0].file_id"),
        (
            {"type": "input_file", "file_data": "data:application/zip;base64,UEs="},
            "input[0].content[0].file_data",
        ),
        ({"type": "input_audio", "data": "x"}, "input[0].content[0]"),
    ],
)
def test_inputs_anthropic_cannot_read_are_rejected(part: dict[str, Any], param: str) -> None:
    err = rejected({}, [user([part])])
    assert (err.code, err.param) == ("unsupported_parameter", param)


def test_tool_turns_merge_and_tool_results_come_first() -> None:
    items = [
        user("weather in two cities?"),
        assistant("Checking."),
        fc("toolu_1"),
        fc("toolu_2", "not json"),
        fco("toolu_1"),
        fco(
            "toolu_2",
            [
                {"type": "input_text", "text": "rainy"},
                {"type": "input_image", "image_url": "https://x/r.png"},
            ],
        ),
        user("and tomorrow?"),
    ]
    msgs = body_of({}, items)["messages"]
    assert msgs == [
        {"role": "user", "content": [{"type": "text", "text": "weather in two cities?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [
                        {"type": "text", "text": "rainy"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/r.png"}},
                    ],
                },
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]


def test_a_developer_message_between_call_and_output_does_not_split_the_turn() -> None:
    items = [user("go"), fc("toolu_1"), {"role": "developer", "content": "note"}, fco("toolu_1")]
    out = body_of({}, items)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["system"] == [{"type": "text", "text": "note"}]


def test_missing_tool_output_is_a_clear_400() -> None:
    err = rejected({}, [user("go"), fc("toolu_1"), user("next")])
    assert "toolu_1" in err.message and err.param == "input"


def test_a_history_that_starts_with_the_assistant_gets_a_user_turn_first() -> None:
    commentary = {**assistant("Looking at the repo."), "phase": "commentary", "id": "msg_1"}
    final = {**assistant("Done."), "phase": "final_answer", "status": "completed"}
    out = body_of({}, [commentary, final, user("thanks"), user("and more")])
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": HISTORY_PLACEHOLDER}]},
        # Consecutive turns of one role are one message; Responses-only fields are not sent.
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Looking at the repo."}, {"type": "text", "text": "Done."}],
        },
        {
            "role": "user",
            "content": [{"type": "text", "text": "thanks"}, {"type": "text", "text": "and more"}],
        },
    ]
    assert rejected({"instructions": "only this"}, []).param == "input"


def test_namespaced_calls_and_tools_are_flattened() -> None:
    items = [
        user("mail?"),
        fc("toolu_1", "{}", "_search_emails", namespace="mcp__codex_apps__gmail"),
        fco("toolu_1"),
    ]
    out = body_of({"tools": [GMAIL_NAMESPACE]}, items)
    assert out["tools"] == [
        {
            "name": "mcp__codex_apps__gmail_search_emails",
            "description": "Search Gmail.",
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
    ]
    assert out["messages"][1]["content"][0]["name"] == "mcp__codex_apps__gmail_search_emails"


def test_tools_get_input_schema_and_hosted_tools_are_rejected_or_dropped() -> None:
    out = body_of({"input": "hi", "tools": [WEATHER_TOOL, {"type": "function", "name": "ping"}]})
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "input_schema": WEATHER_TOOL["parameters"],
        },
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
    ]
    hosted = [{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    assert rejected({"input": "hi", "tools": hosted}).param == "tools"
    assert "tools" not in body_of({"input": "hi", "tools": hosted}, drop_unsupported_tools=True)
    bad = [{"type": "function", "name": "f", "parameters": {"type": "string"}}]
    assert rejected({"input": "hi", "tools": bad}).param == "tools"


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", False, {"type": "none"}),
        (
            {"type": "function", "name": "get_weather"},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, None),
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_weather"}],
            },
            None,
            {"type": "any"},
        ),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: Any, expected: Any) -> None:
    body: dict[str, Any] = {"input": "hi", "tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert body_of(body).get("tool_choice") == expected


def test_sampling_fields() -> None:
    out = body_of(
        {
            "input": "hi",
            "temperature": 1.7,
            "top_p": 0.5,
            "stop": "END",
            "safety_identifier": "u1",
            "seed": 3,
            "presence_penalty": 0.5,
        }
    )
    assert out["temperature"] == 1.0
    assert "top_p" not in out  # newer models refuse both; temperature wins
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u1"}
    assert "seed" not in out and "presence_penalty" not in out
    assert body_of({"input": "hi", "top_p": 0.5})["top_p"] == 0.5


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "name": "x", "schema": schema, "strict": True}
    assert body_of({"input": "hi", "text": {"format": fmt}})["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    assert rejected({"input": "hi", "text": {"format": {"type": "json_object"}}}).param == "text.format"


def test_reasoning_effort_sets_a_thinking_budget_below_max_tokens() -> None:
    out = body_of({"input": "hi", "reasoning": {"effort": "medium"}})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert out["max_tokens"] == 4096 + 8192
    out = body_of({"input": "hi", "reasoning": {"effort": "high"}, "max_output_tokens": 10000})
    assert out["max_tokens"] == 10000 and out["thinking"]["budget_tokens"] == 5000
    out = body_of({"input": "hi", "reasoning": {"effort": "minimal"}, "max_output_tokens": 1025})
    assert out["thinking"]["budget_tokens"] == 1024 < out["max_tokens"]
    assert "thinking" not in body_of({"input": "hi", "reasoning": {"effort": "none"}})
    out = body_of(
        {"input": "hi", "reasoning": {"effort": "high"}}, extra={"anthropic_adaptive_thinking": True}
    )
    assert out["thinking"] == {"type": "adaptive"} and out["output_config"] == {"effort": "high"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"reasoning": {"effort": "low"}, "max_output_tokens": 1024}, "reasoning.effort"),
        ({"reasoning": {"effort": "low"}, "temperature": 0.2}, "temperature"),
        ({"reasoning": {"effort": "low"}, "tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_requests_anthropic_would_refuse_are_400s(body: dict[str, Any], param: str) -> None:
    assert rejected({"input": "hi", **body}).param == param


def test_thinking_blocks_come_back_from_anthropic_reasoning_items_only() -> None:
    items = [
        user("q"),
        thinking_item("plan", "SIG"),
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": encode_redacted("REDACTED")},
        {"type": "reasoning", "id": "rs_3", "summary": [], "encrypted_content": "gAAAAB-openai-blob"},
        fc("toolu_1"),
        fco("toolu_1"),
    ]
    out = body_of({"reasoning": {"effort": "low"}}, items)
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "plan", "signature": "SIG"},
        {"type": "redacted_thinking", "data": "REDACTED"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    # Without thinking in this request the blocks are left out (Anthropic would refuse them).
    assert [b["type"] for b in body_of({}, items)["messages"][1]["content"]] == ["tool_use"]


def test_envelope_round_trip_and_damage() -> None:
    assert decode_envelope(encode_thinking("t", "s")) == {
        "type": "thinking",
        "thinking": "t",
        "signature": "s",
    }
    assert decode_envelope("anthropic:not-base64!") is None
    assert decode_envelope("anthropic:" + base64.b64encode(b"[1]").decode()) is None
    assert decode_envelope(None) is None


def test_a_translated_turn_round_trips_into_the_next_request() -> None:
    """The output of a streamed thinking + tool_use turn, sent back as input, rebuilds the exact
    blocks Anthropic needs (signature included)."""
    first = [e.json() for e in translate("anthropic", "thinking")]
    output = first[-1]["response"]["output"]
    items = [user("27*453?"), *output, user("thanks")]
    out = body_of({"reasoning": {"effort": "low"}}, items)
    assert out["messages"][1]["content"] == [
        {
            "type": "thinking",
            "thinking": "Let me solve this step by step:\n\n1. 27 * 453 = 12231",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        },
        {
            "type": "redacted_thinking",
            "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP",
        },
        {"type": "text", "text": "27 * 453 = 12,231"},
    ]


# -- stream ---------------------------------------------------------------------------------------


def msg(payload: dict[str, Any]) -> SSEMessage:
    return SSEMessage(payload["type"], orjson.dumps(payload))


START = msg(
    {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 1}}}
)


def feed_all(
    messages: list[SSEMessage], *, eof: bool = True, body: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    call = UpstreamCall(body={"model": "client-model", **(body or {})}, input=[], model="claude-x")
    t = DIALECT.translator("resp_1", call, CREATED_AT, counter_ids())
    assert isinstance(t, AnthropicStreamTranslator)
    events: list[Event] = t.start()
    for message in messages:
        events += t.feed(message)
    if eof:
        events += t.finish()
    out = [e.json() for e in events]
    check_stream(out)
    return out


def test_message_start_after_start_adds_nothing_and_keeps_the_upstream_id() -> None:
    call = UpstreamCall(body={"model": "m"}, input=[], model="m")
    t = DIALECT.translator("resp_1", call, CREATED_AT, counter_ids())
    assert isinstance(t, AnthropicStreamTranslator)
    assert len(t.start()) == 2
    assert t.feed(START) == [] and t.upstream_id == "msg_1"
    assert t.feed(msg({"type": "ping"})) == [] and not t.started_output


@pytest.mark.parametrize(
    ("reason", "terminal", "detail"),
    [
        ("end_turn", "response.completed", None),
        ("stop_sequence", "response.completed", None),
        ("tool_use", "response.completed", None),
        ("max_tokens", "response.incomplete", {"reason": "max_output_tokens"}),
        ("model_context_window_exceeded", "response.incomplete", {"reason": "max_output_tokens"}),
        ("pause_turn", "response.incomplete", {"reason": "max_output_tokens"}),
        ("refusal", "response.incomplete", {"reason": "content_filter"}),
    ],
)
def test_stop_reason_table(reason: str, terminal: str, detail: Any) -> None:
    events = feed_all([
        START,
        msg({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        msg({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}),
        msg({"type": "content_block_stop", "index": 0}),
        msg({"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": 2}}),
        msg({"type": "message_stop"}),
    ])  # fmt: skip
    assert events[-1]["type"] == terminal
    assert events[-1]["response"]["incomplete_details"] == detail


def test_eof_after_message_delta_ends_as_its_stop_reason() -> None:
    events = feed_all(
        [START, msg({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}})]
    )
    assert events[-1]["type"] == "response.completed"


@pytest.mark.parametrize(
    ("etype", "code"),
    [
        ("overloaded_error", "server_is_overloaded"),
        ("api_error", "server_error"),
        ("rate_limit_error", "rate_limit_exceeded"),
        ("brand_new_error", "server_error"),
    ],
)
def test_error_events_map_codes(etype: str, code: str) -> None:
    events = feed_all([START, msg({"type": "error", "error": {"type": etype, "message": "m"}})], eof=False)
    assert events[-1]["response"]["error"] == {"code": code, "message": "m"}


def test_malformed_event_fails() -> None:
    events = feed_all([START, SSEMessage("content_block_delta", b'{"type": "content_bl')], eof=False)
    assert events[-1]["type"] == "response.failed"


def test_tool_input_given_whole_in_block_start_becomes_the_arguments() -> None:
    events = feed_all([
        START,
        msg({"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}}),
        msg({"type": "content_block_stop", "index": 0}),
        msg({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        msg({"type": "message_stop"}),
    ])  # fmt: skip
    assert events[-1]["response"]["output"][0]["arguments"] == '{"a":1}'


def test_namespaced_tool_use_gets_its_namespace_back() -> None:
    events = feed_all(
        [
            START,
            msg({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "toolu_1", "name": "mcp__codex_apps__gmail_search_emails",
                "input": {}}}),
            msg({"type": "content_block_stop", "index": 0}),
            msg({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
            msg({"type": "message_stop"}),
        ],
        body={"tools": [GMAIL_NAMESPACE]},
    )  # fmt: skip
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert (
        added["item"]["name"] == "_search_emails" and added["item"]["namespace"] == "mcp__codex_apps__gmail"
    )
    assert events[-1]["response"]["output"][0]["namespace"] == "mcp__codex_apps__gmail"


def test_server_tool_blocks_are_ignored() -> None:
    events = feed_all([
        START,
        msg({"type": "content_block_start", "index": 0,
             "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                               "input": {}}}),
        msg({"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        msg({"type": "content_block_stop", "index": 0}),
        msg({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        msg({"type": "message_stop"}),
    ])  # fmt: skip
    assert events[-1]["response"]["output"] == []


# -- HTTP errors ----------------------------------------------------------------------------------


def err_body(etype: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"}
    )


@pytest.mark.parametrize(
    ("status", "etype", "message", "expected"),
    [
        (
            400,
            "invalid_request_error",
            "max_tokens: too big",
            (400, "invalid_request_error", "invalid_request_error"),
        ),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            (400, "invalid_request_error", "context_length_exceeded"),
        ),
        (404, "not_found_error", "model: claude-nope", (404, "invalid_request_error", "model_not_found")),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum size",
            (413, "invalid_request_error", "request_too_large"),
        ),
        (
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
            (429, "rate_limit_error", "rate_limit_exceeded"),
        ),
        (500, "api_error", "Internal server error", (500, "server_error", "server_error")),
        (504, "timeout_error", "Request timeout", (504, "server_error", "upstream_timeout")),
        (529, "overloaded_error", "Overloaded", (503, "server_error", "server_is_overloaded")),
    ],
)
def test_error_table(status: int, etype: str, message: str, expected: tuple[int, str, str]) -> None:
    err = DIALECT.error_from_status(status, err_body(etype, message), {"retry-after": "3", "request-id": "r"})
    assert (err.status, err.type, err.code) == expected
    assert err.message == message
    assert err.headers == {"retry-after": "3"}
    assert err.retryable == (expected[0] == 429 or expected[0] >= 500)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_do_not_repeat_the_providers_words(status: int) -> None:
    err = DIALECT.error_from_status(
        status, err_body("authentication_error", "invalid x-api-key sk-ant-123"), {}
    )
    assert err.status == status and "sk-ant" not in err.message and not err.retryable
    assert err.param is None


def test_model_not_found_names_the_param_and_garbage_bodies_still_map() -> None:
    assert DIALECT.error_from_status(404, err_body("not_found_error", "model: x"), {}).param == "model"
    err = DIALECT.error_from_status(502, b"upstream connect error", {})
    assert err.status == 502 and "upstream connect error" in err.message and err.retryable


@pytest.mark.parametrize(
    ("body", "items", "param", "code"),
    [
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "nope"}},
            None,
            "tool_choice",
            "invalid_value",
        ),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "mcp", "server_label": "x"}},
            None,
            "tool_choice",
            "unsupported_parameter",
        ),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, None, "tool_choice", "invalid_value"),
        ({"tools": [WEATHER_TOOL], "tool_choice": 1}, None, "tool_choice", "invalid_type"),
        ({"tool_choice": "required"}, None, "tool_choice", "invalid_value"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x"}}},
            None,
            "text.format.schema",
            "missing_required_parameter",
        ),
        ({"text": {"format": "json"}}, None, "text.format", "invalid_type"),
        ({}, [user("q"), {"type": "item_reference", "id": "msg_1"}], "input[1]", "unsupported_parameter"),
        (
            {},
            [user([{"type": "input_image", "image_url": "ftp://x/a.png"}])],
            "input[0].content[0].image_url",
            "invalid_value",
        ),
        (
            {},
            [user([{"type": "input_image"}])],
            "input[0].content[0].image_url",
            "missing_required_parameter",
        ),
        ({}, [user([{"type": "input_file"}])], "input[0].content[0]", "missing_required_parameter"),
        (
            {},
            [user([{"type": "input_file", "file_data": "data:text/plain;base64,@@@"}])],
            "input[0].content[0].file_data",
            "invalid_value",
        ),
        (
            {},
            [user("q"), {"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}],
            "input[1].content[0]",
            "unsupported_parameter",
        ),
        ({}, [user("q"), fc("c1"), fco("c1", {"text": "x"})], "input[2].output", "invalid_type"),
        (
            {},
            [user("q"), fc("c1"), fco("c1", [{"type": "input_file", "file_data": "x"}])],
            "input[2].output[0]",
            "unsupported_parameter",
        ),
    ],
)
def test_malformed_requests_name_the_param(body: dict[str, Any], items: Any, param: str, code: str) -> None:
    err = rejected({"input": "hi", **body}, items)
    assert (err.param, err.code) == (param, code)
