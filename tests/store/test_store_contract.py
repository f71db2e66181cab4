"""One contract suite for every ``ResponseStore`` backend (memory, sqlite, redis), plus a few
backend-specific checks (error mapping, schema, bounded purge, factory).

Redis runs against the real ``redis-server`` started by ``conftest.redis_url``; each store gets its
own key prefix so tests do not see each other's keys.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from wsproxy.core.conversations import (
    APPEND_DUPLICATE,
    APPEND_FULL,
    APPEND_NOT_FOUND,
    APPEND_OK,
    ListParams,
    StoredConversation,
)
from wsproxy.errors import StoreError
from wsproxy.store.base import Charge, ResponseStore, StoredResponse
from wsproxy.store.factory import make_store
from wsproxy.store.memory import MemoryStore
from wsproxy.store.redis import RedisStore
from wsproxy.store.sqlite import SCHEMA_VERSION, SQLiteStore

BACKENDS = ["memory", "sqlite", "redis"]

MakeStore = Callable[..., Awaitable[Any]]


def record(
    rid: str,
    created_at: float,
    *,
    text: str = "Hello there.",
    owner: str | None = "user-1",
) -> StoredResponse:
    return StoredResponse(
        id=rid,
        response={
            "id": rid,
            "object": "response",
            "created_at": int(created_at),
            "status": "completed",
            "model": "gpt-test",
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{rid}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
            "metadata": {"none": None, "float": 1.25, "bool": True, "nested": {"list": [1, "two", 3.5]}},
        },
        input_items=[
            {
                "id": f"msg_in_{rid}",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            }
        ],
        owner=owner,
        created_at=created_at,
        extra={"model": "provider/model-x", "instructions": None},
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def make(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Factory of opened stores of the parametrized backend; all are closed at teardown."""
    # Only the redis params need (and start) the server; if it cannot be started they fail.
    redis_url = str(request.getfixturevalue("redis_url")) if backend == "redis" else ""
    stores: list[Any] = []

    async def _make(*, ttl_seconds: float = 3600.0, max_records: int = 10_000, **runs: Any) -> Any:
        store: Any
        if backend == "memory":
            store = MemoryStore(ttl_seconds=ttl_seconds, max_records=max_records, **runs)
        elif backend == "sqlite":
            store = SQLiteStore(
                str(tmp_path / f"store{len(stores)}.db"),
                ttl_seconds=ttl_seconds,
                max_records=max_records,
                **runs,
            )
        else:
            runs.pop("run_max_runs", None)  # Redis bounds runs by their TTL only
            store = RedisStore(
                redis_url,
                ttl_seconds=ttl_seconds,
                max_records=max_records,
                key_prefix=f"wsproxy-test:{uuid.uuid4().hex}:",
                **runs,
            )
        await store.open()
        stores.append(store)
        return store

    yield _make
    for store in stores:
        await store.close()


@pytest_asyncio.fixture
async def store(make: MakeStore) -> ResponseStore:
    result: ResponseStore = await make()
    return result


# ---------------------------------------------------------------------------------------- contract


@pytest.mark.asyncio
async def test_put_get_round_trip(store: ResponseStore) -> None:
    rec = record("resp_rt", 1_700_000_000.123456)
    await store.put(rec)
    got = await store.get("resp_rt")
    assert got == rec
    assert got is not rec


@pytest.mark.asyncio
async def test_round_trip_without_owner_and_extra(store: ResponseStore) -> None:
    rec = StoredResponse(id="resp_bare", response={"id": "resp_bare"}, input_items=[], created_at=5.0)
    await store.put(rec)
    assert await store.get("resp_bare") == rec


@pytest.mark.asyncio
async def test_get_unknown_is_none(store: ResponseStore) -> None:
    assert await store.get("resp_does_not_exist") is None


@pytest.mark.asyncio
async def test_delete(store: ResponseStore) -> None:
    await store.put(record("resp_del", time.time()))
    await store.put(record("resp_keep", time.time()))
    assert await store.delete("resp_del") is True
    assert await store.get("resp_del") is None
    assert await store.delete("resp_del") is False
    assert await store.delete("resp_never") is False
    assert await store.get("resp_keep") is not None


@pytest.mark.asyncio
async def test_overwrite(store: ResponseStore) -> None:
    now = time.time()
    await store.put(record("resp_ow", now, text="first"))
    second = record("resp_ow", now + 1, text="second", owner="user-2")
    await store.put(second)
    assert await store.get("resp_ow") == second


