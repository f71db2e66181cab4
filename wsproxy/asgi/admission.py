"""Admission: the one place a request is let in (pure ASGI middleware).

For every HTTP request and WebSocket handshake under ``/v1/``, once, before any endpoint runs:

1. a new response (``POST /v1/responses``, a WebSocket handshake) while the server shuts down
   is refused with 503 ``server_shutting_down``;
2. the caller is authenticated: a short-lived client secret (``ek_...``,
   ``wsproxy.asgi.client_secrets``) or an API key (``policy.auth.KeyRing``: plain keys and
   scoped ``[keys.NAME]`` keys), from an ``Authorization: Bearer`` header or, for browsers, which
   cannot set headers on a WebSocket, the subprotocol ``openai-insecure-api-key.<key>`` (echoed
   on accept); a bad key is a 401 -- on a WebSocket before the upgrade (the ASGI denial
   response), so clients see the status code;
3. the per-key rate limit of ``limits.rate_limit_rpm`` is applied
   (``policy.ratelimit.RateLimiter``): 429 with ``retry-after``. (Scoped keys' own limits,
   tokens and days are charged per response by the tenancy gate, ``wsproxy.service.tenancy``.)

The result is a :class:`Caller` in ``scope["wsproxy.principal"]``; endpoints read it with
:func:`principal_of` / :func:`owner_of` / :func:`identity_of`. The plain ``GET /v1/responses``
(the 426 that tells a client to upgrade) is answered without a key, as before any other check.
Origin and host guards are another middleware of the same shape (``wsproxy.asgi.guards``).
Must not touch: request bodies, the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from wsproxy.asgi.client_secrets import grant_for, remember
from wsproxy.asgi.render import send_error
from wsproxy.errors import ProxyError
from wsproxy.policy.auth import bearer_token, key_from_subprotocols
from wsproxy.policy.client_secrets import ClientSecret
from wsproxy.policy.keys import Limits, Principal
from wsproxy.policy.limits import plan, rate_limited

if TYPE_CHECKING:
    from wsproxy.service.wiring import Runtime

PRINCIPAL_KEY = "wsproxy.principal"
PREFIX = "/v1/"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking. ``identity``: the principal the key (or the client secret's minting key)
    authenticates as, with its model scopes and limits (``policy.keys.Principal``); None when
    auth is off (everyone is one anonymous principal). ``secret``: the client secret used, if
    any. ``subprotocol``: the browser-key subprotocol to echo when a WebSocket is accepted."""

    identity: Principal | None
    secret: ClientSecret | None = None
    subprotocol: str | None = None

    @property
    def id(self) -> str | None:
        """The owner id of stored responses, conversations and usage."""
        return None if self.identity is None else self.identity.name

    @property
    def limit_key(self) -> str:
        return self.id or "anonymous"


ANONYMOUS = Caller(None)


def principal_of(scope_holder: Any) -> Caller:
    """The caller admission put in the scope (a Request, WebSocket or a scope dict)."""
    scope = getattr(scope_holder, "scope", scope_holder)
    caller: Caller = scope.get(PRINCIPAL_KEY, ANONYMOUS)
    return caller


def owner_of(scope_holder: Any) -> str | None:
    """The owner id the store and the engine use (``principal``)."""
    return principal_of(scope_holder).id


def identity_of(scope_holder: Any) -> Principal | None:
    """The caller's principal with its scopes and limits (None: auth is off)."""
    return principal_of(scope_holder).identity


def runtime_of(scope_holder: Any) -> Runtime:
    """The runtime of the app serving this request (built in its lifespan)."""
    scope = getattr(scope_holder, "scope", scope_holder)
    runtime: Runtime = scope["app"].state.runtime
    return runtime


class Admission:
    """Pure ASGI middleware (streams pass through untouched). See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        websocket = kind == "websocket"
        method = scope.get("method", "GET")
        if not websocket and method == "GET" and scope["path"] == "/v1/responses":
            await self.app(scope, receive, send)  # the 426: no key needed to learn to upgrade
            return
        runtime = runtime_of(scope)
        try:
            caller = scope[PRINCIPAL_KEY] = self.admit(runtime, scope, websocket, method)
            if runtime.shared_rate_limit:
                await self.shared_limit(runtime, caller)
        except ProxyError as exc:
            await self.refuse(runtime, scope, send, exc, websocket, method)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def admit(runtime: Runtime, scope: Scope, websocket: bool, method: str) -> Caller:
        creates = websocket or (method == "POST" and scope["path"] == "/v1/responses")
        if creates and not runtime.ready:
            raise ProxyError("The server is shutting down.", status=503, code="server_shutting_down")
        key = bearer_token(_header(scope, b"authorization"))
        echo = None
        if websocket:
            proto_key, echo = key_from_subprotocols(scope.get("subprotocols") or [])
            key = key or proto_key
        # A client secret first, then the keyring; the secret is kept in the scope for the model
        # check where the request's model is known (``client_secrets.allow_model``).
        grant = grant_for(runtime, key)
        remember(scope, grant)
        if grant.identity is None and grant.secret is None and echo is None:
            caller = ANONYMOUS
        else:
            caller = Caller(grant.identity, grant.secret, echo)
        if runtime.limiter.enabled and not runtime.shared_rate_limit:
            try:
                runtime.limiter.check(caller.limit_key, time.monotonic())
            except ProxyError:
                runtime.metrics.inc("wsproxy_rate_limited_total", scope="rate_limit_rpm")
                raise
        return caller

    @staticmethod
    async def shared_limit(runtime: Runtime, caller: Caller) -> None:
        """``limits.rate_limit_rpm`` when several processes share the store (``--workers N``, or
        replicas on Redis): one counter per key and minute in the store, so N processes enforce
        one limit, not N (a fixed window instead of the single process's token bucket)."""
        now = time.time()
        charges = plan(f"rl:{caller.limit_key}", Limits(rpm=runtime.settings.limits.rate_limit_rpm), now, 0)
        failed = await runtime.store.take_limits(charges, now)
        if failed >= 0:
            runtime.metrics.inc("wsproxy_rate_limited_total", scope="rate_limit_rpm")
            raise rate_limited(charges[failed], now)

    @staticmethod
    async def refuse(
        runtime: Runtime, scope: Scope, send: Send, error: ProxyError, websocket: bool, method: str
    ) -> None:
        if websocket:
            runtime.metrics.inc("wsproxy_ws_rejected_total", status=str(error.status))
            if "websocket.http.response" in scope.get("extensions", {}):
                await send_error(send, error, prefix="websocket.")
            else:  # a server without denial responses: a close before the accept (403)
                await send({"type": "websocket.close", "code": 1008})
            return
        if method == "POST" and scope["path"] == "/v1/responses":
            runtime.metrics.inc("wsproxy_http_errors_total", status=str(error.status))
        await send_error(send, error)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
