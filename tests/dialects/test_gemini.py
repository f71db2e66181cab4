"""Gemini dialect: request mapping (gemini.md 7.1), stream translation (4, 7.2, 7.3), error mapping
(6) and the thought-signature round trip (5)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dialects.golden import (
    CREATED_AT,
    GMAIL_NAMESPACE,
    WEATHER_TOOL,
    check_golden,
    check_stream,
    fixture_names,
    run,
    translate,
)
from wsproxy.core.events import Event
from wsproxy.core.ids import counter_ids
from wsproxy.core.request import normalize_input
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.base import DialectOptions, UpstreamCall
from wsproxy.dialects.common import HISTORY_PLACEHOLDER
from wsproxy.dialects.gemini_request import (
    DUMMY_SIGNATURE,
    decode_signatures,
    encode_signatures,
    gemini_name,
    model_path,
)
from wsproxy.dialects.gemini_stream import GeminiDialect, retry_delay
from wsproxy.errors import InvalidRequest

DIALECT = GeminiDialect()


def request_of(
    body: dict[str, Any], items: Any = None, model: str = "gemini-2.5-flash", **options: Any
) -> tuple[str, dict[str, Any]]:
    body = {"model": "client-model", **body}
    call = UpstreamCall(
        body=body,
        input=normalize_input(body.get("input") if items is None else items),
        model=model,
        options=DialectOptions(**options),
    )
    req = DIALECT.build_request(call)
    assert req.method == "POST" and req.headers == {}
    out: dict[str, Any] = orjson.loads(req.body)
    return req.path, out


def body_of(body: dict[str, Any], items: Any = None, **kw: Any) -> dict[str, Any]:
    return request_of(body, items, **kw)[1]


def rejected(body: dict[str, Any], items: Any = None, **kw: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        body_of(body, items, **kw)
    assert info.value.status == 400
    return info.value


def user(content: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": content}


def assistant(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def fc(call_id: str, arguments: str = '{"city":"Paris"}', name: str = "get_weather") -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def fco(call_id: str, output: Any = "sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


# -- golden transcripts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names("gemini"))
def test_golden(name: str) -> None:
    check_stream(check_golden("gemini", name))


# -- request --------------------------------------------------------------------------------------


def test_minimal_request_streams_from_the_model_path() -> None:
    path, out = request_of({"input": "hi"})
    assert path == "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert out == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("models/gemini-2.5-pro", "/models/gemini-2.5-pro:streamGenerateContent?alt=sse"),
        ("tunedModels/my-tune-1", "/tunedModels/my-tune-1:streamGenerateContent?alt=sse"),
    ],
)
def test_model_path_keeps_explicit_collections(model: str, path: str) -> None:
    assert model_path(model) == path
    assert model_path("gemini-2.5-pro", stream=False) == "/models/gemini-2.5-pro:generateContent"


@pytest.mark.parametrize("model", ["../files", "gemini?key=x", "a b", "models/../x", "", "/gemini"])
def test_model_names_that_would_change_the_url_are_400s(model: str) -> None:
    assert rejected({"input": "hi"}, model=model).param == "model"


def test_instructions_and_system_messages_become_system_instruction_in_order() -> None:
    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": "dev rules"}]},
        user("hi"),
        {"role": "system", "content": "late system"},
        assistant("hello"),
        user("bye"),
    ]
    out = body_of({"instructions": "top"}, items)
    assert out["systemInstruction"] == {
        "parts": [{"text": "top"}, {"text": "dev rules"}, {"text": "late system"}]
    }
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert "role" not in out["systemInstruction"]


def test_user_media_parts() -> None:
    items = [
        user(
            [
                {"type": "input_text", "text": "see"},
                {"type": "input_text", "text": ""},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
                {"type": "input_image", "image_url": "https://x.test/a.webp?s=1"},
                {
                    "type": "input_file",
                    "file_data": "data:application/pdf;base64,JVBERi0=",
                    "filename": "a.pdf",
                },
                {"type": "input_file", "file_data": "JVBERi0="},
                {"type": "input_file", "file_url": "https://x.test/b.pdf"},
                {"type": "input_file", "file_id": "files/abc123"},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ]
        )
    ]
    assert body_of({}, items)["contents"][0]["parts"] == [
        {"text": "see"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://x.test/a.webp?s=1", "mimeType": "image/webp"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"fileData": {"fileUri": "https://x.test/b.pdf", "mimeType": "application/pdf"}},
        {"fileData": {"fileUri": "files/abc123"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image", "file_id": "file-abc"}, "input[0].content[0].file_id"),
        ({"type": "input_file", "file_id": "file-abc"}, "input[0].content[0].file_id"),
        ({"type": "input_image", "image_url": "ftp://x/a.png"}, "input[0].content[0].image_url"),
        ({"type": "computer_screenshot"}, "input[0].content[0]"),
    ],
)
def test_inputs_gemini_cannot_read_are_rejected(part: dict[str, Any], param: str) -> None:
    assert rejected({}, [user([part])]).param == param


def test_parallel_calls_merge_and_responses_follow_in_call_order() -> None:
    items = [
        user("weather in two cities?"),
        assistant("Checking."),
        fc("call_gemini_aa"),
        fc("p7x2k9qa", '{"city":"London"}'),
        fco(
            "p7x2k9qa",
            [
                {"type": "input_text", "text": "rainy"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
            ],
        ),
        fco("call_gemini_aa"),
        user("and tomorrow?"),
    ]
    contents = body_of({"tools": [WEATHER_TOOL]}, items)["contents"]
    assert contents == [
        {"role": "user", "parts": [{"text": "weather in two cities?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                # A made-up call id is never sent to Gemini; Gemini's own id is echoed.
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "London"}, "id": "p7x2k9qa"}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}},
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"output": "rainy"},
                        "id": "p7x2k9qa",
                        "parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}],
                    }
                },
                {"text": "and tomorrow?"},
            ],
        },
    ]


def test_a_current_turn_call_without_signature_gets_the_documented_dummy() -> None:
    items = [
        user("go"),
        fc("call_1"),
        fc("call_2"),
        fco("call_1"),
        fco("call_2"),
        fc("call_3"),
        fco("call_3"),
    ]
    contents = body_of({"tools": [WEATHER_TOOL]}, items)["contents"]
    steps = [c for c in contents if c["role"] == "model"]
    assert [p.get("thoughtSignature") for p in steps[0]["parts"]] == [DUMMY_SIGNATURE, None]
    assert steps[1]["parts"][0]["thoughtSignature"] == DUMMY_SIGNATURE
    # Earlier turns (before the last ordinary user message) are not validated: left alone.
    older = body_of({"tools": [WEATHER_TOOL]}, [*items, user("thanks")])["contents"]
    assert all("thoughtSignature" not in p for c in older for p in c["parts"])


def test_missing_tool_output_is_a_clear_400() -> None:
    err = rejected({}, [user("go"), fc("call_1"), user("next")])
    assert "call_1" in err.message and err.param == "input"
    assert rejected({"instructions": "only this"}, []).param == "input"


def test_history_opening_with_the_model_gets_a_placeholder_user_turn() -> None:
    """Gemini refuses contents that start with a model turn; real clients send such histories."""
    contents = body_of({}, [assistant("hi"), user("yo")])["contents"]
    assert contents[0] == {"role": "user", "parts": [{"text": HISTORY_PLACEHOLDER}]}
    assert [c["role"] for c in contents] == ["user", "model", "user"]


def test_tools_namespaces_and_names_gemini_refuses() -> None:
    tools = [
        WEATHER_TOOL,
        {"type": "function", "name": "1st-tool", "parameters": {"$schema": "x", "type": "object"}},
        GMAIL_NAMESPACE,
    ]
    out = body_of({"input": "hi", "tools": tools})
    decls = out["tools"][0]["functionDeclarations"]
    assert decls[0] == {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parametersJsonSchema": WEATHER_TOOL["parameters"],
    }
    assert decls[1] == {"name": "_1st-tool", "parametersJsonSchema": {"type": "object"}}
    assert decls[2]["name"] == "mcp__codex_apps__gmail_search_emails"
    assert gemini_name("a b/c") == "a_b_c"
    hosted = [{"type": "web_search"}]
    assert rejected({"input": "hi", "tools": hosted}).param == "tools"
    assert "tools" not in body_of({"input": "hi", "tools": hosted}, drop_unsupported_tools=True)


@pytest.mark.parametrize(
    ("choice", "expected", "n_decls"),
    [
        ("auto", {"mode": "AUTO"}, 2),
        ("none", {"mode": "NONE"}, 2),
        ("required", {"mode": "ANY"}, 2),
        ({"type": "function", "name": "ping"}, {"mode": "ANY", "allowedFunctionNames": ["ping"]}, 2),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "ping"}]},
            {"mode": "ANY", "allowedFunctionNames": ["ping"]},
            1,
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "ping"}]},
            {"mode": "AUTO"},
            1,
        ),
        (None, None, 2),
    ],
)
def test_tool_choice_mapping(choice: Any, expected: Any, n_decls: int) -> None:
    body: dict[str, Any] = {"input": "hi", "tools": [WEATHER_TOOL, {"type": "function", "name": "ping"}]}
    if choice is not None:
        body["tool_choice"] = choice
    body["parallel_tool_calls"] = False  # no Gemini equivalent: dropped
    out = body_of(body)
    assert out.get("toolConfig", {}).get("functionCallingConfig") == expected
    assert len(out["tools"][0]["functionDeclarations"]) == n_decls
    assert rejected({"input": "hi", "tool_choice": "required"}).param == "tool_choice"


def test_generation_config() -> None:
    out = body_of(
        {
            "input": "hi",
            "temperature": 0.4,
            "top_p": 0.9,
            "max_output_tokens": 500,
            "stop": ["END", "STOP"],
            "seed": 7,
            "presence_penalty": 0.5,
            "safety_identifier": "u1",
        }
    )
    assert out["generationConfig"] == {
        "maxOutputTokens": 500,
        "temperature": 0.4,
        "topP": 0.9,
        "seed": 7,
        "stopSequences": ["END", "STOP"],
    }
    assert body_of({"input": "hi", "stop": "END"})["generationConfig"] == {"stopSequences": ["END"]}
    assert rejected({"input": "hi", "stop": list("abcdef")}).param == "stop"


def test_structured_output() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "name": "x", "schema": schema, "strict": True}
    gen = body_of({"input": "hi", "text": {"format": fmt}})["generationConfig"]
    assert gen == {
        "responseMimeType": "application/json",
        "responseJsonSchema": {k: v for k, v in schema.items() if k != "$schema"},
    }
    gen = body_of({"input": "hi", "text": {"format": {"type": "json_object"}}})["generationConfig"]
    assert gen == {"responseMimeType": "application/json"}
    assert "generationConfig" not in body_of({"input": "hi", "text": {"format": {"type": "text"}}})
    assert (
        rejected({"input": "hi", "text": {"format": {"type": "json_schema"}}}).param == "text.format.schema"
    )


@pytest.mark.parametrize(
    ("model", "reasoning", "cap", "expected"),
    [
        ("gemini-2.5-flash", {"effort": "medium"}, None, {"thinkingBudget": 8192}),
        (
            "gemini-2.5-flash",
            {"effort": "high", "summary": "auto"},
            1000,
            {"thinkingBudget": 500, "includeThoughts": True},
        ),
        ("gemini-2.5-flash", {"effort": "none"}, None, {"thinkingBudget": 0}),
        ("gemini-2.5-flash", {"summary": "detailed"}, None, {"includeThoughts": True}),
        ("gemini-3-flash-preview", {"effort": "minimal"}, None, {"thinkingLevel": "MINIMAL"}),
        ("gemini-3-pro-preview", {"effort": "minimal"}, None, {"thinkingLevel": "LOW"}),
        (
            "models/gemini-3-pro-preview",
            {"effort": "xhigh", "summary": "auto"},
            None,
            {"thinkingLevel": "HIGH", "includeThoughts": True},
        ),
    ],
)
def test_reasoning_to_thinking_config(model: str, reasoning: Any, cap: Any, expected: Any) -> None:
    body: dict[str, Any] = {"input": "hi", "reasoning": reasoning}
    if cap is not None:
        body["max_output_tokens"] = cap
    assert body_of(body, model=model)["generationConfig"]["thinkingConfig"] == expected


def test_thinking_style_option_overrides_the_model_guess() -> None:
    out = body_of(
        {"input": "hi", "reasoning": {"effort": "low"}}, model="my-gemini", extra={"gemini_thinking": "level"}
    )
    assert out["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "LOW"}
    assert rejected({"input": "hi", "reasoning": {"effort": "extreme"}}).param == "reasoning.effort"


@pytest.mark.parametrize(
    ("body", "param"), [({"prompt": {"id": "p"}}, "prompt"), ({"top_logprobs": 2}, "top_logprobs")]
)
def test_requests_gemini_cannot_honour_are_400s(body: dict[str, Any], param: str) -> None:
    assert rejected({"input": "hi", **body}).param == param


# -- thought signatures ---------------------------------------------------------------------------


def test_envelope_round_trip_and_damage() -> None:
    entries = [{"on": "call", "call_id": "c1", "sig": "S"}, {"on": "text", "sig": "T", "empty": True}]
    assert decode_signatures(encode_signatures(entries)) == entries
    assert decode_signatures("gemini:not-base64!") == []
    assert decode_signatures("gemini:" + base64.b64encode(b"[1]").decode()) == []
    assert decode_signatures("anthropic:abc") == [] and decode_signatures(None) == []
    bad = encode_signatures(
        [{"on": "call", "sig": "S"}, {"on": "thought", "sig": ""}, {"on": "x", "sig": "S"}]
    )
    assert decode_signatures(bad) == []


def next_turn(fixture: str, *extra: dict[str, Any], model: str = "gemini-2.5-flash") -> list[dict[str, Any]]:
    """The output of a translated fixture sent back as input (what stateless clients do)."""
    output = [e.json() for e in translate("gemini", fixture)][-1]["response"]["output"]
    contents: list[dict[str, Any]] = body_of(
        {"tools": [WEATHER_TOOL]}, [user("q"), *output, *extra], model=model
    )["contents"]
    return contents


def test_parallel_call_signature_goes_back_on_the_first_call_only() -> None:
    output = [e.json() for e in translate("gemini", "parallel_calls_no_id")][-1]["response"]["output"]
    ids = [o["call_id"] for o in output if o["type"] == "function_call"]
    contents = next_turn("parallel_calls_no_id", fco(ids[1], "12C"), fco(ids[0], "15C"))
    assert contents[1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "CiQB0e2Kb1Sig+A/pAris==",
            },
            {"functionCall": {"name": "get_weather", "args": {"city": "London"}}},
        ],
    }
    assert [p["functionResponse"]["response"]["output"] for p in contents[2]["parts"]] == ["15C", "12C"]


def test_gemini_call_ids_are_echoed_with_the_signature() -> None:
    contents = next_turn("calls_with_ids", fco("p7x2k9qa"), fco("m3n8v1zc"), model="gemini-3-pro-preview")
    calls = contents[1]["parts"]
    assert calls[0] == {
        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "p7x2k9qa"},
        "thoughtSignature": "EtwDCtkDSigB==",
    }
    assert "thoughtSignature" not in calls[1] and calls[1]["functionCall"]["id"] == "m3n8v1zc"
    assert [p["functionResponse"]["id"] for p in contents[2]["parts"]] == ["p7x2k9qa", "m3n8v1zc"]


def test_final_signature_only_part_is_replayed_where_it_came() -> None:
    contents = next_turn("thought_then_text_signature", user("more"))
    # Unsigned thought summaries are not sent back; the empty signed part follows the text.
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"text": "Hi! Nice to meet you."},
            {"text": "", "thoughtSignature": "Eo8ECowEAdHtim9Final=="},
        ],
    }


def test_signature_on_a_text_part_goes_back_on_that_text() -> None:
    contents = next_turn("signature_on_first_text", user("more"))
    assert contents[1]["parts"] == [{"text": "The answer is 42.", "thoughtSignature": "FirstPartSig=="}]


def test_signed_thought_run_is_replayed_as_one_thought_part() -> None:
    contents = next_turn("signed_thought_part", user("more"))
    assert contents[1]["parts"] == [
        {"text": "Weighing the options.", "thought": True, "thoughtSignature": "ThoughtRunSig=="},
        {"text": "Paris it is."},
    ]


def test_other_providers_reasoning_is_dropped() -> None:
    items = [
        user("q"),
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "anthropic:xyz"},
        assistant("a"),
        user("b"),
    ]
    assert [c["role"] for c in body_of({}, items)["contents"]] == ["user", "model", "user"]


# -- stream ---------------------------------------------------------------------------------------


def msg(payload: dict[str, Any]) -> SSEMessage:
    return SSEMessage(None, orjson.dumps(payload))


def cand(parts: list[dict[str, Any]] | None = None, finish: str | None = None, **extra: Any) -> SSEMessage:
    c: dict[str, Any] = {"content": {"role": "model", "parts": parts or []}, "index": 0, **extra}
    if finish:
        c["finishReason"] = finish
    return msg({"candidates": [c], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}})


def feed_all(messages: list[SSEMessage], body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    call = UpstreamCall(body={"model": "client-model", **(body or {})}, input=[], model="gemini-x")
    t = DIALECT.translator("resp_1", call, CREATED_AT, counter_ids())
    events: list[Event] = t.start()
    for message in messages:
        events += t.feed(message)
    events += t.finish()
    out = [e.json() for e in events]
    check_stream(out)
    return out


@pytest.mark.parametrize(
    ("reason", "terminal", "detail"),
    [
        ("STOP", "response.completed", None),
        ("MAX_TOKENS", "response.incomplete", {"reason": "max_output_tokens"}),
        ("SAFETY", "response.incomplete", {"reason": "content_filter"}),
        ("RECITATION", "response.incomplete", {"reason": "content_filter"}),
        ("PROHIBITED_CONTENT", "response.incomplete", {"reason": "content_filter"}),
        ("BLOCKLIST", "response.incomplete", {"reason": "content_filter"}),
        ("SPII", "response.incomplete", {"reason": "content_filter"}),
        ("OTHER", "response.failed", None),
        ("UNEXPECTED_TOOL_CALL", "response.failed", None),
        ("SOMETHING_NEW", "response.completed", None),
    ],
)
def test_finish_reason_table(reason: str, terminal: str, detail: Any) -> None:
    events = feed_all([cand([{"text": "x"}]), cand([], reason)])
    assert events[-1]["type"] == terminal
    assert events[-1]["response"]["incomplete_details"] == detail
    if terminal == "response.failed":
        assert events[-1]["response"]["error"] == {
            "code": "server_error",
            "message": f"Gemini stopped with finishReason {reason}.",
        }


def test_namespaced_and_renamed_calls_get_the_client_names_back() -> None:
    tools = [GMAIL_NAMESPACE, {"type": "function", "name": "1st-tool"}]
    events = feed_all(
        [
            cand(
                [
                    {"functionCall": {"name": "mcp__codex_apps__gmail_search_emails", "args": {}}},
                    {"functionCall": {"name": "_1st-tool", "args": {"a": [1]}}},
                ],
                "STOP",
            )
        ],
        body={"tools": tools},
    )
    calls = events[-1]["response"]["output"]
    assert (calls[0]["namespace"], calls[0]["name"]) == ("mcp__codex_apps__gmail", "_search_emails")
    assert (calls[1]["name"], calls[1]["arguments"]) == ("1st-tool", '{"a":[1]}')


def test_non_data_parts_and_empty_events_are_ignored() -> None:
    events = feed_all(
        [
            SSEMessage(None, b""),
            cand(
                [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}, {"executableCode": {"code": "1"}}]
            ),
            cand([{"text": "ok"}], "STOP"),
        ]
    )
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["message"]


def test_usage_takes_the_last_running_totals() -> None:
    u1 = {
        "promptTokenCount": 100,
        "candidatesTokenCount": 1,
        "thoughtsTokenCount": 4,
        "toolUsePromptTokenCount": 7,
    }
    u2 = {**u1, "candidatesTokenCount": 9, "cachedContentTokenCount": 64}
    events = feed_all(
        [
            msg({"candidates": [{"content": {"parts": [{"text": "a"}]}}], "usageMetadata": u1}),
            msg(
                {
                    "candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"}],
                    "usageMetadata": u2,
                }
            ),
        ]
    )
    assert events[-1]["response"]["usage"] == {
        "input_tokens": 107,
        "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
        "output_tokens": 13,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 120,
    }


# -- HTTP errors ----------------------------------------------------------------------------------


def google(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"error": {"code": code, "message": message, "status": status, "details": list(details)}}
    )


RETRY = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}
QUOTA = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "PerMinute"}]}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            google(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified"),
            (400, "invalid_request_error", "invalid_request_error"),
        ),
        (
            400,
            google(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            (400, "invalid_request_error", "context_length_exceeded"),
        ),
        (
            400,
            google(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
            ),
            (401, "invalid_request_error", "upstream_authentication_error"),
        ),
        (
            400,
            google(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
            (400, "invalid_request_error", "failed_precondition"),
        ),
        (
            403,
            google(403, "PERMISSION_DENIED", "Permission denied on resource project 1."),
            (403, "invalid_request_error", "upstream_authentication_error"),
        ),
        (
            404,
            google(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"),
            (404, "invalid_request_error", "model_not_found"),
        ),
        (
            429,
            google(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota", QUOTA, RETRY),
            (429, "rate_limit_error", "rate_limit_exceeded"),
        ),
        (
            500,
            google(500, "INTERNAL", "An internal error has occurred."),
            (500, "server_error", "server_error"),
        ),
        (
            503,
            google(503, "UNAVAILABLE", "The model is overloaded."),
            (503, "server_error", "server_is_overloaded"),
        ),
        (
            504,
            google(504, "DEADLINE_EXCEEDED", "Deadline expired."),
            (504, "server_error", "upstream_timeout"),
        ),
        (500, b"<html>oops</html>", (500, "server_error", "server_error")),
    ],
)
def test_error_table(status: int, body: bytes, expected: tuple[int, str, str]) -> None:
    err = DIALECT.error_from_status(status, body, {})
    assert (err.status, err.type, err.code) == expected
    assert err.retryable == (expected[0] == 429 or expected[0] >= 500)
    if expected[2] == "upstream_authentication_error":
        assert "API key" not in err.message  # nothing about the proxy's key is repeated


def test_retry_info_becomes_retry_after_rounded_up() -> None:
    err = DIALECT.error_from_status(429, google(429, "RESOURCE_EXHAUSTED", "quota", QUOTA, RETRY), {})
    assert err.headers == {"retry-after": "13"}
    # The provider's own header wins; array-wrapped bodies (non-SSE endpoints) are unwrapped.
    wrapped = b"[" + google(429, "RESOURCE_EXHAUSTED", "quota", RETRY) + b"]"
    err = DIALECT.error_from_status(429, wrapped, {"retry-after": "2"})
    assert err.headers == {"retry-after": "2"} and err.message == "quota"
    assert retry_delay({"details": [{"@type": "x.google.rpc.RetryInfo", "retryDelay": "soon"}]}) is None
    assert (
        retry_delay(
            {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.25s"}]}
        )
        == 0.25
    )


# -- random Gemini streams: any parts, any chunking, signatures anywhere ---------------------------

_words = st.text(alphabet="ab xyz*\n", min_size=1, max_size=6)


@st.composite
def gemini_script(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The parts of one Gemini answer: thought, text and functionCall parts in any order, each
    maybe signed (every signature unique), calls with or without Gemini ids."""
    parts: list[dict[str, Any]] = []
    for n in range(draw(st.integers(min_value=0, max_value=8))):
        kind = draw(st.sampled_from(["thought", "text", "empty", "call"]))
        signed = draw(st.booleans()) or kind == "empty"
        part: dict[str, Any]
        if kind == "thought":
            part = {"text": draw(_words), "thought": True}
        elif kind in ("text", "empty"):
            part = {"text": draw(_words) if kind == "text" else ""}
        else:
            call: dict[str, Any] = {"name": "get_weather", "args": {"city": draw(_words)}}
            if draw(st.booleans()):
                call["id"] = f"gid{n}"
            part = {"functionCall": call}
        if signed:
            part["thoughtSignature"] = f"sig{n}=="
        parts.append(part)
    return parts


