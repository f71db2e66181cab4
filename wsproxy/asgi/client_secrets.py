"""Client secrets at the edge: ``POST /v1/client_secrets`` and the hook that lets a secret stand
in for an API key.

The flow for a browser frontend: its backend, holding a real key, mints a secret that lives for
minutes and names the models it may use; the browser uses it as a Bearer key or as the
``openai-insecure-api-key.<secret>`` WebSocket subprotocol. Signing and verification are pure
(``wsproxy.policy.client_secrets``); this module adds the clock, the key and the HTTP shapes.

The hook into authentication is small on purpose (it is meant to move into the auth middleware):

- ``grant_for``: the token check. A client secret first (verified, expiry checked), then the
  keyring. Its principal is the one that minted it: its stored responses are that principal's.
- ``allow_model``: called where the request's model is known; a secret scoped to other models
  gets 403 ``model_not_allowed``.

Secrets are never logged; the answer that carries one is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from wsproxy.asgi.render import error_response, json_response, read_body
from wsproxy.core.request import loads_object
from wsproxy.errors import ClientError, ProxyError, Unauthorized
from wsproxy.policy.auth import bearer_token
from wsproxy.policy.client_secrets import (
    ClientSecret,
    is_client_secret,
    mint,
    model_not_allowed,
    parse_mint_request,
    secrets_cannot_mint,
    verify,
)
from wsproxy.policy.keys import Principal
from wsproxy.service.wiring import Runtime

# Where an HTTP request's verified secret is kept for ``allow_model`` (the ASGI scope).
SCOPE_KEY = "wsproxy.client_secret"
# A mint request is a few dozen bytes; anything much larger is not one.
_MAX_MINT_BODY = 16 * 1024


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a token speaks for, and the client secret it was (None for a key or no auth)."""

    identity: Principal | None
    secret: ClientSecret | None = None

    @property
    def principal(self) -> str | None:
        return None if self.identity is None else self.identity.name


def grant_for(runtime: Runtime, token: str | None) -> Grant:
    """The token check: a client secret first, then the keyring. Raises ``Unauthorized``.

    A secret speaks for the principal that minted it, with that principal's scopes and limits
    narrowed to the secret's models; once the minting key is no longer configured, its secrets
    no longer work (revocation does not wait for the expiry)."""
    if is_client_secret(token):
        assert token is not None
        secret = verify(runtime.client_secret_key, token, time.time())
        if secret.principal is None:
            if runtime.keyring.enabled:
                # Minted while client auth was off: it speaks for nobody now that auth is on.
                raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
            return Grant(None, secret)
        minter = runtime.keyring.named(secret.principal)
        if minter is None:
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        return Grant(minter.narrowed(secret.models) if secret.models is not None else minter, secret)
    return Grant(runtime.keyring.identify(token))


def remember(scope: MutableMapping[str, Any], grant: Grant) -> None:
    if grant.secret is not None:
        scope[SCOPE_KEY] = grant.secret


def allow_model(
    scope: MutableMapping[str, Any] | None, model: str, secret: ClientSecret | None = None
) -> None:
    """403 ``model_not_allowed`` when the request's client secret does not cover ``model``."""
    if secret is None and scope is not None:
        secret = scope.get(SCOPE_KEY)
    if secret is not None and not secret.allows(model):
        raise model_not_allowed(model)


def model_visible(scope: MutableMapping[str, Any], model: str) -> bool:
    secret: ClientSecret | None = scope.get(SCOPE_KEY)
    return secret is None or secret.allows(model)


def _loopback_peer(request: Request) -> bool:
    client = request.client
    if client is None:
        return True  # a Unix socket: local by construction
    try:
        address = ipaddress.ip_address(client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


async def create_client_secret(request: Request) -> Response:
    """``POST /v1/client_secrets``: ``{"expires_after": {"seconds": N}, "models": [...]}`` (both
    optional) -> ``{"value": "ek_...", "expires_at": <unix seconds>, "models": [...] | null}``."""
    runtime: Runtime = request.app.state.runtime
    try:
        token = bearer_token(request.headers.get("authorization"))
        if is_client_secret(token):
            raise secrets_cannot_mint()
        if runtime.keyring.enabled:
            principal = runtime.keyring.authenticate(token)
        elif _loopback_peer(request):
            principal = None
        else:
            # Without client keys anyone who can reach the proxy could mint; only a backend on
            # this machine may then.
            raise ClientError(
                "Client authentication is off: client secrets can be minted only from this machine. "
                "Set api_keys to mint them from elsewhere.",
                status=403,
                code="client_secret_not_allowed",
            )
        # (The rate limit was applied at admission, wsproxy.asgi.admission.)
        body = await read_body(request, _MAX_MINT_BODY)
        obj = loads_object(body) if body.strip() else {}
        ask = parse_mint_request(obj, runtime.settings.client_secret_max_seconds)
        expires_at = int(time.time()) + ask.seconds
        value = mint(runtime.client_secret_key, principal, expires_at, ask.models)
    except ProxyError as exc:
        return error_response(exc)
    payload = {
        "object": "client_secret",
        "value": value,
        "expires_at": expires_at,
        "models": list(ask.models) if ask.models is not None else None,
    }
    return json_response(payload, headers={"cache-control": "no-store"})
