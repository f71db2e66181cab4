"""The pure Conversations rules: metadata and items validation, list params, paging, objects."""

from __future__ import annotations

from typing import Any

import pytest

from wsproxy.core.conversations import (
    ListParams,
    StoredConversation,
    canonical_item,
    conversation_object,
    item_list,
    page_of,
    parse_list_params,
    validate_items,
)
from wsproxy.core.ids import counter_ids
from wsproxy.core.params import validate_metadata
from wsproxy.errors import InvalidRequest


def test_metadata_limits() -> None:
    assert validate_metadata(None) == {}
    at_limit = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert validate_metadata(at_limit) == at_limit
    cases: list[tuple[Any, str, str]] = [
        ({str(i): "v" for i in range(17)}, "metadata", "object_above_max_properties"),
        ({"k" * 65: "v"}, "metadata", "metadata_key_too_long"),
        ({"k": "v" * 513}, "metadata.k", "string_above_max_length"),
        ({"k": 1}, "metadata.k", "invalid_type"),
        (["k"], "metadata", "invalid_type"),
    ]
    for value, param, code in cases:
        with pytest.raises(InvalidRequest) as info:
            validate_metadata(value)
        assert (info.value.param, info.value.code) == (param, code)


def test_items_are_canonical_with_ids() -> None:
    items = validate_items(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "id": "fc_9"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        counter_ids(),
        required=True,
    )
    assert items[0] == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
        "id": "msg_0001",
        "status": "completed",
    }
    assert items[1]["content"] == [
        {"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}
    ]
    assert [i["id"] for i in items[1:]] == ["msg_0002", "fc_9", "fco_0003"]


@pytest.mark.parametrize(
    ("items", "param", "code"),
    [
        (None, "items", "missing_required_parameter"),
        ("hi", "items", "invalid_type"),
        ([{"role": "user", "content": "x"}] * 21, "items", "array_above_max_length"),
        ([{"role": "bot", "content": "x"}], "items[0].role", "invalid_value"),
        ([{"id": "fc_1", "role": "user", "content": "x"}], "items[0].id", "invalid_value"),
        (
            [
                {"role": "user", "content": "x"},
                {"id": "m", "type": "function_call", "call_id": "c", "name": "f"},
            ],
            "items[1].id",
            "invalid_value",
        ),
        ([{"id": "msg_1", "role": "user", "content": "x"}] * 2, "items", "item_already_in_conversation"),
    ],
)
def test_items_rejected(items: Any, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_items(items, counter_ids(), required=True)
    assert (info.value.param, info.value.code) == (param, code)


def test_list_params() -> None:
    assert parse_list_params({}, []) == ListParams(limit=20, order="desc", after=None, include=())
    got = parse_list_params(
        {"limit": "100", "order": "asc", "after": "msg_1"}, ["reasoning.encrypted_content"]
    )
    assert got == ListParams(100, "asc", "msg_1", ("reasoning.encrypted_content",))
    for query, include, param in (
        ({"limit": "0"}, [], "limit"),
        ({"limit": "101"}, [], "limit"),
        ({"limit": "x"}, [], "limit"),
        ({"order": "up"}, [], "order"),
        ({}, ["nope"], "include"),
    ):
        with pytest.raises(InvalidRequest) as info:
            parse_list_params(query, include)
        assert info.value.param == param


def test_page_of_and_list_object() -> None:
    items = [{"id": f"msg_{i}"} for i in range(5)]
    page = page_of(items, ListParams(limit=2))
    assert page is not None and [i["id"] for i in page.items] == ["msg_4", "msg_3"] and page.has_more
    page = page_of(items, ListParams(limit=2, order="asc", after="msg_2"))
    assert page is not None and [i["id"] for i in page.items] == ["msg_3", "msg_4"] and not page.has_more
    assert page_of(items, ListParams(after="msg_9")) is None
    assert item_list([], False) == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    assert item_list(items[:2], True)["last_id"] == "msg_1"


def test_records_and_objects() -> None:
    conv = StoredConversation("conv_1", owner="p", created_at=12.5, updated_at=20.0, metadata={"a": "b"})
    assert StoredConversation.loads(conv.dumps()) == conv
    assert conversation_object(conv) == {
        "id": "conv_1",
        "object": "conversation",
        "created_at": 12,
        "metadata": {"a": "b"},
    }
    kept = canonical_item({"type": "reasoning", "id": "rs_1", "summary": []}, counter_ids())
    assert kept == {"type": "reasoning", "id": "rs_1", "summary": [], "status": "completed"}
