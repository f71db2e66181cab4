"""In-memory response store: bounded by count and TTL, for tests and ``store.backend = "memory"``.

Conversations are kept as their record plus a list of item blobs (JSON bytes, so nothing a caller
holds can change them); every method runs without an await, so each is atomic on the event loop.

Limit counters, usage rows and cache entries live in this process only: with this backend each
process enforces its own limits and keeps its own usage.
"""

from __future__ import annotations

import bisect
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
from wsproxy.store.base import (
    RUN_MAX_EVENTS,
    RUN_MAX_RUNS,
    RUN_TTL_SECONDS,
    Charge,
    RunEvent,
    RunLog,
    StoredResponse,
    usage_row,
)


@dataclass(slots=True)
class _Conversation:
    record: bytes
    items: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class _Run:
    owner: str | None
    snapshot: bytes
    updated_at: float
    done: bool = False
    cancel: bool = False
    events: list[RunEvent] = field(default_factory=list)


class MemoryStore:
    def __init__(
        self,
        *,
        ttl_seconds: float = 30 * 86400,
        max_records: int = 100_000,
        usage_days: int = 400,
        run_ttl_seconds: float = RUN_TTL_SECONDS,
        run_max_events: int = RUN_MAX_EVENTS,
        run_max_runs: int = RUN_MAX_RUNS,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_records = max_records
        self.usage_days = usage_days
        self.run_ttl = run_ttl_seconds
        self.run_max_events = run_max_events
        self.run_max_runs = run_max_runs
        self._records: OrderedDict[str, StoredResponse] = OrderedDict()
        self._idem: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Ordered by last write: the first entries are the first to go when the bound is hit.
        self._convs: OrderedDict[str, _Conversation] = OrderedDict()
        self._counters: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._usage: dict[tuple[str, str, str], list[int]] = {}
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._runs: OrderedDict[str, _Run] = OrderedDict()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._records.clear()
        self._idem.clear()
        self._convs.clear()
        self._runs.clear()

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
        for table in (self._counters, self._cache):
            for key in [k for k, (_, until) in table.items() if until <= now]:
                del table[key]
        if self._usage:
            oldest = min(d for d, _, _ in self._usage)
            keep_from = utc_date(now - self.usage_days * 86400.0)
            if oldest < keep_from:
                for row in [r for r in self._usage if r[0] < keep_from]:
                    del self._usage[row]
        run_cutoff = now - self.run_ttl
        for key in [k for k, r in self._runs.items() if r.updated_at < run_cutoff]:
            del self._runs[key]
        return len(expired) + len(dead)
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

    # -- background run logs --------------------------------------------------------------------

    async def run_start(self, run_id: str, owner: str | None, snapshot: bytes, now: float) -> None:
        self._runs[run_id] = _Run(owner, bytes(snapshot), now)
        self._runs.move_to_end(run_id)
        while len(self._runs) > self.run_max_runs:
            self._runs.popitem(last=False)

    async def run_append(self, run_id: str, events: Sequence[RunEvent], now: float) -> bool:
        run = self._runs.get(run_id)
        if run is None:
            return False
        room = self.run_max_events - len(run.events)
        last = run.events[-1][0] if run.events else None
        for event in events[: max(0, room)]:
            if last is None or event[0] > last:  # a repeated append is not logged twice
                run.events.append(event)
                last = event[0]
        run.updated_at = now
        return run.cancel

    async def run_read(self, run_id: str, after: int, limit: int) -> RunLog | None:
        run = self._runs.get(run_id)
        if run is None:
            return None
        start = bisect.bisect_right(run.events, after, key=lambda e: e[0])
        return RunLog(
            owner=run.owner,
            snapshot=run.snapshot,
            done=run.done,
            cancel_requested=run.cancel,
            updated_at=run.updated_at,
            events=run.events[start : start + max(0, limit)],
        )

    async def run_finish(self, run_id: str, now: float) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.done = True
            run.updated_at = now

    async def run_cancel(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.done:
            return False
        run.cancel = True
        return True
