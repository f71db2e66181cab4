"""In-memory response store: bounded by count and TTL, for tests and ``store.backend = "memory"``.

Conversations are kept as their record plus a list of item blobs (JSON bytes, so nothing a caller
holds can change them); every method runs without an await, so each is atomic on the event loop.

Limit counters, usage rows and cache entries live in this process only: with this backend each
process enforces its own limits and keeps its own usage.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from wsproxy.core.conversations import (
    APPEND_DUPLICATE,
    APPEND_FULL,
    APPEND_NOT_FOUND,
    APPEND_OK,
    ItemPage,
    ListParams,
    StoredConversation,
    page_of,
)
from wsproxy.policy.usage import utc_date
from wsproxy.store.base import Charge, StoredResponse, usage_row


@dataclass(slots=True)
class _Conversation:
    record: bytes
    items: list[tuple[str, bytes]] = field(default_factory=list)


class MemoryStore:
    def __init__(
        self, *, ttl_seconds: float = 30 * 86400, max_records: int = 100_000, usage_days: int = 400
    ) -> None:
        self.ttl = ttl_seconds
        self.max_records = max_records
        self.usage_days = usage_days
        self._records: OrderedDict[str, StoredResponse] = OrderedDict()
        self._idem: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Ordered by last write: the first entries are the first to go when the bound is hit.
        self._convs: OrderedDict[str, _Conversation] = OrderedDict()
        self._counters: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._usage: dict[tuple[str, str, str], list[int]] = {}
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._records.clear()
        self._idem.clear()
        self._convs.clear()

    async def put(self, record: StoredResponse) -> None:
        # Store a private copy: callers keep mutating their dicts.
        self._records[record.id] = StoredResponse.loads(record.dumps())
        self._records.move_to_end(record.id)
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)

    async def get(self, response_id: str) -> StoredResponse | None:
        record = self._records.get(response_id)
        return None if record is None else StoredResponse.loads(record.dumps())

    async def delete(self, response_id: str) -> bool:
        return self._records.pop(response_id, None) is not None

    async def purge(self, now: float) -> int:
        cutoff = now - self.ttl
        expired = [k for k, r in self._records.items() if r.created_at < cutoff]
        for key in expired:
            del self._records[key]
        stale = [k for k, (_, t) in self._idem.items() if t < cutoff]
        for key in stale:
            del self._idem[key]
        dead = [k for k, c in self._convs.items() if StoredConversation.loads(c.record).updated_at < cutoff]
        for key in dead:
            del self._convs[key]
        return len(expired) + len(dead)
        for table in (self._counters, self._cache):
            for key in [k for k, (_, until) in table.items() if until <= now]:
                del table[key]
        if self._usage:
            oldest = min(d for d, _, _ in self._usage)
            keep_from = utc_date(now - self.usage_days * 86400.0)
            if oldest < keep_from:
                for row in [r for r in self._usage if r[0] < keep_from]:
                    del self._usage[row]
        return len(expired)

    async def claim_idempotency_key(self, key: str, response_id: str, now: float) -> str | None:
        existing = self._idem.get(key)
        if existing is not None:
            return existing[0]
        self._idem[key] = (response_id, now)
        while len(self._idem) > self.max_records:
            self._idem.popitem(last=False)
        return None

    # -- conversations ---------------------------------------------------------------------------

    def _touch(self, conversation_id: str, conv: _Conversation, now: float) -> None:
        record = StoredConversation.loads(conv.record)
        record.updated_at = max(record.updated_at, now)
        conv.record = record.dumps()
        self._convs.move_to_end(conversation_id)

    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        blobs = [(str(item["id"]), orjson.dumps(item)) for item in items]
        self._convs[conversation.id] = _Conversation(conversation.dumps(), blobs)
        self._convs.move_to_end(conversation.id)
        while len(self._convs) > self.max_records:
            self._convs.popitem(last=False)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        conv = self._convs.get(conversation_id)
        return None if conv is None else StoredConversation.loads(conv.record)

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str], now: float
    ) -> StoredConversation | None:
        conv = self._convs.get(conversation_id)
        if conv is None:
            return None
        record = StoredConversation.loads(conv.record)
        record.metadata = dict(metadata)
        record.updated_at = max(record.updated_at, now)
        conv.record = record.dumps()
        self._convs.move_to_end(conversation_id)
        return StoredConversation.loads(conv.record)

    async def delete_conversation(self, conversation_id: str) -> bool:
        return self._convs.pop(conversation_id, None) is not None

    async def append_items(
        self, conversation_id: str, items: list[dict[str, Any]], now: float, max_items: int
    ) -> str:
        conv = self._convs.get(conversation_id)
        if conv is None:
            return APPEND_NOT_FOUND
        present = {item_id for item_id, _ in conv.items}
        new_ids = [str(item["id"]) for item in items]
        if len(set(new_ids)) != len(new_ids) or present.intersection(new_ids):
            return APPEND_DUPLICATE
        if len(conv.items) + len(items) > max_items:
            return APPEND_FULL
        conv.items.extend((str(item["id"]), orjson.dumps(item)) for item in items)
        self._touch(conversation_id, conv, now)
        return APPEND_OK

    async def list_items(self, conversation_id: str, params: ListParams) -> ItemPage | None:
        conv = self._convs.get(conversation_id)
        if conv is None:
            return None
        return page_of([orjson.loads(blob) for _, blob in conv.items], params)

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        conv = self._convs.get(conversation_id)
        for key, blob in conv.items if conv is not None else []:
            if key == item_id:
                item: dict[str, Any] = orjson.loads(blob)
                return item
        return None

    async def delete_item(self, conversation_id: str, item_id: str, now: float) -> bool:
        conv = self._convs.get(conversation_id)
        if conv is None:
            return False
        for index, (key, _) in enumerate(conv.items):
            if key == item_id:
                del conv.items[index]
                self._touch(conversation_id, conv, now)
                return True
        return False
    # -- limits, usage, cache ----------------------------------------------------------------

    def _counter(self, key: str, now: float) -> int:
        entry = self._counters.get(key)
        return entry[0] if entry is not None and entry[1] > now else 0

    async def take_limits(self, charges: Sequence[Charge], now: float) -> int:
        for index, charge in enumerate(charges):
            if self._counter(charge.key, now) + charge.amount > charge.limit:
                return index
        for charge in charges:
            self._counters[charge.key] = (self._counter(charge.key, now) + charge.amount, charge.expires_at)
            self._counters.move_to_end(charge.key)
        while len(self._counters) > self.max_records:
            self._counters.popitem(last=False)
        return -1

    async def adjust_limit(self, key: str, delta: int, expires_at: float) -> None:
        value, _ = self._counters.get(key, (0, expires_at))
        self._counters[key] = (max(0, value + delta), expires_at)

    async def add_usage(self, date: str, key: str, model: str, counts: Sequence[int]) -> None:
        row = self._usage.get((date, key, model))
        if row is None:
            if len(self._usage) >= self.max_records:
                return  # bounded: a flood of model names cannot grow this without limit
            row = self._usage[(date, key, model)] = [0] * len(counts)
        for i, n in enumerate(counts):
            row[i] += n

    async def usage(self, key: str | None, start: str, end: str) -> list[dict[str, Any]]:
        rows = [
            usage_row(d, k, m, counts)
            for (d, k, m), counts in self._usage.items()
            if start <= d <= end and (key is None or k == key)
        ]
        return sorted(rows, key=lambda r: (r["date"], r["key"], r["model"]))

    async def cache_get(self, key: str, now: float) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    async def cache_put(self, key: str, data: bytes, expires_at: float) -> None:
        self._cache[key] = (data, expires_at)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_records:
            self._cache.popitem(last=False)