@pytest.mark.asyncio
async def test_isolated_from_caller_mutations(store: ResponseStore) -> None:
    rec = record("resp_iso", time.time())
    expected = StoredResponse.loads(rec.dumps())
    await store.put(rec)
    # Mutating what was put must not change what is stored...
    rec.response["output"][0]["content"][0]["text"] = "mutated"
    rec.input_items.append({"type": "message", "role": "user", "content": "extra"})
    rec.extra["model"] = "other"
    got = await store.get("resp_iso")
    assert got == expected
    # ...nor must mutating what get returned.
    assert got is not None
    got.response["status"] = "failed"
    got.input_items.clear()
    assert await store.get("resp_iso") == expected


@pytest.mark.asyncio
async def test_purge_by_ttl(make: MakeStore) -> None:
    ttl = 3600.0
    store = await make(ttl_seconds=ttl)
    now = time.time()
    old = [f"resp_old{i}" for i in range(3)]
    new = [f"resp_new{i}" for i in range(2)]
    for i, rid in enumerate(old):
        await store.put(record(rid, now - 2 * ttl + i))
    for rid in new:
        await store.put(record(rid, now - 10))
    # Exactly at the cutoff is not yet expired (created_at < now - ttl is).
    await store.put(record("resp_boundary", now - ttl))
    assert await store.purge(now) == 3
    for rid in old:
        assert await store.get(rid) is None
    for rid in [*new, "resp_boundary"]:
        assert await store.get(rid) is not None
    # Nothing left to purge.
    assert await store.purge(now) == 0


@pytest.mark.asyncio
async def test_purge_by_max_records_keeps_newest(make: MakeStore) -> None:
    store = await make(max_records=5)
    base = time.time() - 100
    ids = [f"resp_{i:02d}" for i in range(12)]
    for i, rid in enumerate(ids):
        await store.put(record(rid, base + i))

    async def present() -> set[str]:
        got = await asyncio.gather(*(store.get(rid) for rid in ids))
        return {rid for rid, rec in zip(ids, got, strict=True) if rec is not None}

    before = await present()
    dropped = await store.purge(time.time())
    after = await present()
    assert after == set(ids[-5:])
    # The return value is what this purge removed (MemoryStore already enforces the bound on put).
    assert dropped == len(before) - len(after)


@pytest.mark.asyncio
async def test_idempotency_claim_returns_existing_id(store: ResponseStore) -> None:
    now = time.time()
    assert await store.claim_idempotency_key("idem-1", "resp_a", now) is None
    assert await store.claim_idempotency_key("idem-1", "resp_b", now) == "resp_a"
    assert await store.claim_idempotency_key("idem-1", "resp_c", now + 1) == "resp_a"
    assert await store.claim_idempotency_key("idem-2", "resp_b", now) is None
    assert await store.claim_idempotency_key("idem-2", "resp_x", now) == "resp_b"


@pytest.mark.asyncio
async def test_idempotency_key_expires_with_ttl(make: MakeStore) -> None:
    # Real time, because Redis expires keys on its own clock. 1 s leaves slack for a slow machine
    # between the first two claims.
    store = await make(ttl_seconds=1.0)
    assert await store.claim_idempotency_key("idem-ttl", "resp_1", time.time()) is None
    assert await store.claim_idempotency_key("idem-ttl", "resp_2", time.time()) == "resp_1"
    await asyncio.sleep(1.3)
    await store.purge(time.time())
    assert await store.claim_idempotency_key("idem-ttl", "resp_3", time.time()) is None
    assert await store.claim_idempotency_key("idem-ttl", "resp_4", time.time()) == "resp_3"


@pytest.mark.asyncio
async def test_concurrent_puts_all_retrievable(store: ResponseStore) -> None:
    now = time.time()
    recs = [record(f"resp_c{i:03d}", now + i / 1000, text=f"text {i}") for i in range(200)]
    await asyncio.wait_for(asyncio.gather(*(store.put(r) for r in recs)), timeout=60)
    got = await asyncio.wait_for(asyncio.gather(*(store.get(r.id) for r in recs)), timeout=60)
    assert got == recs


@pytest.mark.asyncio
async def test_large_record(store: ResponseStore) -> None:
    big = os.urandom(512 * 1024).hex()  # 1 MiB of text
    rec = record("resp_big", time.time(), text=big)
    rec.input_items = [{"type": "message", "role": "user", "content": big[: 64 * 1024]}] * 4
    assert len(rec.dumps()) > 1024 * 1024
    await store.put(rec)
    assert await store.get("resp_big") == rec


