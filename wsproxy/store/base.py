"""The ``ResponseStore`` protocol and the record it keeps.

A stored response is what continuation and the retrieve endpoints need: the Response object as
sent in its terminal event, the *effective* input items (after ``previous_response_id`` expansion,
each with an id), and who owns it. Backends must make ``put`` atomic: a reader sees the whole
record or nothing, also after a crash.

Conversations (``/v1/conversations``) live in the same store: a
:class:`~wsproxy.core.conversations.StoredConversation` plus its items in insertion order. Appends
are atomic (all items or none, checked against the per-conversation item limit and against item ids
already in the conversation); a conversation expires ``ttl`` after its last write, and counts
towards the same size bound as responses, enforced separately (``max_records`` conversations).

Backends map their own exceptions to :class:`wsproxy.errors.StoreError` at this boundary.

The run log: the events of a background response, kept in the store so that every process
serving the store (``--workers N``, replicas) can replay and follow a run, and cancel it. The
process running it (the owner) starts the log, appends events in batches, and marks it done; the
others read events after a sequence number and ask for cancellation, which the owner sees in the
answer to its next append. A log is bounded in events (``run_max_events``: appends beyond it are
dropped) and kept ``run_ttl_seconds`` after its owner's last write, so a run whose owner died
expires too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from wsproxy.core.conversations import ItemPage, ListParams, StoredConversation
from wsproxy.core.records import StoredResponse
from wsproxy.policy.limits import Charge

__all__ = [
    "RUN_MAX_EVENTS",
    "RUN_TTL_SECONDS",
    "Charge",
    "ItemPage",
    "ListParams",
    "ResponseStore",
    "RunEvent",
    "RunLog",
    "StoredConversation",
    "StoredResponse",
    "TenancyStore",
]

# One event of a run: its sequence_number, its type, its JSON payload.
RunEvent = tuple[int, str, bytes]

RUN_TTL_SECONDS = 600.0
RUN_MAX_EVENTS = 100_000
# Runs kept at most (memory and SQLite; Redis bounds them by TTL only).
RUN_MAX_RUNS = 10_000


@dataclass(slots=True)
class RunLog:
    """What ``run_read`` returns: the run's state and the events asked for."""

    owner: str | None
    snapshot: bytes  # the Response object as the run started (JSON)
    done: bool
    cancel_requested: bool
    updated_at: float  # the owner's last write (wall clock)
    events: list[RunEvent] = field(default_factory=list)


class TenancyStore(Protocol):
    """Limit counters, usage rows and the response cache: shared by whatever shares the store
    (one process with memory, the processes of one host with SQLite, every replica with Redis)."""

    async def take_limits(self, charges: Sequence[Charge], now: float) -> int:
        """Atomically: if every counter plus its amount stays within its limit, add all amounts
        and return -1; else change nothing and return the index of the first that would not."""
        ...

    async def adjust_limit(self, key: str, delta: int, expires_at: float) -> None:
        """Add ``delta`` (may be negative) to a counter, kept until ``expires_at``."""
        ...

    async def add_usage(self, date: str, key: str, model: str, counts: Sequence[int]) -> None:
        """Add (requests, input, output, cached, reasoning tokens) to a usage row."""
        ...

    async def usage(self, key: str | None, start: str, end: str) -> list[dict[str, Any]]:
        """Usage rows of ``key`` (None: every key) from ``start`` to ``end`` (inclusive dates),
        ordered by date, key, model."""
        ...

    async def cache_get(self, key: str, now: float) -> bytes | None: ...

    async def cache_put(self, key: str, data: bytes, expires_at: float) -> None: ...


class ResponseStore(TenancyStore, Protocol):
    """Async key-value store of responses, bounded by a TTL and a size limit."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, record: StoredResponse) -> None: ...

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def delete(self, response_id: str) -> bool: ...

    async def purge(self, now: float) -> int:
        """Drop expired records and enforce the size bound; returns how many were dropped."""
        ...

    async def claim_idempotency_key(self, key: str, response_id: str, now: float) -> str | None:
        """Atomically bind ``key`` to ``response_id``; returns the id already bound, if any."""
        ...

    # -- conversations ---------------------------------------------------------------------------

    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        """Store a new conversation with its first items, atomically."""
        ...

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None: ...

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str], now: float
    ) -> StoredConversation | None:
        """Replace the metadata; ``None`` if there is no such conversation."""
        ...

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete the conversation and its items."""
        ...

    async def append_items(
        self, conversation_id: str, items: list[dict[str, Any]], now: float, max_items: int
    ) -> str:
        """Append ``items`` (each with an ``id``) all or nothing; returns one of the ``APPEND_*``
        outcomes of :mod:`wsproxy.core.conversations` (ok, not_found, duplicate, full)."""
        ...

    async def list_items(self, conversation_id: str, params: ListParams) -> ItemPage | None:
        """One page in ``params.order`` after ``params.after``; ``None`` if the conversation or
        the ``after`` item does not exist."""
        ...

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None: ...

    async def delete_item(self, conversation_id: str, item_id: str, now: float) -> bool: ...

    # -- background run logs --------------------------------------------------------------------

    async def run_start(self, run_id: str, owner: str | None, snapshot: bytes, now: float) -> None:
        """Start (or restart, empty) the log of run ``run_id``."""
        ...

    async def run_append(self, run_id: str, events: Sequence[RunEvent], now: float) -> bool:
        """Append events (ascending sequence numbers; beyond ``run_max_events`` they are
        dropped) and record the owner's heartbeat; True if cancellation was requested. An
        unknown (or expired) run: nothing is written, False."""
        ...

    async def run_read(self, run_id: str, after: int, limit: int) -> RunLog | None:
        """The run's state and up to ``limit`` events with a sequence number above ``after``.
        The state is read before the events: a run read as done has all its events."""
        ...

    async def run_finish(self, run_id: str, now: float) -> None:
        """Mark the run done (after its last append)."""
        ...

    async def run_cancel(self, run_id: str) -> bool:
        """Ask the owner to cancel; True if the run exists and is not done."""
        ...


USAGE_FIELDS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


def usage_row(date: str, key: str, model: str, counts: Sequence[int]) -> dict[str, Any]:
    return {"date": date, "key": key, "model": model, **dict(zip(USAGE_FIELDS, counts, strict=True))}
