"""Chat Completions dialect: request mapping (translation.md A), stream translation (B, E) and
error mapping (F), against golden transcripts and hand-written chunks."""

from __future__ import annotations

import itertools
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
)
from wsproxy.core.events import Event
from wsproxy.core.ids import counter_ids
from wsproxy.core.request import normalize_input
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.base import DialectOptions, UpstreamCall
from wsproxy.dialects.chat_completions import ChatCompletionsDialect, ChatStreamTranslator, ThinkSplitter
from wsproxy.errors import InvalidRequest, UpstreamError

DIALECT = ChatCompletionsDialect()


def body_of(body: dict[str, Any], items: Any = None, **options: Any) -> dict[str, Any]:
    """The Chat body built for a Responses body (``input`` normalized as the edge does)."""
    body = {"model": "client-model", **body}
    call = UpstreamCall(
        body=body,
        input=normalize_input(body.get("input") if items is None else items),
        model="upstream-model",
        options=DialectOptions(**options),
    )
    req = DIALECT.build_request(call)
    assert req.path == "/chat/completions"
    assert req.method == "POST"
    assert req.headers == {}
    out: dict[str, Any] = orjson.loads(req.body)
    return out


def rejected(body: dict[str, Any], items: Any = None, **options: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        body_of(body, items, **options)
    assert info.value.status == 400
    return info.value


def fc(
    call_id: str, name: str = "get_weather", arguments: str = '{"city":"Paris"}', **extra: Any
) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, **extra}


def fco(call_id: str, output: Any = "sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def user(content: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": content}


# -- golden transcripts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names("chat"))
def test_golden(name: str) -> None:
    check_stream(check_golden("chat", name))


# -- request: messages ----------------------------------------------------------------------------


def test_minimal_request_streams_with_usage_and_routed_model() -> None:
    out = body_of({"input": "hi"})
    assert out == {
        "model": "upstream-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_instructions_become_the_first_message_with_the_configured_role() -> None:
    assert body_of({"instructions": "Be brief.", "input": "hi"})["messages"][0] == {
        "role": "system",
        "content": "Be brief.",
    }
    out = body_of({"instructions": "Be brief.", "input": "hi"}, system_role="developer")
    assert out["messages"][0] == {"role": "developer", "content": "Be brief."}


def test_system_and_developer_messages_use_the_configured_role() -> None:
    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
        {"role": "system", "content": "more"},
        user("hi"),
    ]
    assert [m["role"] for m in body_of({}, items)["messages"]] == ["system", "system", "user"]


def test_all_text_parts_collapse_to_one_string() -> None:
    items = [user([{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}])]
    assert body_of({}, items)["messages"] == [{"role": "user", "content": "a\nb"}]


def test_images_and_files_become_content_parts() -> None:
    items = [
        user(
            [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/a.png", "detail": "high"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                {
                    "type": "input_file",
                    "file_data": "data:application/pdf;base64,JVBERi0=",
                    "filename": "a.pdf",
                },
            ]
        )
    ]
    assert body_of({}, items)["messages"][0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]


def test_image_file_id_and_file_url_are_rejected() -> None:
    err = rejected({}, [user([{"type": "input_image", "file_id": "file-1"}])])
    assert err.code == "unsupported_parameter" and err.param == "input[0].content[0].file_id"
    err = rejected({}, [user([{"type": "input_file", "file_url": "https://x/a.pdf"}])])
    assert err.param == "input[0].content[0].file_url"


def test_assistant_output_text_is_concatenated_and_refusal_is_plain_text() -> None:
    items = [
        user("hi"),
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hel", "annotations": []},
                {"type": "output_text", "text": "lo"},
                {"type": "refusal", "refusal": " No."},
            ],
        },
        user("again"),
    ]
    assert body_of({}, items)["messages"][1] == {"role": "assistant", "content": "Hello No."}


def test_consecutive_calls_are_one_assistant_message_followed_by_tool_messages() -> None:
    items = [
        user("weather?"),
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        fc("call_1"),
        fc("call_2", "get_time", ""),
        fco("call_1"),
        fco("call_2", [{"type": "input_text", "text": "12:00"}]),
        user("thanks"),
    ]
    msgs = body_of({}, items)["messages"]
    assert msgs == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
        {"role": "user", "content": "thanks"},
    ]