@pytest.mark.asyncio
async def test_unicode_and_emoji(store: ResponseStore) -> None:
    text = 'héllo 你好 мир 🙂👩‍👩‍👧‍👦 مرحبا e\u0301 \u2028 \u0000 tab\t "quote" \\ end'
    rid = "resp_ünï🙂"
    rec = record(rid, time.time(), text=text, owner="用户🙂")
    rec.extra = {"emoji 🔑": "値 ✓"}
    await store.put(rec)
    got = await store.get(rid)
    assert got == rec
    assert got is not None and got.response["output"][0]["content"][0]["text"] == text
    assert await store.claim_idempotency_key("ключ🙂", rid, time.time()) is None
    assert await store.claim_idempotency_key("ключ🙂", "resp_other", time.time()) == rid
    assert await store.delete(rid) is True


# ---------------------------------------------------------------------------------- conversations


def conv(cid: str, now: float, *, owner: str | None = "user-1", **metadata: str) -> StoredConversation:
    return StoredConversation(id=cid, owner=owner, created_at=now, updated_at=now, metadata=dict(metadata))


def msg(item_id: str, text: str = "hi") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


async def all_ids(store: ResponseStore, cid: str, order: str = "asc", limit: int = 3) -> list[str]:
    """Every item id, page by page with ``after`` = the last id of the previous page."""
    ids: list[str] = []
    after = None
    for _ in range(1000):
        page = await store.list_items(cid, ListParams(limit=limit, order=order, after=after))
        assert page is not None
        ids += [item["id"] for item in page.items]
        if not page.has_more:
            return ids
        after = page.items[-1]["id"]
    raise AssertionError("pagination did not end")


@pytest.mark.asyncio
async def test_conversation_create_get_update_delete(store: ResponseStore) -> None:
    now = time.time()
    rec = conv("conv_a", now, topic="démo 🙂")
    await store.create_conversation(rec, [msg("msg_1"), msg("msg_2", "second")])
    assert await store.get_conversation("conv_a") == rec
    assert await store.get_conversation("conv_none") is None
    updated = await store.update_conversation("conv_a", {"k": "v"}, now + 5)
    assert updated is not None and updated.metadata == {"k": "v"} and updated.updated_at == now + 5
    got = await store.get_conversation("conv_a")
    assert got is not None and got.metadata == {"k": "v"} and got.owner == "user-1"
    assert got.created_at == now and got.updated_at == now + 5
    assert await store.update_conversation("conv_none", {}, now) is None
    assert await store.delete_conversation("conv_a") is True
    assert await store.get_conversation("conv_a") is None
    assert await store.list_items("conv_a", ListParams()) is None
    assert await store.get_item("conv_a", "msg_1") is None
    assert await store.delete_conversation("conv_a") is False


@pytest.mark.asyncio
async def test_conversation_items_order_and_pagination(store: ResponseStore) -> None:
    now = time.time()
    await store.create_conversation(conv("conv_p", now), [msg(f"msg_{i:02d}") for i in range(5)])
    for start in (5, 8):
        batch = [msg(f"msg_{i:02d}") for i in range(start, start + 3)]
        assert await store.append_items("conv_p", batch, now + start, 100) == APPEND_OK
    expected = [f"msg_{i:02d}" for i in range(11)]
    for limit in (1, 3, 4, 11, 100):
        assert await all_ids(store, "conv_p", "asc", limit) == expected
        assert await all_ids(store, "conv_p", "desc", limit) == expected[::-1]
    page = await store.list_items("conv_p", ListParams(limit=2))
    assert page is not None and [i["id"] for i in page.items] == ["msg_10", "msg_09"] and page.has_more
    page = await store.list_items("conv_p", ListParams(limit=5, order="asc", after="msg_07"))
    assert page is not None and [i["id"] for i in page.items] == ["msg_08", "msg_09", "msg_10"]
    assert page.has_more is False
    # An unknown cursor is not an empty page: the caller answers 404 for it.
    assert await store.list_items("conv_p", ListParams(after="msg_nope")) is None
    item = await store.get_item("conv_p", "msg_03")
    assert item == msg("msg_03")
    got = await store.get_conversation("conv_p")
    assert got is not None and got.updated_at == now + 8


