"""The ``ResponseStore`` protocol and the record it keeps.

A stored response is what continuation and the retrieve endpoints need: the Response object as
sent in its terminal event, the *effective* input items (after ``previous_response_id`` expansion,
each with an id), and who owns it. Backends must make ``put`` atomic: a reader sees the whole
record or nothing, also after a crash.

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
from typing import Protocol

from wsproxy.core.records import StoredResponse

__all__ = ["RUN_MAX_EVENTS", "RUN_TTL_SECONDS", "ResponseStore", "RunEvent", "RunLog", "StoredResponse"]

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


class ResponseStore(Protocol):
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