def test_calls_without_preceding_text_get_a_null_content_assistant_message() -> None:
    msgs = body_of({}, [user("go"), fc("call_1"), fco("call_1")])["messages"]
    assert msgs[1]["content"] is None and len(msgs[1]["tool_calls"]) == 1


def test_assistant_text_after_calls_joins_the_same_turn() -> None:
    items = [user("go"), fc("call_1"), {"role": "assistant", "content": "and done"}, fco("call_1")]
    msgs = body_of({}, items)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1]["content"] == "and done"


def test_tool_output_images_follow_the_tool_messages_in_a_user_message() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    items = [user("look"), fc("call_1"), fc("call_2"), fco("call_1", [image]), fco("call_2", "ok")]
    msgs = body_of({}, items)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "user"]
    assert msgs[2]["content"] == ""
    assert msgs[4]["content"] == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]


@pytest.mark.parametrize(
    "items",
    [
        [user("go"), fc("call_1")],  # history ends with an unanswered call
        [user("go"), fc("call_1"), user("next")],  # a user turn before the output
        [user("go"), fc("call_1"), fc("call_2"), fco("call_2"), user("next")],  # one of two missing
    ],
)
def test_a_call_without_its_output_is_a_clear_400(items: list[dict[str, Any]]) -> None:
    err = rejected({}, items)
    assert "No tool output found for function call call_" in err.message
    assert err.param == "input"


def test_an_output_without_its_call_is_a_400_naming_it() -> None:
    err = rejected({}, [user("go"), fco("call_9")])
    assert "call_9" in err.message and err.param == "input[1].call_id"
    err = rejected({}, [user("go"), fc("call_1"), fco("call_1"), fco("call_1")])
    assert "twice" in err.message


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "item_reference", "id": "msg_1"}, "input[1]"),
        ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "input[1]"),
        ({"type": "compaction", "encrypted_content": "x"}, "input[1]"),
    ],
)
def test_item_types_chat_cannot_express_are_rejected(item: dict[str, Any], param: str) -> None:
    err = rejected({}, [user("hi"), item])
    assert err.code == "unsupported_parameter" and err.param == param


# -- request: tools -------------------------------------------------------------------------------


def test_flat_tools_are_nested_and_strict_is_copied() -> None:
    tools = [WEATHER_TOOL, {"type": "function", "name": "ping", "parameters": None}]
    out = body_of({"input": "hi", "tools": tools, "tool_choice": "auto", "parallel_tool_calls": False})
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        },
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False


def test_namespace_tools_are_flattened_and_namespaced_calls_use_the_flat_name() -> None:
    items = [
        user("mail?"),
        fc("call_1", "_search_emails", "{}", namespace="mcp__codex_apps__gmail"),
        fco("call_1"),
    ]
    out = body_of(
        {
            "tools": [
                GMAIL_NAMESPACE,
                {
                    "type": "namespace",
                    "name": "collab",
                    "tools": [
                        {
                            "type": "function",
                            "name": "spawn_agent",
                            "parameters": {"type": "object", "properties": {}},
                        }
                    ],
                },
            ]
        },
        items,
    )
    assert [t["function"]["name"] for t in out["tools"]] == [
        "mcp__codex_apps__gmail_search_emails",
        "collab__spawn_agent",
    ]
    assert out["tools"][0]["function"]["strict"] is False
    assert out["messages"][1]["tool_calls"][0]["function"]["name"] == "mcp__codex_apps__gmail_search_emails"


def test_hosted_tools_are_rejected_or_dropped_by_configuration() -> None:
    tools = [WEATHER_TOOL, {"type": "web_search", "external_web_access": False}]
    err = rejected({"input": "hi", "tools": tools})
    assert err.code == "unsupported_parameter" and err.param == "tools" and "web_search" in err.message
    out = body_of({"input": "hi", "tools": tools}, drop_unsupported_tools=True)
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather"]
    out = body_of(
        {"input": "hi", "tools": tools[1:], "tool_choice": "auto", "parallel_tool_calls": True},
        drop_unsupported_tools=True,
    )
    assert "tools" not in out and "tool_choice" not in out and "parallel_tool_calls" not in out


