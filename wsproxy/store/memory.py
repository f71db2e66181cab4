"""In-memory response store: bounded by count and TTL, for tests and ``store.backend = "memory"``."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from wsproxy.store.base import (
    RUN_MAX_EVENTS,
    RUN_MAX_RUNS,
    RUN_TTL_SECONDS,
    RunEvent,
    RunLog,
    StoredResponse,
)


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
        run_ttl_seconds: float = RUN_TTL_SECONDS,
        run_max_events: int = RUN_MAX_EVENTS,
        run_max_runs: int = RUN_MAX_RUNS,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_records = max_records
        self.run_ttl = run_ttl_seconds
        self.run_max_events = run_max_events
        self.run_max_runs = run_max_runs
        self._records: OrderedDict[str, StoredResponse] = OrderedDict()
        self._idem: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._runs: OrderedDict[str, _Run] = OrderedDict()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._records.clear()
        self._idem.clear()
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
        run_cutoff = now - self.run_ttl
        for key in [k for k, r in self._runs.items() if r.updated_at < run_cutoff]:
            del self._runs[key]
        return len(expired)

    async def claim_idempotency_key(self, key: str, response_id: str, now: float) -> str | None:
        existing = self._idem.get(key)
        if existing is not None:
            return existing[0]
        self._idem[key] = (response_id, now)
        while len(self._idem) > self.max_records:
            self._idem.popitem(last=False)
        return None

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
