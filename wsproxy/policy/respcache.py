"""The response cache's rules: which requests may be answered from it, and their key (pure).

A request is cacheable when its answer is meant to be repeatable: ``temperature`` 0 or a
``seed``, not in the background, and generating (not ``generate: false``). Its key is the
SHA-256 of the principal's name and the request body in a canonical form (keys sorted; transport
fields such as ``stream`` and ``stream_id`` are not part of the body), so two principals never
share an entry and SSE, JSON and WebSocket requests for the same thing do.

A hit is answered by replaying the cached Response as events (``wsproxy.core.replay``) with a new
response id and ``created_at``; item ids and ``usage`` are the original's, and the Response object
carries ``"x_wsproxy_cache": "hit"``, the in-band mark (the only one in WebSocket mode).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from wsproxy.core.request import CreateRequest

HIT_FIELD = "x_wsproxy_cache"


def wanted(header: str | None, principal_default: bool) -> bool:
    """``x-wsproxy-cache: on|off`` overrides the key's ``cache`` setting."""
    if header is not None:
        value = header.strip().lower()
        if value in ("on", "true", "1"):
            return True
        if value in ("off", "false", "0"):
            return False
    return principal_default


def cacheable(request: CreateRequest) -> bool:
    body = request.body
    deterministic = body.get("temperature") == 0 or isinstance(body.get("seed"), int)
    return deterministic and request.generate and not request.background


def cache_key(principal: str, request: CreateRequest) -> str:
    canonical = orjson.dumps(request.body, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256()
    digest.update(principal.encode())
    digest.update(b"\x00")
    digest.update(canonical)
    return digest.hexdigest()


def as_hit(response: dict[str, Any], response_id: str, created_at: int) -> dict[str, Any]:
    """The cached Response as this request's own: new id and creation time, marked a hit."""
    return {**response, "id": response_id, "created_at": created_at, HIT_FIELD: "hit"}