def test_duplicate_function_names_are_rejected() -> None:
    err = rejected({"input": "hi", "tools": [WEATHER_TOOL, WEATHER_TOOL]})
    assert err.param == "tools"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_mapping(choice: Any, expected: Any) -> None:
    assert body_of({"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": choice})["tool_choice"] == expected


def test_allowed_tools_filters_the_tool_list_and_keeps_the_mode() -> None:
    time_tool = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_time"}],
    }
    out = body_of({"input": "hi", "tools": [WEATHER_TOOL, time_tool], "tool_choice": choice})
    assert [t["function"]["name"] for t in out["tools"]] == ["get_time"]
    assert out["tool_choice"] == "required"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice", "unsupported_parameter"),
        (
            {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "mcp"}]}},
            "tool_choice",
            "unsupported_parameter",
        ),
        ({"tool_choice": "required", "tools": []}, "tool_choice", "invalid_value"),
        ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ],
)
def test_tool_choice_errors(body: dict[str, Any], param: str, code: str) -> None:
    err = rejected({"input": "hi", "tools": [WEATHER_TOOL], **body})
    assert (err.param, err.code) == (param, code)


# -- request: the other fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {
                "type": "json_schema",
                "name": "x",
                "schema": {"type": "object"},
                "strict": True,
                "description": "d",
            },
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object"},
                    "strict": True,
                    "description": "d",
                },
            },
        ),
    ],
)
def test_text_format_becomes_response_format(fmt: dict[str, Any], expected: Any) -> None:
    out = body_of({"input": "hi", "text": {"format": fmt, "verbosity": "low"}})
    assert out.get("response_format") == expected
    assert "verbosity" not in out


def test_bad_text_formats_are_rejected() -> None:
    assert (
        rejected({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}).param
        == "text.format"
    )
    assert rejected({"input": "hi", "text": {"format": {"type": "grammar"}}}).code == "unsupported_parameter"


def test_max_output_tokens_uses_the_configured_field() -> None:
    assert body_of({"input": "hi", "max_output_tokens": 50})["max_tokens"] == 50
    out = body_of({"input": "hi", "max_output_tokens": 50}, max_tokens_field="max_completion_tokens")
    assert out["max_completion_tokens"] == 50 and "max_tokens" not in out


def test_reasoning_effort_is_sent_only_when_configured() -> None:
    body = {"input": "hi", "reasoning": {"effort": "high", "summary": "auto"}}
    assert body_of(body)["reasoning_effort"] == "high"
    assert "reasoning_effort" not in body_of(body, send_reasoning_effort=False)
    assert "reasoning" not in body_of(body)


def test_sampling_fields_pass_through_and_proxy_fields_never_leave() -> None:
    body = {
        "input": "hi", "temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "seed": 7, "stop": ["END"], "safety_identifier": "u1", "user": "legacy",
        "store": False, "background": False, "include": ["reasoning.encrypted_content"], "truncation": "auto",
        "previous_response_id": "resp_1", "prompt_cache_key": "k", "metadata": {"a": "b"},
        "service_tier": "flex", "client_metadata": {"x": 1}, "max_tool_calls": 3, "top_logprobs": 0,
        "stream_options": {"include_obfuscation": False}, "context_management": [{"type": "compaction"}],
        "parallel_tool_calls": True,
    }  # fmt: skip
    out = body_of(body)
    assert out == {
        "model": "upstream-model",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": 0.2, "seed": 7,
        "stop": ["END"], "safety_identifier": "u1", "user": "legacy",
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt", {"id": "pmpt_1"}), ("top_logprobs", 5), ("moderation", {"model": "omni"})],
)
def test_fields_that_would_change_the_answer_are_rejected(field: str, value: Any) -> None:
    err = rejected({"input": "hi", field: value})
    assert (err.code, err.param) == ("unsupported_parameter", field)


