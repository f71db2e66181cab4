"""Stored responses through the SDK: retrieve, delete, input_items, continuation, background,
resume, idempotency, compaction, ownership."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx2
import openai
import orjson
import pytest

from tests.e2e.sdk import client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.servers import HypercornThread, read_body


@pytest.mark.parametrize("model", ["local", "up2@fake"])
def test_create_retrieve_delete(proxy, model: str) -> None:
    c = client(proxy)
    resp = c.responses.create(model=model, input="remember me")
    got = c.responses.retrieve(resp.id)
    assert got.id == resp.id
    assert got.output_text == resp.output_text
    assert got.status == "completed"
    c.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(resp.id)


def test_store_false_is_not_retrievable(proxy) -> None:
    c = client(proxy)
    resp = c.responses.create(model="local", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(resp.id)
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="local", input="x", previous_response_id=resp.id)
    assert info.value.body["code"] == "previous_response_not_found"


@pytest.mark.parametrize("model", ["local", "up1@fake"])
def test_http_continuation_rebuilds_history(proxy, fake_openai, model: str) -> None:
    c = client(proxy)
    first = c.responses.create(model=model, input="alpha", instructions="only for the first turn")
    second = c.responses.create(model=model, input="beta", previous_response_id=first.id)
    items = list(c.responses.input_items.list(second.id, order="asc"))
    kinds = [(i.type, getattr(i, "role", None)) for i in items]
    # previous input + previous output + new input; instructions are not inherited.
    assert kinds == [("message", "user"), ("message", "assistant"), ("message", "user")]
    assert second.instructions is None
    assert all(i.id for i in items)


def test_input_items_pagination(proxy) -> None:
    c = client(proxy)
    history = [{"role": "user", "content": f"m{i}"} for i in range(7)]
    resp = c.responses.create(model="local", input=history)
    page = c.responses.input_items.list(resp.id, limit=3, order="asc")
    assert [i.content[0].text for i in page.data] == ["m0", "m1", "m2"]
    assert page.has_more is True
    everything = [i.content[0].text for i in c.responses.input_items.list(resp.id, limit=2, order="asc")]
    assert everything == [f"m{i}" for i in range(7)]
    desc = c.responses.input_items.list(resp.id, limit=100)
    assert [i.content[0].text for i in desc.data] == [f"m{i}" for i in reversed(range(7))]
    assert desc.has_more is False


def test_websocket_cache_miss_falls_back_to_store(proxy) -> None:
    c = client(proxy)
    stored = c.responses.create(model="local", input="stored over http")
    with c.responses.connect() as conn:
        conn.response.create(model="local", input="continue", previous_response_id=stored.id)
        done = until_terminal(conn)[-1]
        assert done.type == "response.completed"
        assert done.response.usage.input_tokens > stored.usage.input_tokens


def test_other_principals_ids_are_404(make_proxy) -> None:
    proxy = make_proxy(api_keys=("sk-alice", "sk-bob"))
    alice, bob = client(proxy, "sk-alice"), client(proxy, "sk-bob")
    resp = alice.responses.create(model="local", input="mine")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(resp.id)
    with pytest.raises(openai.BadRequestError):
        bob.responses.create(model="local", input="x", previous_response_id=resp.id)
    assert alice.responses.retrieve(resp.id).id == resp.id
    with pytest.raises(openai.AuthenticationError):
        client(proxy, "sk-eve").responses.create(model="local", input="x")


def _slow_proxy(make_proxy) -> Any:
    return make_proxy()


def test_background_poll_and_cancel(proxy) -> None:
    c = client(proxy)
    resp = c.responses.create(model="local", input="word " * 200, background=True)
    assert resp.status in ("queued", "in_progress")
    assert resp.background is True
    # Cancel while it runs (200 tokens at 1 ms each take at least 0.2 s).
    cancelled = c.responses.cancel(resp.id)
    assert cancelled.status == "cancelled"
    assert c.responses.retrieve(resp.id).status == "cancelled"
    assert c.responses.cancel(resp.id).status == "cancelled"  # idempotent

    done = c.responses.create(model="local", input="short", background=True)
    for _ in range(200):
        polled = c.responses.retrieve(done.id)
        if polled.status == "completed":
            break
        time.sleep(0.02)
    assert polled.status == "completed"
    assert polled.output_text.endswith("You said: short")


def test_cancel_non_background_is_400(proxy) -> None:
    c = client(proxy)
    resp = c.responses.create(model="local", input="x")
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(resp.id)


def test_background_stream_resumes_after_drop(proxy) -> None:
    c = client(proxy)
    stream = c.responses.create(model="local", input="word " * 60, background=True, stream=True)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 8:
            break
    stream.close()  # the connection drops; the response runs on
    rid = seen[0].response.id
    last = seen[-1].sequence_number
    resumed = list(c.responses.retrieve(rid, stream=True, starting_after=last))
    assert resumed[0].sequence_number == last + 1
    assert resumed[-1].type == "response.completed"
    numbers = [e.sequence_number for e in seen] + [e.sequence_number for e in resumed]
    assert numbers == list(range(len(numbers)))
    text = "".join(e.delta for e in seen + resumed if e.type == "response.output_text.delta")
    assert text == resumed[-1].response.output_text


def test_stored_response_stream_replay(proxy) -> None:
    c = client(proxy)
    resp = c.responses.create(model="local", input="replay me")
    events = list(c.responses.retrieve(resp.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == resp.output_text
    tail = list(c.responses.retrieve(resp.id, stream=True, starting_after=events[-3].sequence_number))
    assert [e.type for e in tail] == [e.type for e in events[-2:]]


def test_idempotent_retry_returns_first_result(proxy, fake_openai) -> None:
    headers = {"Idempotency-Key": "order-42", "Authorization": "Bearer sk-test"}
    body = {"model": "local", "input": "only once"}
    with httpx2.Client(base_url=proxy.url, timeout=30) as http:
        first = http.post("/v1/responses", json=body, headers=headers).json()
        again = http.post("/v1/responses", json=body, headers=headers)
        assert again.json()["id"] == first["id"]
        assert again.headers.get("idempotent-replayed") == "true"
        other = http.post(
            "/v1/responses", json=body, headers={**headers, "Idempotency-Key": "order-43"}
        ).json()
        assert other["id"] != first["id"]
        # Passthrough: the id the client got round-trips on retry too.
        fake, _ = fake_openai
        n = len(fake.requests)
        up = http.post(
            "/v1/responses",
            json={"model": "up2@fake", "input": "x"},
            headers={**headers, "Idempotency-Key": "up-1"},
        ).json()
        up_again = http.post(
            "/v1/responses",
            json={"model": "up2@fake", "input": "x"},
            headers={**headers, "Idempotency-Key": "up-1"},
        ).json()
        assert up_again["output"] == up["output"]
        assert len(fake.requests) == n + 1


def test_idempotent_concurrent_retries_run_once(proxy) -> None:
    headers = {"Idempotency-Key": "race-1"}
    results: list[str] = []

    def post() -> None:
        with httpx2.Client(base_url=proxy.url, timeout=30) as http:
            results.append(
                http.post(
                    "/v1/responses", json={"model": "local", "input": "w " * 50}, headers=headers
                ).json()["id"]
            )

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 4 and len(set(results)) == 1


def test_compact_local_model(proxy) -> None:
    with httpx2.Client(base_url=proxy.url, timeout=30) as http:
        r = http.post(
            "/v1/responses/compact",
            json={"model": "local", "input": [{"role": "user", "content": "we decided on blue"}]},
        )
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["object"] == "response.compaction"
        text = data["output"][0]["content"][0]["text"]
        assert text.startswith("Summary of the conversation so far:")
        # The compacted window is a valid input for the next turn.
        nxt = http.post(
            "/v1/responses",
            json={"model": "local", "input": data["output"] + [{"role": "user", "content": "and now?"}]},
        )
        assert nxt.status_code == 200 and nxt.json()["status"] == "completed"


def test_compact_passes_through_to_openai_native(make_proxy, tmp_path) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        seen.append({"path": scope["path"], "body": orjson.loads(body)})
        out = {
            "id": "cmp_up",
            "object": "response.compaction",
            "created_at": 1,
            "output": [{"type": "compaction", "id": "cmp_1", "encrypted_content": "opaque"}],
            "usage": {
                "input_tokens": 3,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 2,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 5,
            },
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(out)})

    up = HypercornThread(app).start()
    try:
        cfg = tmp_path / "compact.toml"
        cfg.write_text(
            f'[store]\nbackend = "memory"\n[providers.oa]\nkind = "openai"\nbase_url = "{up.url}/v1"\n'
        )
        from tests.fakes.servers import UvicornThread
        from wsproxy.asgi.app import create_app
        from wsproxy.settings import load_settings

        proxy = UvicornThread(create_app(load_settings(str(cfg), environ={}), environ={})).start()
        try:
            with httpx2.Client(base_url=proxy.url, timeout=30) as http:
                r = http.post("/v1/responses/compact", json={"model": "oa@gpt-x", "input": "hello"})
            assert r.status_code == 200, r.text
            assert r.json()["id"] == "cmp_up"
            assert seen[0]["path"] == "/v1/responses/compact"
            assert seen[0]["body"]["model"] == "gpt-x"
        finally:
            proxy.stop()
    finally:
        up.stop()
