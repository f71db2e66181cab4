"""API keys -> principals.

A presented key is hashed with SHA-256 and its digest compared with every configured digest in
constant time (``hmac.compare_digest``, all of them, no early exit), so the time taken says
nothing about how much of a wrong key matched. Keys in ``api_keys``/``admin_keys`` authenticate as
``key_<16 hex>`` (a short digest: it owns stored responses and never reveals the key); a
``[keys.NAME]`` section holds only the digest and authenticates as ``NAME``, with its model scope,
limits and flags (:class:`wsproxy.policy.keys.Principal`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from wsproxy.errors import Unauthorized
from wsproxy.policy.keys import Principal

BROWSER_KEY_SUBPROTOCOL = "openai-insecure-api-key."


def principal_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def key_digest(key: str) -> str:
    """The hex SHA-256 digest a ``[keys.NAME]`` section holds (``wsproxy keys hash``)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(
        self,
        keys: Iterable[str],
        named: Mapping[str, Principal] | None = None,
        admin_keys: Iterable[str] = (),
    ) -> None:
        """``keys``: plain unscoped keys; ``named``: hex digest -> principal; ``admin_keys``:
        plain keys of admin principals."""
        entries: dict[bytes, Principal] = {}
        for k in keys:
            if k:
                entries[hashlib.sha256(k.encode()).digest()] = Principal(principal_of(k))
        for k in admin_keys:
            if k:
                entries[hashlib.sha256(k.encode()).digest()] = Principal(principal_of(k), admin=True)
        for digest, principal in (named or {}).items():
            entries[bytes.fromhex(digest)] = principal
        self._entries = list(entries.items())

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, key: str | None) -> str | None:
        """The principal's name for ``key``; ``None`` when auth is off. Raises ``Unauthorized``."""
        principal = self.identify(key)
        return None if principal is None else principal.name

    def named(self, name: str) -> Principal | None:
        """The principal a configured key authenticates as, by its name (a client secret names
        the principal that minted it); ``None`` once no key of that name is configured."""
        for _, who in self._entries:
            if who.name == name:
                return who
        return None

    def identify(self, key: str | None) -> Principal | None:
        """The principal for ``key``; ``None`` when auth is off. Raises ``Unauthorized``."""
        if not self._entries:
            return None
        if not key:
            raise Unauthorized(
                "You didn't provide an API key. Provide it in an Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        digest = hashlib.sha256(key.encode()).digest()
        principal: Principal | None = None
        for candidate, who in self._entries:
            # Every digest is compared, also after a match: the time does not depend on which.
            if hmac.compare_digest(candidate, digest):
                principal = who
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
