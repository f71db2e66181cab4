"""parse_create / normalize_input: OpenAI-style validation of create bodies and response.create."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.core.request import loads_object, normalize_input, parse_create
from wsproxy.errors import InvalidRequest


def http(**fields: Any) -> Any:
    return parse_create({"model": "m", **fields}, websocket=False)


def ws(**fields: Any) -> Any:
    return parse_create({"type": "response.create", "model": "m", **fields}, websocket=True)


def rejects(obj: dict[str, Any], *, websocket: bool) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_create(obj, websocket=websocket)
    assert info.value.status == 400
    return info.value


def test_minimal_request() -> None:
    req = http(input="hi")
    assert req.model == "m"
    assert req.input == [{"type": "message", "role": "user", "content": "hi"}]
    assert req.body == {"model": "m", "input": "hi"}
    assert (req.stream, req.background, req.store, req.generate) == (False, False, True, True)
    assert req.previous_response_id is None and req.stream_id is None


@pytest.mark.parametrize("websocket", [False, True])
def test_unknown_field_names_the_param(websocket: bool) -> None:
    err = rejects({"model": "m", "temprature": 1}, websocket=websocket)
    assert (err.code, err.param) == ("unknown_parameter", "temprature")
    assert "temprature" in err.message


@pytest.mark.parametrize("field", ["stream_id", "generate", "type"])
def test_websocket_only_fields_are_unknown_over_http(field: str) -> None:
    err = rejects({"model": "m", field: "x"}, websocket=False)
    assert (err.code, err.param) == ("unknown_parameter", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", 5),
        ("tools", {}),
        ("store", "yes"),
        ("metadata", []),
        ("temperature", "1"),
        ("top_p", [1]),
        ("max_output_tokens", 1.5),
        ("previous_response_id", 7),
        ("parallel_tool_calls", 1),
        ("reasoning", "high"),
        ("stream", "true"),
        ("instructions", 3),
    ],
)
def test_type_errors_name_the_param(field: str, value: Any) -> None:
    err = rejects({"model": "m", field: value}, websocket=False)
    assert err.param == field
    assert err.code == "invalid_type"


@pytest.mark.parametrize(
    "field", ["temperature", "top_p", "max_output_tokens", "top_logprobs", "presence_penalty"]
)
def test_bool_is_not_a_number(field: str) -> None:
    err = rejects({"model": "m", field: True}, websocket=False)
    assert (err.param, err.code) == (field, "invalid_type")


def test_ints_are_accepted_where_numbers_are_expected() -> None:
    assert http(temperature=1, top_p=0).body["temperature"] == 1


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("temperature", 0, True),
        ("temperature", 2, True),
        ("temperature", 2.0001, False),
        ("temperature", -0.1, False),
        ("top_p", 0.0, True),
        ("top_p", 1, True),
        ("top_p", 1.01, False),
        ("top_p", -1, False),
        ("max_output_tokens", 16, True),
        ("max_output_tokens", 15, False),
        ("max_output_tokens", 0, False),
    ],
)
def test_ranges(field: str, value: float, ok: bool) -> None:
    if ok:
        assert http(**{field: value}).body[field] == value
    else:
        err = rejects({"model": "m", field: value}, websocket=False)
        assert err.param == field
        assert err.code == ("integer_below_min_value" if field == "max_output_tokens" else "invalid_value")


@pytest.mark.parametrize("obj", [{}, {"model": ""}, {"model": None}, {"input": "hi"}])
def test_model_is_required(obj: dict[str, Any]) -> None:
    err = rejects(obj, websocket=False)
    assert (err.param, err.code) == ("model", "missing_required_parameter")


def test_null_fields_are_dropped_from_the_body() -> None:
    req = http(instructions=None, temperature=None, previous_response_id=None)
    assert req.body == {"model": "m"}
    assert req.previous_response_id is None


def test_body_fields_and_transport_fields_are_separated() -> None:
    req = http(stream=True, background=True, store=False, previous_response_id="resp_1", input=[])
    assert req.stream is True and req.background is True and req.store is False
    assert req.previous_response_id == "resp_1"
    assert "stream" not in req.body and "background" not in req.body
    assert req.body["store"] is False


@pytest.mark.parametrize("sid", ["main", "a", "A-b_c.9", "x" * 256])
def test_valid_stream_ids(sid: str) -> None:
    req = ws(stream_id=sid)
    assert req.stream_id == sid
    assert "stream_id" not in req.body and "type" not in req.body


@pytest.mark.parametrize("sid", ["", "x" * 257, "a b", "a/b", "é", "lane:1", "\nmain", 5, ["main"]])
def test_invalid_stream_ids(sid: Any) -> None:
    err = rejects({"model": "m", "stream_id": sid}, websocket=True)
    assert (err.code, err.param) == ("invalid_stream_id", "stream_id")


def test_stream_id_with_trailing_newline_is_invalid() -> None:
    """STREAM_ID_RE uses ``$`` with ``re.match``: ``$`` also matches before a final newline."""
    err = rejects({"model": "m", "stream_id": "main\n"}, websocket=True)
    assert err.code == "invalid_stream_id"


def test_no_stream_id_is_the_default_lane() -> None:
    assert ws().stream_id is None


def test_background_is_rejected_over_websocket() -> None:
    err = rejects({"model": "m", "background": True}, websocket=True)
    assert (err.param, err.code) == ("background", "unsupported_parameter")
    assert ws(background=False).background is False


@pytest.mark.parametrize("stream", [True, False])
def test_stream_is_accepted_and_ignored_over_websocket(stream: bool) -> None:
    req = ws(stream=stream)
    assert req.stream is True  # WebSocket responses always stream
    assert "stream" not in req.body


def test_generate_false_is_a_warm_up() -> None:
    assert ws(generate=False).generate is False
    assert ws().generate is True
    err = rejects({"model": "m", "generate": "no"}, websocket=True)
    assert (err.param, err.code) == ("generate", "invalid_type")


def test_conversation_accepts_string_or_object_and_excludes_previous_response_id() -> None:
    for value in ("conv_1", {"id": "conv_1"}):
        req = parse_create({"model": "m", "conversation": value}, websocket=False)
        assert req.conversation == "conv_1"
        assert req.body["conversation"] == {"id": "conv_1"}
    assert ws(conversation="conv_2").conversation == "conv_2"
    for bad, param in (
        (5, "conversation"),
        ({"id": 3}, "conversation.id"),
        ({"id": "c", "x": 1}, "conversation.x"),
    ):
        assert rejects({"model": "m", "conversation": bad}, websocket=False).param == param
    err = rejects({"model": "m", "conversation": "c", "previous_response_id": "r"}, websocket=False)
    assert (err.status, err.code) == (400, "mutually_exclusive_parameters")


# -- input ------------------------------------------------------------------------------------------


def test_normalize_input_string_and_none() -> None:
    assert normalize_input("hi") == [{"type": "message", "role": "user", "content": "hi"}]
    assert normalize_input("") == [{"type": "message", "role": "user", "content": ""}]
    assert normalize_input(None) == []
    assert normalize_input([]) == []


def test_normalize_input_keeps_valid_items() -> None:
    items = [
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    assert normalize_input(items) == items


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"role": "user"}, "input"),
        (5, "input"),
        (["hi"], "input[0]"),
        ([{"role": "user", "content": "a"}, 3], "input[1]"),
        ([{"type": 5}], "input[0].type"),
        ([{"role": "robot", "content": "a"}], "input[0].role"),
        ([{"content": "a"}], "input[0].role"),
        ([{"role": "user"}], "input[0].content"),
        ([{"role": "user", "content": 5}], "input[0].content"),
        ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
        ([{"type": "function_call", "call_id": "c"}], "input[0]"),
    ],
)
def test_bad_input_names_the_item(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        normalize_input(value)
    assert info.value.param == param
    err = rejects({"model": "m", "input": value}, websocket=False)
    assert err.param == param


def test_loads_object() -> None:
    assert loads_object(b'{"a": 1}') == {"a": 1}
    for bad in (b"{", b"[1]", b'"s"', b""):
        with pytest.raises(InvalidRequest) as info:
            loads_object(bad)
        assert info.value.code == "invalid_json"


@settings(max_examples=150, deadline=None)
@given(st.from_regex(r"\A[A-Za-z0-9_.\-]{1,256}\Z") | st.text(max_size=300))
def test_stream_id_validation_matches_the_spec_grammar(sid: str) -> None:
    valid = 1 <= len(sid) <= 256 and all(c.isascii() and (c.isalnum() or c in "_.-") for c in sid)
    if valid:
        assert ws(stream_id=sid).stream_id == sid
    else:
        assert rejects({"model": "m", "stream_id": sid}, websocket=True).code == "invalid_stream_id"
