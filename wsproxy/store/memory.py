"""In-memory response store: bounded by count and TTL, for tests and ``store.backend = "memory"``."""

from __future__ import annotations

from collections import OrderedDict

from wsproxy.store.base import StoredResponse


class MemoryStore:
    def __init__(self, *, ttl_seconds: float = 30 * 86400, max_records: int = 100_000) -> None:
        self.ttl = ttl_seconds
        self.max_records = max_records
        self._records: OrderedDict[str, StoredResponse] = OrderedDict()
        self._idem: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._records.clear()
        self._idem.clear()

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
        return len(expired)

    async def claim_idempotency_key(self, key: str, response_id: str, now: float) -> str | None:
        existing = self._idem.get(key)
        if existing is not None:
            return existing[0]
        self._idem[key] = (response_id, now)
        while len(self._idem) > self.max_records:
            self._idem.popitem(last=False)
        return None