@pytest.mark.asyncio
async def test_conversation_append_is_all_or_nothing(store: ResponseStore) -> None:
    now = time.time()
    await store.create_conversation(conv("conv_x", now), [msg("msg_1")])
    # A batch with one id already present adds nothing, also not its new items.
    assert await store.append_items("conv_x", [msg("msg_2"), msg("msg_1")], now, 100) == APPEND_DUPLICATE
    assert await store.append_items("conv_x", [msg("msg_3"), msg("msg_3")], now, 100) == APPEND_DUPLICATE
    # Over the item limit: nothing is added.
    assert await store.append_items("conv_x", [msg("msg_4"), msg("msg_5")], now, 2) == APPEND_FULL
    assert await all_ids(store, "conv_x") == ["msg_1"]
    assert await store.append_items("conv_x", [msg("msg_4")], now, 2) == APPEND_OK
    assert await store.append_items("conv_x", [msg("msg_5")], now, 2) == APPEND_FULL
    assert await store.append_items("conv_none", [msg("msg_9")], now, 100) == APPEND_NOT_FOUND
    assert await all_ids(store, "conv_x") == ["msg_1", "msg_4"]


@pytest.mark.asyncio
async def test_conversation_concurrent_appends_keep_batches_whole(store: ResponseStore) -> None:
    now = time.time()
    await store.create_conversation(conv("conv_c", now), [])
    batches = [[msg(f"msg_{b:02d}_{i}") for i in range(3)] for b in range(20)]
    results = await asyncio.wait_for(
        asyncio.gather(*(store.append_items("conv_c", batch, now, 1000) for batch in batches)), timeout=60
    )
    assert results == [APPEND_OK] * 20
    ids = await all_ids(store, "conv_c", limit=7)
    assert sorted(ids) == sorted(item["id"] for batch in batches for item in batch)
    # Each batch is contiguous and in its own order: appends do not interleave.
    for batch in batches:
        first = ids.index(batch[0]["id"])
        assert ids[first : first + 3] == [item["id"] for item in batch]
    # Over the limit concurrently: exactly the batches that fit get in.
    await store.create_conversation(conv("conv_l", now), [])
    results = await asyncio.gather(*(store.append_items("conv_l", batch, now, 10) for batch in batches))
    assert results.count(APPEND_OK) == 3 and results.count(APPEND_FULL) == 17
    assert len(await all_ids(store, "conv_l")) == 9


@pytest.mark.asyncio
async def test_conversation_item_delete(store: ResponseStore) -> None:
    now = time.time()
    await store.create_conversation(conv("conv_d", now), [msg(f"msg_{i}") for i in range(4)])
    assert await store.delete_item("conv_d", "msg_1", now + 1) is True
    assert await store.delete_item("conv_d", "msg_1", now + 1) is False
    assert await store.delete_item("conv_none", "msg_2", now + 1) is False
    assert await store.get_item("conv_d", "msg_1") is None
    assert await all_ids(store, "conv_d") == ["msg_0", "msg_2", "msg_3"]
    assert await store.list_items("conv_d", ListParams(after="msg_1")) is None
    # Order stays stable after a delete; new items go after the last one.
    assert await store.append_items("conv_d", [msg("msg_1")], now + 2, 100) == APPEND_OK
    assert await all_ids(store, "conv_d") == ["msg_0", "msg_2", "msg_3", "msg_1"]
    await store.delete_item("conv_d", "msg_1", now + 3)
    await store.append_items("conv_d", [msg("msg_9")], now + 4, 100)
    assert await all_ids(store, "conv_d", "desc") == ["msg_9", "msg_3", "msg_2", "msg_0"]


@pytest.mark.asyncio
async def test_conversation_isolated_from_caller_mutations(store: ResponseStore) -> None:
    now = time.time()
    items = [msg("msg_1")]
    await store.create_conversation(conv("conv_m", now), items)
    items[0]["content"][0]["text"] = "mutated"
    page = await store.list_items("conv_m", ListParams())
    assert page is not None and page.items == [msg("msg_1")]
    page.items[0]["content"] = []
    assert await store.get_item("conv_m", "msg_1") == msg("msg_1")


@pytest.mark.asyncio
async def test_conversation_purge_by_ttl_counts_from_last_write(make: MakeStore) -> None:
    ttl = 3600.0
    store = await make(ttl_seconds=ttl)
    now = time.time()
    await store.create_conversation(conv("conv_old", now - 2 * ttl), [msg("msg_o")])
    await store.create_conversation(conv("conv_used", now - 2 * ttl), [msg("msg_u")])
    await store.append_items("conv_used", [msg("msg_u2")], now - 10, 100)
    await store.create_conversation(conv("conv_new", now - 10), [])
    assert await store.purge(now) == 1
    assert await store.get_conversation("conv_old") is None
    assert await store.get_item("conv_old", "msg_o") is None
    assert await store.get_conversation("conv_used") is not None
    assert await all_ids(store, "conv_used") == ["msg_u", "msg_u2"]
    assert await store.get_conversation("conv_new") is not None


