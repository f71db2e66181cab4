"""The ASGI application: routes, lifespan, health and metrics.

``/v1/responses`` serves WebSocket mode (GET + Upgrade) and HTTP (POST) on one path: Starlette's
``WebSocketRoute`` and ``Route`` side by side. The runtime (pools, store, tasks) is built in the
lifespan and closed there; nothing exists at import time.

Middleware (pure ASGI, outermost first): :class:`wsproxy.asgi.access_log.AccessLogMiddleware`
(request ids, access logs), :class:`wsproxy.asgi.guards.BrowserGuards` (host, origin, CORS, JSON
only), :class:`wsproxy.asgi.admission.Admission` (shutdown, key or client secret, rate limit; the
caller in the scope). Endpoints raise ``ProxyError``; :func:`wsproxy.asgi.render.handle_proxy_error`
renders it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from wsproxy.asgi import conversations, playground, stored, usage
from wsproxy.asgi.access_log import AccessLogMiddleware
from wsproxy.asgi.admission import Admission, runtime_of
from wsproxy.asgi.client_secrets import create_client_secret, model_visible
from wsproxy.asgi.guards import BrowserGuards
from wsproxy.asgi.http import compact, create_response, responses_get
from wsproxy.asgi.render import handle_proxy_error, json_response
from wsproxy.asgi.ws import WebSocketMode
from wsproxy.errors import ProxyError
from wsproxy.observability.metrics import CONTENT_TYPE
from wsproxy.service.wiring import open_runtime
from wsproxy.settings import Settings

log = logging.getLogger("wsproxy")


async def list_models(request: Request) -> Response:
    runtime = runtime_of(request)
    created = int(runtime.started_at)
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": name.partition("@")[0] if "@" in name else "wsproxy",
        }
        for name in runtime.engine.router.models()
        if model_visible(request.scope, name)  # a client secret lists only its models
    ]
    return json_response({"object": "list", "data": data})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    runtime = runtime_of(request)
    return PlainTextResponse(
        "ready" if runtime.ready else "shutting down", status_code=200 if runtime.ready else 503
    )


async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    runtime.metrics.set_gauge("wsproxy_active_responses", runtime.active_responses)
    for name, provider in runtime.providers.items():
        pool = getattr(provider, "pool", None)
        if pool is not None:  # read at scrape time: nothing to count on the connection path
            runtime.metrics.set_gauge("wsproxy_upstream_connections", pool.connection_count, provider=name)
    return Response(runtime.metrics.render(), headers={"content-type": CONTENT_TYPE})


def create_app(settings: Settings, environ: Mapping[str, str] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await open_runtime(settings, environ)
        app.state.runtime = runtime
        log.info(
            "wsproxy ready providers=%s default=%s store=%s auth=%s",
            ",".join(settings.providers),
            settings.default_provider,
            settings.store.backend,
            "on" if runtime.keyring.enabled else "off",
        )
        try:
            yield
        finally:
            await runtime.aclose()

    routes = [
        WebSocketRoute("/v1/responses", WebSocketMode()),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses", responses_get, methods=["GET"]),
        Route("/v1/responses/compact", compact, methods=["POST"]),
        *stored.routes(),
        *conversations.routes(),  # /v1/conversations
        *usage.routes(),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/client_secrets", create_client_secret, methods=["POST"]),
        playground.route(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [
        # Outermost: every answer, refusals included, gets its request id and access log line.
        Middleware(AccessLogMiddleware),
        # Host and Origin checks, CORS and the JSON-only POST rule, before any route (asgi/guards.py).
        Middleware(BrowserGuards, settings=settings),
        # Shutdown, the key or client secret, the rate limit: the caller in the scope.
        Middleware(Admission),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ProxyError: handle_proxy_error},
        lifespan=lifespan,
    )