# -- stream ---------------------------------------------------------------------------------------

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> SSEMessage:
    payload = {**BASE, "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}
    return SSEMessage(None, orjson.dumps(payload))


DONE = SSEMessage(None, b"[DONE]")


def translator(body: dict[str, Any] | None = None, **options: Any) -> ChatStreamTranslator:
    call = UpstreamCall(
        body={"model": "client-model", **(body or {})}, input=[], model="m", options=DialectOptions(**options)
    )
    t = DIALECT.translator("resp_1", call, CREATED_AT, counter_ids())
    assert isinstance(t, ChatStreamTranslator)
    return t


def feed_all(
    t: ChatStreamTranslator, messages: list[SSEMessage], *, eof: bool = True
) -> list[dict[str, Any]]:
    events: list[Event] = t.start()
    for message in messages:
        events += t.feed(message)
    if eof:
        events += t.finish()
    out = [e.json() for e in events]
    check_stream(out)
    return out


def final(events: list[dict[str, Any]]) -> dict[str, Any]:
    response: dict[str, Any] = events[-1]["response"]
    return response


def test_start_is_created_and_in_progress_and_nothing_is_output_yet() -> None:
    t = translator()
    assert [e.type for e in t.start()] == ["response.created", "response.in_progress"]
    assert not t.started_output and not t.done
    t.feed(chunk({"role": "assistant", "content": ""}))
    assert not t.started_output
    t.feed(chunk({"content": "x"}))
    assert t.started_output


def test_finish_waits_for_done_so_the_usage_chunk_is_counted() -> None:
    t = translator()
    t.start()
    t.feed(chunk({"content": "hi"}))
    closing = t.feed(chunk({}, "stop"))
    assert [e.type for e in closing][-1] == "response.output_item.done" and not t.done
    t.feed(
        SSEMessage(
            None, orjson.dumps({**BASE, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        )
    )
    events = t.feed(DONE)
    assert [e.type for e in events] == ["response.completed"] and t.done
    assert t.response["usage"]["input_tokens"] == 3 and t.response["usage"]["total_tokens"] == 5
    assert t.feed(chunk({"content": "late"})) == [] and t.finish() == [] and t.fail("x", "y") == []


def test_eof_after_finish_reason_without_done_completes() -> None:
    events = feed_all(translator(), [chunk({"content": "hi"}), chunk({}, "stop")])
    assert events[-1]["type"] == "response.completed"


def test_injected_clock_sets_completed_at() -> None:
    call = UpstreamCall(
        body={"model": "m"}, input=[], model="m", options=DialectOptions(extra={"clock": lambda: 42})
    )
    t = DIALECT.translator("resp_1", call, CREATED_AT, counter_ids())
    events = run(t, [b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}\n\n'])
    assert events[-1].json()["response"]["completed_at"] == 42


@pytest.mark.parametrize(
    ("reason", "terminal", "detail"),
    [
        ("tool_calls", "response.completed", None),
        ("function_call", "response.completed", None),
        ("end_of_sequence_unknown", "response.completed", None),
        ("length", "response.incomplete", {"reason": "max_output_tokens"}),
        ("content_filter", "response.incomplete", {"reason": "content_filter"}),
        ("error", "response.failed", None),
    ],
)
def test_finish_reason_table(reason: str, terminal: str, detail: Any) -> None:
    events = feed_all(translator(), [chunk({"content": "x"}), chunk({}, reason), DONE])
    assert events[-1]["type"] == terminal
    assert final(events)["incomplete_details"] == detail


def test_done_without_finish_reason_fails() -> None:
    events = feed_all(translator(), [chunk({"content": "x"}), DONE])
    assert final(events)["error"]["code"] == "server_error"


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        ({"error": {"message": "boom", "code": "overloaded"}}, "overloaded", "boom"),
        ({"error": {"message": "boom", "code": 502}}, "server_error", "boom"),
        ({"error": "plain"}, "server_error", "plain"),
    ],
)
def test_error_chunks_fail_with_their_message(payload: dict[str, Any], code: str, message: str) -> None:
    events = feed_all(
        translator(), [chunk({"content": "x"}), SSEMessage("error", orjson.dumps(payload))], eof=False
    )
    assert final(events)["error"] == {"code": code, "message": message}
    types = [e["type"] for e in events]
    assert types.count("error") == 1 and types[-1] == "response.failed"


def test_non_object_chunk_fails() -> None:
    events = feed_all(translator(), [SSEMessage(None, b"[1, 2]")], eof=False)
    assert events[-1]["type"] == "response.failed"


def test_fail_delegates_to_the_builder_and_closes_open_items() -> None:
    t = translator()
    t.start()
    t.feed(chunk({"content": "x"}))
    events = [e.json() for e in t.fail("upstream_timeout", "stalled")]
    assert [e["type"] for e in events] == [
        "error", "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.failed",
    ]  # fmt: skip
    assert events[-1]["response"]["error"] == {"code": "upstream_timeout", "message": "stalled"}
    assert t.done


def test_reasoning_content_wins_over_a_duplicate_reasoning_field() -> None:
    events = feed_all(
        translator(), [chunk({"reasoning_content": "a", "reasoning": "a"}), chunk({}, "stop"), DONE]
    )
    assert final(events)["output"][0]["content"] == [{"type": "reasoning_text", "text": "a"}]


def test_think_tags_are_text_when_disabled() -> None:
    events = feed_all(
        translator(think_tags=False), [chunk({"content": "<think>x</think>y"}), chunk({}, "stop")]
    )
    assert final(events)["output"][0]["content"][0]["text"] == "<think>x</think>y"


def test_a_think_tag_in_the_middle_of_the_answer_is_text() -> None:
    events = feed_all(
        translator(), [chunk({"content": "Use <think>"}), chunk({"content": " tags"}), chunk({}, "stop")]
    )
    assert [i["type"] for i in final(events)["output"]] == ["message"]
    assert final(events)["output"][0]["content"][0]["text"] == "Use <think> tags"


def test_held_back_whitespace_is_flushed_before_a_tool_call() -> None:
    msgs = [
        chunk({"content": "\n"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]
    output = final(feed_all(translator(), msgs))["output"]
    assert [i["type"] for i in output] == ["message", "function_call"]


@given(
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8), answer=st.text(min_size=1, max_size=10)
)
@settings(max_examples=100, deadline=None)
def test_think_splitter_is_independent_of_chunking(cuts: list[int], answer: str) -> None:
    answer = "A" + answer  # never starts with whitespace, so nothing of it is stripped
    content = "  <think>\nstep </thin one</think>\n\n" + answer
    points = sorted({min(c, len(content)) for c in cuts} | {0, len(content)})
    splitter = ThinkSplitter()
    pieces: list[tuple[str, str]] = []
    for a, b in itertools.pairwise(points):
        pieces += splitter.feed(content[a:b])
    pieces += splitter.flush()
    assert "".join(p for k, p in pieces if k == "reasoning") == "\nstep </thin one"
    assert "".join(p for k, p in pieces if k == "text") == answer


def test_interleaved_calls_whose_arguments_never_complete_wait_for_the_finish() -> None:
    msgs = [
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"y":'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "2}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1"}}]}),
        chunk({}, "tool_calls"),
        DONE,
    ]
    events = feed_all(translator(), msgs)
    output = final(events)["output"]
    assert [(i["call_id"], i["arguments"]) for i in output] == [("a", '{"x":1'), ("b", '{"y":2}')]
    # b was held back: none of its deltas came before a's item was done
    types = [(e["type"], e.get("output_index")) for e in events]
    assert types.index(("response.output_item.done", 0)) < types.index(("response.output_item.added", 1))


def test_arguments_for_a_call_closed_by_text_fail_the_response() -> None:
    msgs = [
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}),
        chunk({"content": "oops"}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
    ]
    events = feed_all(translator(), msgs, eof=False)
    assert final(events)["status"] == "failed" and "after it had ended" in final(events)["error"]["message"]


def test_a_call_that_never_gets_a_name_fails_at_the_finish() -> None:
    msgs = [
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]
    events = feed_all(translator(), msgs, eof=False)
    assert (
        final(events)["status"] == "failed" and "without a function name" in final(events)["error"]["message"]
    )


def test_fragments_without_index_are_keyed_by_id() -> None:
    msgs = [
        chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x"'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": ":1}"}}]}),
        chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": {"y": 2}}}]}),
        chunk({}, "tool_calls"),
    ]
    output = final(feed_all(translator(), msgs))["output"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in output] == [
        ("a", "f", '{"x":1}'),
        ("b", "g", '{"y":2}'),
    ]