@pytest.mark.asyncio
async def test_conversation_purge_by_max_records(make: MakeStore) -> None:
    store = await make(max_records=3)
    base = time.time() - 100
    for i in range(6):
        await store.create_conversation(conv(f"conv_{i}", base + i), [msg(f"msg_{i}")])
    await store.purge(time.time())
    present = [i for i in range(6) if await store.get_conversation(f"conv_{i}") is not None]
    assert present == [3, 4, 5]
# ------------------------------------------------------------------- limits, usage, response cache


def charge(key: str, amount: int, limit: int, expires_at: float) -> Charge:
    return Charge(key, amount, limit, expires_at, "rpm", expires_at)


@pytest.mark.asyncio
async def test_take_limits_is_all_or_nothing(store: ResponseStore) -> None:
    now = time.time()
    until = now + 3600
    rpm, tpm = f"p:rpm:{uuid.uuid4().hex}", f"p:tpm:{uuid.uuid4().hex}"
    assert await store.take_limits([charge(rpm, 1, 2, until), charge(tpm, 60, 100, until)], now) == -1
    # The second counter would pass its limit (60 + 60 > 100): nothing is charged, index 1.
    assert await store.take_limits([charge(rpm, 1, 2, until), charge(tpm, 60, 100, until)], now) == 1
    assert await store.take_limits([charge(rpm, 1, 2, until), charge(tpm, 40, 100, until)], now) == -1
    # Now both are at their limits: the first one refuses.
    assert await store.take_limits([charge(rpm, 1, 2, until), charge(tpm, 0, 100, until)], now) == 0
    # A settlement refunds: 40 tokens back make room for 40.
    await store.adjust_limit(tpm, -40, until)
    assert await store.take_limits([charge(tpm, 40, 100, until)], now) == -1
    assert await store.take_limits([charge(tpm, 1, 100, until)], now) == 0
    # Counters never go below zero.
    other = f"p:tpm:{uuid.uuid4().hex}"
    await store.adjust_limit(other, -500, until)
    assert await store.take_limits([charge(other, 100, 100, until)], now) == -1


@pytest.mark.asyncio
async def test_take_limits_concurrent_never_exceeds(store: ResponseStore) -> None:
    now = time.time()
    key = f"p:rpm:{uuid.uuid4().hex}"
    results = await asyncio.wait_for(
        asyncio.gather(*(store.take_limits([charge(key, 1, 7, now + 3600)], now) for _ in range(30))), 30
    )
    assert results.count(-1) == 7 and results.count(0) == 23


@pytest.mark.asyncio
async def test_usage_rows_add_up_and_filter(store: ResponseStore) -> None:
    await store.add_usage("2026-01-01", "alice", "local", (1, 10, 20, 3, 4))
    await store.add_usage("2026-01-01", "alice", "local", (1, 5, 6, 0, 1))
    await store.add_usage("2026-01-01", "alice", "gpt-x", (1, 1, 1, 0, 0))
    await store.add_usage("2026-01-02", "bob", "local", (2, 7, 8, 0, 0))
    await store.add_usage("2026-02-01", "alice", "local", (1, 1, 1, 1, 1))
    alice = await store.usage("alice", "2026-01-01", "2026-01-31")
    assert alice == [
        {"date": "2026-01-01", "key": "alice", "model": "gpt-x", "requests": 1, "input_tokens": 1,
         "output_tokens": 1, "cached_tokens": 0, "reasoning_tokens": 0},
        {"date": "2026-01-01", "key": "alice", "model": "local", "requests": 2, "input_tokens": 15,
         "output_tokens": 26, "cached_tokens": 3, "reasoning_tokens": 5},
    ]  # fmt: skip
    everyone = await store.usage(None, "2026-01-01", "2026-01-02")
    assert [(r["date"], r["key"], r["model"]) for r in everyone] == [
        ("2026-01-01", "alice", "gpt-x"),
        ("2026-01-01", "alice", "local"),
        ("2026-01-02", "bob", "local"),
    ]
    assert await store.usage("carol", "2026-01-01", "2026-12-31") == []
    odd = "modèle \u2028 🙂"
    await store.add_usage("2026-03-01", "key_0123456789abcdef", odd, (1, 2, 3, 0, 0))
    got = await store.usage("key_0123456789abcdef", "2026-03-01", "2026-03-01")
    assert [(r["model"], r["output_tokens"]) for r in got] == [(odd, 3)]


