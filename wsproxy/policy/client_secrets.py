"""Short-lived client secrets: what a backend hands a browser instead of a real key.

A secret is ``ek_<payload>.<mac>``: the payload (base64url of canonical JSON) names the principal
that minted it, its expiry (unix seconds) and the models it may use (``null``: any); the MAC is
HMAC-SHA256 over that payload with the server's secret key. Nothing is stored: any replica with
the same key verifies a secret, and a secret cannot be changed (a longer expiry, another model)
without the key. The payload is readable by its holder, so it carries nothing secret: the
principal is already a digest of a key (``wsproxy.policy.auth.principal_of``).

Every character is a base64url character, ``_`` or ``.``: a secret is a valid HTTP token, so it
fits in the ``openai-insecure-api-key.<secret>`` WebSocket subprotocol.

Pure: the clock is a parameter (``now``), the key is given; no I/O, no environment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from wsproxy.errors import ClientError, Unauthorized, invalid_param, unknown_parameter

PREFIX = "ek_"
# Domain separation: a MAC made for something else with the same key never verifies here.
_CONTEXT = b"wsproxy.client_secret.v1\n"
# Far more than principal + expiry + MAX_MODELS names need; longer is refused unread.
MAX_SECRET_CHARS = 8192
MAX_MODELS = 32
MAX_MODEL_CHARS = 128
MIN_SECONDS = 10


@dataclass(frozen=True, slots=True)
class ClientSecret:
    principal: str | None
    expires_at: int
    # None: every model the principal may use.
    models: tuple[str, ...] | None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def is_client_secret(token: str | None) -> bool:
    return token is not None and token.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + payload, hashlib.sha256).digest()


def mint(key: bytes, principal: str | None, expires_at: int, models: tuple[str, ...] | None) -> str:
    payload = orjson.dumps(
        {"p": principal, "e": expires_at, "m": list(models) if models is not None else None}
    )
    return f"{PREFIX}{_b64(payload)}.{_b64(_mac(key, payload))}"


def _invalid() -> Unauthorized:
    # One answer for every malformed or forged secret: nothing tells a guesser what was wrong.
    return Unauthorized("Incorrect API key provided.", code="invalid_api_key")


def verify(key: bytes, secret: str, now: float) -> ClientSecret:
    """The grant of a secret minted with ``key``. Raises ``Unauthorized`` when it is malformed,
    forged, or expired (``client_secret_expired``)."""
    if len(secret) > MAX_SECRET_CHARS or not secret.startswith(PREFIX):
        raise _invalid()
    encoded, dot, mac_text = secret[len(PREFIX) :].partition(".")
    if not dot:
        raise _invalid()
    try:
        payload = _unb64(encoded)
        mac = _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise _invalid() from None
    # The canonical spelling only: one secret, one string (base64 ignores some trailing bits).
    if not hmac.compare_digest(mac, _mac(key, payload)) or _b64(mac) != mac_text or _b64(payload) != encoded:
        raise _invalid()
    # Signed by us: the shape is ours, but it is checked anyway (a key shared with older code).
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _invalid() from None
    if not isinstance(data, dict):
        raise _invalid()
    principal, expires_at, models = data.get("p"), data.get("e"), data.get("m")
    if principal is not None and not isinstance(principal, str):
        raise _invalid()
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        raise _invalid()
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise _invalid()
    if now >= expires_at:
        raise Unauthorized("The client secret has expired.", code="client_secret_expired")
    return ClientSecret(principal, expires_at, tuple(models) if models is not None else None)


@dataclass(frozen=True, slots=True)
class MintRequest:
    seconds: int
    models: tuple[str, ...] | None


def parse_mint_request(obj: Mapping[str, Any], max_seconds: int) -> MintRequest:
    """``{"expires_after": {"seconds": N}, "models": [...]}``, both optional (the default lifetime
    is ``max_seconds``). ``expires_after.anchor`` may be ``created_at``, as OpenAI's realtime
    client secrets accept it."""
    for name in obj:
        if name not in ("expires_after", "models"):
            raise unknown_parameter(name)
    seconds = max_seconds
    expires_after = obj.get("expires_after")
    if expires_after is not None:
        if not isinstance(expires_after, dict):
            raise invalid_param("expires_after", "Invalid 'expires_after': expected an object.")
        for name in expires_after:
            if name not in ("seconds", "anchor"):
                raise unknown_parameter(f"expires_after.{name}")
        if expires_after.get("anchor", "created_at") != "created_at":
            raise invalid_param(
                "expires_after.anchor", "Invalid 'expires_after.anchor': expected 'created_at'."
            )
        raw = expires_after.get("seconds", max_seconds)
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw):
            raise invalid_param(
                "expires_after.seconds", "Invalid 'expires_after.seconds': expected an integer."
            )
        seconds = int(raw)
        if not MIN_SECONDS <= seconds <= max_seconds:
            raise invalid_param(
                "expires_after.seconds",
                f"Invalid 'expires_after.seconds': expected between {MIN_SECONDS} and {max_seconds}.",
            )
    models = obj.get("models")
    if models is None:
        return MintRequest(seconds, None)
    if not isinstance(models, list) or not models:
        raise invalid_param("models", "Invalid 'models': expected a non-empty array of model names.")
    if len(models) > MAX_MODELS:
        raise invalid_param("models", f"Invalid 'models': at most {MAX_MODELS} models.")
    for model in models:
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_CHARS:
            raise invalid_param("models", "Invalid 'models': expected model names (strings).")
    return MintRequest(seconds, tuple(dict.fromkeys(models)))


def model_not_allowed(model: str) -> ClientError:
    return ClientError(
        f"This client secret may not use the model '{model}'.",
        status=403,
        param="model",
        code="model_not_allowed",
    )


def secrets_cannot_mint() -> ClientError:
    return ClientError(
        "A client secret cannot mint client secrets; use an API key.",
        status=403,
        code="client_secret_not_allowed",
    )


__all__ = [
    "PREFIX",
    "ClientSecret",
    "MintRequest",
    "is_client_secret",
    "mint",
    "model_not_allowed",
    "parse_mint_request",
    "secrets_cannot_mint",
    "verify",
]