def test_choices_other_than_index_zero_are_ignored() -> None:
    other = SSEMessage(
        None, orjson.dumps({"choices": [{"index": 1, "delta": {"content": "no"}, "finish_reason": None}]})
    )
    output = final(feed_all(translator(), [other, chunk({"content": "yes"}), chunk({}, "stop")]))["output"]
    assert output[0]["content"][0]["text"] == "yes"


def test_response_echoes_the_client_request() -> None:
    t = translator({"instructions": "be nice", "temperature": 0.5, "tools": [WEATHER_TOOL]})
    created = t.start()[0].json()["response"]
    assert (
        created["model"] == "client-model"
        and created["id"] == "resp_1"
        and created["created_at"] == CREATED_AT
    )
    assert (
        created["instructions"] == "be nice"
        and created["temperature"] == 0.5
        and created["tools"] == [WEATHER_TOOL]
    )


# -- HTTP errors ----------------------------------------------------------------------------------


def test_openai_envelope_passes_through_with_retry_after() -> None:
    body = orjson.dumps(
        {"error": {"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"}}
    )
    err = DIALECT.error_from_status(
        429, body, {"Retry-After": "2", "x-ratelimit-remaining-requests": "0", "set-cookie": "s"}
    )
    assert isinstance(err, UpstreamError)
    assert (err.status, err.type, err.code, err.message) == (
        429,
        "requests",
        "rate_limit_exceeded",
        "Slow down",
    )
    assert err.headers == {"retry-after": "2", "x-ratelimit-remaining-requests": "0"}
    assert err.retryable