@pytest.mark.asyncio
async def test_response_cache_get_put_expiry(store: ResponseStore) -> None:
    now = time.time()
    assert await store.cache_get("h1", now) is None
    await store.cache_put("h1", b'{"id":"resp_1"}', now + 60)
    assert await store.cache_get("h1", now) == b'{"id":"resp_1"}'
    await store.cache_put("h1", b'{"id":"resp_2"}', now + 60)
    assert await store.cache_get("h1", now) == b'{"id":"resp_2"}'
    await store.cache_put("h2", b"x", now + 0.5)
    await asyncio.sleep(0.8)  # Redis expires on its own clock
    assert await store.cache_get("h2", time.time()) is None
    await store.purge(time.time())
    assert await store.cache_get("h1", time.time()) == b'{"id":"resp_2"}'


# ------------------------------------------------------------------------------------ run log


def run_event(seq: int, text: str = "x") -> tuple[int, str, bytes]:
    payload = {"type": "response.output_text.delta", "sequence_number": seq, "delta": text}
    return (seq, "response.output_text.delta", orjson.dumps(payload))


@pytest.mark.asyncio
async def test_run_log_round_trip(store: ResponseStore) -> None:
    now = time.time()
    snapshot = orjson.dumps({"id": "resp_run", "status": "in_progress", "text": "héllo 🙂"})
    await store.run_start("resp_run", "user-1", snapshot, now)
    fresh = await store.run_read("resp_run", -1, 100)
    assert fresh is not None
    assert (fresh.owner, fresh.snapshot, fresh.done, fresh.cancel_requested) == (
        "user-1",
        snapshot,
        False,
        False,
    )
    assert fresh.events == []
    events = [run_event(i, f"d{i} 🙂\n") for i in range(6)]
    assert await store.run_append("resp_run", events[:4], now + 1) is False
    assert await store.run_append("resp_run", events[4:], now + 2) is False
    # A batch sent again (a retried append) is not logged twice.
    assert await store.run_append("resp_run", events[3:], now + 2) is False
    got = await store.run_read("resp_run", -1, 100)
    assert got is not None and got.events == events and got.updated_at == pytest.approx(now + 2)
    after = await store.run_read("resp_run", 2, 100)
    assert after is not None and after.events == events[3:]
    page = await store.run_read("resp_run", 0, 2)
    assert page is not None and page.events == events[1:3]
    none = await store.run_read("resp_run", 5, 100)
    assert none is not None and none.events == [] and not none.done
    await store.run_finish("resp_run", now + 3)
    done = await store.run_read("resp_run", 3, 100)
    assert done is not None and done.done and done.events == events[4:]
    # Restarting a log empties it.
    await store.run_start("resp_run", None, b"{}", now + 4)
    again = await store.run_read("resp_run", -1, 100)
    assert again is not None and again.owner is None and again.events == [] and not again.done


@pytest.mark.asyncio
async def test_run_unknown(store: ResponseStore) -> None:
    assert await store.run_read("resp_nope", -1, 10) is None
    assert await store.run_append("resp_nope", [run_event(0)], time.time()) is False
    assert await store.run_cancel("resp_nope") is False
    await store.run_finish("resp_nope", time.time())  # a no-op, no error
    assert await store.run_read("resp_nope", -1, 10) is None


@pytest.mark.asyncio
async def test_run_cancel_reaches_the_owner(store: ResponseStore) -> None:
    now = time.time()
    await store.run_start("resp_c", "u", b"{}", now)
    assert await store.run_append("resp_c", [run_event(0)], now) is False
    assert await store.run_cancel("resp_c") is True
    state = await store.run_read("resp_c", -1, 10)
    assert state is not None and state.cancel_requested
    # The owner sees the request in the answer to its next append (with or without events).
    assert await store.run_append("resp_c", [], now + 1) is True
    assert await store.run_append("resp_c", [run_event(1)], now + 1) is True
    await store.run_finish("resp_c", now + 2)
    # A finished run cannot be cancelled any more.
    assert await store.run_cancel("resp_c") is False


