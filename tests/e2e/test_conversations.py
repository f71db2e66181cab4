"""The Conversations API through the official SDK over real sockets: CRUD, items with the SDK's
auto-pagination, errors, ownership, and ``conversation`` turns of ``POST /v1/responses`` over JSON,
SSE and WebSocket mode, for the local model, the OpenAI passthrough and Chat Completions /
Anthropic by translation (fake upstreams speaking their real wire formats)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.sdk import client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.settings import StoreSettings, load_settings


def texts(items: Any) -> list[str]:
    """(role, text) of message items as "role:text"; other items by type."""
    out = []
    for item in items:
        if item.type == "message":
            out.append(f"{item.role}:{''.join(getattr(p, 'text', '') for p in item.content)}")
        else:
            out.append(item.type)
    return out


def history(c: openai.OpenAI, conversation_id: str) -> list[Any]:
    return list(c.conversations.items.list(conversation_id, order="asc", limit=100))


# ------------------------------------------------------------------------------------------ CRUD


def test_create_retrieve_update_delete(proxy) -> None:
    c = client(proxy)
    conv = c.conversations.create(
        items=[
            {"role": "user", "content": "hello"},
            {"type": "message", "role": "assistant", "content": "hi!"},
        ],
        metadata={"topic": "demo"},
    )
    assert conv.id.startswith("conv_") and len(conv.id) == len("conv_") + 48
    assert conv.object == "conversation" and conv.metadata == {"topic": "demo"}
    got = c.conversations.retrieve(conv.id)
    assert (got.id, got.created_at, got.metadata) == (conv.id, conv.created_at, {"topic": "demo"})
    # Update replaces the map; null clears it.
    assert c.conversations.update(conv.id, metadata={"a": "1"}).metadata == {"a": "1"}
    assert c.conversations.retrieve(conv.id).metadata == {"a": "1"}
    assert c.conversations.update(conv.id, metadata=None).metadata == {}
    items = history(c, conv.id)
    assert texts(items) == ["user:hello", "assistant:hi!"]
    assert [i.content[0].type for i in items] == ["input_text", "output_text"]
    assert all(i.id.startswith("msg_") and i.status == "completed" for i in items)

    deleted = c.conversations.delete(conv.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (conv.id, "conversation.deleted", True)
    for call in (
        lambda: c.conversations.retrieve(conv.id),
        lambda: c.conversations.delete(conv.id),
        lambda: c.conversations.update(conv.id, metadata={}),
        lambda: c.conversations.items.list(conv.id),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.body == {
            "message": f"Conversation with id '{conv.id}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    # An empty conversation, as the Agents SDK starts its sessions.
    empty = c.conversations.create(items=[])
    page = c.conversations.items.list(empty.id)
    assert page.data == [] and page.has_more is False and page.first_id is None and page.last_id is None


def test_items_create_list_retrieve_delete_and_auto_pagination(proxy) -> None:
    c = client(proxy)
    conv = c.conversations.create()
    created = c.conversations.items.create(
        conv.id, items=[{"role": "user", "content": f"m{i}"} for i in range(20)]
    )
    assert created.object == "list" and len(created.data) == 20 and created.has_more is False
    assert created.first_id == created.data[0].id and created.last_id == created.data[-1].id
    c.conversations.items.create(
        conv.id,
        items=[
            {
                "id": "msg_mine_1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "m20"}],
            }
        ],
        include=["message.output_text.logprobs"],
    )
    want = [f"user:m{i}" for i in range(21)]
    # The SDK's iterator follows last_id/has_more page by page.
    assert texts(c.conversations.items.list(conv.id, order="asc", limit=4)) == want
    assert texts(c.conversations.items.list(conv.id, limit=5)) == want[::-1]
    first = c.conversations.items.list(conv.id, limit=3, include=["message.input_image.image_url"])
    assert texts(first.data) == ["user:m20", "user:m19", "user:m18"]  # default order: desc
    assert first.has_more is True and first.last_id == first.data[-1].id
    assert len(c.conversations.items.list(conv.id).data) == 20  # default limit

    item = c.conversations.items.retrieve("msg_mine_1", conversation_id=conv.id)
    assert item.id == "msg_mine_1" and item.content[0].text == "m20"
    parent = c.conversations.items.delete("msg_mine_1", conversation_id=conv.id)
    assert parent.id == conv.id and parent.object == "conversation"
    assert texts(c.conversations.items.list(conv.id, order="asc", limit=100)) == want[:-1]
    with pytest.raises(openai.NotFoundError):
        c.conversations.items.retrieve("msg_mine_1", conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        c.conversations.items.delete("msg_mine_1", conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError) as info:
        c.conversations.items.list(conv.id, after="msg_mine_1")
    assert info.value.body["param"] == "after"
    assert info.value.body["message"] == "No item found with id 'msg_mine_1'."


def test_validation_errors(proxy) -> None:
    c = client(proxy)

    def bad(call: Any) -> dict[str, Any]:
        with pytest.raises(openai.BadRequestError) as info:
            call()
        body: dict[str, Any] = info.value.body
        return body

    assert bad(lambda: c.conversations.create(metadata={f"k{i}": "v" for i in range(17)}))["code"] == (
        "object_above_max_properties"
    )
    assert bad(lambda: c.conversations.create(metadata={"k" * 65: "v"}))["param"] == "metadata"
    assert bad(lambda: c.conversations.create(metadata={"k": "v" * 513}))["param"] == "metadata.k"
    c.conversations.create(metadata={f"k{i:02d}" + "x" * 61: "v" * 512 for i in range(16)})  # at the limits
    too_many = [{"role": "user", "content": "x"}] * 21
    assert "array too long" in bad(lambda: c.conversations.create(items=too_many))["message"]
    conv = c.conversations.create(items=[{"id": "msg_a", "type": "message", "role": "user", "content": "a"}])
    err = bad(
        lambda: c.conversations.items.create(
            conv.id, items=[{"id": "fc_1", "type": "message", "role": "user", "content": "x"}]
        )
    )
    assert (err["param"], err["code"]) == ("items[0].id", "invalid_value")
    assert "begins with 'msg'" in err["message"]
    err = bad(
        lambda: c.conversations.items.create(
            conv.id, items=[{"id": "msg_a", "type": "message", "role": "user", "content": "x"}]
        )
    )
    assert (err["param"], err["code"]) == ("items", "item_already_in_conversation")
    err = bad(lambda: c.conversations.items.create(conv.id, items=[{"role": "robot", "content": "x"}]))
    assert err["param"] == "items[0].role"
    # A failed batch adds nothing.
    assert texts(history(c, conv.id)) == ["user:a"]
    assert bad(lambda: c.conversations.items.list(conv.id, limit=0))["param"] == "limit"
    assert bad(lambda: c.conversations.items.list(conv.id, limit=101))["param"] == "limit"
    assert bad(lambda: c.conversations.items.list(conv.id, order="sideways"))["param"] == "order"  # type: ignore[arg-type]
    assert bad(lambda: c.conversations.items.list(conv.id, include=["nope"]))["param"] == "include"  # type: ignore[list-item]
    assert bad(lambda: c.conversations.create(extra_body={"color": "red"}))["code"] == "unknown_parameter"


def test_item_limit_per_conversation(make_proxy) -> None:
    proxy = make_proxy(store=StoreSettings(backend="memory", conversation_max_items=5))
    c = client(proxy)
    conv = c.conversations.create(items=[{"role": "user", "content": f"m{i}"} for i in range(3)])
    c.conversations.items.create(
        conv.id, items=[{"role": "user", "content": "m3"}, {"role": "user", "content": "m4"}]
    )
    with pytest.raises(openai.BadRequestError) as info:
        c.conversations.items.create(conv.id, items=[{"role": "user", "content": "m5"}])
    assert info.value.body["code"] == "conversation_too_long"
    with pytest.raises(openai.BadRequestError) as info:
        c.conversations.create(items=[{"role": "user", "content": "x"}] * 6)
    assert info.value.body["code"] == "conversation_too_long"
    # A turn needs room for its input and an answer; refused before the model runs otherwise.
    small = c.conversations.create(items=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    c.responses.create(model="local", input="c", conversation=small.id)
    assert len(history(c, small.id)) == 4
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="local", input="d", conversation=small.id)
    assert (info.value.body["code"], info.value.body["param"]) == ("conversation_too_long", "conversation")
    assert len(history(c, small.id)) == 4


def test_turn_that_cannot_be_recorded_fails(proxy) -> None:
    c = client(proxy)
    conv = c.conversations.create()
    stream = c.responses.create(model="local", input="word " * 300, conversation=conv.id, stream=True)
    events = []
    for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta" and len(events) == 5:
            # Deleted while the turn runs: the turn must not claim it was recorded.
            c.conversations.delete(conv.id)
    final = events[-1]
    assert final.type == "response.failed"
    assert final.response.error.code == "conversation_not_updated"
    assert "not found" in final.response.error.message
    assert final.response.conversation.id == conv.id


def test_other_principals_conversations_do_not_exist(make_proxy) -> None:
    proxy = make_proxy(api_keys=("sk-alice", "sk-bob"))
    alice, bob = client(proxy, "sk-alice"), client(proxy, "sk-bob")
    conv = alice.conversations.create(items=[{"role": "user", "content": "secret"}])
    item_id = history(alice, conv.id)[0].id
    for call in (
        lambda: bob.conversations.retrieve(conv.id),
        lambda: bob.conversations.update(conv.id, metadata={"x": "y"}),
        lambda: bob.conversations.delete(conv.id),
        lambda: bob.conversations.items.list(conv.id),
        lambda: bob.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]),
        lambda: bob.conversations.items.retrieve(item_id, conversation_id=conv.id),
        lambda: bob.conversations.items.delete(item_id, conversation_id=conv.id),
        lambda: bob.responses.create(model="local", input="x", conversation=conv.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert texts(history(alice, conv.id)) == ["user:secret"]
    assert alice.conversations.retrieve(conv.id).metadata == {}
    with pytest.raises(openai.AuthenticationError):
        client(proxy, "sk-eve").conversations.create()


# ------------------------------------------------------------------------------- turns, local model


def test_turns_over_json_sse_and_websocket(proxy) -> None:
    c = client(proxy)
    conv = c.conversations.create(items=[{"role": "user", "content": "my name is Ada"}])

    first = c.responses.create(
        model="local", input="first turn", conversation=conv.id, instructions="be brief"
    )
    assert first.status == "completed"
    assert first.conversation is not None and first.conversation.id == conv.id
    assert texts(history(c, conv.id)) == [
        "user:my name is Ada",
        "user:first turn",
        f"assistant:{first.output_text}",
    ]
    # The stored response says so too, and lists the inherited items as its input.
    assert c.responses.retrieve(first.id).conversation.id == conv.id
    assert len(list(c.responses.input_items.list(first.id))) == 2

    c.conversations.items.create(conv.id, items=[{"role": "user", "content": "added by hand"}])
    events = list(
        c.responses.create(model="local", input="second turn", conversation={"id": conv.id}, stream=True)
    )
    snapshots = [e for e in events if hasattr(e, "response")]
    assert snapshots[0].type == "response.created" and events[-1].type == "response.completed"
    assert all(e.response.conversation.id == conv.id for e in snapshots)
    second = events[-1].response
    # The whole history reached the model, which counts every input word: "my name is Ada",
    # "first turn", the first answer, "added by hand", "second turn" (instructions are not kept).
    assert second.usage.input_tokens == 4 + 2 + len(first.output_text.split()) + 3 + 2

    with c.responses.connect() as conn:
        conn.response.create(model="local", input="third turn", conversation=conv.id)
        done = until_terminal(conn)
        assert done[0].response.conversation.id == conv.id
        assert done[-1].type == "response.completed" and done[-1].response.conversation.id == conv.id
        third = done[-1].response
        # A conversation turn and previous_response_id on the same socket: mutually exclusive.
        conn.response.create(model="local", input="x", conversation=conv.id, previous_response_id=third.id)
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 400 and err.error.code == "mutually_exclusive_parameters"
        conn.response.create(model="local", input="x", conversation="conv_missing")
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 404
        assert err.error.message == "Conversation with id 'conv_missing' not found."
        # The socket survives both errors.
        conn.response.create(model="local", input="fourth turn", conversation=conv.id, store=False)
        fourth = until_terminal(conn)[-1]
        assert fourth.type == "response.completed"

    assert texts(history(c, conv.id)) == [
        "user:my name is Ada",
        "user:first turn",
        f"assistant:{first.output_text}",
        "user:added by hand",
        "user:second turn",
        f"assistant:{second.output_text}",
        "user:third turn",
        f"assistant:{third.output_text}",
        # store: false does not make a conversation turn ephemeral (as OpenAI does) ...
        "user:fourth turn",
        f"assistant:{fourth.response.output_text}",
    ]
    # ... but the response itself is not stored.
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(fourth.response.id)


def test_turn_errors_over_http(proxy) -> None:
    c = client(proxy)
    conv = c.conversations.create()
    first = c.responses.create(model="local", input="hello", conversation=conv.id)
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="local", input="x", conversation=conv.id, previous_response_id=first.id)
    assert info.value.body["code"] == "mutually_exclusive_parameters"
    with pytest.raises(openai.NotFoundError) as info:
        c.responses.create(model="local", input="x", conversation="conv_nope")
    assert info.value.body["message"] == "Conversation with id 'conv_nope' not found."
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="local", input="x", conversation={"id": 5})  # type: ignore[typeddict-item]
    assert info.value.body["param"] == "conversation.id"
    # An input item already in the conversation: refused before the model runs.
    used = history(c, conv.id)[0]
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(
            model="local",
            conversation=conv.id,
            input=[{"id": used.id, "type": "message", "role": "user", "content": "hello"}],
        )
    assert info.value.body["code"] == "item_already_in_conversation"
    assert len(history(c, conv.id)) == 2
    # A previous_response_id chain from a conversation turn does not join the conversation.
    branch = c.responses.create(model="local", input="branch", previous_response_id=first.id)
    assert branch.conversation is None
    assert len(history(c, conv.id)) == 2


def test_incomplete_turn_is_recorded(proxy) -> None:
    c = client(proxy)
    conv = c.conversations.create()
    resp = c.responses.create(
        model="local",
        input="say many words please " * 4,  # the local model's reply is longer than 16 tokens
        conversation=conv.id,
        max_output_tokens=16,
    )
    assert resp.status == "incomplete" and resp.conversation.id == conv.id
    items = history(c, conv.id)
    assert texts(items)[0] == "user:" + "say many words please " * 4
    assert items[1].type == "message" and items[1].role == "assistant"


# --------------------------------------------------------------------------- turns, other providers


@pytest.fixture
def multi(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], translated_upstreams: dict[str, Any]
) -> Iterator[UvicornThread]:
    """Local, the fake OpenAI (passthrough), Chat Completions and Anthropic; memory store."""
    cfg = tmp_path / "multi.toml"
    cfg.write_text(
        '[store]\nbackend = "memory"\n'
        '[providers.local]\nkind = "local"\ntoken_delay = 0.001\nmodels = ["local"]\n'
        f'[providers.up1]\nkind = "openai"\nbase_url = "{fake_openai[1]}"\napi_key = "sk-up"\n'
        "http2 = false\nmax_retries = 0\n"
        f'[providers.cc]\nkind = "chat_completions"\nbase_url = "{translated_upstreams["chat_url"]}/v1"\n'
        'api_key = "k"\nhttp2 = false\nmax_retries = 0\n'
        f'[providers.claude]\nkind = "anthropic"\nbase_url = "{translated_upstreams["anth_url"]}/v1"\n'
        'api_key = "ak"\nmax_retries = 0\n'
    )
    settings = load_settings(str(cfg), environ={})
    server = UvicornThread(create_app(settings, environ={})).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["cc@m", "claude@claude-x", "up1@fake"])
def test_turns_through_providers(multi, translated_upstreams, fake_openai, model: str) -> None:
    c = client(multi)
    conv = c.conversations.create(items=[{"role": "user", "content": "remember ORCHID"}])
    first = c.responses.create(model=model, input="turn one", conversation=conv.id)
    assert first.status == "completed" and first.conversation.id == conv.id
    with c.responses.connect() as conn:
        conn.response.create(model=model, input="turn two", conversation={"id": conv.id})
        done = until_terminal(conn)
    assert done[-1].type == "response.completed", done[-1]
    assert all(e.response.conversation.id == conv.id for e in done if hasattr(e, "response"))
    events = list(c.responses.create(model=model, input="turn three", conversation=conv.id, stream=True))
    assert events[-1].type == "response.completed"
    assert events[0].response.conversation.id == conv.id

    # What the upstream saw on the last turn: the whole conversation, and never our conv id.
    if model.startswith("up1"):
        sent = fake_openai[0].find("turn three")[-1]["body"]
        assert "conversation" not in sent
        seen = str(sent["input"])
    else:
        sent = translated_upstreams["chat" if model.startswith("cc") else "anthropic"].requests[-1]
        seen = str(sent["messages"])
    assert "conv_" not in seen
    for text in ("remember ORCHID", "turn one", first.output_text, "turn two", "turn three"):
        assert text in seen
    assert texts(history(c, conv.id)) == [
        "user:remember ORCHID",
        "user:turn one",
        f"assistant:{first.output_text}",
        "user:turn two",
        f"assistant:{done[-1].response.output_text}",
        "user:turn three",
        f"assistant:{events[-1].response.output_text}",
    ]


def test_failed_turn_adds_nothing(multi, fake_openai) -> None:
    c = client(multi)
    conv = c.conversations.create(items=[{"role": "user", "content": "start"}])
    # The upstream drops the stream mid-answer: response.failed, and the conversation is unchanged.
    events = list(
        c.responses.create(model="up1@die-after-4", input="doomed", conversation=conv.id, stream=True)
    )
    assert events[-1].type == "response.failed"
    assert events[-1].response.conversation.id == conv.id
    # The upstream refuses before any output: an HTTP error, nothing recorded either.
    with pytest.raises(openai.APIStatusError):
        c.responses.create(model="up1@fail-400", input="refused", conversation=conv.id)
    assert texts(history(c, conv.id)) == ["user:start"]