def test_context_length_error_keeps_code_and_param() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": "too long",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
    )
    err = DIALECT.error_from_status(400, body, {})
    assert (err.status, err.code, err.param, err.retryable) == (
        400,
        "context_length_exceeded",
        "messages",
        False,
    )


def test_non_json_and_list_wrapped_error_bodies() -> None:
    err = DIALECT.error_from_status(502, b"<html>Bad gateway</html>", {})
    assert err.status == 502 and "Bad gateway" in err.message and err.retryable
    err = DIALECT.error_from_status(400, orjson.dumps([{"error": {"message": "bad model", "code": 400}}]), {})
    assert err.message == "bad model" and err.code == "400"


# -- every other 400 of the request mapping -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "items", "param", "code"),
    [
        ({"tools": {"type": "function"}}, None, "tools", "invalid_type"),
        ({"tools": ["get_weather"]}, None, "tools[0]", "invalid_type"),
        ({"tools": [{"type": "function"}]}, None, "tools[0].name", "missing_required_parameter"),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": "x"}]},
            None,
            "tools[0].parameters",
            "invalid_type",
        ),
        (
            {"tools": [{"type": "namespace", "tools": []}]},
            None,
            "tools[0].name",
            "missing_required_parameter",
        ),
        (
            {"tools": [{"type": "namespace", "name": "ns", "tools": {}}]},
            None,
            "tools[0].tools",
            "invalid_type",
        ),
        (
            {"tools": [{"type": "namespace", "name": "ns", "tools": [1]}]},
            None,
            "tools[0].tools[0]",
            "invalid_type",
        ),
        (
            {"tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "c"}]}]},
            None,
            "tools",
            "unsupported_parameter",
        ),
        ({"tools": [WEATHER_TOOL], "tool_choice": 3}, None, "tool_choice", "invalid_type"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools", "mode": "maybe", "tools": []}},
            None,
            "tool_choice.mode",
            "invalid_value",
        ),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "allowed_tools", "tools": [{"type": "function", "name": "nope"}]},
            },
            None,
            "tool_choice",
            "invalid_value",
        ),
        ({"text": {"format": "json"}}, None, "text.format", "invalid_type"),
        (
            {},
            [user([{"type": "input_audio", "input_audio": {}}])],
            "input[0].content[0]",
            "unsupported_parameter",
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