@pytest.mark.asyncio
async def test_run_log_is_bounded_in_events(make: MakeStore) -> None:
    store = await make(run_max_events=5)
    await store.run_start("resp_b", "u", b"{}", time.time())
    await store.run_append("resp_b", [run_event(i) for i in range(3)], time.time())
    await store.run_append("resp_b", [run_event(i) for i in range(3, 9)], time.time())
    got = await store.run_read("resp_b", -1, 100)
    assert got is not None and [e[0] for e in got.events] == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_run_log_expires_after_the_owners_last_write(make: MakeStore) -> None:
    # Real time: Redis expires the keys on its own clock; memory and SQLite at purge.
    store = await make(run_ttl_seconds=1.0)
    await store.run_start("resp_old", "u", b"{}", time.time())
    await store.run_append("resp_old", [run_event(0)], time.time())
    await asyncio.sleep(0.6)
    await store.run_start("resp_young", "u", b"{}", time.time())
    await asyncio.sleep(0.6)
    await store.purge(time.time())
    assert await store.run_read("resp_old", -1, 10) is None
    assert await store.run_read("resp_young", -1, 10) is not None
    assert await store.run_append("resp_old", [run_event(1)], time.time()) is False


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_run_count_is_bounded(make: MakeStore) -> None:
    store = await make(run_max_runs=3)
    base = time.time()
    for i in range(6):
        await store.run_start(f"resp_n{i}", "u", b"{}", base + i)
    await store.purge(base + 10)
    kept = [i for i in range(6) if await store.run_read(f"resp_n{i}", -1, 1) is not None]
    assert kept == [3, 4, 5]


# ---------------------------------------------------------------------------------------- sqlite


@pytest.mark.asyncio
async def test_sqlite_persists_across_reopen_with_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "persist.db")
    rec = record("resp_p", time.time())
    store = SQLiteStore(path, ttl_seconds=60, max_records=10)
    await store.open()
    await store.put(rec)
    await store.close()
    store = SQLiteStore(path, ttl_seconds=60, max_records=10)
    await store.open()
    try:
        assert await store.get("resp_p") == rec
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(responses)")}
        assert "responses_created_at" in indexes
    conn.close()


@pytest.mark.asyncio
async def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    from wsproxy.store.sqlite import _SCHEMA_V1

    path = str(tmp_path / "v1.db")
    rec = record("resp_v1", 100.0)
    conn = sqlite3.connect(path)
    for statement in _SCHEMA_V1:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO responses (id, owner, created_at, data) VALUES (?, ?, ?, ?)",
        (rec.id, rec.owner, rec.created_at, rec.dumps()),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SQLiteStore(path, ttl_seconds=60, max_records=10)
    await store.open()
    try:
        assert await store.get("resp_v1") == rec
        await store.create_conversation(conv("conv_v2", 1.0), [msg("msg_1")])
        assert await store.get_item("conv_v2", "msg_1") == msg("msg_1")
        # Versions 3 and 4 (limits, usage, cache; background run logs) came with the same migration.
        await store.add_usage("2026-01-02", "alice", "local", [1, 2, 3, 0, 0])
        assert [r["output_tokens"] for r in await store.usage("alice", "2026-01-01", "2026-01-03")] == [3]
    finally:
        await store.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    check.close()


async def test_sqlite_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    """What ``--workers N`` relies on: each worker has its own connection (and writer thread) on
    one file; a write committed by one is readable by the other at once."""
    path = str(tmp_path / "shared.db")
    a = SQLiteStore(path, ttl_seconds=3600, max_records=100, busy_timeout_ms=5000)
    b = SQLiteStore(path, ttl_seconds=3600, max_records=100, busy_timeout_ms=5000)
    await asyncio.gather(a.open(), b.open())  # both may create the file and switch it to WAL
    try:
        for i in range(20):
            rec = record(f"resp_x{i}", time.time())
            await (a if i % 2 else b).put(rec)
            assert await (b if i % 2 else a).get(rec.id) == rec
        await a.run_start("resp_run", "u", b"{}", time.time())
        await a.run_append("resp_run", [run_event(0), run_event(1)], time.time())
        seen = await b.run_read("resp_run", 0, 10)
        assert seen is not None and [e[0] for e in seen.events] == [1]
        assert await b.run_cancel("resp_run") is True
        assert await a.run_append("resp_run", [run_event(2)], time.time()) is True
        # Writers of two processes contend for one lock: busy_timeout makes them wait, not fail.
        claims = await asyncio.gather(
            *(s.claim_idempotency_key("k", f"resp_{i}", time.time()) for i, s in enumerate([a, b] * 10))
        )
        assert claims.count(None) == 1 and len({c for c in claims if c is not None}) == 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "future.db")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    store = SQLiteStore(path, ttl_seconds=60, max_records=10)
    with pytest.raises(StoreError, match="schema version"):
        await store.open()
    # A failed open leaves the store closed, not half open.
    with pytest.raises(StoreError):
        await store.get("x")


