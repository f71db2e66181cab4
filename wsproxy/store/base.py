"""The ``ResponseStore`` protocol and the record it keeps.

A stored response is what continuation and the retrieve endpoints need: the Response object as
sent in its terminal event, the *effective* input items (after ``previous_response_id`` expansion,
each with an id), and who owns it. Backends must make ``put`` atomic: a reader sees the whole
record or nothing, also after a crash.

Backends map their own exceptions to :class:`wsproxy.errors.StoreError` at this boundary.
"""

from __future__ import annotations

from typing import Protocol

from wsproxy.core.records import StoredResponse

__all__ = ["ResponseStore", "StoredResponse"]


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
