"""The record a stored response is kept as: pure data and its JSON form, shared by the session
rules (the connection cache), the engine and every store backend.

A stored response is what continuation and the retrieve endpoints need: the Response object as
sent in its terminal event, the *effective* input items (after ``previous_response_id`` expansion,
each with an id), and who owns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