@pytest.mark.asyncio
async def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "no" / "such" / "dir" / "x.db"), ttl_seconds=60, max_records=10)
    with pytest.raises(StoreError):
        await store.open()
    store = SQLiteStore(str(tmp_path / "closed.db"), ttl_seconds=60, max_records=10)
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.put(record("resp_x", 1.0))
    await store.close()  # closing twice is harmless


@pytest.mark.asyncio
async def test_sqlite_purge_is_bounded_per_call(tmp_path: Path) -> None:
    store = SQLiteStore(
        str(tmp_path / "bounded.db"), ttl_seconds=10, max_records=1000, purge_batch=3, purge_max_batches=2
    )
    await store.open()
    try:
        for i in range(10):
            await store.put(record(f"resp_{i}", 100.0 + i))
        # At most 2 batches of 3 per call; the rest is left for the next calls.
        assert await store.purge(1_000.0) == 6
        assert await store.purge(1_000.0) == 4
        assert await store.purge(1_000.0) == 0
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------- redis


@pytest.mark.asyncio
async def test_redis_unreachable_is_store_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on that port now.
    store = RedisStore(
        f"redis://127.0.0.1:{port}/0", ttl_seconds=60, max_records=10, socket_connect_timeout=1
    )
    with pytest.raises(StoreError):
        await store.open()
    with pytest.raises(StoreError):
        await store.get("x")


@pytest.mark.asyncio
async def test_redis_layout_and_ttl(redis_url: str) -> None:
    import redis.asyncio as aioredis

    prefix = f"wsproxy-test:{uuid.uuid4().hex}:"
    store = RedisStore(redis_url, ttl_seconds=120, max_records=10, key_prefix=prefix)
    await store.open()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        rec = record("resp_l", 1234.5)
        await store.put(rec)
        blob = await raw.get(f"{prefix}resp:resp_l")
        assert blob is not None and StoredResponse.loads(blob) == rec
        assert 0 < await raw.pttl(f"{prefix}resp:resp_l") <= 120_000
        assert await raw.zscore(f"{prefix}index", "resp_l") == 1234.5
        await store.claim_idempotency_key("k", "resp_l", 1234.5)
        assert 0 < await raw.pttl(f"{prefix}idem:k") <= 120_000
        assert await store.delete("resp_l") is True
        assert await raw.zscore(f"{prefix}index", "resp_l") is None
    finally:
        await raw.aclose()
        await store.close()
    with pytest.raises(StoreError):
        await store.put(record("resp_closed", 1.0))


@pytest.mark.asyncio
async def test_redis_purge_is_bounded_per_call(redis_url: str) -> None:
    store = RedisStore(
        redis_url,
        ttl_seconds=10,
        max_records=1000,
        key_prefix=f"wsproxy-test:{uuid.uuid4().hex}:",
        purge_batch=3,
        purge_max_batches=2,
    )
    await store.open()
    try:
        for i in range(10):
            await store.put(record(f"resp_{i}", 100.0 + i))
        assert await store.purge(1_000.0) == 6
        assert await store.purge(1_000.0) == 4
        assert await store.purge(1_000.0) == 0
        assert await store.get("resp_9") is None
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------- factory


@pytest.mark.asyncio
async def test_factory(tmp_path: Path) -> None:
    kw: dict[str, Any] = {
        "path": str(tmp_path / "f.db"),
        "url": "redis://127.0.0.1:1/0",
        "ttl_seconds": 60.0,
        "max_records": 10,
    }
    assert isinstance(make_store("memory", **kw), MemoryStore)
    sqlite_store = make_store("sqlite", **kw)
    assert isinstance(sqlite_store, SQLiteStore) and sqlite_store.path == kw["path"]
    redis_store = make_store("redis", **kw)
    assert isinstance(redis_store, RedisStore) and redis_store.url == kw["url"]
    with pytest.raises(ValueError, match="unknown store backend"):
        make_store("postgres", **kw)


@pytest.mark.asyncio
async def test_sqlite_limits_shared_between_stores_on_one_file(tmp_path: Path) -> None:
    """Two stores on one file (two connections and threads, as two worker processes have)
    charging one counter concurrently: the limit holds across them."""
    path = str(tmp_path / "shared.db")
    stores = [SQLiteStore(path, ttl_seconds=60, max_records=100) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        now = time.time()
        calls = [stores[i % 2].take_limits([charge("k:rpm:1", 1, 10, now + 60)], now) for i in range(40)]
        results = await asyncio.wait_for(asyncio.gather(*calls), 60)
        assert results.count(-1) == 10
    finally:
        for s in stores:
            await s.close()