def _script_sse(parts: list[dict[str, Any]], groups: list[int]) -> bytes:
    out, i = [], 0
    for size in groups:
        chunk = {"candidates": [{"content": {"role": "model", "parts": parts[i : i + size]}, "index": 0}]}
        out.append(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        i += size
    final = {"candidates": [{"content": {"role": "model", "parts": parts[i:]}, "finishReason": "STOP"}],
             "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2}}  # fmt: skip
    return b"".join(out) + b"data: " + orjson.dumps(final) + b"\r\n\r\n"


@given(parts=gemini_script(), data=st.data())
@settings(max_examples=150, deadline=None)
def test_random_streams_keep_calls_text_and_every_signature(
    parts: list[dict[str, Any]], data: st.DataObject
) -> None:
    groups = data.draw(st.lists(st.integers(min_value=0, max_value=3), max_size=len(parts)), label="groups")
    raw = _script_sse(parts, groups)
    cut = data.draw(st.integers(min_value=1, max_value=64), label="cut")
    call = UpstreamCall(body={"model": "m", "tools": [WEATHER_TOOL]}, input=[], model="gemini-x")
    t = DIALECT.translator("resp_1", call, CREATED_AT, counter_ids())
    events = run(t, [raw[i : i + cut] for i in range(0, len(raw), cut)])
    out = [e.json() for e in events]
    check_stream(out)
    response = out[-1]["response"]
    assert response["status"] == "completed"
    output = response["output"]
    calls = [o for o in output if o["type"] == "function_call"]
    want = [p["functionCall"] for p in parts if "functionCall" in p]
    assert [orjson.loads(c["arguments"]) for c in calls] == [w["args"] for w in want]
    for c, w in zip(calls, want, strict=True):
        assert c["call_id"] == w.get("id", c["call_id"]) and c["call_id"]
    text = "".join(p["text"] for p in parts if "functionCall" not in p and not p.get("thought"))
    assert "".join(p["text"] for o in output if o["type"] == "message" for p in o["content"]) == text
    # The next turn puts every signature back: call signatures on their calls, the rest on
    # thought and text parts; nothing is invented except the validator-skipping dummy.
    items = [user("q"), *output, *[fco(c["call_id"]) for c in calls], user("next")]
    contents = body_of({"tools": [WEATHER_TOOL]}, items)["contents"]
    sent = [p for c in contents for p in c["parts"]]
    sent_calls = [p for p in sent if "functionCall" in p]
    for s, w in zip(sent_calls, [p for p in parts if "functionCall" in p], strict=True):
        assert s.get("thoughtSignature") == w.get("thoughtSignature")
    sigs = sorted(p["thoughtSignature"] for p in sent if "thoughtSignature" in p)
    assert sigs == sorted(p["thoughtSignature"] for p in parts if "thoughtSignature" in p)
    replayed = "".join(p["text"] for p in sent if "text" in p and not p.get("thought"))
    assert replayed == "q" + text + "next"
