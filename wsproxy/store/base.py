"""The ``ResponseStore`` protocol and the record it keeps.

A stored response is what continuation and the retrieve endpoints need: the Response object as
sent in its terminal event, the *effective* input items (after ``previous_response_id`` expansion,
each with an id), and who owns it. Backends must make ``put`` atomic: a reader sees the whole
record or nothing, also after a crash.

Backends map their own exceptions to :class:`wsproxy.errors.StoreError` at this boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


@dataclass(slots=True)
class StoredResponse:
    id: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    owner: str | None = None
    created_at: float = 0.0
    # Settings continuation needs that the Response object does not carry (e.g. the routed model).
    extra: dict[str, Any] = field(default_factory=dict)

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "response": self.response,
                "input_items": self.input_items,
                "owner": self.owner,
                "created_at": self.created_at,
                "extra": self.extra,
            }
        )

    @classmethod
    def loads(cls, data: bytes | str) -> StoredResponse:
        obj = orjson.loads(data)
        return cls(
            id=obj["id"],
            response=obj["response"],
            input_items=obj["input_items"],
            owner=obj.get("owner"),
            created_at=obj.get("created_at", 0.0),
            extra=obj.get("extra") or {},
        )


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
