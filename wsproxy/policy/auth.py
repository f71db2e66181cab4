"""API keys -> principals.

Keys are compared by their SHA-256 digest in a dict lookup, so the time taken does not depend on
how many leading characters of a wrong key match. The principal is a short digest of the key: it
owns stored responses and never reveals the key in logs or in the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from wsproxy.errors import Unauthorized

BROWSER_KEY_SUBPROTOCOL = "openai-insecure-api-key."


def principal_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyRing:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = {hashlib.sha256(k.encode()).digest(): principal_of(k) for k in keys if k}

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authenticate(self, key: str | None) -> str | None:
        """The principal for ``key``; ``None`` when auth is off. Raises ``Unauthorized``."""
        if not self._digests:
            return None
        if not key:
            raise Unauthorized(
                "You didn't provide an API key. Provide it in an Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        principal = self._digests.get(hashlib.sha256(key.encode()).digest())
        if principal is None:
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        return principal


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def key_from_subprotocols(subprotocols: Iterable[str]) -> tuple[str | None, str | None]:
    """Browsers cannot set headers on a WebSocket: the key rides in a subprotocol
    ``openai-insecure-api-key.<key>``. Returns (key, subprotocol to echo)."""
    for proto in subprotocols:
        if proto.startswith(BROWSER_KEY_SUBPROTOCOL):
            return proto[len(BROWSER_KEY_SUBPROTOCOL) :] or None, proto
    return None, None
